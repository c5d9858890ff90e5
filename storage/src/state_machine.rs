//! openraft's state machine: the registry in memory, made durable by
//! snapshots and the log.
//!
//! The state lives only in memory (in [`Registry`], where the node reads
//! it). Applying touches no disk: every applied entry is already durable in
//! the log, and openraft purges the log only behind a snapshot that is
//! durable. A restart loads the current snapshot and openraft re-applies
//! the committed log after it (`StorageHelper::get_initial_state`), which
//! gives the same state because apply is deterministic.
//!
//! Until format 3 the state machine also wrote every changed member and
//! session to sled's `sm` tree: about a fifth of each node's work per write
//! (a leader profile at 256 writers: 12% in sled's `apply_batch` alone, more
//! in its I/O pool), and sled's cache of every member. Opening such a data
//! dir turns that stored state into a snapshot (see `move_stored_state`).
//!
//! A snapshot is built when openraft's policy asks (entries since the last
//! one) and when the node asks because many commands were applied since
//! the last one ([`StateMachineStore::commands_since_snapshot`]): entries
//! hold up to a thousand commands each, so counting entries alone would let
//! a restart replay far more than it should.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, StorageIOError,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::command::Response;
use crate::data_dir::DataDir;
use crate::durable_snapshot::DurableSnapshot;
use crate::feed::{AppliedEntry, FeedConfig};
use crate::gate;
use crate::log_sync::LogSync;
use crate::member::Member;
use crate::registry::{AppliedCounts, Registry};
use crate::session::Session;
use crate::snapshot_files;
use crate::state::RegistryState;
use crate::state_copy::StateCopy;
use crate::types::{
    Entry, LogId, NodeId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SM_TREE: &str = "sm";
/// Before format 3: the tree holding the whole current snapshot and the
/// snapshot sequence. Opening such a data dir moves the snapshot to a file
/// and drops the tree (while it exists, sled loads the old snapshot with
/// the tree's page).
const OLD_SNAPSHOT_TREE: &str = "snapshot";
/// The sequence that names snapshot files and ids.
const SNAPSHOT_SEQ_TREE: &str = "snapshot_seq";
/// Before format 3 the whole snapshot was this key's value; opening such a
/// data dir moves it to a file.
const OLD_CURRENT_SNAPSHOT_KEY: &str = "current";
/// The current snapshot's [`SnapshotPointer`], in the `sm` tree: written
/// once the snapshot's file is durable, it is what makes the snapshot
/// current.
const SNAPSHOT_POINTER_KEY: &[u8] = b"xsnapshot";
const SNAPSHOT_SEQ_KEY: &str = "seq";

/// Key prefixes in the `sm` tree before format 4 (read only to move the
/// state they held into a snapshot).
const MEMBER_PREFIX: u8 = b'm';
const SESSION_PREFIX: u8 = b's';
const LAST_APPLIED_KEY: &[u8] = b"xlast_applied";
const MEMBERSHIP_KEY: &[u8] = b"xmembership";

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snapshot_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)).into()
}

/// Runs snapshot work that takes long (a file's I/O, encoding or decoding
/// a large state) on a blocking thread, off the Raft runtime's workers (one,
/// on two cores); a panic in it is a snapshot error of kind `verb`.
async fn off_the_workers<T: Send + 'static>(
    verb: ErrorVerb,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| snapshot_err(verb, std::io::Error::other(e)))
}

/// What a snapshot holds (borrowed, for building without a copy). The
/// state is a [`RegistryState`] or a [`StateCopy`] of one, which encode
/// alike.
#[derive(Serialize)]
struct SnapshotContentRef<'a, S> {
    last_applied: &'a Option<LogId>,
    membership: &'a StoredMembership,
    state: &'a S,
}

/// What a snapshot holds. Field order must match [`SnapshotContentRef`].
#[derive(Deserialize)]
struct SnapshotContent {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: RegistryState,
}

