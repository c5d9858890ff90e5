//! Members: the running instances of services that the registry holds.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::metadata::Metadata;

/// Whether a member's session is heartbeating. Only the registry changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MemberStatus {
    /// The owning session heartbeats within its timeout.
    #[default]
    Up,
    /// The owning session missed its heartbeat timeout; the member is kept
    /// until the session's reconnect timeout expires.
    Down,
}

impl MemberStatus {
    /// The lowercase name used in the CLI and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Up => "up",
            MemberStatus::Down => "down",
        }
    }
}

/// What a client says about a member when it registers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MemberSpec {
    /// Unique in the cluster.
    pub id: String,
    /// The service this member is an instance of.
    pub service: String,
    /// A dotted hierarchy such as `aws.us-east-1.us-east-1b`; may be empty.
    pub locality: String,
    /// The application's build revision.
    pub revision: String,
    /// When the member's process started (Unix ms), as the client says.
    pub created_ms: u64,
    /// Free-form key/value pairs, bounded by the node's limits.
    pub metadata: Metadata,
}

/// A member as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The client-supplied part.
    pub spec: MemberSpec,
    /// Up or down, following the owning session.
    pub status: MemberStatus,
    /// The session that owns the member, shared with the session's own
    /// record: every registration copied the id otherwise, an allocation
    /// and a free per write on every node.
    pub client_id: Arc<str>,
    /// The log index that created the member.
    pub create_index: u64,
    /// The log index that last changed the member.
    pub mod_index: u64,
}

impl Member {
    /// The member's id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// A member of `service` for unit tests: up, owned by session `c`,
    /// created and last changed at index 1, no other field set.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, service: &str) -> Member {
        Member {
            spec: MemberSpec {
                id: id.into(),
                service: service.into(),
                ..MemberSpec::default()
            },
            status: MemberStatus::Up,
            client_id: "c".into(),
            create_index: 1,
            mod_index: 1,
        }
    }
}
