//! The change feed: every applied entry's member changes, kept for a while
//! so that a subscriber can resume by index, and broadcast to live
//! subscribers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use tokio::sync::broadcast;

use crate::change::Change;

/// The member changes of one applied log entry.
#[derive(Debug)]
pub struct AppliedEntry {
    /// The entry's log index.
    pub index: u64,
    /// Its changes, all of them (subscribers see an entry whole).
    pub changes: Vec<Change>,
    /// The entry as encoded for subscribers, once per distinct filter and
    /// shared by every subscriber with that filter: an opaque slot for the
    /// node (storage never reads it).
    pub encoded: EncodeCache,
}

/// Encodings of one entry, keyed by the subscribers' filters.
///
/// Subscribers usually share a few filters (every instance of a service
/// watches the same one), so the first subscriber with a filter encodes and
/// the others copy a reference-counted buffer. The number of filters kept is
/// bounded: past it, subscribers encode for themselves.
#[derive(Debug, Default)]
pub struct EncodeCache {
    /// (filter key, encoding; `None` when nothing in the entry matches).
    slots: Mutex<Vec<(Bytes, Option<Bytes>)>>,
}

/// Distinct filters one entry keeps encodings for.
const ENCODE_CACHE_FILTERS: usize = 16;

impl EncodeCache {
    /// The encoding for `key`, made by `encode` if no subscriber with the
    /// same key made it yet.
    pub fn get_or_encode(
        &self,
        key: &Bytes,
        encode: impl FnOnce() -> Option<Bytes>,
    ) -> Option<Bytes> {
        // The lock is held while encoding, so that subscribers with the same
        // filter wait for one encoding instead of all making their own.
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, encoded)) = slots.iter().find(|(k, _)| k == key) {
            return encoded.clone();
        }
        let encoded = encode();
        if slots.len() < ENCODE_CACHE_FILTERS {
            slots.push((key.clone(), encoded.clone()));
        }
        encoded
    }
}

impl AppliedEntry {
    /// An entry with nothing encoded yet.
    pub fn new(index: u64, changes: Vec<Change>) -> AppliedEntry {
        AppliedEntry {
            index,
            changes,
            encoded: EncodeCache::default(),
        }
    }
}

/// What the feed broadcasts.
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// An entry with member changes.
    Entry(Arc<AppliedEntry>),
    /// The state was replaced by a snapshot at this index: history before it
    /// is gone, and every subscriber needs a fresh snapshot.
    Reset(u64),
    /// The node is shutting down: live streams end, and their clients
    /// resume on another node. The last item: nothing is sent after it.
    Closed,
}

/// The index an item is about, if any.
fn item_index(item: &FeedItem) -> Option<u64> {
    match item {
        FeedItem::Entry(entry) => Some(entry.index),
        FeedItem::Reset(index) => Some(*index),
        FeedItem::Closed => None,
    }
}

/// Recent history plus the live broadcast.
#[derive(Debug)]
pub struct Feed {
    /// Entries after `history_start`, oldest first.
    history: VecDeque<Arc<AppliedEntry>>,
    /// The history is complete for every index after this one.
    history_start: u64,
    /// How many changes the history may hold in all.
    max_history_changes: usize,
    /// How many changes it holds now.
    history_changes: usize,
    /// Live subscribers' receivers come from here.
    tx: broadcast::Sender<FeedItem>,
    /// Set once [`FeedItem::Closed`] was sent. A receiver made after that
    /// (a new or resyncing subscriber) would never see the item, so it
    /// must look here.
    closed: bool,
    /// Whether a broadcaster of the node's sends the items (see
    /// `Registry::run_broadcaster`) instead of apply itself.
    deferred: bool,
    /// Items recorded but not yet broadcast (only while `deferred`), in
    /// order.
    unsent: Vec<FeedItem>,
    /// Every change up to this index has been broadcast: the index of the
    /// last item sent, or the applied index when the kept items were last
    /// sent. Read only while `unsent` is not empty (see
    /// [`Feed::sent_through`]): it is the index before the first kept item
    /// or later, never past it.
    sent_through: u64,
    /// At most this many items are kept: past it apply sends them itself,
    /// as the broadcast buffer would have made their receivers lag anyway.
    max_unsent: usize,
}

