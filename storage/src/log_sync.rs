//! The leader's own appends, reported written before they are synced, and
//! the two rules that keep that safe.
//!
//! Raft lets a leader send entries to its followers while it writes them to
//! its own disk, as long as it counts itself toward a commit only once they
//! are durable there (Ongaro's thesis, §10.2.1); etcd works this way.
//! openraft 0.9's core instead waits for its log's sync before it sends the
//! entries on, so a single writer on three nodes waits for two `fdatasync`s
//! in series: the leader's, then a follower's. So the log store reports a
//! leader's own appends as soon as they are written, and a thread of its own
//! (`run_syncer`) syncs them while the core replicates.
//!
//! openraft then counts the leader toward a commit before the entries are
//! durable on it: an entry it calls committed may be durable only on the
//! followers that acknowledged it, fewer than a majority. What keeps that
//! from costing an acknowledged write or a follower's state:
//!
//! - **Apply waits for the sync** (`LogSync::wait_durable`): the state
//!   machine applies an entry only once it is durable in this node's log.
//!   A client's answer, a subscriber's event and a linearizable read all
//!   come after apply, so by then the entry is durable on the leader and on
//!   the followers that acknowledged it: a majority.
//! - **Followers learn of a commit only as far as the leader's log is
//!   durable** (`LogSync::commit_to_send`, used by the node's network): a
//!   follower that applied an entry which only the leader's count made
//!   committed could be overruled by a leader elected without it.
//! - **A leader does not survive its own restart**
//!   (`LogStore::reporting_own_appends_early` steps a saved vote of this
//!   node as leader down to a candidate's): a leader that lost unsynced
//!   entries in a power cut, restored in its term by openraft, would give
//!   their ids to other entries while followers hold the first ones.
//! - **A membership change waits for the last one to be applied** (the
//!   node's membership loop): openraft takes the next change once the last
//!   is committed in its count.
//! - **Every sync of the log goes through one lock that remembers a
//!   failure** (`log_file::Syncs`): after a failed `fsync`, Linux reports
//!   the next one of the file as a success.
//!
//! A commit held back from followers is sent once the sync is done
//! (`LogSync::held_back_durable`, which the node answers with a heartbeat),
//! so an idle follower does not wait for the next write to learn it.
//!
//! Everything else the log writes (a follower's appends, a leader's when
//! it is alone in its membership and has nobody to replicate to, votes,
//! truncations, purges) is synced before it is reported, as before; such a
//! sync makes durable every write before it, the leader's own included.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak, mpsc};

use tokio::sync::{Notify, watch};

use crate::log_file::LogFile;
use crate::types::LogId;

/// One of the leader's own writes, not yet known durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    /// The write's number (see `SyncState::writes`).
    write: u64,
    /// The index of its first entry.
    first: u64,
    /// Its last entry.
    last: LogId,
}

/// What of the leader's own writes is durable: a pure state, changed by the
/// log store and its sync thread and read by apply and the network.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// The leader's own writes not yet known durable, oldest first.
    pending: VecDeque<Pending>,
    /// How many writes the log has made, the leader's own and the synced
    /// ones: a sync makes durable only what was written before it began, so
    /// it settles the writes up to the number it read then.
    writes: u64,
    /// The last of the leader's own entries known durable: how far a
    /// commit may be sent to followers while later ones are pending.
    synced: Option<LogId>,
    /// The highest commit index held back from followers because it was not
    /// yet durable here, until it is and they are sent it.
    held_back: Option<u64>,
    /// Why a sync failed: what was written after the last durable entry is
    /// then unknown, and waiting for it must end in an error.
    failed: Option<String>,
}

impl SyncState {
    /// Counts a write that is synced before it is reported; returns its
    /// number.
    fn count_write(&mut self) -> u64 {
        self.writes += 1;
        self.writes
    }

    /// Records a write of the leader's own entries from `first` to `last`,
    /// not yet synced; returns its number.
    fn written(&mut self, first: u64, last: LogId) -> u64 {
        let write = self.count_write();
        self.pending.push_back(Pending { write, first, last });
        write
    }

    /// A sync that began after write number `through` made it and every
    /// write before it durable. After a failure nothing is settled any
    /// more: the node is stopping, and what a sync reports then is not to
    /// be trusted (see `log_file::Syncs`).
    fn synced_through(&mut self, through: u64) {
        if self.failed.is_some() {
            return;
        }
        while let Some(p) = self.pending.front().copied() {
            if p.write > through {
                break;
            }
            self.synced = Some(p.last);
            self.pending.pop_front();
        }
    }

