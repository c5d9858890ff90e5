//! openraft's log store: the log, the vote and the commit and purge
//! markers, in segment files of our own (`crate::log_file`, in the data
//! dir's `raft-log/` folder).
//!
//! An append is one write and one `fdatasync` before openraft is told it
//! is on disk: openraft hands over every entry it has ready in one call,
//! so many client writes share one sync (group commit). Both run on the
//! Raft worker that appends while syncs are quick, else as blocking work
//! (`crate::sync_place`). A leader's own appends are the
//! exception, unless it is alone in its membership: they are reported once
//! written, and synced by a thread of their own while openraft replicates
//! them (`crate::log_sync`, which says what keeps that safe).
//! The entries appended last also stay decoded (`crate::recent`), so that
//! openraft's reads of them right after, to replicate and to apply them,
//! skip the file and the decode.
//!
//! Data dirs of format 5 and before kept the log in sled (trees `log` and
//! `raft_meta`); opening one moves it into `raft-log/` (see `import_sled`).

use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};

use crate::codec::{decode, encode, key_index};
use crate::data_dir::DataDir;
use crate::durable_snapshot::DurableSnapshot;
use crate::log_file::{LogFile, Syncs};
use crate::log_sync::{LogSync, Syncer};
use crate::recent::Recent;
use crate::sync_place::SyncPlace;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// The data dir's folder of log segments.
const LOG_FOLDER: &str = "raft-log";

/// Where format 5 and earlier kept the log and its markers, in sled.
const OLD_LOG_TREE: &str = "log";
const OLD_META_TREE: &str = "raft_meta";
const OLD_VOTE_KEY: &str = "vote";
const OLD_COMMITTED_KEY: &str = "committed";
const OLD_PURGED_KEY: &str = "last_purged";

/// The Raft log and its markers, in the node's data dir.
#[derive(Debug, Clone)]
pub struct LogStore {
    /// The segment files, shared with every reader (openraft's log readers
    /// are clones of this store).
    file: Arc<Mutex<LogFile>>,
    /// When set, purges go no further than a durable snapshot covers (see
    /// `durable_snapshot`). `open_stores` sets it; a log store opened
    /// alone purges what it is told (openraft's conformance suite expects
    /// that of a bare log store).
    covered: Option<DurableSnapshot>,
    /// The entries appended last, decoded, shared with every reader (see
    /// `recent`): openraft reads them back to replicate and apply them.
    recent: Arc<Mutex<Recent>>,
    /// What of the log is durable: the leader's own appends are reported
    /// before they are (see `log_sync`).
    sync: LogSync,
    /// Wakes the thread that syncs the leader's own appends.
    syncer: Syncer,
    /// This node's id, when its own appends as a leader may be reported
    /// before their sync (`reporting_own_appends_early`); a log store
    /// opened alone syncs every append first.
    own: Option<NodeId>,
    /// Whether the vote last saved is this node's as an established leader:
    /// the appends are then its own. A node appends another leader's
    /// entries only after saving that leader's vote.
    leading: Arc<AtomicBool>,
    /// Whether opening stepped the node down (see `stepped_down`).
    stepped_down: bool,
    /// Whether this node's membership holds no other node (see
    /// `alone`), set by the node.
    alone: Arc<AtomicBool>,
    /// Where the appends synced before they are reported run their sync
    /// (see `sync_place`).
    place: Arc<SyncPlace>,
}

/// Syncs `segment`, telling `place` how long it took since `started` (the
/// write before it included, when that ran on the worker and fitted in
/// the active segment): every sync the log store waits for counts, so
/// that a slow disk keeps the next syncs off the workers (see
/// `sync_place`).
fn timed_sync(
    syncs: &Syncs,
    segment: &File,
    place: &SyncPlace,
    started: Instant,
) -> io::Result<()> {
    let synced = syncs.sync(segment);
    place.took(started, Instant::now());
    synced
}

/// Tells a log store whether its node is alone in its membership (see
/// `LogStore::alone`).
#[derive(Debug, Clone)]
pub struct Alone(Arc<AtomicBool>);

