//! Size and character limits on what clients send, checked before a write
//! is proposed. Nothing is ever truncated: a request over a limit is refused
//! with the field and the limit named.

use serde::{Deserialize, Serialize};

use crate::member::MemberSpec;

/// The node's limits on client input. Defaults follow the design brief.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest member id, in bytes.
    pub max_id_bytes: usize,
    /// Longest service name, in bytes.
    pub max_service_bytes: usize,
    /// Longest locality, in bytes.
    pub max_locality_bytes: usize,
    /// Longest revision, in bytes.
    pub max_revision_bytes: usize,
    /// Most metadata keys on one member.
    pub max_metadata_keys: usize,
    /// Longest metadata key, in bytes.
    pub max_metadata_key_bytes: usize,
    /// Longest metadata value, in bytes.
    pub max_metadata_value_bytes: usize,
    /// Most bytes of metadata (keys and values) on one member.
    pub max_metadata_total_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_id_bytes: 256,
            max_service_bytes: 128,
            max_locality_bytes: 256,
            max_revision_bytes: 256,
            max_metadata_keys: 64,
            max_metadata_key_bytes: 128,
            max_metadata_value_bytes: 4096,
            max_metadata_total_bytes: 64 * 1024,
        }
    }
}

/// A refused field: which one and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field's name as the protocol spells it (`member.id`, `metadata["k"]`).
    pub field: String,
    /// What is wrong, naming the limit.
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Characters allowed in ids: `[A-Za-z0-9._:-]`.
fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

impl Limits {
    /// Checks a member id (also used for `get`, `update` and `unregister`).
    pub fn check_id(&self, field: &str, id: &str) -> Result<(), InvalidField> {
        if id.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if id.len() > self.max_id_bytes {
            return Err(invalid(
                field,
                format!("is {} bytes, the limit is {}", id.len(), self.max_id_bytes),
            ));
        }
        if let Some(c) = id.chars().find(|c| !is_id_char(*c)) {
            return Err(invalid(
                field,
                format!("contains {c:?}; allowed are A-Z a-z 0-9 . _ : -"),
            ));
        }
        Ok(())
    }

    /// Checks a session id: the same alphabet and length as a member id.
    pub fn check_client_id(&self, field: &str, id: &str) -> Result<(), InvalidField> {
        self.check_id(field, id)
    }

    fn check_text(
        &self,
        field: &str,
        value: &str,
        max: usize,
        required: bool,
    ) -> Result<(), InvalidField> {
        if required && value.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if value.len() > max {
            return Err(invalid(
                field,
                format!("is {} bytes, the limit is {max}", value.len()),
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid(field, "must not contain control characters"));
        }
        Ok(())
    }

    /// Checks everything a client sends to register a member.
    pub fn check_spec(&self, spec: &MemberSpec) -> Result<(), InvalidField> {
        self.check_id("member.id", &spec.id)?;
        self.check_text(
            "member.service",
            &spec.service,
            self.max_service_bytes,
            true,
        )?;
        self.check_text(
            "member.locality",
            &spec.locality,
            self.max_locality_bytes,
            false,
        )?;
        if !spec.locality.is_empty() && spec.locality.split('.').any(str::is_empty) {
            return Err(invalid(
                "member.locality",
                "must be dot-separated non-empty parts, like aws.us-east-1.us-east-1b",
            ));
        }
        self.check_text(
            "member.revision",
            &spec.revision,
            self.max_revision_bytes,
            false,
        )?;
        self.check_metadata("member.metadata", &spec.metadata)
    }

    /// Checks a complete metadata map (a registration, or the result of an
    /// update merged into the current map).
    pub fn check_metadata<'a>(
        &self,
        field: &str,
        metadata: impl IntoIterator<Item = (&'a String, &'a String), IntoIter: ExactSizeIterator>,
    ) -> Result<(), InvalidField> {
        let metadata = metadata.into_iter();
        if metadata.len() > self.max_metadata_keys {
            return Err(invalid(
                field,
                format!(
                    "has {} keys, the limit is {}",
                    metadata.len(),
                    self.max_metadata_keys
                ),
            ));
        }
        let mut total = 0;
        for (key, value) in metadata {
            self.check_metadata_key(field, key)?;
            if value.len() > self.max_metadata_value_bytes {
                return Err(invalid(
                    format!("{field}[{key:?}]"),
                    format!(
                        "value is {} bytes, the limit is {}",
                        value.len(),
                        self.max_metadata_value_bytes
                    ),
                ));
            }
            total += key.len() + value.len();
        }
        if total > self.max_metadata_total_bytes {
            return Err(invalid(
                field,
                format!(
                    "is {total} bytes in all, the limit is {}",
                    self.max_metadata_total_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks one metadata key.
    pub fn check_metadata_key(&self, field: &str, key: &str) -> Result<(), InvalidField> {
        if key.is_empty() {
            return Err(invalid(field, "has an empty key"));
        }
        if key.len() > self.max_metadata_key_bytes {
            return Err(invalid(
                field,
                format!(
                    "key {:?}… is {} bytes, the limit is {}",
                    &key[..key.floor_char_boundary(16)],
                    key.len(),
                    self.max_metadata_key_bytes
                ),
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(invalid(field, "a key contains control characters"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> MemberSpec {
        MemberSpec {
            id: "orders-1".into(),
            service: "orders".into(),
            locality: "aws.us-east-1".into(),
            ..MemberSpec::default()
        }
    }

    #[test]
    fn accepts_a_normal_spec() {
        Limits::default().check_spec(&spec()).unwrap();
    }

    #[test]
    fn names_the_field_and_limit() {
        let limits = Limits::default();
        let mut s = spec();
        s.id = "x".repeat(257);
        let err = limits.check_spec(&s).unwrap_err();
        assert_eq!(err.field, "member.id");
        assert!(err.to_string().contains("256"), "{err}");

        let mut s = spec();
        s.id = "a b".into();
        assert_eq!(limits.check_spec(&s).unwrap_err().field, "member.id");

        let mut s = spec();
        s.service = String::new();
        assert_eq!(limits.check_spec(&s).unwrap_err().field, "member.service");

        let mut s = spec();
        s.service = "s".repeat(129);
        assert!(
            limits
                .check_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("128")
        );

        let mut s = spec();
        s.locality = "aws..x".into();
        assert_eq!(limits.check_spec(&s).unwrap_err().field, "member.locality");
    }

    #[test]
    fn metadata_limits() {
        let limits = Limits::default();
        let mut s = spec();
        s.metadata = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(
            limits
                .check_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("64")
        );

        let mut s = spec();
        s.metadata.insert("big".into(), "v".repeat(4097));
        let err = limits.check_spec(&s).unwrap_err();
        assert!(err.field.contains("big"), "{err}");

        let mut s = spec();
        s.metadata = (0..20)
            .map(|i| (format!("k{i}"), "v".repeat(4000)))
            .collect();
        assert!(
            limits
                .check_spec(&s)
                .unwrap_err()
                .to_string()
                .contains("in all")
        );

        let mut s = spec();
        s.metadata.insert("k".repeat(129), "v".into());
        assert!(limits.check_spec(&s).is_err());
    }
}