impl SnapshotContent {
    /// Decodes snapshot data and checks it against its metadata: the
    /// content names the log id and membership it was built at, and a
    /// mismatch means a corrupt or mixed-up file or transfer.
    fn decode(data: &[u8], meta: &SnapshotMeta) -> Result<SnapshotContent, StorageError> {
        let mut content: SnapshotContent =
            decode(data).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        if content.last_applied != meta.last_log_id || content.membership != meta.last_membership {
            let e = std::io::Error::other("snapshot content does not match its metadata");
            return Err(snapshot_err(ErrorVerb::Read, e));
        }
        // Snapshots are encoded from a copy that takes each key from its
        // value (`state_copy`): a snapshot keyed otherwise is not ours.
        let keyed_by_id = content.state.members.iter().all(|(id, m)| *id == m.spec.id)
            && content
                .state
                .sessions
                .iter()
                .all(|(id, s)| **id == *s.client_id);
        if !keyed_by_id {
            let e =
                std::io::Error::other("snapshot content keys a member or session by another id");
            return Err(snapshot_err(ErrorVerb::Read, e));
        }
        content.state.rebuild_session_members();
        Ok(content)
    }
}

/// A snapshot's id: the log id it was built at and a sequence number, so
/// two snapshots at the same log id still differ.
fn snapshot_id(last_applied: Option<LogId>, seq: u64) -> String {
    match last_applied {
        Some(l) => format!("{}-{}-{seq}", l.leader_id, l.index),
        None => format!("0-0-{seq}"),
    }
}

