//! Members as the SDK presents them, and the spec an application registers.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A running instance of a service, as the registry holds it. The field
/// names are those of the design's data model, so the JSON form of a member
/// is the same everywhere (SDK, CLI, HTTP API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique in the cluster.
    pub id: String,
    /// The service this member is an instance of.
    pub service: String,
    /// Dotted hierarchy such as `aws.us-east-1.us-east-1b`; may be empty.
    pub locality: String,
    /// The application's build revision (git sha, version).
    pub revision: String,
    /// When the member's process started, in Unix milliseconds.
    pub created_ms: u64,
    /// Free-form key/value pairs set by the application.
    pub metadata: BTreeMap<String, String>,
    /// Whether the owning session is heartbeating; only the registry changes it.
    pub status: MemberStatus,
    /// The session that owns the member.
    pub client_id: String,
    /// The log index that created the member.
    pub create_index: u64,
    /// The log index that last changed the member.
    pub mod_index: u64,
}

/// Whether a member's session is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// The session heartbeats in time.
    Up,
    /// The session missed its heartbeat timeout; the member is kept until
    /// the reconnect timeout, but should not receive traffic.
    Down,
}

impl MemberStatus {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Up => "up",
            MemberStatus::Down => "down",
        }
    }
}

impl std::fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an application says about a member it registers; the registry adds
/// the rest (status, owner, indexes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    /// Unique in the cluster: 1-256 bytes of `[A-Za-z0-9._:-]`.
    pub id: String,
    /// The service name: 1-128 bytes.
    pub service: String,
    /// Dotted locality; may be empty.
    pub locality: String,
    /// The application's build revision.
    pub revision: String,
    /// When the member's process started, in Unix milliseconds.
    pub created_ms: u64,
    /// Initial metadata.
    pub metadata: BTreeMap<String, String>,
}

impl MemberSpec {
    /// A spec with the given id and service, created now, with no locality,
    /// revision or metadata.
    pub fn new(id: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            service: service.into(),
            locality: String::new(),
            revision: String::new(),
            created_ms: now_ms(),
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the locality.
    pub fn locality(mut self, locality: impl Into<String>) -> Self {
        self.locality = locality.into();
        self
    }

    /// Sets the revision.
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Overrides the creation time (Unix milliseconds).
    pub fn created_ms(mut self, created_ms: u64) -> Self {
        self.created_ms = created_ms;
        self
    }

    /// Adds one metadata key.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds every pair of `metadata`.
    pub fn with_metadata(mut self, metadata: impl IntoIterator<Item = (String, String)>) -> Self {
        self.metadata.extend(metadata);
        self
    }

    /// Applies a metadata update to the spec, so that a re-registration
    /// after a session expired restores the member as it was last set.
    /// The order is the node's: keys are set first, then removed.
    pub(crate) fn apply_update(&mut self, set: &BTreeMap<String, String>, remove: &[String]) {
        self.metadata
            .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        for key in remove {
            self.metadata.remove(key);
        }
    }
}

/// The current time in Unix milliseconds; a clock before 1970 counts as 0.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_builder_sets_every_field() {
        let spec = MemberSpec::new("a-1", "api")
            .locality("eu.west")
            .revision("abc")
            .created_ms(7)
            .metadata("port", "80");
        assert_eq!(spec.id, "a-1");
        assert_eq!(spec.service, "api");
        assert_eq!(spec.locality, "eu.west");
        assert_eq!(spec.revision, "abc");
        assert_eq!(spec.created_ms, 7);
        assert_eq!(spec.metadata.get("port").map(String::as_str), Some("80"));
    }

    #[test]
    fn spec_defaults_creation_to_now() {
        let spec = MemberSpec::new("a", "b");
        assert!(spec.created_ms > 1_600_000_000_000);
    }

    #[test]
    fn update_sets_then_removes_like_the_node() {
        let mut spec = MemberSpec::new("a", "b")
            .metadata("x", "1")
            .metadata("y", "2");
        let set = BTreeMap::from([
            ("x".to_owned(), "3".to_owned()),
            ("z".to_owned(), "4".to_owned()),
        ]);
        spec.apply_update(&set, &["x".to_owned(), "y".to_owned()]);
        assert_eq!(
            spec.metadata,
            BTreeMap::from([("z".to_owned(), "4".to_owned())])
        );
    }

    #[test]
    fn member_json_uses_design_field_names() {
        let member = Member {
            id: "a".into(),
            service: "s".into(),
            locality: String::new(),
            revision: "r".into(),
            created_ms: 1,
            metadata: BTreeMap::new(),
            status: MemberStatus::Down,
            client_id: "c".into(),
            create_index: 2,
            mod_index: 3,
        };
        let json = serde_json::to_value(&member).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "a", "service": "s", "locality": "", "revision": "r", "created_ms": 1,
                "metadata": {}, "status": "down", "client_id": "c", "create_index": 2, "mod_index": 3
            })
        );
    }
}
