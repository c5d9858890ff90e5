//! Changes to members, as applying an entry produces them for subscribers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::member::Member;

/// One member's change within a log entry. Keeping both sides lets a
/// filtered subscriber tell "now matches" from "no longer matches". Both
/// share the member with the registry state (and with the write's answer)
/// instead of copying it: a member with its metadata was copied four to
/// five times per registration, about a tenth of a leader's samples under
/// load (perf, 256 writers), though sharing moved no end-to-end figure
/// (docs/benchmarks.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The member's id.
    pub id: String,
    /// The member before the entry, if it existed.
    pub before: Option<Arc<Member>>,
    /// The member after the entry, if it still exists.
    pub after: Option<Arc<Member>>,
}