    /// Records the leader's own entries up to `last`, synced before they
    /// were reported (a lone leader's), as durable: a commit sent once
    /// the leader is no longer alone may go as far as them.
    fn own_synced(&mut self, last: LogId) {
        if self.failed.is_none() && self.synced.is_none_or(|s| s < last) {
            self.synced = Some(last);
        }
    }

    /// Whether the entry at `index` is durable in this node's log: no
    /// pending write holds it or an entry before it.
    fn is_durable(&self, index: u64) -> bool {
        self.pending.front().is_none_or(|p| p.first > index)
    }

    /// The commit to tell followers when the leader's commit is `commit`:
    /// the commit itself if it is durable here, else the leader's last
    /// durable entry of the same term, else none (a follower keeps the
    /// commit it has). Notes a commit held back.
    fn commit_to_send(&mut self, commit: Option<LogId>) -> Option<LogId> {
        let c = commit?;
        if self.is_durable(c.index) {
            return commit;
        }
        self.held_back = Some(self.held_back.map_or(c.index, |h| h.max(c.index)));
        // Pending writes are this leader's own, made in its term, and the
        // commit is at or after the first of them, so it is one of them
        // too. `synced` is in this leader's log if it is of the same term:
        // the log is then the same up to it (a term has one leader, whose
        // log is only appended to).
        self.synced
            .filter(|s| s.leader_id == c.leader_id && s.index < c.index)
    }

    /// Whether a commit held back from followers is now durable; clears it
    /// if so.
    fn take_held_back(&mut self) -> bool {
        match self.held_back {
            Some(h) if self.is_durable(h) => {
                self.held_back = None;
                true
            }
            _ => false,
        }
    }
}

/// What of the log is durable, shared by the log store, its sync thread,
/// the state machine (which waits for it) and the node's network (which
/// sends commits only as far as it).
#[derive(Debug, Clone)]
pub struct LogSync {
    /// The state; waiters are woken on each change.
    state: Arc<watch::Sender<SyncState>>,
    /// Told when a sync makes a commit held back from followers durable.
    /// `held_back_durable` waits on this, not on `state`: every sync
    /// changes `state`, and the task that waits for a held-back commit
    /// (on the node's main runtime) was woken by each of them, from the
    /// sync thread, to find nothing held back most of the time.
    held_back_ready: Arc<Notify>,
    /// Held by a test to keep the sync thread from syncing.
    #[cfg(test)]
    pub(crate) hold: Arc<test_hold::Hold>,
}

impl Default for LogSync {
    fn default() -> Self {
        LogSync {
            state: Arc::new(watch::Sender::new(SyncState::default())),
            held_back_ready: Arc::default(),
            #[cfg(test)]
            hold: Arc::default(),
        }
    }
}

impl LogSync {
    /// See `SyncState::count_write`.
    pub(crate) fn count_write(&self) -> u64 {
        let mut write = 0;
        self.state.send_if_modified(|s| {
            write = s.count_write();
            false
        });
        write
    }

    /// See `SyncState::written`.
    pub(crate) fn written(&self, first: u64, last: LogId) {
        // Nobody waits for a write to be pending: no wake-up.
        self.state.send_if_modified(|s| {
            s.written(first, last);
            false
        });
    }

    /// The number of the last write made.
    fn writes(&self) -> u64 {
        self.state.borrow().writes
    }

    /// Whether every write so far is durable.
    pub fn all_durable(&self) -> bool {
        self.state.borrow().is_durable(u64::MAX)
    }

    /// See `SyncState::synced_through`; wakes whoever waits for it.
    pub(crate) fn synced_through(&self, through: u64) {
        let mut held_back_ready = false;
        self.state.send_if_modified(|s| {
            let before = s.pending.len();
            s.synced_through(through);
            held_back_ready = s.held_back.is_some_and(|h| s.is_durable(h));
            s.pending.len() != before
        });
        if held_back_ready {
            self.held_back_ready.notify_one();
        }
    }

    /// See `SyncState::own_synced`. Wakes nobody: nothing waits for it.
    pub(crate) fn own_synced(&self, last: LogId) {
        self.state.send_if_modified(|s| {
            s.own_synced(last);
            false
        });
    }

    /// Records a failed write or sync of the log; waiters for what was
    /// pending get an error.
    pub(crate) fn fail(&self, error: &std::io::Error) {
        self.state.send_modify(|s| {
            s.failed.get_or_insert_with(|| error.to_string());
        });
    }

    /// Waits until the entry at `index` is durable in this node's log.
    pub async fn wait_durable(&self, index: u64) -> std::io::Result<()> {
        let mut changes = self.state.subscribe();
        let state = changes
            .wait_for(|s| s.is_durable(index) || s.failed.is_some())
            .await
            .map_err(std::io::Error::other)?;
        match &state.failed {
            Some(failed) if !state.is_durable(index) => Err(std::io::Error::other(format!(
                "the log's sync failed before entry {index} was durable: {failed}"
            ))),
            _ => Ok(()),
        }
    }