impl Alone {
    /// Sets whether the node's membership holds no other node.
    pub fn set(&self, alone: bool) {
        self.0.store(alone, Ordering::Release);
    }
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_read(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn logs_write(e: impl std::error::Error + 'static) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

/// The segment files or the window, behind their lock. Nothing panics
/// while holding either (none is expected), and a panic would leave at
/// worst a record written and not yet counted, which the next start
/// replays: a poisoned lock still guards a usable state.
pub(crate) fn lock<T>(shared: &Mutex<T>) -> MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sled_io(e: sled::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl LogStore {
    /// Opens the log of a data dir, creating it on a first start and moving
    /// a log kept in sled by an earlier format into it.
    pub fn open(dir: &DataDir) -> io::Result<LogStore> {
        Self::open_folder(dir).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                io::Error::new(
                    e.kind(),
                    format!(
                        "data dir {} is corrupt: its Raft log cannot be read: {e}; restore the \
                         whole data dir from a backup, or remove the node from the cluster \
                         and start it on a new data dir",
                        dir.path.display()
                    ),
                )
            } else {
                io::Error::new(
                    e.kind(),
                    format!("data dir {}: its Raft log: {e}", dir.path.display()),
                )
            }
        })
    }

    fn open_folder(dir: &DataDir) -> io::Result<LogStore> {
        let folder = dir.path.join(LOG_FOLDER);
        let created = dir.raft_log_created().map_err(io::Error::other)?;
        let file = if created {
            if import_pending(dir)? {
                // An import finished (the marker is durable) and a crash
                // came before sled's old trees were dropped for good: the
                // folder is the log now, and must never be made again from
                // what is left of those trees.
                drop_old_trees(dir)?;
            }
            if !LogFile::exists(&folder)? {
                // Starting with no log after having had one could vote
                // twice in a term, or lose acknowledged writes.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the folder {LOG_FOLDER}/ is missing or empty"),
                ));
            }
            LogFile::open(&folder)?
        } else if import_pending(dir)? {
            import_sled(dir, &folder)?
        } else {
            let file = LogFile::open(&folder)?;
            dir.mark_raft_log_created().map_err(io::Error::other)?;
            file
        };
        let file = Arc::new(Mutex::new(file));
        let sync = LogSync::default();
        let syncer = Syncer::start(Arc::downgrade(&file), sync.clone())?;
        Ok(LogStore {
            file,
            covered: None,
            recent: Arc::default(),
            sync,
            syncer,
            own: None,
            leading: Arc::default(),
            stepped_down: false,
            alone: Arc::default(),
            place: Arc::default(),
        })
    }

    /// Reports the appends this node makes as an established leader before
    /// they are synced (see `log_sync`; whoever applies the log must wait
    /// for `sync`, and whoever sends commits to followers must ask it).
    ///
    /// A saved vote of this node as leader is stepped down to a
    /// candidate's vote of the same term (`stepped_down`). openraft would
    /// restore the node as that term's leader, and a leader that reported
    /// entries before syncing them may have lost them in a power cut while
    /// its followers kept them: it would then give their log ids, in the
    /// same term, to other entries, and followers take an entry whose id
    /// they hold for the same entry. As a candidate it never appends in
    /// that term again; it leads again only after an election, in a new
    /// term. (It may still vote in that term for a candidate with a higher
    /// node id, as openraft orders votes; that candidate's entries carry
    /// its own id in their log ids, so they never pass for this node's.)
    pub fn reporting_own_appends_early(mut self, own: NodeId) -> io::Result<LogStore> {
        self.own = Some(own);
        let vote: Option<Vote<NodeId>> =
            Self::stored(self.file().vote(), ErrorSubject::Vote).map_err(io::Error::other)?;
        if let Some(vote) =
            vote.filter(|v| v.is_committed() && v.leader_id().voted_for() == Some(own))
        {
            let candidate = Vote::new(vote.leader_id().term, own);
            let bytes = encode(&candidate).map_err(io::Error::other)?;
            let (segment, syncs) = {
                let mut file = self.file();
                (file.set_vote(bytes)?, file.syncs())
            };
            syncs.sync(&segment)?;
            self.stepped_down = true;
        }
        Ok(self)
    }

    /// A handle to tell this store whether its node is alone in its
    /// membership. A leader with no other node has nobody to replicate to
    /// while its own appends are synced (see `log_sync`), so it syncs
    /// them before reporting them, which spares the hand-off to the sync
    /// thread and back. Either way is safe at any moment; the node sets it
    /// from openraft's metrics, a little late after a membership change.
    pub fn alone(&self) -> Alone {
        Alone(Arc::clone(&self.alone))
    }

    /// Whether opening stepped this node down from leading the term of its
    /// saved vote (see `reporting_own_appends_early`): it should stand for
    /// election at once rather than wait for a timeout.
    pub fn stepped_down(&self) -> bool {
        self.stepped_down
    }

    /// What of the log is durable.
    pub fn sync(&self) -> LogSync {
        self.sync.clone()
    }

    /// Notes whether `vote`, just saved, makes this node's appends its own.
    fn note_vote(&self, vote: Option<&Vote<NodeId>>) {
        let leading = vote.is_some_and(|v| {
            v.is_committed() && self.own.is_some() && v.leader_id().voted_for() == self.own
        });
        self.leading.store(leading, Ordering::Release);
    }

    /// Where openraft should take the log to start: after the purge marker,
    /// or after the durable snapshot when the log has a hole it covers.
    ///
    /// The hole comes from a purge cut short (see `purge`): openraft purges
    /// the log an installed snapshot covers while the install is still
    /// being made durable, so the purge goes no further than the previous
    /// durable snapshot, or nowhere. openraft believes it done and appends
    /// the entries after the snapshot; it asks for no purge again before its
    /// next snapshot. After a crash in between, the log holds the old
    /// entries, none from them up to the snapshot, then the new ones, and a
    /// start that read it from the marker would stop at the hole ("try to
    /// get log at index N but got None": seen once in the
    /// `follower_sigkill_restart_after_log_purge` scenario). The snapshot
    /// holds everything up to its last entry, so such a log is purged as far
    /// as the snapshot; the old entries go with the next purge. An installed
    /// snapshot's own last entry never reached this log (it is why the
    /// snapshot was sent), so its absence is the sign; a snapshot this node
    /// built covers only entries it appended, and finds it present.
    fn purged_past_a_hole(&self, marker: Option<LogId>) -> Option<LogId> {
        let Some(covered) = self.covered.as_ref().and_then(DurableSnapshot::get) else {
            return marker;
        };
        if marker.is_some_and(|m| m.index >= covered.index) {
            return marker;
        }
        if self.file().contains(covered.index) {
            marker
        } else {
            Some(covered)
        }
    }

    /// Purges only entries that `covered` says a durable snapshot holds.
    pub fn purging_only_behind(mut self, covered: DurableSnapshot) -> LogStore {
        self.covered = Some(covered);
        self
    }

    /// Until when syncs are handed off after a slow one (see
    /// `sync_place`).
    #[cfg(test)]
    pub(crate) fn handed_off_until(&self) -> Option<Instant> {
        self.place.handed_off_until()
    }

    /// Forgets any slow sync (see `SyncPlace::forget_slow_syncs`).
    #[cfg(test)]
    pub(crate) fn forget_slow_syncs(&self) {
        self.place.forget_slow_syncs();
    }

    /// Makes the log's next `count` syncs take `delay` longer.
    #[cfg(test)]
    pub(crate) fn slow_next_syncs(&self, count: u32, delay: std::time::Duration) {
        self.file().syncs().slow_next(count, delay);
    }

    /// Makes the log's next sync fail.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&self) {
        self.file().syncs().fail_next();
    }

    /// How many syncs of the log were asked for.
    #[cfg(test)]
    pub(crate) fn sync_calls(&self) -> u64 {
        self.file().syncs().calls()
    }

    /// How many segment files are on disk.
    #[cfg(test)]
    pub(crate) fn segments_on_disk(&self) -> usize {
        self.file().segment_count()
    }

    /// The window of recent entries.
    fn recent(&self) -> MutexGuard<'_, Recent> {
        lock(&self.recent)
    }

    /// The segment files.
    fn file(&self) -> MutexGuard<'_, LogFile> {
        lock(&self.file)
    }

    /// Runs `write` on the log and syncs the segment it wrote to, as
    /// blocking work (a write may start a segment, a purge delete some:
    /// syscalls that may take long). The sync makes the leader's own
    /// appends before it durable too.
    async fn write_durably(
        &self,
        write: impl FnOnce(&mut LogFile) -> io::Result<Arc<File>> + Send + 'static,
    ) -> io::Result<()> {
        let this_write = self.sync.count_write();
        self.write_durably_counted(this_write, write).await
    }

    /// `write_durably` of a write already counted as `this_write`.
    async fn write_durably_counted(
        &self,
        this_write: u64,
        write: impl FnOnce(&mut LogFile) -> io::Result<Arc<File>> + Send + 'static,
    ) -> io::Result<()> {
        let shared = Arc::clone(&self.file);
        let place = Arc::clone(&self.place);
        let done = crate::flush::blocking(move || {
            let (segment, syncs) = {
                let mut file = lock(&shared);
                (write(&mut file)?, file.syncs())
            };
            // The sync alone: a write here may start a segment, and that
            // segment's own syncs would count as one slow sync.
            let started = Instant::now();
            timed_sync(&syncs, &segment, &place, started).inspect_err(|e| lock(&shared).fail(e))
        })
        .await
        .and_then(|done| done);
        self.settle(this_write, done)
    }

    /// An append synced before it is reported (a follower's, or a lone
    /// leader's): written and synced on the calling thread when it fits
    /// in the active segment and the sync may run there (see
    /// `sync_place`), else as blocking work.
    ///
    /// `own` is the last entry when they are the leader's own: durable,
    /// they count for the commits sent to followers (see
    /// `LogSync::own_synced`).
    async fn append_durably(
        &self,
        write: impl FnOnce(&mut LogFile) -> io::Result<Arc<File>> + Send + 'static,
        size: (usize, usize),
        own: Option<LogId>,
    ) -> io::Result<()> {
        let this_write = self.sync.count_write();
        let started = Instant::now();
        let written = if crate::flush::can_block_in_place() {
            self.write_here(write, size, started)
        } else {
            Err(write)
        };
        let done = match written {
            Ok(written) => {
                let done = written.and_then(|segment| {
                    let syncs = self.file().syncs();
                    timed_sync(&syncs, &segment, &self.place, started)
                        .inspect_err(|e| self.file().fail(e))
                });
                self.settle(this_write, done)
            }
            Err(write) => self.write_durably_counted(this_write, write).await,
        };
        if let (Ok(()), Some(last)) = (&done, own) {
            self.sync.own_synced(last);
        }
        done
    }

    /// Settles the writes up to `write` once a sync made them durable, or
    /// stops the log after a failure: what reached the disk is then unknown,
    /// so the log takes no more writes (`LogFile::fail`, set where the
    /// failure happened) and nothing pending may be reported durable.
    fn settle(&self, write: u64, done: io::Result<()>) -> io::Result<()> {
        match &done {
            Ok(()) => self.sync.synced_through(write),
            Err(e) => self.sync.fail(e),
        }
        done
    }

    /// Writes the leader's own entries `first..=last` without syncing them,
    /// and has the sync thread sync them (see `log_sync`). The write runs
    /// on the calling thread: it goes to the page cache, which takes a few
    /// microseconds, where handing it to a blocking thread costs a thread
    /// hand-off (tens of microseconds here). Only under memory pressure
    /// (the kernel throttling writers of dirty pages) does it block long;
    /// such a write counts as a slow sync (see `sync_place`), and the
    /// writes after it are handed off for a while too. One that starts a
    /// new segment (syncs, a file's creation) runs as blocking work.
    async fn write_own(
        &self,
        write: impl FnOnce(&mut LogFile) -> io::Result<Arc<File>> + Send + 'static,
        size: (usize, usize),
        first: u64,
        last: LogId,
    ) -> io::Result<()> {
        let written = self.write_unsynced(write, size).await;
        if let Err(e) = &written {
            // The log takes no more writes (`LogFile::write` failed it);
            // what is pending will never be synced.
            self.sync.fail(e);
            return written;
        }
        self.sync.written(first, last);
        self.syncer.wake();
        Ok(())
    }

    /// Runs `write`, of `size` (records, bytes), on the calling thread if
    /// it fits in the active segment and the disk has been quick (see
    /// `sync_place`; a slow write counts as a slow sync), else as blocking
    /// work; syncs nothing.
    async fn write_unsynced<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut LogFile) -> io::Result<T> + Send + 'static,
        size: (usize, usize),
    ) -> io::Result<()> {
        let started = Instant::now();
        let write = match self.write_here(write, size, started) {
            Ok(written) => {
                self.place.took(started, Instant::now());
                return written.map(drop);
            }
            Err(write) => write,
        };
        let shared = Arc::clone(&self.file);
        crate::flush::blocking(move || write(&mut lock(&shared)).map(drop))
            .await
            .and_then(|written| written)
    }

    /// Runs `write` on the calling thread if the disk has been quick at
    /// `now` (see `sync_place`) and it fits in the active segment, or gives
    /// it back.
    fn write_here<T, W: FnOnce(&mut LogFile) -> io::Result<T>>(
        &self,
        write: W,
        (records, bytes): (usize, usize),
        now: Instant,
    ) -> Result<io::Result<T>, W> {
        if !self.place.on_worker(now) {
            return Err(write);
        }
        let mut file = self.file();
        if file.fits(records, bytes) {
            Ok(write(&mut file))
        } else {
            Err(write)
        }
    }

    /// The highest log index present, if any (for status reports).
    pub fn last_index(&self) -> Option<u64> {
        self.file().last_index()
    }

    fn stored<T: serde::de::DeserializeOwned>(
        bytes: Option<&[u8]>,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        bytes
            .map(decode)
            .transpose()
            .map_err(|e| io_err(subject, ErrorVerb::Read, e))
    }
}

