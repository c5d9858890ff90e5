//! Sequence numbers of a session's writes and the `ack_below` watermark.

use std::collections::BTreeSet;

/// Numbers a session's writes and tracks which of them may still be sent
/// again, so that every write can tell the node which answers it no longer
/// needs to keep for deduplication.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    /// The seq the next write gets; seq 0 means "no retry protection" on
    /// the wire, so numbering starts at 1.
    next: u64,
    /// Writes whose answer has not been received (and that may therefore
    /// be retried with the same seq).
    in_flight: BTreeSet<u64>,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self {
            next: 1,
            in_flight: BTreeSet::new(),
        }
    }
}

impl SeqTracker {
    /// Numbers a new write.
    pub(crate) fn begin(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.in_flight.insert(seq);
        seq
    }

    /// Records that `seq` will not be sent again: its answer came, or the
    /// caller gave up on it.
    pub(crate) fn finish(&mut self, seq: u64) {
        self.in_flight.remove(&seq);
    }

    /// The lowest seq whose answer has not been received; every lower seq
    /// is settled.
    pub(crate) fn ack_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_start_at_one_and_increase() {
        let mut seqs = SeqTracker::default();
        assert_eq!(seqs.ack_below(), 1);
        assert_eq!(seqs.begin(), 1);
        assert_eq!(seqs.begin(), 2);
    }

    #[test]
    fn ack_below_is_the_oldest_unanswered_write() {
        let mut seqs = SeqTracker::default();
        let a = seqs.begin();
        let b = seqs.begin();
        let c = seqs.begin();
        assert_eq!(seqs.ack_below(), a);
        // An answer out of order does not move the watermark past an older
        // write that is still outstanding.
        seqs.finish(b);
        assert_eq!(seqs.ack_below(), a);
        seqs.finish(a);
        assert_eq!(seqs.ack_below(), c);
        seqs.finish(c);
        assert_eq!(seqs.ack_below(), 4);
    }

    #[test]
    fn a_write_never_acks_itself() {
        let mut seqs = SeqTracker::default();
        let first = seqs.begin();
        seqs.finish(first);
        let seq = seqs.begin();
        assert!(seqs.ack_below() <= seq);
    }
}