    /// The commit to send followers in place of `commit` (see
    /// `SyncState::commit_to_send`).
    pub fn commit_to_send(&self, commit: Option<LogId>) -> Option<LogId> {
        let mut send = None;
        // Holding a commit back wakes nobody: `held_back_durable` is woken
        // by the sync that makes it durable.
        self.state.send_if_modified(|s| {
            send = s.commit_to_send(commit);
            false
        });
        send
    }

    /// Waits until a commit that was held back from followers is durable
    /// here; it is then theirs to be told. One waiter at a time (the
    /// node's `held_commits` task).
    pub async fn held_back_durable(&self) {
        loop {
            let mut taken = false;
            self.state.send_if_modified(|s| {
                taken = s.take_held_back();
                false
            });
            if taken {
                return;
            }
            // A notice given since the check above is kept for this wait
            // (`notify_one` stores one), so none is missed; one left from
            // a commit already taken only costs another check.
            self.held_back_ready.notified().await;
        }
    }
}

/// Wakes the sync thread; it ends once every clone is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Syncer {
    /// One wake-up pending is enough: the thread syncs every write made
    /// before it starts a sync.
    wake: mpsc::SyncSender<()>,
}

impl Syncer {
    /// Starts the thread that syncs the leader's own writes to `file`.
    ///
    /// A thread of its own, not a tokio task: `fdatasync` blocks for
    /// hundreds of microseconds, and a blocking task per write would cost a
    /// thread hand-off each; the thread syncs as many writes at once as
    /// came while it synced the last.
    pub(crate) fn start(file: Weak<Mutex<LogFile>>, sync: LogSync) -> std::io::Result<Syncer> {
        let (wake, woken) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("fuddle-log-sync".into())
            .spawn(move || run_syncer(&file, &sync, &woken))?;
        Ok(Syncer { wake })
    }

    /// Asks for a sync of every write made so far.
    pub(crate) fn wake(&self) {
        // Full: a wake-up is pending already, and its sync will cover this.
        let _ = self.wake.try_send(());
    }
}

fn run_syncer(file: &Weak<Mutex<LogFile>>, sync: &LogSync, woken: &mpsc::Receiver<()>) {
    while woken.recv().is_ok() && sync_pending(file, sync) {}
    // The log store is gone (the node is stopping): whatever it left
    // pending will not be synced, and no one may wait for it forever.
    if !sync.all_durable() {
        sync.fail(&std::io::Error::other(
            "the log was closed before its last writes were synced",
        ));
    }
}

/// Syncs the log's active segment and settles the writes made before;
/// false once the log is closed.
fn sync_pending(file: &Weak<Mutex<LogFile>>, sync: &LogSync) -> bool {
    let through = sync.writes();
    if sync.all_durable() {
        return true;
    }
    #[cfg(test)]
    sync.hold.wait();
    let Some(shared) = file.upgrade() else {
        return false;
    };
    // Every write up to `through` went to this segment or to one before
    // it, which was synced whole when this one was started.
    let (segment, syncs) = {
        let file = crate::log_store::lock(&shared);
        (file.active_segment(), file.syncs())
    };
    drop(shared);
    match syncs.sync(&segment) {
        Ok(()) => sync.synced_through(through),
        Err(e) => {
            if let Some(shared) = file.upgrade() {
                crate::log_store::lock(&shared).fail(&e);
            }
            sync.fail(&e);
        }
    }
    true
}

/// A gate a test closes to keep the sync thread from syncing.
#[cfg(test)]
pub(crate) mod test_hold {
    use std::sync::{Arc, Condvar, Mutex, PoisonError};

    use crate::log_store::lock;

    /// Whether the gate is closed, and a signal for when it opens.
    #[derive(Debug, Default)]
    pub(crate) struct Hold {
        /// Closed while true.
        held: Mutex<bool>,
        /// Signalled when the gate opens.
        opened: Condvar,
    }

    /// Keeps the gate closed until dropped.
    pub(crate) struct Held(Arc<Hold>);

    impl Hold {
        /// Closes the gate.
        pub(crate) fn hold(self: &Arc<Self>) -> Held {
            *lock(&self.held) = true;
            Held(Arc::clone(self))
        }