/// Sizes of the feed.
#[derive(Debug, Clone, Copy)]
pub struct FeedConfig {
    /// Changes kept for resuming subscribers. Each holds a member before
    /// and after, so this bounds memory: 20 000 changes of ~1 KiB members
    /// cost ~40 MiB at most.
    pub history_changes: usize,
    /// Items a live subscriber may lag before it must resync.
    pub broadcast_capacity: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            history_changes: 20_000,
            broadcast_capacity: 16_384,
        }
    }
}

impl Feed {
    /// A feed whose history starts after `applied` (the state as loaded).
    pub fn new(applied: u64, config: FeedConfig) -> Feed {
        let (tx, _) = broadcast::channel(config.broadcast_capacity.max(1));
        Feed {
            history: VecDeque::new(),
            history_start: applied,
            max_history_changes: config.history_changes,
            history_changes: 0,
            tx,
            closed: false,
            deferred: false,
            unsent: Vec::new(),
            sent_through: applied,
            max_unsent: config.broadcast_capacity.max(1),
        }
    }

    /// Records and broadcasts an applied entry.
    pub fn push(&mut self, entry: AppliedEntry) {
        let entry = Arc::new(entry);
        self.history_changes += entry.changes.len();
        self.history.push_back(entry.clone());
        while self.history_changes > self.max_history_changes {
            let Some(old) = self.history.pop_front() else {
                break;
            };
            self.history_changes -= old.changes.len();
            self.history_start = old.index;
        }
        self.emit(FeedItem::Entry(entry));
    }

    /// Broadcasts `item`, or keeps it for the broadcaster. No receivers is
    /// fine: nobody is subscribed. Nothing goes out after the feed was
    /// closed (the history still records it). With nobody subscribed and
    /// nothing kept, there is no one to wake, so the item goes at once and
    /// the broadcaster is not woken for it (a write with no subscriber
    /// would otherwise cost its node one more wake-up).
    fn emit(&mut self, item: FeedItem) {
        if self.closed {
            return;
        }
        if self.deferred && (!self.unsent.is_empty() || self.tx.receiver_count() > 0) {
            self.unsent.push(item);
            if self.unsent.len() >= self.max_unsent {
                // The broadcaster is far behind: send from here, in order,
                // rather than keep an unbounded list (its receivers lag
                // either way).
                let through = self.unsent.iter().rev().find_map(item_index);
                self.send_unsent(through.unwrap_or(self.sent_through));
            }
        } else {
            if let Some(index) = item_index(&item) {
                self.sent_through = index;
            }
            let _ = self.tx.send(item);
        }
    }

    /// Makes apply keep items for [`Feed::send_unsent`] (`true`) or send
    /// them itself (`false`); either way what is kept is sent first, and
    /// everything up to `applied`, the applied index now, is then sent.
    pub fn set_deferred(&mut self, deferred: bool, applied: u64) {
        self.send_unsent(applied);
        self.deferred = deferred;
    }

    /// Broadcasts the items kept since the last call, in order; `applied`
    /// is the applied index now (everything up to it is then sent).
    pub fn send_unsent(&mut self, applied: u64) {
        for item in self.unsent.drain(..) {
            let _ = self.tx.send(item);
        }
        self.sent_through = applied;
    }

    /// Whether items wait for [`Feed::send_unsent`].
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// The index up to which every change applied is in the broadcast, the
    /// applied index being `applied`: a receiver that drained its items
    /// has a view complete up to it.
    pub fn sent_through(&self, applied: u64) -> u64 {
        if self.unsent.is_empty() {
            applied
        } else {
            self.sent_through
        }
    }

    /// Forgets all history: the state was replaced wholesale at `index`.
    pub fn reset(&mut self, index: u64) {
        self.history.clear();
        self.history_changes = 0;
        self.history_start = index;
        self.emit(FeedItem::Reset(index));
    }

