//! openraft's log store on sled: the log (big-endian index keys), the vote,
//! the committed and purged markers.
//!
//! An append is written as plain sled inserts and made durable with one
//! flush (`crate::flush`) before openraft is told it is on disk: openraft
//! hands over every entry it has ready in one call, so many client writes
//! share one flush (group commit). The entries appended last also stay
//! decoded (`crate::recent`), so that openraft's reads of them right after,
//! to replicate and to apply them, skip sled and the decode.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, RaftLogReader, StorageIOError, Vote};

use crate::codec::{decode, encode, index_key, key_index};
use crate::data_dir::DataDir;
use crate::durable_snapshot::DurableSnapshot;
use crate::gate;
use crate::recent::Recent;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG_TREE: &str = "log";
const RAFT_META_TREE: &str = "raft_meta";
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const PURGED_KEY: &str = "last_purged";

/// The Raft log and its metadata, in the node's sled database.
#[derive(Debug, Clone)]
pub struct LogStore {
    /// For flushing, which covers every tree.
    db: sled::Db,
    /// Entries by big-endian index.
    log: sled::Tree,
    /// Vote, committed and purged markers.
    meta: sled::Tree,
    /// When set, purges go no further than a durable snapshot covers (see
    /// `durable_snapshot`). `open_stores` sets it; a log store opened
    /// alone purges what it is told (openraft's conformance suite expects
    /// that of a bare log store).
    covered: Option<DurableSnapshot>,
    /// The entries appended last, decoded, shared with every reader (see
    /// `recent`): openraft reads them back to replicate and apply them.
    recent: Arc<Mutex<Recent>>,
    /// Entries up to this index are purged (the marker says so) but may
    /// still be on disk: appends remove them a few at a time (see `purge`).
    unpurged: Option<u64>,
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

impl LogStore {
    /// Opens the log trees of a data dir.
    pub fn open(dir: &DataDir) -> Result<LogStore, sled::Error> {
        Ok(LogStore {
            db: dir.db.clone(),
            log: dir.db.open_tree(LOG_TREE)?,
            meta: dir.db.open_tree(RAFT_META_TREE)?,
            covered: None,
            recent: Arc::default(),
            unpurged: None,
        })
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
    fn purged_past_a_hole(&self, marker: Option<LogId>) -> Result<Option<LogId>, StorageError> {
        let Some(covered) = self.covered.as_ref().and_then(DurableSnapshot::get) else {
            return Ok(marker);
        };
        if marker.is_some_and(|m| m.index >= covered.index) {
            return Ok(marker);
        }
        let present = self
            .log
            .contains_key(index_key(covered.index))
            .map_err(logs_read)?;
        Ok(if present { marker } else { Some(covered) })
    }

    /// Purges only entries that `covered` says a durable snapshot holds.
    pub fn purging_only_behind(mut self, covered: DurableSnapshot) -> LogStore {
        self.covered = Some(covered);
        self
    }

    /// Removes up to `PURGE_CHUNK` entries that a purge left on disk, as
    /// plain removes that share the append's flush.
    fn remove_some_purged(&mut self) -> Result<(), sled::Error> {
        let Some(upto) = self.unpurged else {
            return Ok(());
        };
        let mut removed = 0;
        for key in self.log.range(..=index_key(upto)).keys().take(PURGE_CHUNK) {
            self.log.remove(key?)?;
            removed += 1;
        }
        if removed < PURGE_CHUNK {
            self.unpurged = None;
        }
        Ok(())
    }

    /// How many entries are on disk, purged ones still there included.
    #[cfg(test)]
    pub(crate) fn entries_on_disk(&self) -> usize {
        self.log.len()
    }

    /// The window of recent entries. Nothing panics while holding it, so a
    /// poisoned lock still holds a consistent window.
    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        decode(&bytes)
            .map(Some)
            .map_err(|e| io_err(subject, ErrorVerb::Read, e))
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(|e| io_err(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn flush(&self, subject: ErrorSubject<NodeId>) -> Result<(), StorageError> {
        let _gate = gate::enter().await;
        crate::flush::flush(&self.db)
            .await
            .map_err(|e| io_err(subject, ErrorVerb::Write, e))?;
        Ok(())
    }

    /// The highest log index present, if any (for status reports). Purged
    /// entries still on disk do not count.
    pub fn last_index(&self) -> Option<u64> {
        let last = self
            .log
            .last()
            .ok()
            .flatten()
            .and_then(|(k, _)| key_index(&k))?;
        let purged: Option<LogId> = self
            .get_meta(PURGED_KEY, ErrorSubject::Store)
            .ok()
            .flatten();
        purged.is_none_or(|p| last > p.index).then_some(last)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(entries) = self.recent().get(&range) {
            return Ok(entries);
        }
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Entries at or below the purge marker may still be on disk while
        // their removal runs (see `purge`); they are not part of the log.
        let purged: Option<LogId> = self.get_meta(PURGED_KEY, ErrorSubject::Store)?;
        let mut entries = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, value) = item.map_err(logs_read)?;
            let entry = decode::<Entry>(&value).map_err(logs_read)?;
            if purged.is_none_or(|p| entry.log_id.index > p.index) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let marker: Option<LogId> = self.get_meta(PURGED_KEY, ErrorSubject::Store)?;
        let last_purged = self.purged_past_a_hole(marker)?;
        let last = match self.log.last().map_err(logs_read)? {
            Some((_, value)) => Some(decode::<Entry>(&value).map_err(logs_read)?.log_id),
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
        self.put_meta(VOTE_KEY, vote, ErrorSubject::Vote)?;
        // A vote must survive a crash, or the node could vote twice in a term.
        self.flush(ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE_KEY, ErrorSubject::Vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: openraft re-derives the commit point if it is lost;
        // saving it only lets a restart apply sooner.
        self.put_meta(COMMITTED_KEY, &committed, ErrorSubject::Store)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_meta::<Option<LogId>>(COMMITTED_KEY, ErrorSubject::Store)?
            .flatten())
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
        let gate = gate::enter().await;
        self.remove_some_purged().map_err(logs_write)?;
        // Plain inserts, not a sled batch. A batch seals sled's write
        // buffer before and after its manifest: a one-entry append then
        // cost three buffer writes, each synced in turn (the commit marker
        // saved since the last flush, the manifest, the entry), where
        // inserts share one buffer and one sync with that marker. The
        // batch's atomicity is not needed: sled recovers its log up to the
        // first torn message, so a crash before the flush below leaves a
        // prefix of these entries, in index order, which is a valid log
        // that openraft was never told was durable.
        for (entry, bytes) in writes {
            let size = bytes.len();
            self.log
                .insert(index_key(entry.log_id.index), bytes)
                .map_err(logs_write)?;
            self.recent().push(entry, size);
        }
        // Only data on disk may be reported durable: an acknowledged write
        // must survive a crash.
        let flushed = crate::flush::flush(&self.db).await;
        drop(gate);
        match flushed {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                callback.log_io_completed(Err(io));
                Err(logs_write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The window first: a reader must not be answered from it with an
        // entry the log no longer holds.
        self.recent().truncate(log_id.index);
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(logs_read)?;
            batch.remove(key);
        }
        {
            let _gate = gate::enter().await;
            self.log.apply_batch(batch).map_err(logs_write)?;
        }
        self.flush(ErrorSubject::Logs).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let log_id = match &self.covered {
            None => log_id,
            Some(covered) => match covered.limit_purge(log_id) {
                Some(limited) => limited,
                None => return Ok(()),
            },
        };
        // The marker goes first: entries at or below it are ignored even if
        // a crash leaves some of them behind.
        self.put_meta(PURGED_KEY, &log_id, ErrorSubject::Store)?;
        self.recent().purge(log_id.index);
        // The entries themselves go later, a few with each append (see
        // `remove_some_purged`). Removing the 5 000-odd entries between two
        // snapshots at once took sled 100-160 ms, and openraft's core
        // awaits `purge`: every write stalled behind it (a 245 ms p99 in
        // one round of 256 writers). Nothing reads at or below the marker
        // (openraft asks only above it, the readers here skip it, a start
        // ignores it), so the entries may stay a while; a crash first
        // leaves them to the next purge.
        self.unpurged = self.unpurged.max(Some(log_id.index));
        Ok(())
    }
}

/// How many purged entries an append removes: at a few hundred appends a
/// second, the entries between two snapshots are gone within a few
/// seconds, and no append carries more than a few dozen removals.
const PURGE_CHUNK: usize = 32;