        /// Waits until the gate is open.
        pub(super) fn wait(&self) {
            let mut held = lock(&self.held);
            while *held {
                held = self
                    .opened
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    impl Drop for Held {
        fn drop(&mut self) {
            *lock(&self.0.held) = false;
            self.0.opened.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    #[test]
    fn an_entry_is_durable_once_the_sync_after_its_write_is_done() {
        let mut s = SyncState::default();
        assert!(s.is_durable(5), "nothing pending");
        let first = s.written(6, id(2, 8));
        let second = s.written(9, id(2, 9));
        assert!(s.is_durable(5));
        assert!(!s.is_durable(6));
        assert!(!s.is_durable(9));
        s.synced_through(first);
        assert!(s.is_durable(8));
        assert!(!s.is_durable(9));
        assert_eq!(s.synced, Some(id(2, 8)));
        s.synced_through(second);
        assert!(s.is_durable(9));
        assert!(s.pending.is_empty());
    }

    #[test]
    fn a_synced_write_settles_the_leaders_writes_made_before_it() {
        let mut s = SyncState::default();
        s.written(1, id(2, 1));
        s.written(2, id(2, 3));
        // A vote or truncation synced before it is reported.
        let vote = s.count_write();
        s.written(4, id(2, 4));
        s.synced_through(vote);
        assert!(s.is_durable(3));
        assert!(!s.is_durable(4), "written after the synced write began");
        assert_eq!(s.synced, Some(id(2, 3)));
    }

    #[test]
    fn followers_are_sent_a_commit_only_as_far_as_it_is_durable_here() {
        let mut s = SyncState::default();
        assert_eq!(s.commit_to_send(None), None);
        assert_eq!(s.commit_to_send(Some(id(2, 4))), Some(id(2, 4)));
        let w = s.written(5, id(2, 7));
        // Nothing of this term is durable yet: no commit at all.
        assert_eq!(s.commit_to_send(Some(id(2, 6))), None);
        assert_eq!(s.held_back, Some(6));
        assert!(!s.take_held_back());
        // An earlier commit is durable and goes as it is.
        assert_eq!(s.commit_to_send(Some(id(2, 4))), Some(id(2, 4)));
        s.synced_through(w);
        assert!(s.take_held_back(), "the held-back commit is durable now");
        assert!(!s.take_held_back(), "and taken once");
        let w = s.written(8, id(2, 9));
        assert_eq!(s.commit_to_send(Some(id(2, 9))), Some(id(2, 7)));
        // A durable entry of an earlier term is not named for this term's
        // commit: the logs may differ there.
        s.synced_through(w);
        s.written(10, id(3, 10));
        assert_eq!(s.commit_to_send(Some(id(3, 10))), None);
    }

    #[test]
    fn a_lone_leaders_appends_synced_first_count_for_the_commit_sent_later() {
        let mut s = SyncState::default();
        // Alone: synced before reported, never pending.
        s.count_write();
        s.own_synced(id(2, 5));
        assert_eq!(s.synced, Some(id(2, 5)));
        s.own_synced(id(2, 4));
        assert_eq!(s.synced, Some(id(2, 5)), "never backwards");
        // A follower joined: the next writes are reported early.
        s.written(6, id(2, 6));
        assert_eq!(s.commit_to_send(Some(id(2, 6))), Some(id(2, 5)));
    }

    #[tokio::test]
    async fn waiting_for_an_entry_ends_when_its_sync_is_done_or_fails() {
        let sync = LogSync::default();
        sync.written(1, id(1, 2));
        let waiter = tokio::spawn({
            let sync = sync.clone();
            async move { sync.wait_durable(2).await }
        });
        let held = tokio::spawn({
            let sync = sync.clone();
            async move { sync.held_back_durable().await }
        });
        assert_eq!(sync.commit_to_send(Some(id(1, 2))), None);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        sync.synced_through(sync.writes());
        waiter.await.unwrap().unwrap();
        held.await.unwrap();

        // A sync with nothing held back does not end the wait; the sync
        // that makes a later held-back commit durable does, even when it
        // comes before the wait begins.
        let held = tokio::spawn({
            let sync = sync.clone();
            async move { sync.held_back_durable().await }
        });
        sync.written(3, id(1, 3));
        sync.synced_through(sync.writes());
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "nothing was held back");
        held.abort();
        sync.written(4, id(1, 4));
        assert_eq!(sync.commit_to_send(Some(id(1, 4))), Some(id(1, 3)));
        sync.synced_through(sync.writes());
        tokio::time::timeout(std::time::Duration::from_secs(10), sync.held_back_durable())
            .await
            .expect("the held-back commit is durable");

        sync.written(5, id(1, 5));
        sync.fail(&std::io::Error::other("disk gone"));
        let e = sync.wait_durable(5).await.unwrap_err();
        assert!(e.to_string().contains("disk gone"), "{e}");
        sync.wait_durable(2)
            .await
            .expect("durable before the failure");
    }
}
