//! Member selection and read consistency.

use std::collections::BTreeMap;

use crate::member::MemberStatus;

/// Selects members. Empty strings and an absent status match anything;
/// service, locality and metadata values accept `*` globs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Service name or glob; empty for any.
    pub service: String,
    /// Locality or glob; empty for any.
    pub locality: String,
    /// Every key must be present with a matching value (glob).
    pub metadata: BTreeMap<String, String>,
    /// Only members with this status; `None` for both.
    pub status: Option<MemberStatus>,
}

impl Filter {
    /// A filter that matches every member.
    pub fn all() -> Self {
        Self::default()
    }

    /// Restricts to a service (or glob).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Restricts to a locality (or glob).
    pub fn locality(mut self, locality: impl Into<String>) -> Self {
        self.locality = locality.into();
        self
    }

    /// Requires a metadata key with a matching value (or glob).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Restricts to members with the given status.
    pub fn status(mut self, status: MemberStatus) -> Self {
        self.status = Some(status);
        self
    }
}

/// How current a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started (a read
    /// index through the leader).
    #[default]
    Linearizable,
    /// The answering node's local state, at once; the returned index says
    /// how current it is.
    Stale,
}
