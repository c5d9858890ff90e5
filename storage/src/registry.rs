//! The registry as the node reads it: the applied state, its index and the
//! change feed, behind one lock so that a reader sees a state and the feed
//! position that matches it exactly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use tokio::sync::{Notify, broadcast, watch};

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

impl Applied {
    /// The index a subscriber's view is complete up to once it has taken
    /// every item its receiver holds: the applied index, or less while the
    /// broadcaster has not sent everything applied (a Progress must not
    /// promise an entry that is still to come).
    pub fn broadcast_index(&self) -> u64 {
        self.feed.sent_through(self.index)
    }

    /// Broadcasts what the feed kept for the broadcaster and sets whether
    /// apply keeps items from now on (see [`Feed::set_deferred`]).
    fn set_deferred(&mut self, deferred: bool) {
        let index = self.index;
        self.feed.set_deferred(deferred, index);
    }
}

/// Shared between the state machine (the only writer of the state) and
/// the node's readers; the node's broadcaster also takes the write lock, to
/// send the feed's kept items. The lock is never held across an await.
#[derive(Debug)]
pub struct Registry {
    /// The state, its index and feed.
    applied: RwLock<Applied>,
    /// The applied index, for waiting until an index is reached.
    index_tx: watch::Sender<u64>,
    /// Told after an update left feed items for the broadcaster (see
    /// [`Registry::run_broadcaster`]).
    unsent: Notify,
    /// Log entries with commands applied, the commands in them, and the
    /// subscriptions each was offered to (summed): how well writes are
    /// batched and how wide they fan out, for `/metrics` and for the
    /// node's choice to spin while writes come one at a time.
    applied_entries: AtomicU64,
    applied_commands: AtomicU64,
    applied_offers: AtomicU64,
}

