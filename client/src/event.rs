//! What a subscription delivers.

use crate::member::Member;

/// One message of a subscription, in index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every matching member as of `index`; replaces whatever the consumer
    /// held before.
    Snapshot {
        /// The matching members.
        members: Vec<Member>,
        /// The log index the snapshot reflects.
        index: u64,
    },
    /// The changes one log entry made to the matching members.
    Changes {
        /// The log index that made the changes.
        index: u64,
        /// The changes, in the order the entry made them.
        changes: Vec<Change>,
    },
    /// Nothing matching changed up to `index`.
    Progress {
        /// The node's applied index when it sent this.
        index: u64,
    },
}

impl Event {
    /// The log index the event is at.
    pub fn index(&self) -> u64 {
        match self {
            Event::Snapshot { index, .. }
            | Event::Changes { index, .. }
            | Event::Progress { index } => *index,
        }
    }
}

/// One change to the set of matching members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The member as it is now: created, replaced, changed, or newly matching.
    Upsert(Member),
    /// The member with this id is gone, or no longer matches.
    Removed(String),
}