/// Whether the data dir still keeps a log in sled (format 5 and before).
fn import_pending(dir: &DataDir) -> io::Result<bool> {
    for name in [OLD_LOG_TREE, OLD_META_TREE] {
        let exists = dir
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == name.as_bytes());
        if exists && !dir.db.open_tree(name).map_err(sled_io)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Moves a log kept in sled into a new `raft-log/` folder, marks the log
/// created, then drops the sled trees. A crash before the mark leaves the
/// sled trees, and the next open starts over: the folder is made anew from
/// them.
fn import_sled(dir: &DataDir, folder: &Path) -> io::Result<LogFile> {
    if folder.exists() {
        // Left by an import that a crash cut short (the marker that it
        // finished is not set): made again from scratch.
        std::fs::remove_dir_all(folder)?;
    }
    let mut file = LogFile::open(folder)?;
    let meta = dir.db.open_tree(OLD_META_TREE).map_err(sled_io)?;
    let log = dir.db.open_tree(OLD_LOG_TREE).map_err(sled_io)?;
    if let Some(vote) = meta.get(OLD_VOTE_KEY).map_err(sled_io)? {
        file.set_vote(vote.to_vec())?;
    }
    if let Some(committed) = meta.get(OLD_COMMITTED_KEY).map_err(sled_io)? {
        file.set_committed(committed.to_vec())?;
    }
    let mut purged_index = None;
    if let Some(marker) = meta.get(OLD_PURGED_KEY).map_err(sled_io)? {
        let purged: LogId = decode(&marker).map_err(io::Error::other)?;
        purged_index = Some(purged.index);
        file.purge(purged.index, marker.to_vec())?;
    }
    let mut batch = Vec::new();
    for item in log.iter() {
        let (key, value) = item.map_err(sled_io)?;
        let index = key_index(&key).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "a log key is not an index")
        })?;
        // Format 5 left purged entries on disk for later appends to remove.
        if purged_index.is_some_and(|p| index <= p) {
            continue;
        }
        batch.push((index, value));
        if batch.len() == 1024 {
            file.append(batch.iter().map(|(i, v)| (*i, v.as_ref())))?;
            batch.clear();
        }
    }
    let segment = file.append(batch.iter().map(|(i, v)| (*i, v.as_ref())))?;
    file.syncs().sync(&segment)?;
    dir.mark_raft_log_created().map_err(io::Error::other)?;
    drop_old_trees(dir)?;
    Ok(file)
}