/// What [`Registry::applied_counts`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedCounts {
    /// Entries with commands applied.
    pub entries: u64,
    /// The commands in them.
    pub commands: u64,
    /// For each of them, the subscriptions on this node when it was
    /// applied, summed: the fan-out's width times its entries.
    pub offers: u64,
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
            unsent: Notify::new(),
            applied_entries: AtomicU64::new(0),
            applied_commands: AtomicU64::new(0),
            applied_offers: AtomicU64::new(0),
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

    /// What was applied since this registry was made (see
    /// [`AppliedCounts`]). Three relaxed loads: a reader may see one count
    /// of a batch before the others.
    pub fn applied_counts(&self) -> AppliedCounts {
        AppliedCounts {
            entries: self.applied_entries.load(Ordering::Relaxed),
            commands: self.applied_commands.load(Ordering::Relaxed),
            offers: self.applied_offers.load(Ordering::Relaxed),
        }
    }

    /// Counts what one apply applied.
    pub(crate) fn count_applied(&self, counts: AppliedCounts) {
        self.applied_entries
            .fetch_add(counts.entries, Ordering::Relaxed);
        self.applied_commands
            .fetch_add(counts.commands, Ordering::Relaxed);
        self.applied_offers
            .fetch_add(counts.offers, Ordering::Relaxed);
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
        let mut applied = self.write();
        let result = f(&mut applied);
        let index = applied.index;
        let unsent = applied.feed.has_unsent();
        drop(applied);
        self.index_tx.send_replace(index);
        if unsent {
            self.unsent.notify_one();
        }
        result
    }

    /// Broadcasts the feed's items from the task running this, until
    /// `stop` completes, instead of from apply. Apply runs on the Raft
    /// runtime and the subscriptions on the node's main runtime: woken
    /// from apply, 10 000 subscription tasks went into the main runtime's
    /// shared queue ahead of the answer to the write that made the change,
    /// which then waited for all of them (a write under a fan-out took as
    /// long as the fan-out). Woken from a task of the main runtime, they
    /// go to its worker's own queue, and only what overflows it (past 256
    /// tasks) to the shared one, which the node's main runtime looks at
    /// first (`fuddle_node`'s `workers.rs`), so the answer waits only for
    /// that overflow. When `stop` completes, apply sends again (what is
    /// kept is sent first).
    pub async fn run_broadcaster(&self, stop: impl Future<Output = ()>) {
        /// Hands sending back to apply however the broadcaster ends:
        /// stopped, dropped with its task, or unwinding. Without it, items
        /// kept after that would wait for a broadcaster that is gone.
        struct HandBack<'a>(&'a Registry);
        impl Drop for HandBack<'_> {
            fn drop(&mut self) {
                self.0
                    .applied
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .set_deferred(false);
            }
        }

        self.write().set_deferred(true);
        let _hand_back = HandBack(self);
        let mut stop = std::pin::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                () = self.unsent.notified() => {}
            }
            // A wake-up can find nothing kept (a permit stored while the
            // last round was sending): then the write lock, which apply
            // waits for, is not taken.
            if self.read().feed.has_unsent() {
                // Already deferred: this sends what is kept.
                self.write().set_deferred(true);
            }
        }
    }

    /// Ends every subscription to this registry's feed: the node is
    /// shutting down (see [`Feed::close`](crate::feed::Feed::close)).
    pub fn close_feed(&self) {
        self.write().feed.close();
    }

    /// The write lock. Poisoned, it means an apply panicked, as for
    /// [`Registry::read`].
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Applied> {
        self.applied.write().expect("registry lock poisoned")
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

    async fn next(rx: &mut broadcast::Receiver<FeedItem>) -> u64 {
        let recv = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv());
        match recv.await {
            Ok(Ok(FeedItem::Entry(e))) => e.index,
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    /// The broadcaster of `registry` on a task of its own, until `stop`.
    fn spawn_broadcaster(
        registry: &Arc<Registry>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let registry = registry.clone();
        tokio::spawn(async move { registry.run_broadcaster(stop).await })
    }

    /// Applies an entry of one change at `index`, as the state machine does.
    fn apply(registry: &Registry, index: u64) {
        registry.update(|applied| {
            applied.index = index;
            Registry::publish(applied, entry(index));
        })
    }

    #[tokio::test]
    async fn the_broadcaster_sends_what_apply_kept_and_hands_back_when_stopped() {
        let registry = Registry::new(RegistryState::default(), 0, FeedConfig::default());
        let (_, mut rx) = registry.read_and_subscribe(|_| ()).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let broadcaster = spawn_broadcaster(&registry, async move {
            let _ = stop_rx.await;
        });
        // Running, the broadcaster sends what apply keeps, in order.
        tokio::task::yield_now().await;
        for index in 1..=20 {
            apply(&registry, index);
        }
        assert!(registry.read().feed.has_unsent(), "apply kept the entries");
        for index in 1..=20 {
            assert_eq!(next(&mut rx).await, index);
        }
        // Stopped, it hands sending back to apply.
        stop_tx.send(()).unwrap();
        broadcaster.await.unwrap();
        apply(&registry, 21);
        assert!(matches!(rx.try_recv(), Ok(FeedItem::Entry(e)) if e.index == 21));
        assert!(!registry.read().feed.has_unsent());
    }

    #[tokio::test]
    async fn a_broadcaster_dropped_with_its_task_hands_sending_back() {
        let registry = Registry::new(RegistryState::default(), 0, FeedConfig::default());
        let (_, mut rx) = registry.read_and_subscribe(|_| ()).unwrap();
        let broadcaster = spawn_broadcaster(&registry, std::future::pending());
        tokio::task::yield_now().await;
        apply(&registry, 1);
        assert!(
            registry.read().feed.has_unsent(),
            "kept for the broadcaster"
        );
        broadcaster.abort();
        let _ = broadcaster.await;
        // What was kept went out, and apply sends again.
        assert_eq!(next(&mut rx).await, 1);
        apply(&registry, 2);
        assert!(matches!(rx.try_recv(), Ok(FeedItem::Entry(e)) if e.index == 2));
    }

    fn entry(index: u64) -> crate::feed::AppliedEntry {
        let change = crate::change::Change {
            id: format!("m{index}"),
            before: None,
            after: None,
        };
        crate::feed::AppliedEntry::new(index, vec![change])
    }

    #[tokio::test]
    async fn a_view_is_complete_only_up_to_what_was_broadcast() {
        let registry = Registry::new(RegistryState::default(), 0, FeedConfig::default());
        let (_, _rx) = registry.read_and_subscribe(|_| ()).unwrap();
        apply(&registry, 1);
        assert_eq!(registry.read().broadcast_index(), 1, "sent by apply");
        let broadcaster = spawn_broadcaster(&registry, std::future::pending());
        tokio::task::yield_now().await;
        apply(&registry, 2);
        // Applied but kept for the broadcaster: not promised yet.
        assert_eq!(registry.read().index, 2);
        assert_eq!(registry.read().broadcast_index(), 1);
        tokio::task::yield_now().await;
        assert_eq!(
            registry.read().broadcast_index(),
            2,
            "sent by the broadcaster"
        );
        broadcaster.abort();
    }
}