/// The last snapshot as stored before format 3 (read only to move it).
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The current snapshot: its metadata, and the file holding its data (see
/// `snapshot_files`).
#[derive(Serialize, Deserialize)]
struct SnapshotPointer {
    meta: SnapshotMeta,
    file: String,
}

impl SnapshotPointer {
    /// Its stored form.
    fn encoded(&self) -> Result<Vec<u8>, StorageError> {
        encode(self).map_err(|e| snapshot_err(ErrorVerb::Write, e))
    }
}

/// Raft-only parts of the applied state, beside the registry.
#[derive(Debug, Clone, Default)]
struct RaftApplied {
    /// The log id of the last applied entry.
    last_applied: Option<LogId>,
    /// The last membership applied.
    membership: StoredMembership,
    /// Commands applied since the state the last snapshot holds (counted
    /// from the start for a store opened without one): what a restart would
    /// re-apply.
    commands_since_snapshot: u64,
}

/// The state machine store handed to openraft.
#[derive(Debug, Clone)]
pub struct StateMachineStore {
    /// Where the node reads the state.
    registry: Arc<Registry>,
    /// Raft's view of what is applied; a mutex because the snapshot builder
    /// runs beside apply. Its `last_applied` and `membership` change (after
    /// opening) only under the registry's write lock, so a holder of its
    /// read lock sees them fixed.
    raft: Arc<std::sync::Mutex<RaftApplied>>,
    /// For durable snapshot writes.
    db: sled::Db,
    /// sled's data file, synced after each flush (see `flush`).
    db_file: Arc<std::fs::File>,
    /// The pointer to the current snapshot (and, before format 4, the
    /// stored state).
    sm: sled::Tree,
    /// The sequence that names snapshot files (the pointer to the current
    /// one is in `sm`).
    snapshot_seq: sled::Tree,
    /// Where snapshot files are.
    snapshot_folder: std::path::PathBuf,
    /// Held while a snapshot is made current and while the current one is
    /// read (see `commit_snapshot`).
    snapshot_io: Arc<tokio::sync::Mutex<()>>,
    /// What the current durable snapshot covers, for the log store's purges.
    durable: DurableSnapshot,
    /// What of the log is durable: an entry is applied only once it is
    /// (see `log_sync`). Unset for a state machine opened alone.
    log_sync: Option<LogSync>,
}

impl StateMachineStore {
    /// Loads the state of a data dir as of its current snapshot; openraft
    /// re-applies the committed log after it.
    pub fn open(dir: &DataDir, feed: FeedConfig) -> Result<StateMachineStore, StorageError> {
        let read = |e: sled::Error| sm_err(ErrorVerb::Read, e);
        let sm = dir.db.open_tree(SM_TREE).map_err(read)?;
        let snapshot_seq = dir.db.open_tree(SNAPSHOT_SEQ_TREE).map_err(read)?;
        let mut store = StateMachineStore {
            registry: Registry::new(RegistryState::default(), 0, feed),
            raft: Arc::new(std::sync::Mutex::new(RaftApplied::default())),
            db: dir.db.clone(),
            db_file: Arc::clone(&dir.db_file),
            sm,
            snapshot_seq,
            snapshot_folder: snapshot_files::folder(&dir.path),
            snapshot_io: Arc::new(tokio::sync::Mutex::new(())),
            durable: DurableSnapshot::default(),
            log_sync: None,
        };
        store.move_old_snapshot()?;
        store.move_stored_state()?;
        let pointer = store.pointer()?;
        if let Some(pointer) = &pointer {
            let data = snapshot_files::read(&store.snapshot_folder, &pointer.file)
                .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
            let content = SnapshotContent::decode(&data, &pointer.meta)?;
            drop(data);
            let index = content.last_applied.map_or(0, |l| l.index);
            store.registry = Registry::new(content.state, index, feed);
            *store.raft() = RaftApplied {
                last_applied: content.last_applied,
                membership: content.membership,
                commands_since_snapshot: 0,
            };
        }
        store
            .durable
            .advance(pointer.as_ref().and_then(|p| p.meta.last_log_id));
        let current = pointer.map(|p| p.file);
        snapshot_files::remove_all_but(&store.snapshot_folder, current.as_deref());
        Ok(store)
    }

    /// Before format 4 the applied state was stored member by member in the
    /// `sm` tree, often newer than the current snapshot. Writes that state
    /// as the current snapshot and removes it from the tree, in one sled
    /// batch with the new pointer, so a crash halfway leaves the old layout
    /// (moved again at the next start) or the new one.
    fn move_stored_state(&self) -> Result<(), StorageError> {
        let read = |e: sled::Error| sm_err(ErrorVerb::Read, e);
        let Some(last_applied) = self.sm.get(LAST_APPLIED_KEY).map_err(read)? else {
            return Ok(());
        };
        let last_applied: Option<LogId> =
            decode(&last_applied).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let membership: StoredMembership = match self.sm.get(MEMBERSHIP_KEY).map_err(read)? {
            Some(v) => decode(&v).map_err(|e| sm_err(ErrorVerb::Read, e))?,
            None => StoredMembership::default(),
        };
        let mut batch = sled::Batch::default();
        batch.remove(LAST_APPLIED_KEY);
        batch.remove(MEMBERSHIP_KEY);
        // Never true as format 3 wrote them (a snapshot was built from, or
        // installed with, the stored state), but a snapshot that already
        // holds as much must not be replaced by an older state: then the
        // stored state is only removed.
        let snapshotted = self.pointer()?.and_then(|p| p.meta.last_log_id);
        if snapshotted >= last_applied {
            for prefix in [MEMBER_PREFIX, SESSION_PREFIX] {
                for key in self.sm.scan_prefix([prefix]).keys() {
                    batch.remove(key.map_err(read)?);
                }
            }
            return self.write_durably_at_open(batch);
        }
        let mut state = RegistryState::default();
        for item in self.sm.scan_prefix([MEMBER_PREFIX]) {
            let (key, value) = item.map_err(read)?;
            let member: Member = decode(&value).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            state
                .members
                .insert(member.spec.id.clone(), Arc::new(member));
            batch.remove(key);
        }
        for item in self.sm.scan_prefix([SESSION_PREFIX]) {
            let (key, value) = item.map_err(read)?;
            let session: Session = decode(&value).map_err(|e| sm_err(ErrorVerb::Read, e))?;
            state
                .sessions
                .insert(session.client_id.to_string(), session);
            batch.remove(key);
        }
        let data = encode(&SnapshotContentRef {
            last_applied: &last_applied,
            membership: &membership,
            state: &state,
        })
        .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        drop(state);
        let seq = self.next_snapshot_seq()?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied, seq),
        };
        let write = |e: std::io::Error| snapshot_err(ErrorVerb::Write, e);
        let file = snapshot_files::write(&self.snapshot_folder, seq, &data).map_err(write)?;
        batch.insert(
            SNAPSHOT_POINTER_KEY,
            SnapshotPointer { meta, file }.encoded()?,
        );
        self.write_durably_at_open(batch)
    }

    /// Writes a batch to the `sm` tree and flushes it, while the store is
    /// being opened.
    fn write_durably_at_open(&self, batch: sled::Batch) -> Result<(), StorageError> {
        // Opening runs before anything else uses the store (see `gate`).
        let _gate = gate::enter_blocking();
        self.sm
            .apply_batch(batch)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        crate::flush::flush_blocking(&self.db, &self.db_file)
            .map_err(|e| sm_err(ErrorVerb::Write, e))?;
        Ok(())
    }

    /// Moves a snapshot stored whole in sled (before format 3) to a file,
    /// carries the sequence over, and drops the old tree.
    fn move_old_snapshot(&self) -> Result<(), StorageError> {
        let read = |e: sled::Error| snapshot_err(ErrorVerb::Read, e);
        let write = |e: sled::Error| snapshot_err(ErrorVerb::Write, e);
        let has_old = self
            .db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == OLD_SNAPSHOT_TREE.as_bytes());
        if !has_old {
            return Ok(());
        }
        let old_tree = self.db.open_tree(OLD_SNAPSHOT_TREE).map_err(read)?;
        // Opening runs before anything else uses the store (see `gate`).
        let _gate = gate::enter_blocking();
        if let Some(seq) = old_tree.get(SNAPSHOT_SEQ_KEY).map_err(read)? {
            self.snapshot_seq
                .insert(SNAPSHOT_SEQ_KEY, seq)
                .map_err(write)?;
        }
        if let Some(bytes) = old_tree.get(OLD_CURRENT_SNAPSHOT_KEY).map_err(read)? {
            let old: StoredSnapshot =
                decode(&bytes).map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
            drop(bytes);
            let seq = self.next_snapshot_seq()?;
            let file = snapshot_files::write(&self.snapshot_folder, seq, &old.data)
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
            let pointer = SnapshotPointer {
                meta: old.meta,
                file,
            };
            self.sm
                .insert(SNAPSHOT_POINTER_KEY, pointer.encoded()?)
                .map_err(write)?;
        }
        // The pointer and the sequence are durable before the old tree goes.
        crate::flush::flush_blocking(&self.db, &self.db_file)
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        drop(old_tree);
        self.db.drop_tree(OLD_SNAPSHOT_TREE).map_err(write)?;
        crate::flush::flush_blocking(&self.db, &self.db_file)
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        Ok(())
    }

    /// The current snapshot's pointer, if there is a snapshot.
    fn pointer(&self) -> Result<Option<SnapshotPointer>, StorageError> {
        let read = |e| snapshot_err(ErrorVerb::Read, e);
        match self.sm.get(SNAPSHOT_POINTER_KEY).map_err(read)? {
            Some(bytes) => Ok(Some(
                decode(&bytes).map_err(|e| snapshot_err(ErrorVerb::Read, e))?,
            )),
            None => Ok(None),
        }
    }

    /// A number for a new snapshot file, never handed out before.
    fn next_snapshot_seq(&self) -> Result<u64, StorageError> {
        Ok(self
            .snapshot_seq
            .update_and_fetch(SNAPSHOT_SEQ_KEY, |old| {
                let n = old
                    .and_then(|v| <[u8; 8]>::try_from(v).ok())
                    .map_or(0, u64::from_be_bytes);
                Some((n + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Makes snapshot data at `last_applied` the current snapshot: writes
    /// it to a new file, durably, then points at that file and flushes, then
    /// removes older files. Returns its metadata and data. It does not
    /// become current when the current snapshot is newer.
    ///
    /// openraft builds snapshots in a task of their own, beside installs, so
    /// a build that captured an older state can finish after an install of
    /// a newer snapshot (and after openraft purged the log up to it). Were
    /// that older snapshot to become current, a restart would find the
    /// entries after it purged and could not rebuild the state. So every
    /// commit runs under `snapshot_io`, and an older one is dropped.
    pub(crate) async fn commit_snapshot(
        &self,
        last_applied: Option<LogId>,
        membership: StoredMembership,
        data: Vec<u8>,
    ) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let write = |e: std::io::Error| snapshot_err(ErrorVerb::Write, e);
        let _io = self.snapshot_io.lock().await;
        let seq = self.next_snapshot_seq()?;
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied, seq),
        };
        let folder = self.snapshot_folder.clone();
        let (file, data) = off_the_workers(ErrorVerb::Write, move || {
            snapshot_files::write(&folder, seq, &data).map(|file| (file, data))
        })
        .await?
        .map_err(write)?;
        let current = self.pointer()?;
        if let Some(current) = current.filter(|c| c.meta.last_log_id > last_applied) {
            snapshot_files::remove_all_but(&self.snapshot_folder, Some(&current.file));
            return Ok((meta, data));
        }
        let pointer = SnapshotPointer {
            meta: meta.clone(),
            file: file.clone(),
        };
        self.sm
            .insert(SNAPSHOT_POINTER_KEY, pointer.encoded()?)
            .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        {
            let _gate = gate::enter().await;
            crate::flush::flush(&self.db, &self.db_file)
                .await
                .map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        }
        self.durable.advance(last_applied);
        snapshot_files::remove_all_but(&self.snapshot_folder, Some(&file));
        Ok((meta, data))
    }

    /// The registry this store applies to.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The index of the stored snapshot, if any (for status reports).
    pub fn snapshot_index(&self) -> Option<u64> {
        self.pointer().ok()??.meta.last_log_id.map(|l| l.index)
    }

    /// Commands applied since the state of the last snapshot: what a
    /// restart would re-apply. The node asks for a snapshot when this grows
    /// past its limit.
    pub fn commands_since_snapshot(&self) -> u64 {
        self.raft().commands_since_snapshot
    }

    fn raft(&self) -> std::sync::MutexGuard<'_, RaftApplied> {
        self.raft.lock().expect("state machine lock poisoned")
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        // The registry's read lock gives a state and the log id it belongs
        // to: apply and install change the raft part only under the
        // registry's write lock. Both locks are held only to copy (see
        // `state_copy`), not for the encoding: apply, and every reader
        // queued behind it, waited for a whole encoding, and so did the
        // node's snapshot trigger, which reads the command count on the
        // client-facing runtime.
        let (mut copy, raft) = {
            let applied = self.registry.read();
            let raft = {
                let mut guard = self.raft();
                // Counted from this state on. A build that fails is a
                // storage error, which stops Raft, so nothing needs
                // restoring; one dropped for a newer install is covered by
                // that install.
                guard.commands_since_snapshot = 0;
                guard.clone()
            };
            (StateCopy::of(&applied.state), raft)
        };
        // Encoding takes tens of milliseconds for a large registry.
        let (data, raft) = off_the_workers(ErrorVerb::Write, move || {
            copy.sort_members();
            let data = encode(&SnapshotContentRef {
                last_applied: &raft.last_applied,
                membership: &raft.membership,
                state: &copy,
            });
            (data, raft)
        })
        .await?;
        let data = data.map_err(|e| snapshot_err(ErrorVerb::Write, e))?;
        // Dropped, not current, when a newer snapshot was installed
        // meanwhile: openraft then ignores it too.
        let (meta, data) = self
            .commit_snapshot(raft.last_applied, raft.membership, data)
            .await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let raft = self.raft().clone();
        Ok((raft.last_applied, raft.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let entries: Vec<Entry> = entries.into_iter().collect();
        if let (Some(sync), Some(last)) = (&self.log_sync, entries.last()) {
            // The leader's own entries may be committed before they are
            // durable here; nothing of them may be seen before they are.
            sync.wait_durable(last.log_id.index)
                .await
                .map_err(|e| StorageIOError::apply(last.log_id, AnyError::new(&e)))?;
        }
        let raft = self.raft.clone();
        let mut counts = AppliedCounts::default();
        self.registry.update(|applied| {
            let mut raft = raft.lock().expect("state machine lock poisoned");
            let subscriptions = applied.feed.receivers() as u64;
            for entry in entries {
                let index = entry.log_id.index;
                raft.last_applied = Some(entry.log_id);
                applied.index = index;
                match entry.payload {
                    EntryPayload::Blank => responses.push(Response::default()),
                    EntryPayload::Normal(request) => {
                        raft.commands_since_snapshot += request.commands.len() as u64;
                        if !request.commands.is_empty() {
                            counts.entries += 1;
                            counts.commands += request.commands.len() as u64;
                            counts.offers += subscriptions;
                        }
                        let out = applied.state.apply(index, &request);
                        Registry::publish(applied, AppliedEntry::new(index, out.changes));
                        responses.push(Response {
                            results: out.results,
                        });
                    }
                    EntryPayload::Membership(membership) => {
                        raft.membership = StoredMembership::new(Some(entry.log_id), membership);
                        responses.push(Response::default());
                    }
                }
            }
        });
        self.registry.count_applied(counts);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Decoding takes tens of milliseconds for a large registry, as
        // encoding does.
        let checked = meta.clone();
        let (data, content) = off_the_workers(ErrorVerb::Read, move || {
            let content = SnapshotContent::decode(&data, &checked);
            (data, content)
        })
        .await?;
        let content = content?;

        // The snapshot is durable, and the state a restart starts from,
        // before the state in memory is replaced. (openraft installs only a
        // snapshot newer than its own, so this one becomes current.)
        self.commit_snapshot(meta.last_log_id, meta.last_membership.clone(), data)
            .await?;

        let index = meta.last_log_id.map_or(0, |l| l.index);
        let raft = self.raft.clone();
        self.registry.update(|applied| {
            let mut raft = raft.lock().expect("state machine lock poisoned");
            raft.last_applied = meta.last_log_id;
            raft.membership = meta.last_membership.clone();
            raft.commands_since_snapshot = 0;
            applied.state = content.state;
            applied.index = index;
            applied.feed.reset(index);
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        // A commit in progress would remove the file this reads.
        let _io = self.snapshot_io.lock().await;
        let Some(pointer) = self.pointer()? else {
            return Ok(None);
        };
        let folder = self.snapshot_folder.clone();
        let file = pointer.file.clone();
        let data = off_the_workers(ErrorVerb::Read, move || {
            snapshot_files::read(&folder, &file)
        })
        .await?
        .map_err(|e| snapshot_err(ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: pointer.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// Opens the log store and the state machine store of a data dir; the log
/// store purges no entry that the state machine's durable snapshot lacks.
pub fn open_stores(
    dir: &DataDir,
    feed: FeedConfig,
) -> Result<(crate::log_store::LogStore, StateMachineStore), StorageError> {
    let sm = StateMachineStore::open(dir, feed)?;
    // The message alone, which names the data dir and what is wrong: the
    // error's type (`std::io::Error`) tells a reader nothing.
    let log = crate::log_store::LogStore::open(dir).map_err(|e| {
        StorageError::from(StorageIOError::<NodeId>::new(
            ErrorSubject::Logs,
            ErrorVerb::Read,
            AnyError::error(e),
        ))
    })?;
    let mut log = log.purging_only_behind(sm.durable.clone());
    if let Some(own) = dir.node_id().map_err(|e| sm_err(ErrorVerb::Read, e))? {
        log = log.reporting_own_appends_early(own).map_err(|e| {
            StorageIOError::<NodeId>::new(ErrorSubject::Vote, ErrorVerb::Read, AnyError::error(e))
        })?;
    }
    let mut sm = sm;
    sm.log_sync = Some(log.sync());
    Ok((log, sm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Arc<Member> {
        Arc::new(Member::for_test(id, "web"))
    }

    #[test]
    fn a_snapshot_keyed_by_other_ids_is_refused() {
        let meta = SnapshotMeta::default();
        let encoded = |state: &RegistryState| {
            encode(&SnapshotContentRef {
                last_applied: &meta.last_log_id,
                membership: &meta.last_membership,
                state,
            })
            .unwrap()
        };
        let mut state = RegistryState::default();
        state.members.insert("a".into(), member("a"));
        assert!(SnapshotContent::decode(&encoded(&state), &meta).is_ok());

        state.members.insert("b".into(), member("c"));
        let e = SnapshotContent::decode(&encoded(&state), &meta)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("another id"), "{e}");
    }
}
