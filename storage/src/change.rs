//! Changes to members, as applying an entry produces them for subscribers.

use serde::{Deserialize, Serialize};

use crate::member::Member;

/// One member's change within a log entry. Keeping both sides lets a
/// filtered subscriber tell "now matches" from "no longer matches".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The member's id.
    pub id: String,
    /// The member before the entry, if it existed.
    pub before: Option<Member>,
    /// The member after the entry, if it still exists.
    pub after: Option<Member>,
}
