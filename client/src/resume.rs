//! The bookkeeping that lets a subscription reconnect without a gap and
//! without a duplicate.

use crate::event::Event;

/// Tracks the last index a subscription has delivered, decides which events
/// of a (re)connected stream to pass on, and names the index to resume from.
///
/// A node streams changes strictly in index order from its snapshot or from
/// the requested `since_index`, so after a reconnect every change at or
/// below the last delivered index is one the consumer has already seen.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    last: Option<u64>,
}

impl Resume {
    /// Starts from `since_index` when the consumer already holds the state
    /// up to it.
    pub(crate) fn new(since_index: Option<u64>) -> Self {
        Self { last: since_index }
    }

    /// The index to ask the next stream to resume after.
    pub(crate) fn since_index(&self) -> Option<u64> {
        self.last
    }

    /// Whether to deliver `event`; records its index when it is delivered.
    pub(crate) fn accept(&mut self, event: &Event) -> bool {
        let index = event.index();
        let fresh = match (event, self.last) {
            (_, None) => true,
            // A snapshot older than what the consumer holds comes from a
            // node that lags behind; the changes that follow it on the same
            // stream lead past the consumer's index without a gap, so
            // dropping it (and them, up to that index) keeps the consumer's
            // newer state instead of moving it back in time.
            (Event::Snapshot { .. }, Some(last)) => index >= last,
            (Event::Changes { .. }, Some(last)) => index > last,
            // Progress at the current index is still news: it says the
            // consumer is current as of now.
            (Event::Progress { .. }, Some(last)) => index >= last,
        };
        if fresh {
            self.last = Some(index);
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Change;

    fn changes(index: u64) -> Event {
        Event::Changes {
            index,
            changes: vec![Change::Removed(format!("m{index}"))],
        }
    }

    fn snapshot(index: u64) -> Event {
        Event::Snapshot {
            members: Vec::new(),
            index,
        }
    }

    #[test]
    fn first_stream_passes_everything() {
        let mut resume = Resume::new(None);
        assert!(resume.accept(&snapshot(5)));
        assert!(resume.accept(&changes(6)));
        assert!(resume.accept(&Event::Progress { index: 9 }));
        assert_eq!(resume.since_index(), Some(9));
    }

    #[test]
    fn replayed_changes_after_a_reconnect_are_dropped() {
        let mut resume = Resume::new(None);
        assert!(resume.accept(&snapshot(5)));
        assert!(resume.accept(&changes(7)));
        // The new stream starts again from an older point.
        assert!(!resume.accept(&changes(6)));
        assert!(!resume.accept(&changes(7)));
        assert!(resume.accept(&changes(8)));
        assert_eq!(resume.since_index(), Some(8));
    }

    #[test]
    fn a_newer_snapshot_resets_and_an_older_one_is_dropped() {
        let mut resume = Resume::new(Some(10));
        assert!(!resume.accept(&snapshot(8)));
        assert!(!resume.accept(&changes(10)));
        assert!(resume.accept(&changes(11)));
        assert!(resume.accept(&snapshot(20)));
        assert_eq!(resume.since_index(), Some(20));
        assert!(!resume.accept(&changes(20)));
    }

    #[test]
    fn progress_at_the_same_index_passes_but_older_progress_does_not() {
        let mut resume = Resume::new(Some(4));
        assert!(resume.accept(&Event::Progress { index: 4 }));
        assert!(!resume.accept(&Event::Progress { index: 3 }));
        assert_eq!(resume.since_index(), Some(4));
    }
}
