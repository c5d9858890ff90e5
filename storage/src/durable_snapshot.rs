//! The log id up to which a durable snapshot covers the log, shared by the
//! state machine (which moves it) and the log store (which purges no
//! further).
//!
//! openraft 0.9 installs a snapshot on the state machine's worker and
//! purges the log it covers from the core, with nothing ordering the two
//! (`FollowingHandler::install_full_snapshot` queues the purge right after
//! the install, with no condition). A purge made durable before the
//! installed snapshot is would leave, after a crash, an older snapshot and a
//! log that no longer holds the entries after it: the node could not
//! rebuild its state. So the log store purges only entries that a durable
//! snapshot covers, and leaves the rest for a later purge.

use std::sync::{Arc, Mutex};

use crate::types::LogId;

/// See the module documentation. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct DurableSnapshot(Arc<Mutex<Option<LogId>>>);

impl DurableSnapshot {
    /// The last log id the current durable snapshot holds, if any.
    pub fn get(&self) -> Option<LogId> {
        *self.0.lock().expect("durable snapshot lock poisoned")
    }

    /// Records a snapshot made durable; it never moves back.
    pub fn advance(&self, last_log_id: Option<LogId>) {
        let mut covered = self.0.lock().expect("durable snapshot lock poisoned");
        if last_log_id > *covered {
            *covered = last_log_id;
        }
    }

    /// How far a purge asked for up to `upto` may go: `upto` itself when a
    /// durable snapshot covers it, else the snapshot's last log id, or
    /// nothing without a snapshot.
    pub fn limit_purge(&self, upto: LogId) -> Option<LogId> {
        match self.get() {
            Some(covered) if covered.index >= upto.index => Some(upto),
            Some(covered) => Some(covered),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lid(term: u64, index: u64) -> LogId {
        openraft::testing::log_id(term, 1, index)
    }

    #[test]
    fn purges_only_what_a_durable_snapshot_covers() {
        let mark = DurableSnapshot::default();
        assert_eq!(mark.limit_purge(lid(1, 5)), None, "no snapshot yet");
        mark.advance(Some(lid(1, 8)));
        assert_eq!(mark.limit_purge(lid(1, 5)), Some(lid(1, 5)));
        assert_eq!(mark.limit_purge(lid(1, 8)), Some(lid(1, 8)));
        assert_eq!(mark.limit_purge(lid(2, 12)), Some(lid(1, 8)));
        mark.advance(Some(lid(1, 3)));
        assert_eq!(mark.get(), Some(lid(1, 8)), "never moves back");
    }
}