/// Drops the sled trees that held the log before format 6, durably.
fn drop_old_trees(dir: &DataDir) -> io::Result<()> {
    dir.db.drop_tree(OLD_LOG_TREE).map_err(sled_io)?;
    dir.db.drop_tree(OLD_META_TREE).map_err(sled_io)?;
    dir.flush_durably().map_err(io::Error::other)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(entries) = self.recent().get(&range) {
            return Ok(entries);
        }
        let stored = self.file().read_range(range).map_err(logs_read)?;
        stored
            .iter()
            .map(|bytes| decode::<Entry>(bytes).map_err(logs_read))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let marker: Option<LogId> = Self::stored(self.file().purged(), ErrorSubject::Store)?;
        let last_purged = self.purged_past_a_hole(marker);
        let last_index = self.file().last_index();
        let last = match last_index {
            Some(index) => {
                let mut reader = self.clone();
                reader
                    .try_get_log_entries(index..=index)
                    .await?
                    .pop()
                    .map(|e| e.log_id)
            }
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.max(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = encode(vote).map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        // A vote must survive a crash, or the node could vote twice in a term.
        self.write_durably(move |file| file.set_vote(bytes))
            .await
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.note_vote(Some(vote));
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Self::stored(self.file().vote(), ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Written (one small `pwrite`) but not synced: openraft re-derives
        // the commit point if a power cut loses it. Written at once, not
        // with a later record, because a start applies the log only as far
        // as the marker, and a node restarted after a kill must not serve a
        // state older than the one it answered before (openraft 0.9
        // re-commits at once only as a restored leader, which a node no
        // longer is: see `reporting_own_appends_early`). It is written
        // before openraft applies, so before any answer.
        let bytes =
            encode(&committed).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))?;
        let size = (1, bytes.len());
        self.write_unsynced(move |file| file.set_committed(bytes), size)
            .await
            .map_err(logs_write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(Self::stored::<Option<LogId>>(self.file().committed(), ErrorSubject::Store)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut writes = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(logs_write)?;
            writes.push((entry, bytes));
        }
        let (Some(first), Some(last)) = (writes.first(), writes.last()) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let (first, last) = (first.0.log_id.index, last.0.log_id);
        let size = (
            writes.len(),
            writes.iter().map(|(_, bytes)| bytes.len()).sum(),
        );
        let recent = Arc::clone(&self.recent);
        let write = move |file: &mut LogFile| {
            let segment = file.append(
                writes
                    .iter()
                    .map(|(entry, bytes)| (entry.log_id.index, bytes.as_slice())),
            )?;
            // The window changes with the log, under the same lock, so a
            // reader never finds in it an entry the log does not hold.
            let mut recent = lock(&recent);
            for (entry, bytes) in writes {
                recent.push(entry, bytes.len());
            }
            Ok(segment)
        };
        let leading = self.leading.load(Ordering::Acquire);
        let written = if leading && !self.alone.load(Ordering::Acquire) {
            self.write_own(write, size, first, last).await
        } else {
            // Only data on disk may be reported durable: an acknowledged
            // write must survive a crash. A lone leader has no followers
            // to replicate to while it syncs, so reporting early would
            // only add the sync thread's hand-off.
            self.append_durably(write, size, leading.then_some(last))
                .await
        };
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(logs_write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let recent = Arc::clone(&self.recent);
        self.write_durably(move |file| {
            // The window with the log, under its lock: a reader must not be
            // answered from it with an entry the log no longer holds.
            lock(&recent).truncate(log_id.index);
            file.truncate(log_id.index)
        })
        .await
        .map_err(logs_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log_id = match &self.covered {
            None => log_id,
            Some(covered) => match covered.limit_purge(log_id) {
                Some(limited) => limited,
                None => return Ok(()),
            },
        };
        let marker = encode(&log_id).map_err(logs_write)?;
        let recent = Arc::clone(&self.recent);
        self.write_durably(move |file| {
            lock(&recent).purge(log_id.index);
            file.purge(log_id.index, marker)
        })
        .await
        .map_err(logs_write)?;
        // The purge record is on disk before the segments it frees go: a
        // start that found them gone without it would see a log with a
        // hole at its head.
        let shared = Arc::clone(&self.file);
        crate::flush::blocking(move || lock(&shared).delete_dead_segments())
            .await
            .and_then(|deleted| deleted)
            .map_err(logs_write)
    }
}