    /// Tells every live receiver that the node is shutting down (see
    /// [`FeedItem::Closed`]). Subscribers learn of it the way they learn
    /// of entries, instead of each polling a shutdown signal of its own
    /// beside the feed for every entry it sends (6% of a node's time in a
    /// fan-out to 10 000 subscribers).
    pub fn close(&mut self) {
        if !self.closed {
            // What was applied before still goes first, so that `Closed`
            // stays the last item. The index is not needed: nothing asks
            // how complete a closed feed is.
            self.send_unsent(self.sent_through);
            self.closed = true;
            let _ = self.tx.send(FeedItem::Closed);
        }
    }

    /// Whether [`Feed::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// A receiver of everything pushed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.tx.subscribe()
    }

    /// The entries after `since`, if the history still covers them all.
    pub fn since(&self, since: u64) -> Option<Vec<Arc<AppliedEntry>>> {
        if since < self.history_start {
            return None;
        }
        let first = self.history.partition_point(|e| e.index <= since);
        Some(self.history.range(first..).cloned().collect())
    }

    /// How many live receivers there are.
    pub fn receivers(&self) -> usize {
        self.tx.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, n: usize) -> AppliedEntry {
        AppliedEntry::new(
            index,
            (0..n)
                .map(|i| Change {
                    id: format!("m{i}"),
                    before: None,
                    after: None,
                })
                .collect(),
        )
    }

    #[test]
    fn encodes_once_per_filter_and_keeps_a_bounded_number() {
        let cache = EncodeCache::default();
        let calls = std::cell::Cell::new(0);
        let get = |key: &'static [u8]| {
            cache.get_or_encode(&Bytes::from_static(key), || {
                calls.set(calls.get() + 1);
                (!key.is_empty()).then(|| Bytes::from_static(key))
            })
        };
        assert_eq!(get(b"a"), Some(Bytes::from_static(b"a")));
        assert_eq!(get(b"a"), Some(Bytes::from_static(b"a")));
        assert_eq!(get(b""), None);
        assert_eq!(get(b""), None);
        assert_eq!(calls.get(), 2);
        let many: Vec<Bytes> = (0..ENCODE_CACHE_FILTERS + 4)
            .map(|i| Bytes::from(i.to_string()))
            .collect();
        for key in &many {
            assert_eq!(
                cache.get_or_encode(key, || Some(key.clone())),
                Some(key.clone())
            );
        }
        // Keys past the bound are encoded every time, and still right.
        let last = many.last().unwrap();
        let mut again = false;
        cache.get_or_encode(last, || {
            again = true;
            Some(last.clone())
        });
        assert!(again);
    }

    #[test]
    fn resumes_inside_the_window_only() {
        let mut feed = Feed::new(
            10,
            FeedConfig {
                history_changes: 4,
                broadcast_capacity: 8,
            },
        );
        assert_eq!(feed.since(10).unwrap().len(), 0);
        assert!(feed.since(9).is_none());
        feed.push(entry(11, 2));
        feed.push(entry(13, 2));
        let got: Vec<u64> = feed.since(10).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, vec![11, 13]);
        let got: Vec<u64> = feed.since(12).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, vec![13]);
        // A third entry pushes the first out: resuming before 11 is no
        // longer possible, after it still is.
        feed.push(entry(14, 1));
        assert!(feed.since(10).is_none());
        let got: Vec<u64> = feed.since(11).unwrap().iter().map(|e| e.index).collect();
        assert_eq!(got, vec![13, 14]);
        feed.reset(20);
        assert!(feed.since(14).is_none());
        assert!(feed.since(20).unwrap().is_empty());
    }

    #[test]
    fn closing_is_the_last_item_a_receiver_gets() {
        let mut feed = Feed::new(0, FeedConfig::default());
        let mut rx = feed.subscribe();
        feed.push(entry(1, 1));
        assert!(!feed.is_closed());
        feed.close();
        feed.close();
        feed.push(entry(2, 1));
        feed.reset(3);
        assert!(feed.is_closed());
        assert!(matches!(rx.try_recv(), Ok(FeedItem::Entry(e)) if e.index == 1));
        assert!(matches!(rx.try_recv(), Ok(FeedItem::Closed)));
        assert!(rx.try_recv().is_err());
        // A receiver made after the close hears nothing: it must ask.
        let mut late = feed.subscribe();
        feed.push(entry(4, 1));
        assert!(late.try_recv().is_err());
    }

    /// The indexes of entries a receiver has waiting, and what ends them.
    fn waiting(rx: &mut broadcast::Receiver<FeedItem>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|item| match item {
                FeedItem::Entry(e) => e.index.to_string(),
                FeedItem::Reset(i) => format!("reset {i}"),
                FeedItem::Closed => "closed".to_owned(),
            })
            .collect()
    }

    #[test]
    fn a_deferred_feed_sends_what_it_kept_in_order_when_told() {
        let mut feed = Feed::new(0, FeedConfig::default());
        let mut rx = feed.subscribe();
        feed.set_deferred(true, 0);
        feed.push(entry(1, 1));
        feed.reset(2);
        feed.push(entry(3, 1));
        assert!(feed.has_unsent());
        assert_eq!(waiting(&mut rx), Vec::<String>::new());
        // Nothing is complete past what was sent, though 4 is applied.
        assert_eq!(feed.sent_through(4), 0);
        // The history has what apply recorded, sent or not.
        assert_eq!(feed.since(2).map(|e| e.len()), Some(1));

        feed.send_unsent(4);
        assert_eq!(waiting(&mut rx), ["1", "reset 2", "3"]);
        assert!(!feed.has_unsent());
        assert_eq!(feed.sent_through(5), 5);

        // Leaving deferred mode sends what is kept first.
        feed.push(entry(5, 1));
        feed.set_deferred(false, 5);
        feed.push(entry(6, 1));
        assert_eq!(waiting(&mut rx), ["5", "6"]);
    }

    #[test]
    fn a_deferred_feed_with_nobody_subscribed_keeps_nothing() {
        let mut feed = Feed::new(0, FeedConfig::default());
        feed.set_deferred(true, 0);
        feed.push(entry(1, 1));
        assert!(!feed.has_unsent(), "no one to wake, nothing to keep");
        let mut rx = feed.subscribe();
        feed.push(entry(2, 1));
        assert!(feed.has_unsent());
        // Once something is kept, later items queue behind it even with
        // no receiver, so that they stay in order.
        drop(rx);
        feed.push(entry(3, 1));
        rx = feed.subscribe();
        feed.send_unsent(3);
        assert_eq!(waiting(&mut rx), ["2", "3"]);
    }

    #[test]
    fn closing_a_deferred_feed_sends_what_it_kept_before_the_close() {
        let mut feed = Feed::new(0, FeedConfig::default());
        let mut rx = feed.subscribe();
        feed.set_deferred(true, 0);
        feed.push(entry(1, 1));
        feed.close();
        feed.push(entry(2, 1));
        feed.send_unsent(2);
        assert_eq!(waiting(&mut rx), ["1", "closed"]);
    }

    #[test]
    fn a_deferred_feed_keeps_no_more_than_its_receivers_could_lag() {
        let config = FeedConfig {
            history_changes: 100,
            broadcast_capacity: 4,
        };
        let mut feed = Feed::new(0, config);
        feed.set_deferred(true, 0);
        // Sent at once with nobody listening: complete up to it.
        feed.push(entry(1, 1));
        let mut rx = feed.subscribe();
        feed.push(entry(2, 1));
        assert_eq!(feed.sent_through(2), 1);
        for index in 3..=4 {
            feed.push(entry(index, 1));
        }
        assert!(feed.has_unsent());
        // The fourth kept item: apply sends them all itself, in order.
        feed.push(entry(5, 1));
        assert!(!feed.has_unsent());
        assert_eq!(feed.sent_through(5), 5);
        assert_eq!(waiting(&mut rx), ["2", "3", "4", "5"]);
    }
}
