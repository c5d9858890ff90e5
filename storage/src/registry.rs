//! The registry as the node reads it: the applied state, its index and the
//! change feed, behind one lock so that a reader sees a state and the feed
//! position that matches it exactly.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::{broadcast, watch};

use crate::feed::{AppliedEntry, Feed, FeedConfig, FeedItem};
use crate::state::RegistryState;

/// The part guarded by the lock.
#[derive(Debug)]
pub struct Applied {
    /// Every member and session.
    pub state: RegistryState,
    /// The index of the last applied entry (0: none).
    pub index: u64,
    /// Recent changes and the live broadcast.
    pub feed: Feed,
}

/// Shared between the state machine (the only writer) and the node's
/// readers. The lock is never held across an await.
#[derive(Debug)]
pub struct Registry {
    /// The state, its index and feed.
    applied: RwLock<Applied>,
    /// The applied index, for waiting until an index is reached.
    index_tx: watch::Sender<u64>,
}

impl Registry {
    /// A registry holding `state` as of `index`.
    pub fn new(state: RegistryState, index: u64, feed: FeedConfig) -> Arc<Registry> {
        let (index_tx, _) = watch::channel(index);
        Arc::new(Registry {
            applied: RwLock::new(Applied {
                state,
                index,
                feed: Feed::new(index, feed),
            }),
            index_tx,
        })
    }

    /// Read access to the state, its index and the feed.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means an apply panicked; the state is then
        // unknown and continuing would serve wrong answers.
        self.applied.read().expect("registry lock poisoned")
    }

    /// The last applied index.
    pub fn index(&self) -> u64 {
        *self.index_tx.borrow()
    }

    /// A receiver that sees the applied index change.
    pub fn watch_index(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// Reads the state and subscribes to what follows it, atomically: the
    /// receiver gets exactly the entries after the state that `f` saw.
    /// `None` (and `f` not run) once the feed is closed: a receiver made
    /// then would never hear of the close, and would wait for ever.
    pub fn read_and_subscribe<R>(
        &self,
        f: impl FnOnce(&Applied) -> R,
    ) -> Option<(R, broadcast::Receiver<FeedItem>)> {
        let applied = self.read();
        if applied.feed.is_closed() {
            return None;
        }
        let rx = applied.feed.subscribe();
        Some((f(&applied), rx))
    }

    /// Runs an update of the state (the state machine's apply or install).
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut Applied) -> R) -> R {
        let mut applied = self.applied.write().expect("registry lock poisoned");
        let result = f(&mut applied);
        let index = applied.index;
        drop(applied);
        self.index_tx.send_replace(index);
        result
    }

    /// Ends every subscription to this registry's feed: the node is
    /// shutting down (see [`Feed::close`](crate::feed::Feed::close)).
    pub fn close_feed(&self) {
        self.applied
            .write()
            .expect("registry lock poisoned")
            .feed
            .close();
    }

    /// Records applied changes in the feed (called under `update`).
    pub(crate) fn publish(applied: &mut Applied, entry: AppliedEntry) {
        if !entry.changes.is_empty() {
            applied.feed.push(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_feed_takes_no_new_subscriber() {
        let registry = Registry::new(RegistryState::default(), 4, FeedConfig::default());
        let (index, mut rx) = registry.read_and_subscribe(|a| a.index).unwrap();
        assert_eq!(index, 4);
        registry.close_feed();
        assert!(matches!(rx.try_recv(), Ok(FeedItem::Closed)));
        let mut ran = false;
        assert!(registry.read_and_subscribe(|_| ran = true).is_none());
        assert!(!ran, "nothing is read for a subscriber that is refused");
    }
}
