//! Tests of the stores: openraft's conformance suite, snapshots, restarts
//! and the change feed, on real data dirs (sled and log segments) in temp dirs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use tempfile::TempDir;
use tokio::sync::broadcast::error::TryRecvError;

use crate::command::{ApplyError, Command, CommandResult, Origin, Outcome, Request, Response};
use crate::data_dir::DataDir;
use crate::feed::{FeedConfig, FeedItem};
use crate::log_store::LogStore;
use crate::log_sync::LogSync;
use crate::member::MemberSpec;
use crate::state::RegistryState;
use crate::state_machine::{StateMachineStore, open_stores};
use crate::types::{Entry, LogId, NodeAddr, NodeId, StorageError, StoredMembership, TypeConfig};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const CACHE: u64 = 16 << 20;

/// Opens the stores of the data dir at `path`.
fn open(path: &Path) -> (DataDir, LogStore, StateMachineStore) {
    let dir = DataDir::open(path, CACHE).expect("open data dir");
    let (log, sm) = open_stores(&dir, FeedConfig::default()).expect("open stores");
    (dir, log, sm)
}

/// Builds a snapshot of the state machine's state now, as openraft's
/// snapshot policy would.
async fn snapshot_now(sm: &mut StateMachineStore) -> openraft::Snapshot<TypeConfig> {
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Appends entries to the log and applies them, as a node does once they
/// are committed.
async fn append_and_apply(
    log: &mut LogStore,
    sm: &mut StateMachineStore,
    entries: Vec<Entry>,
) -> Vec<Response> {
    log.blocking_append(entries.clone()).await.unwrap();
    sm.apply(entries).await.unwrap()
}

/// Opens the stores of a data dir and re-applies the log after the state
/// machine's last applied entry, as openraft does at a start
/// (`get_initial_state`; every entry in these tests is committed).
async fn restart(path: &Path) -> (DataDir, LogStore, StateMachineStore) {
    let (dir, mut log, mut sm) = open(path);
    let from = sm
        .applied_state()
        .await
        .unwrap()
        .0
        .map_or(0, |l| l.index + 1);
    let entries = log.try_get_log_entries(from..).await.unwrap();
    sm.apply(entries).await.unwrap();
    (dir, log, sm)
}

/// Opens only the log store of a data dir, not linked to a state machine:
/// it purges what it is told (see `durable_snapshot`).
fn open_log_alone(path: &Path) -> (DataDir, LogStore) {
    let dir = DataDir::open(path, CACHE).expect("open data dir");
    let log = LogStore::open(&dir).expect("open log store");
    (dir, log)
}

fn lid(term: u64, index: u64) -> LogId {
    openraft::testing::log_id(term, 1, index)
}

fn normal(term: u64, index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Normal(Request {
            now_ms: 1_000 * index,
            commands: commands.into(),
        }),
    }
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Blank,
    }
}

fn voters(ids: &[NodeId]) -> Membership<NodeId, NodeAddr> {
    let set: BTreeSet<NodeId> = ids.iter().copied().collect();
    let nodes: BTreeMap<NodeId, NodeAddr> = ids
        .iter()
        .map(|&id| {
            (
                id,
                NodeAddr {
                    addr: format!("127.0.0.1:{}", 8220 + id),
                    http_addr: format!("127.0.0.1:{}", 9220 + id),
                },
            )
        })
        .collect();
    Membership::new(vec![set], nodes)
}

fn membership(term: u64, index: u64, ids: &[NodeId]) -> Entry {
    Entry {
        log_id: lid(term, index),
        payload: EntryPayload::Membership(voters(ids)),
    }
}

fn open_session(client_id: &str) -> Command {
    Command::OpenSession {
        client_id: client_id.into(),
        heartbeat_timeout_ms: 30_000,
        reconnect_timeout_ms: 600_000,
    }
}

fn origin(client_id: &str, seq: u64) -> Origin {
    Origin {
        client_id: client_id.into(),
        seq,
        ack_below: seq,
    }
}

fn register(client_id: &str, seq: u64, id: &str) -> Command {
    Command::Register {
        origin: origin(client_id, seq),
        spec: MemberSpec {
            id: id.into(),
            service: "web".into(),
            locality: "dc1.rack2".into(),
            revision: "v1".into(),
            created_ms: 7,
            metadata: crate::Metadata::from([("zone".into(), "a".into())]),
        },
    }
}

/// Six entries: a membership, sessions, members, a blank, an update and
/// a session going down, an unregister.
fn script() -> Vec<Entry> {
    vec![
        membership(1, 1, &[1]),
        normal(
            1,
            2,
            vec![
                open_session("s1"),
                register("s1", 1, "m1"),
                register("s1", 2, "m2"),
            ],
        ),
        normal(1, 3, vec![open_session("s2"), register("s2", 1, "n1")]),
        blank(1, 4),
        normal(
            1,
            5,
            vec![
                Command::UpdateMetadata {
                    origin: origin("s1", 3),
                    id: "m1".into(),
                    set: BTreeMap::from([("k".into(), "v".into())]),
                    remove: vec!["zone".into()],
                },
                Command::SessionsDown {
                    client_ids: vec!["s2".into()],
                },
            ],
        ),
        normal(
            1,
            6,
            vec![Command::Unregister {
                origin: origin("s1", 4),
                id: "m2".into(),
            }],
        ),
    ]
}

/// The registry state and index of a state machine store.
fn registry_of(sm: &StateMachineStore) -> (RegistryState, u64) {
    let registry = sm.registry();
    let applied = registry.read();
    (applied.state.clone(), applied.index)
}

fn feed_indexes(sm: &StateMachineStore, since: u64) -> Option<Vec<u64>> {
    let registry = sm.registry();
    let applied = registry.read();
    applied
        .feed
        .since(since)
        .map(|entries| entries.iter().map(|e| e.index).collect())
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(..).await.unwrap()
}

fn indexes(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.log_id.index).collect()
}

// ---------------------------------------------------------------------------
// openraft's conformance suite
// ---------------------------------------------------------------------------

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = DataDir::open(tmp.path(), CACHE).expect("open data dir");
        // The suite purges logs without snapshots and expects them gone: a
        // log store linked to the state machine purges only behind a
        // durable snapshot (tested below), so the suite gets them unlinked.
        let log = LogStore::open(&dir).expect("open log store");
        let sm = StateMachineStore::open(&dir, FeedConfig::default())?;
        Ok((tmp, log, sm))
    }
}

/// `Suite::test_all` runs each case in its own runtime: a plain test.
#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

// ---------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------

#[tokio::test]
async fn snapshot_build_then_install_gives_an_identical_state() {
    let tmp_a = tempfile::tempdir().unwrap();
    let tmp_b = tempfile::tempdir().unwrap();
    let (_dir_a, _log_a, mut sm_a) = open(tmp_a.path());
    let (_dir_b, _log_b, mut sm_b) = open(tmp_b.path());

    sm_a.apply(script()).await.unwrap();
    let snap = snapshot_now(&mut sm_a).await;
    assert_eq!(snap.meta.last_log_id, Some(lid(1, 6)));
    assert_eq!(
        snap.meta.last_membership,
        StoredMembership::new(Some(lid(1, 1)), voters(&[1]))
    );
    assert_eq!(sm_a.snapshot_index(), Some(6));

    // The receiver had other members, of another history.
    sm_b.apply(vec![
        membership(1, 1, &[1, 2]),
        normal(1, 2, vec![open_session("x"), register("x", 1, "old")]),
    ])
    .await
    .unwrap();
    let (seen, mut rx) = sm_b
        .registry()
        .read_and_subscribe(|a| a.index)
        .expect("the feed is open");
    assert_eq!(seen, 2);

    let mut received = sm_b.begin_receiving_snapshot().await.unwrap();
    received.write_all(snap.snapshot.get_ref()).unwrap();
    sm_b.install_snapshot(&snap.meta, received).await.unwrap();

    let (state_a, index_a) = registry_of(&sm_a);
    let (state_b, index_b) = registry_of(&sm_b);
    assert_eq!(state_b, state_a);
    assert_eq!(index_b, index_a);
    assert_eq!(index_b, 6);
    assert!(
        !state_b.members.contains_key("old"),
        "the old state is cleared"
    );
    assert!(!state_b.sessions.contains_key("x"));
    assert_eq!(sm_b.registry().index(), 6);
    assert_eq!(*sm_b.registry().watch_index().borrow(), 6);
    assert_eq!(
        sm_b.applied_state().await.unwrap(),
        sm_a.applied_state().await.unwrap()
    );
    assert_eq!(
        sm_b.applied_state().await.unwrap(),
        (
            Some(lid(1, 6)),
            StoredMembership::new(Some(lid(1, 1)), voters(&[1]))
        )
    );

    let cur_a = sm_a
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a has a snapshot");
    let cur_b = sm_b
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("b has a snapshot");
    assert_eq!(cur_a.meta, snap.meta);
    assert_eq!(cur_b.meta, snap.meta);
    assert_eq!(cur_a.snapshot.get_ref(), snap.snapshot.get_ref());
    assert_eq!(cur_b.snapshot.get_ref(), snap.snapshot.get_ref());
    assert_eq!(sm_b.snapshot_index(), Some(6));

    // Subscribers are told that history was replaced.
    match rx.try_recv() {
        Ok(FeedItem::Reset(6)) => {}
        other => panic!("expected Reset(6), got {other:?}"),
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(feed_indexes(&sm_b, 6), Some(vec![]));
    assert_eq!(
        feed_indexes(&sm_b, 5),
        None,
        "history before the snapshot is gone"
    );

    // Both go on identically from there.
    let more = vec![normal(
        2,
        7,
        vec![
            register("s1", 5, "m3"),
            Command::SessionsUp {
                client_ids: vec!["s2".into()],
            },
        ],
    )];
    let ra = sm_a.apply(more.clone()).await.unwrap();
    let rb = sm_b.apply(more).await.unwrap();
    assert_eq!(ra, rb);
    assert_eq!(registry_of(&sm_a), registry_of(&sm_b));
    assert_eq!(feed_indexes(&sm_b, 6), Some(vec![7]));
}

#[tokio::test]
async fn an_installed_snapshot_survives_reopening() {
    let tmp_a = tempfile::tempdir().unwrap();
    let tmp_b = tempfile::tempdir().unwrap();
    let (_dir_a, _log_a, mut sm_a) = open(tmp_a.path());
    sm_a.apply(script()).await.unwrap();
    let snap = snapshot_now(&mut sm_a).await;

    {
        let (_dir_b, _log_b, mut sm_b) = open(tmp_b.path());
        sm_b.apply(vec![
            membership(1, 1, &[1, 2]),
            normal(
                1,
                2,
                vec![
                    open_session("x"),
                    register("x", 1, "old"),
                    register("x", 2, "m1"),
                ],
            ),
        ])
        .await
        .unwrap();
        let mut received = sm_b.begin_receiving_snapshot().await.unwrap();
        received.write_all(snap.snapshot.get_ref()).unwrap();
        sm_b.install_snapshot(&snap.meta, received).await.unwrap();
    }

    let (_dir_b, _log_b, mut sm_b) = open(tmp_b.path());
    let (state_a, _) = registry_of(&sm_a);
    let (state_b, index_b) = registry_of(&sm_b);
    assert_eq!(state_b, state_a);
    assert!(
        !state_b.members.contains_key("old"),
        "an old member came back"
    );
    assert_eq!(&*state_b.members["m1"].client_id, "s1");
    assert_eq!(index_b, 6);
    assert_eq!(
        sm_b.applied_state().await.unwrap(),
        sm_a.applied_state().await.unwrap()
    );
    let cur_b = sm_b
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(cur_b.meta, snap.meta);
    assert_eq!(cur_b.snapshot.get_ref(), snap.snapshot.get_ref());
    assert_eq!(sm_b.snapshot_index(), Some(6));
}

#[tokio::test]
async fn snapshots_get_distinct_ids_and_the_latest_is_current() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, _log, mut sm) = open(tmp.path());
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    assert_eq!(sm.snapshot_index(), None);

    // A snapshot of nothing applied is valid too.
    let empty = snapshot_now(&mut sm).await;
    assert_eq!(empty.meta.last_log_id, None);

    sm.apply(script()).await.unwrap();
    let first = snapshot_now(&mut sm).await;
    let second = snapshot_now(&mut sm).await;
    assert_ne!(empty.meta.snapshot_id, first.meta.snapshot_id);
    assert_ne!(first.meta.snapshot_id, second.meta.snapshot_id);
    assert_eq!(first.meta.last_log_id, second.meta.last_log_id);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, second.meta);
}

/// Marks a data dir as written in an older format.
fn set_format(dir: &DataDir, format: u32) {
    dir.db
        .open_tree("meta")
        .unwrap()
        .insert("format_version", &format.to_be_bytes())
        .unwrap();
}

/// Asserts that a data dir is marked with this build's format.
fn assert_current_format(dir: &DataDir) {
    let format = dir
        .db
        .open_tree("meta")
        .unwrap()
        .get("format_version")
        .unwrap();
    assert_eq!(
        format.as_deref(),
        Some(&crate::data_dir::FORMAT_VERSION.to_be_bytes()[..])
    );
}

/// The keys left in the state machine's `sm` tree.
fn sm_keys(dir: &DataDir) -> Vec<Vec<u8>> {
    dir.db
        .open_tree("sm")
        .unwrap()
        .iter()
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect()
}

fn snapshot_files(data_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("snapshots"))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn snapshot_data_lives_in_one_file_that_survives_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let snap = {
        let (_dir, _log, mut sm) = open(tmp.path());
        sm.apply(script()).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        let snap = builder.build_snapshot().await.unwrap();
        assert_eq!(snapshot_files(tmp.path()).len(), 1, "older files removed");
        snap
    };
    // A file nothing points at (a crash before the pointer) goes at start.
    std::fs::write(
        tmp.path().join("snapshots").join("00000000000000000099"),
        b"x",
    )
    .unwrap();
    let (_dir, _log, mut sm) = open(tmp.path());
    assert_eq!(snapshot_files(tmp.path()).len(), 1);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot.get_ref(), snap.snapshot.get_ref());
}

#[tokio::test]
async fn a_format_2_snapshot_stored_in_sled_is_moved_to_a_file() {
    /// The format-2 record: metadata and data as one sled value.
    #[derive(serde::Serialize)]
    struct OldStoredSnapshot {
        meta: crate::types::SnapshotMeta,
        data: Vec<u8>,
    }
    let tmp = tempfile::tempdir().unwrap();
    let snap = {
        let (dir, _log, mut sm) = open(tmp.path());
        sm.apply(script()).await.unwrap();
        let snap = snapshot_now(&mut sm).await;
        // Rewrite the data dir as format 2 left it.
        let old = OldStoredSnapshot {
            meta: snap.meta.clone(),
            data: snap.snapshot.get_ref().clone(),
        };
        let snapshots = dir.db.open_tree("snapshot").unwrap();
        snapshots
            .insert("current", crate::codec::encode(&old).unwrap())
            .unwrap();
        dir.db
            .open_tree("sm")
            .unwrap()
            .remove(b"xsnapshot")
            .unwrap();
        set_format(&dir, 2);
        std::fs::remove_dir_all(tmp.path().join("snapshots")).unwrap();
        dir.db.flush().unwrap();
        snap
    };
    let (dir, _log, mut sm) = open(tmp.path());
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(current.snapshot.get_ref(), snap.snapshot.get_ref());
    assert_eq!(sm.snapshot_index(), Some(6));
    assert_eq!(snapshot_files(tmp.path()).len(), 1);
    let trees = dir.db.tree_names();
    assert!(
        !trees.iter().any(|t| t.as_ref() == b"snapshot"),
        "the old tree is dropped: sled would load the old snapshot with it"
    );
    assert_current_format(&dir);
}

// ---------------------------------------------------------------------------
// Restarts
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_state_machine_is_rebuilt_from_its_snapshot_and_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (state, index, applied) = {
        let (_dir, mut log, mut sm) = open(tmp.path());
        let responses = append_and_apply(&mut log, &mut sm, script()).await;
        assert_eq!(responses.len(), 6, "one response per entry");
        assert_eq!(responses[0], Response::default(), "membership");
        assert_eq!(responses[3], Response::default(), "blank");
        assert_eq!(responses[1].results.len(), 3);
        assert!(responses[1].results.iter().all(Result::is_ok));
        assert!(matches!(responses[2].results[1], Ok(Outcome::Member(_))));
        assert_eq!(
            responses[5].results,
            vec![Ok(Outcome::Removed { index: 6 })]
        );
        assert_eq!(sm.commands_since_snapshot(), 8);
        let (state, index) = registry_of(&sm);
        (state, index, sm.applied_state().await.unwrap())
    };
    assert_eq!(index, 6);
    let mut ids: Vec<&String> = state.members.keys().collect();
    ids.sort();
    assert_eq!(ids, ["m1", "n1"]);

    // Applying writes nothing: without a snapshot a store opens empty, and
    // the log is what brings it back.
    {
        let (_dir, _log, mut sm) = open(tmp.path());
        assert_eq!(registry_of(&sm), (RegistryState::default(), 0));
        assert_eq!(sm.applied_state().await.unwrap().0, None);
    }
    let (_dir, mut log, mut sm) = restart(tmp.path()).await;
    assert_eq!(registry_of(&sm), (state.clone(), 6));
    assert_eq!(sm.registry().index(), 6);
    assert_eq!(sm.applied_state().await.unwrap(), applied);
    assert_eq!(feed_indexes(&sm, 6), Some(vec![]));

    // The sessions kept their answers: a retry after the restart is
    // answered as before and applies nothing.
    let retry = normal(1, 7, vec![register("s2", 1, "n1")]);
    let responses = append_and_apply(&mut log, &mut sm, vec![retry]).await;
    match &responses[0].results[0] {
        Ok(Outcome::Member(m)) => {
            assert_eq!(m.create_index, 3);
            assert_eq!(m.mod_index, 3, "the answer given at index 3");
        }
        other => panic!("expected the kept answer, got {other:?}"),
    }
    let (after, index) = registry_of(&sm);
    assert_eq!(index, 7);
    assert_eq!(after, state);
}

/// Format 5 only adds a kind of stored answer: a format-4 data dir opens
/// with its state as it was and is marked 5, and a snapshot holding the
/// new answer reads back.
#[tokio::test]
async fn a_format_4_data_dir_opens_as_format_5_with_its_state() {
    let tmp = tempfile::tempdir().unwrap();
    let state = {
        let (dir, mut log, mut sm) = open(tmp.path());
        append_and_apply(&mut log, &mut sm, script()).await;
        snapshot_now(&mut sm).await;
        set_format(&dir, 4);
        registry_of(&sm).0
    };
    let kept = state
        .sessions
        .values()
        .flat_map(|s| s.answers.values())
        .any(|a| matches!(a, Ok(Outcome::Removed { index: 6 })));
    assert!(kept, "the script's unregister left its answer in a session");
    let (dir, _log, sm) = restart(tmp.path()).await;
    assert_current_format(&dir);
    assert_eq!(registry_of(&sm), (state, 6));
}

#[tokio::test]
async fn a_store_opens_at_its_snapshot_and_counts_commands_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (at_snapshot, full) = {
        let (_dir, mut log, mut sm) = open(tmp.path());
        let mut entries = script();
        let rest = entries.split_off(3);
        append_and_apply(&mut log, &mut sm, entries).await;
        assert_eq!(sm.commands_since_snapshot(), 5);
        snapshot_now(&mut sm).await;
        assert_eq!(sm.commands_since_snapshot(), 0, "counted from the snapshot");
        let at_snapshot = registry_of(&sm);
        append_and_apply(&mut log, &mut sm, rest).await;
        assert_eq!(sm.commands_since_snapshot(), 3);
        (at_snapshot, registry_of(&sm))
    };
    {
        let (_dir, _log, mut sm) = open(tmp.path());
        assert_eq!(registry_of(&sm), at_snapshot);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(1, 3)));
        assert_eq!(sm.commands_since_snapshot(), 0);
    }
    let (_dir, _log, sm) = restart(tmp.path()).await;
    assert_eq!(registry_of(&sm), full);
    assert_eq!(sm.commands_since_snapshot(), 3);
}

#[tokio::test]
async fn a_reopened_store_goes_on_like_one_that_never_stopped() {
    let tmp_a = tempfile::tempdir().unwrap();
    let tmp_b = tempfile::tempdir().unwrap();
    let (_dir_a, _log_a, mut sm_a) = open(tmp_a.path());
    sm_a.apply(script()).await.unwrap();
    {
        let (_dir_b, mut log_b, mut sm_b) = open(tmp_b.path());
        // In two batches, with a snapshot and a restart in between.
        let mut entries = script();
        let rest = entries.split_off(3);
        append_and_apply(&mut log_b, &mut sm_b, entries).await;
        snapshot_now(&mut sm_b).await;
        drop(sm_b);
        drop(log_b);
        drop(_dir_b);
        let (_dir_b, mut log_b, mut sm_b) = restart(tmp_b.path()).await;
        append_and_apply(&mut log_b, &mut sm_b, rest).await;
    }
    let (_dir_b, mut log_b, mut sm_b) = restart(tmp_b.path()).await;
    assert_eq!(registry_of(&sm_a), registry_of(&sm_b));

    let more = vec![normal(
        2,
        7,
        vec![
            register("s1", 5, "m2"),
            Command::SessionsExpired {
                client_ids: vec!["s2".into()],
            },
            Command::CloseSession {
                client_id: "nobody".into(),
            },
        ],
    )];
    let ra = sm_a.apply(more.clone()).await.unwrap();
    let rb = append_and_apply(&mut log_b, &mut sm_b, more).await;
    assert_eq!(ra, rb);
    assert_eq!(registry_of(&sm_a), registry_of(&sm_b));
    // Restart once more: the removed session and member stay removed.
    drop(sm_b);
    drop(log_b);
    drop(_dir_b);
    let (_dir_b, _log_b, sm_b) = restart(tmp_b.path()).await;
    assert_eq!(registry_of(&sm_a), registry_of(&sm_b));
    let (state, _) = registry_of(&sm_b);
    assert!(!state.sessions.contains_key("s2"));
    assert!(!state.members.contains_key("n1"));
}

#[tokio::test]
async fn a_format_3_state_stored_in_sled_becomes_a_snapshot() {
    // Format 3 stored the applied state member by member in the `sm` tree,
    // newer than the snapshot (here there is none).
    let tmp = tempfile::tempdir().unwrap();
    let expected = {
        let (dir, _log, sm) = open(tmp.path());
        let mut state = RegistryState::default();
        for entry in script() {
            if let EntryPayload::Normal(request) = &entry.payload {
                state.apply(entry.log_id.index, request);
            }
        }
        let tree = dir.db.open_tree("sm").unwrap();
        for (id, member) in &state.members {
            let key = [b"m".as_slice(), id.as_bytes()].concat();
            tree.insert(key, crate::codec::encode(member).unwrap())
                .unwrap();
        }
        for (id, session) in &state.sessions {
            let key = [b"s".as_slice(), id.as_bytes()].concat();
            tree.insert(key, crate::codec::encode(session).unwrap())
                .unwrap();
        }
        let membership = StoredMembership::new(Some(lid(1, 1)), voters(&[1]));
        tree.insert(
            b"xlast_applied",
            crate::codec::encode(&Some(lid(1, 6))).unwrap(),
        )
        .unwrap();
        tree.insert(b"xmembership", crate::codec::encode(&membership).unwrap())
            .unwrap();
        set_format(&dir, 3);
        dir.db.flush().unwrap();
        drop(sm);
        (state, membership)
    };
    let (dir, _log, mut sm) = open(tmp.path());
    let (state, membership) = expected;
    let (loaded, index) = registry_of(&sm);
    assert_eq!(index, 6);
    assert_eq!(loaded.members, state.members);
    assert_eq!(loaded.sessions, state.sessions);
    assert_eq!(
        sm.applied_state().await.unwrap(),
        (Some(lid(1, 6)), membership)
    );
    assert_eq!(sm.snapshot_index(), Some(6), "the state is now a snapshot");
    assert_eq!(snapshot_files(tmp.path()).len(), 1);
    let keys = sm_keys(&dir);
    assert_eq!(
        keys,
        vec![b"xsnapshot".to_vec()],
        "only the pointer is left"
    );
    assert_current_format(&dir);
}

#[tokio::test]
async fn the_log_survives_reopening_and_purge_and_truncate_behave() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = script();
    let vote = Vote::new_committed(3, 1);
    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, None);
        assert_eq!(log.read_vote().await.unwrap(), None);
        assert_eq!(log.read_committed().await.unwrap(), None);

        // Two appends, like two flushes of openraft.
        log.blocking_append(entries[..2].to_vec()).await.unwrap();
        log.blocking_append(entries[2..].to_vec()).await.unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(lid(1, 5))).await.unwrap();
        assert_eq!(all_entries(&mut log).await, entries);
        assert_eq!(log.last_index(), Some(6));
    }

    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        assert_eq!(all_entries(&mut log).await, entries, "entries survive");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(state.last_log_id, Some(lid(1, 6)));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(1, 5)));

        // Ranges through a reader.
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            indexes(&reader.try_get_log_entries(3..5).await.unwrap()),
            [3, 4]
        );
        assert_eq!(
            indexes(&reader.try_get_log_entries(..=2).await.unwrap()),
            [1, 2]
        );
        assert_eq!(
            indexes(&reader.try_get_log_entries(5..).await.unwrap()),
            [5, 6]
        );
        assert!(reader.try_get_log_entries(7..).await.unwrap().is_empty());

        // Purge up to 2: 3..=6 are left.
        log.purge(lid(1, 2)).await.unwrap();
        assert_eq!(indexes(&all_entries(&mut log).await), [3, 4, 5, 6]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(1, 2)));
        assert_eq!(state.last_log_id, Some(lid(1, 6)));

        // Truncate since 5: 3 and 4 are left.
        log.truncate(lid(1, 5)).await.unwrap();
        assert_eq!(all_entries(&mut log).await, entries[2..4].to_vec());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(1, 2)));
        assert_eq!(state.last_log_id, Some(lid(1, 4)));
        assert_eq!(log.last_index(), Some(4));
    }

    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            [3, 4],
            "purge and truncate survive"
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(1, 2)));
        assert_eq!(state.last_log_id, Some(lid(1, 4)));

        // A new leader's entry replaces the truncated ones.
        log.blocking_append([blank(2, 5)]).await.unwrap();
        let got = all_entries(&mut log).await;
        assert_eq!(indexes(&got), [3, 4, 5]);
        assert_eq!(got[2].log_id, lid(2, 5));

        // Purging everything leaves the purged id as the last one.
        log.purge(lid(2, 5)).await.unwrap();
        assert!(all_entries(&mut log).await.is_empty());
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(2, 5)));
        assert_eq!(state.last_log_id, Some(lid(2, 5)));
        assert_eq!(log.last_index(), None);
    }

    let (_dir, mut log, _sm) = open(tmp.path());
    assert!(all_entries(&mut log).await.is_empty());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(2, 5)));
    assert_eq!(state.last_log_id, Some(lid(2, 5)));
    assert_eq!(log.read_vote().await.unwrap(), Some(vote));
}

#[tokio::test]
async fn log_and_state_machine_share_one_data_dir_without_clashing() {
    // The log and the state machine live in the same sled database: filling
    // one must not show up in the other.
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log, mut sm) = open(tmp.path());
        log.blocking_append(script()).await.unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, None);
        sm.apply(script()[..3].to_vec()).await.unwrap();
        snapshot_now(&mut sm).await;
        assert_eq!(log.last_index(), Some(6));
    }
    let (dir, mut log, mut sm) = open(tmp.path());
    assert_eq!(indexes(&all_entries(&mut log).await), [1, 2, 3, 4, 5, 6]);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(1, 3)));
    assert_eq!(registry_of(&sm).0.members.len(), 3);
    // The data dir is still ours, with its format version.
    drop((log, sm));
    drop(dir);
    DataDir::open(tmp.path(), CACHE).expect("reopen data dir");
}

// ---------------------------------------------------------------------------
// The change feed
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_feed_holds_applied_entries_and_delivers_later_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, _log, mut sm) = open(tmp.path());
    let entries = script();
    sm.apply(entries[..3].to_vec()).await.unwrap();

    // Entries without member changes (the membership) are not in the feed.
    assert_eq!(feed_indexes(&sm, 0), Some(vec![2, 3]));
    assert_eq!(feed_indexes(&sm, 2), Some(vec![3]));
    assert_eq!(feed_indexes(&sm, 3), Some(vec![]));
    {
        let registry = sm.registry();
        let applied = registry.read();
        let since = applied.feed.since(1).unwrap();
        let ids: Vec<&str> = since[0].changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2"]);
        assert!(since[0].changes.iter().all(|c| c.before.is_none()));
        assert_eq!(
            since[0].changes[0].after.as_ref(),
            applied.state.members.get("m1")
        );
        assert_eq!(since[1].changes[0].id, "n1");
    }

    let registry = sm.registry();
    let ((index, members), mut rx) = registry
        .read_and_subscribe(|a| (a.index, a.state.members.len()))
        .expect("the feed is open");
    assert_eq!((index, members), (3, 3));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    let mut watch = registry.watch_index();

    let mut rest = entries[3..].to_vec();
    // An entry whose commands change no member is not published either.
    rest.push(normal(
        1,
        7,
        vec![Command::CloseSession {
            client_id: "nobody".into(),
        }],
    ));
    sm.apply(rest).await.unwrap();
    assert_eq!(registry.index(), 7);
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 7);

    let mut got = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(FeedItem::Entry(e)) => got.push(e),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(TryRecvError::Empty) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let got_indexes: Vec<u64> = got.iter().map(|e| e.index).collect();
    assert_eq!(got_indexes, [5, 6]);
    let ids: Vec<&str> = got[0].changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["m1", "n1"]);
    assert_eq!(got[1].changes[0].id, "m2");
    assert!(got[1].changes[0].after.is_none());
    assert_eq!(feed_indexes(&sm, 3), Some(vec![5, 6]));
    assert_eq!(feed_indexes(&sm, 0), Some(vec![2, 3, 5, 6]));

    // The changes in the feed, replayed, give the state.
    let mut view = crate::Members::default();
    for entry in registry.read().feed.since(0).unwrap() {
        for change in &entry.changes {
            match &change.after {
                Some(m) => view.insert(change.id.clone(), m.clone()),
                None => view.remove(&change.id),
            };
        }
    }
    assert_eq!(view, registry.read().state.members);
}

#[tokio::test]
async fn install_snapshot_resets_the_feed() {
    let tmp_a = tempfile::tempdir().unwrap();
    let tmp_b = tempfile::tempdir().unwrap();
    let (_dir_a, _log_a, mut sm_a) = open(tmp_a.path());
    let (_dir_b, _log_b, mut sm_b) = open(tmp_b.path());
    sm_a.apply(script()).await.unwrap();
    sm_b.apply(script()[..3].to_vec()).await.unwrap();
    assert_eq!(feed_indexes(&sm_b, 0), Some(vec![2, 3]));

    let registry = sm_b.registry();
    let (_, mut rx) = registry
        .read_and_subscribe(|_| ())
        .expect("the feed is open");
    let snap = snapshot_now(&mut sm_a).await;
    let mut received = sm_b.begin_receiving_snapshot().await.unwrap();
    received.write_all(snap.snapshot.get_ref()).unwrap();
    sm_b.install_snapshot(&snap.meta, received).await.unwrap();

    assert!(matches!(rx.try_recv(), Ok(FeedItem::Reset(6))));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(feed_indexes(&sm_b, 0), None);
    assert_eq!(feed_indexes(&sm_b, 6), Some(vec![]));

    // Entries after the install reach the same receiver.
    sm_b.apply(vec![normal(1, 7, vec![register("s1", 5, "m9")])])
        .await
        .unwrap();
    match rx.try_recv() {
        Ok(FeedItem::Entry(e)) => {
            assert_eq!(e.index, 7);
            assert_eq!(e.changes[0].id, "m9");
        }
        other => panic!("expected entry 7, got {other:?}"),
    }
}

/// A session's member index is not stored; after a restart (or a snapshot
/// install) it is rebuilt from the members, so closing the session still
/// removes exactly its members.
#[tokio::test]
async fn session_member_index_is_rebuilt_on_reopen_and_install() {
    let tmp = TempDir::new().unwrap();
    {
        let (_dir, _log, mut sm) = open(tmp.path());
        sm.apply(script()).await.unwrap();
        snapshot_now(&mut sm).await;
    }
    let (_dir, _log, mut sm) = open(tmp.path());
    let (state, index) = registry_of(&sm);
    assert_eq!(
        state.sessions["s1"].members,
        state
            .members
            .values()
            .filter(|m| &*m.client_id == "s1")
            .map(|m| m.spec.id.clone())
            .collect::<BTreeSet<_>>()
    );
    // Install the snapshot into a fresh store: the index is rebuilt there too.
    let snapshot = snapshot_now(&mut sm).await;
    let other = TempDir::new().unwrap();
    let (_dir2, _log2, mut sm2) = open(other.path());
    sm2.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(registry_of(&sm2).0, state);
    // Closing s1 after the restart removes all its members and only them.
    sm.apply([normal(
        2,
        index + 1,
        vec![Command::CloseSession {
            client_id: "s1".into(),
        }],
    )])
    .await
    .unwrap();
    let (after, _) = registry_of(&sm);
    assert!(after.members.values().all(|m| &*m.client_id != "s1"));
    assert_eq!(
        after.members.len(),
        state
            .members
            .values()
            .filter(|m| &*m.client_id != "s1")
            .count()
    );
}

// ---------------------------------------------------------------------------
// Many stores in one process
// ---------------------------------------------------------------------------

/// Regression test for sled 0.34's batch/flush deadlock (see `gate.rs`):
/// several stores in one process, each appending (batch + flush) and
/// applying (batch) at once from many tasks. Run on both kinds of runtime,
/// because the stores flush differently on each (`flush.rs`): on a
/// current-thread runtime through sled's thread pool, the path that
/// deadlocked. Without the gate a run of that case hung about every other
/// time (measured by replacing the gate with a new mutex per call), so it
/// runs three times; with the gate, each run takes about a second.
///
/// The work runs on a thread of its own and the test waits for it with a
/// deadline, so a deadlock fails the test instead of hanging the suite.
/// Data dirs are opened on blocking threads, as the node opens them:
/// `DataDir::open` waits for the gate by polling, which must not happen on
/// a runtime worker that a gate holder needs.
#[test]
fn stores_in_one_process_never_deadlock_in_sled() {
    let multi_thread = || runtime_of(4);
    let current_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    // The current-thread case three times: without the gate one run of it
    // deadlocked about every other time.
    for (flavor, runtime) in [
        (
            "multi-thread",
            multi_thread as fn() -> tokio::runtime::Runtime,
        ),
        ("current-thread", current_thread),
        ("current-thread", current_thread),
        ("current-thread", current_thread),
    ] {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(runtime().block_on(busy_stores()));
        });
        let indexes = done_rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("{flavor}: stores deadlocked in sled (no end in 120 s)"));
        assert_eq!(indexes, vec![BUSY_ENTRIES - 1; BUSY_STORES], "{flavor}");
    }
}

const BUSY_STORES: usize = 12;
const BUSY_ENTRIES: u64 = 600;

/// Appends and applies on `BUSY_STORES` stores at once; returns each one's
/// applied index.
async fn busy_stores() -> Vec<u64> {
    let mut tasks = tokio::task::JoinSet::new();
    for store in 0..BUSY_STORES {
        tasks.spawn(async move {
            let tmp = tempfile::tempdir().unwrap();
            let path = tmp.path().to_path_buf();
            let (_dir, mut log, mut sm) = tokio::task::spawn_blocking(move || open(&path))
                .await
                .unwrap();
            let client = format!("s{store}");
            let mut entries = vec![membership(1, 1, &[1])];
            entries.push(normal(1, 2, vec![open_session(&client)]));
            for index in 3..BUSY_ENTRIES {
                let id = format!("m{}", index % 10);
                entries.push(normal(1, index, vec![register(&client, index, &id)]));
            }
            // Appends and applies interleave, a few entries at a time, as on
            // a node under load.
            for chunk in entries.chunks(3) {
                log.blocking_append(chunk.to_vec()).await.unwrap();
                sm.apply(chunk.to_vec()).await.unwrap();
            }
            let (_, index) = registry_of(&sm);
            drop(tmp);
            index
        });
    }
    let mut indexes = Vec::new();
    while let Some(index) = tasks.join_next().await {
        indexes.push(index.unwrap());
    }
    indexes
}

#[tokio::test]
async fn a_format_3_state_older_than_the_snapshot_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = {
        let (dir, _log, mut sm) = open(tmp.path());
        sm.apply(script()).await.unwrap();
        snapshot_now(&mut sm).await;
        // A stored state at index 3, behind the snapshot at 6.
        let tree = dir.db.open_tree("sm").unwrap();
        tree.insert(b"mstale", b"not even a member".to_vec())
            .unwrap();
        tree.insert(
            b"xlast_applied",
            crate::codec::encode(&Some(lid(1, 3))).unwrap(),
        )
        .unwrap();
        dir.db.flush().unwrap();
        registry_of(&sm)
    };
    let (dir, _log, sm) = open(tmp.path());
    assert_eq!(registry_of(&sm), expected);
    assert_eq!(sm.snapshot_index(), Some(6));
    let keys = sm_keys(&dir);
    assert_eq!(keys, vec![b"xsnapshot".to_vec()]);
}

#[tokio::test]
async fn an_older_snapshot_finishing_after_a_newer_one_does_not_become_current() {
    // openraft builds snapshots beside installs: a build that captured an
    // older state can finish after a newer snapshot became current.
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, _log, mut sm) = open(tmp.path());
    sm.apply(script()).await.unwrap();
    let newer = snapshot_now(&mut sm).await;
    let membership = StoredMembership::new(Some(lid(1, 1)), voters(&[1]));
    sm.commit_snapshot(Some(lid(1, 3)), membership, b"older".to_vec())
        .await
        .unwrap();
    // An older snapshot must not replace a newer one.
    let got = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(got.meta, newer.meta);
    assert_eq!(got.snapshot.get_ref(), newer.snapshot.get_ref());
    assert_eq!(
        snapshot_files(tmp.path()).len(),
        1,
        "the older file is gone"
    );
    drop((sm, _log, _dir));
    let (_dir, _log, sm) = open(tmp.path());
    assert_eq!(sm.snapshot_index(), Some(6));
}

#[tokio::test]
async fn the_log_is_purged_only_behind_a_durable_snapshot() {
    // openraft purges the log a snapshot covers while the snapshot is still
    // being installed; a log store linked to its state machine purges no
    // entry that a durable snapshot lacks.
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log, mut sm) = open(tmp.path());
        let mut entries = script();
        let rest = entries.split_off(3);
        append_and_apply(&mut log, &mut sm, entries).await;
        log.purge(lid(1, 2)).await.unwrap();
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            [1, 2, 3],
            "no snapshot: nothing purged"
        );
        snapshot_now(&mut sm).await;
        append_and_apply(&mut log, &mut sm, rest).await;
        // Asked up to 5, purged up to the snapshot's 3.
        log.purge(lid(1, 5)).await.unwrap();
        assert_eq!(indexes(&all_entries(&mut log).await), [4, 5, 6]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(1, 3)));
    }
    // The snapshot and the log still make the whole state.
    let (_dir, mut log, sm) = restart(tmp.path()).await;
    assert_eq!(registry_of(&sm).1, 6);
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(lid(1, 3))
    );
}

#[tokio::test]
async fn a_purge_cut_short_by_an_install_leaves_no_hole_at_the_next_start() {
    // A follower whose log ends at 3 is sent a snapshot at 6. openraft asks
    // for the purge up to 6 while the install is not yet durable (the purge
    // goes nowhere: no durable snapshot covers it), then appends 7. At the
    // next start the log holds 1..=3 and 7: read from the start, it has a
    // hole at 4, so it must start after the snapshot.
    let sender = tempfile::tempdir().unwrap();
    let (_sender_dir, mut sender_log, mut sender_sm) = open(sender.path());
    let entries = script();
    append_and_apply(&mut sender_log, &mut sender_sm, entries.clone()).await;
    let snap = snapshot_now(&mut sender_sm).await;

    let tmp = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log, mut sm) = open(tmp.path());
        append_and_apply(&mut log, &mut sm, entries[..3].to_vec()).await;
        log.purge(lid(1, 6)).await.unwrap();
        assert_eq!(
            indexes(&all_entries(&mut log).await),
            [1, 2, 3],
            "the purge was cut short"
        );
        let mut received = sm.begin_receiving_snapshot().await.unwrap();
        received.write_all(snap.snapshot.get_ref()).unwrap();
        sm.install_snapshot(&snap.meta, received).await.unwrap();
        append_and_apply(
            &mut log,
            &mut sm,
            vec![normal(1, 7, vec![register("s1", 5, "m3")])],
        )
        .await;
    }
    let (_dir, mut log, sm) = restart(tmp.path()).await;
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(1, 6)));
    assert_eq!(state.last_log_id, Some(lid(1, 7)));
    assert_eq!(registry_of(&sm).1, 7);
    assert!(registry_of(&sm).0.members.contains_key("m3"));

    // A log this node wrote itself, purged behind its own snapshot, starts
    // at its marker as before.
    let own = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log, mut sm) = open(own.path());
        append_and_apply(&mut log, &mut sm, entries.clone()).await;
        snapshot_now(&mut sm).await;
        log.purge(lid(1, 4)).await.unwrap();
    }
    let (_dir, mut log, _sm) = restart(own.path()).await;
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(1, 4)));
    assert_eq!(state.last_log_id, Some(lid(1, 6)));
}

/// Entries and members are stored (log, snapshots) and sent to peers in
/// postcard. Sharing a request's commands (`Arc<[Command]>`) must not
/// change a byte of that, or a node could not read its own data dir after
/// an upgrade, nor talk to a peer of the previous release. The bytes below
/// were produced by the release before the sharing (`Vec<Command>`).
#[test]
fn entries_and_members_encode_as_before_commands_were_shared() {
    let spec = MemberSpec {
        id: "m-1".into(),
        service: "web".into(),
        locality: "dc1".into(),
        revision: "v1".into(),
        created_ms: 5,
        metadata: crate::Metadata::from([("k".to_string(), "v".to_string())]),
    };
    let entry = Entry {
        log_id: openraft::testing::log_id(2, 1, 7),
        payload: EntryPayload::Normal(Request {
            now_ms: 9,
            commands: vec![
                Command::OpenSession {
                    client_id: "c".into(),
                    heartbeat_timeout_ms: 1,
                    reconnect_timeout_ms: 2,
                },
                Command::Register {
                    origin: Origin {
                        client_id: "c".into(),
                        seq: 3,
                        ack_below: 2,
                    },
                    spec: spec.clone(),
                },
            ]
            .into(),
        }),
    };
    let member = crate::Member {
        spec,
        status: crate::MemberStatus::Down,
        client_id: "c".into(),
        create_index: 4,
        mod_index: 6,
    };
    let entry_bytes: &[u8] = &[
        2, 1, 7, 1, 9, 2, 0, 1, 99, 1, 2, 1, 1, 99, 3, 2, 3, 109, 45, 49, 3, 119, 101, 98, 3, 100,
        99, 49, 2, 118, 49, 5, 1, 1, 107, 1, 118,
    ];
    let member_bytes: &[u8] = &[
        3, 109, 45, 49, 3, 119, 101, 98, 3, 100, 99, 49, 2, 118, 49, 5, 1, 1, 107, 1, 118, 1, 1,
        99, 4, 6,
    ];
    assert_eq!(crate::codec::encode(&entry).unwrap(), entry_bytes);
    assert_eq!(crate::codec::encode(&member).unwrap(), member_bytes);
    assert_eq!(crate::codec::decode::<Entry>(entry_bytes).unwrap(), entry);
    assert_eq!(
        crate::codec::decode::<crate::Member>(member_bytes).unwrap(),
        member
    );
}

/// Stored answers (a session's `answers`, in snapshots) and forwarded ones
/// keep the encoding of the answers that came before `Removed`: it was
/// added last, so the variants before it keep their numbers, and data
/// written before it still reads.
#[test]
fn answers_encode_as_before_removals_carried_their_index() {
    let done: CommandResult = Ok(Outcome::Done);
    assert_eq!(postcard::to_allocvec(&done).unwrap(), [0, 2]);
    let removed: CommandResult = Ok(Outcome::Removed { index: 300 });
    let bytes = postcard::to_allocvec(&removed).unwrap();
    assert_eq!(bytes, [0, 3, 0xac, 0x02]);
    assert_eq!(
        postcard::from_bytes::<CommandResult>(&bytes).unwrap(),
        removed
    );
    let refused: CommandResult = Err(ApplyError::MemberNotFound("m".into()));
    assert_eq!(postcard::to_allocvec(&refused).unwrap(), [1, 0, 1, b'm']);
}

/// A purge writes a record: the purged entries are never read again, and
/// they leave the disk with the whole segments that hold nothing else.
#[tokio::test]
async fn purged_entries_are_never_read_and_leave_with_their_segments() {
    let tmp = tempfile::tempdir().unwrap();
    // Each open starts a segment: 1..=50 in one, 51..=100 in the next.
    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        log.blocking_append((1..=50).map(|i| blank(1, i)).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    let (_dir, mut log) = open_log_alone(tmp.path());
    log.blocking_append((51..=100).map(|i| blank(1, i)).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(log.segments_on_disk(), 2);
    log.purge(lid(1, 40)).await.unwrap();
    assert_eq!(
        log.segments_on_disk(),
        2,
        "41..=50 are still alive in the first"
    );
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (41..=100).collect::<Vec<_>>()
    );
    let mut reader = log.get_log_reader().await;
    assert!(reader.try_get_log_entries(..=40).await.unwrap().is_empty());
    assert_eq!(
        log.get_log_state().await.unwrap().last_purged_log_id,
        Some(lid(1, 40))
    );

    log.purge(lid(1, 60)).await.unwrap();
    assert_eq!(log.segments_on_disk(), 1);
    assert_eq!(
        indexes(&all_entries(&mut log).await),
        (61..=100).collect::<Vec<_>>()
    );

    // Purging everything leaves no last index, and a start finds the same.
    log.purge(lid(1, 100)).await.unwrap();
    assert_eq!(log.last_index(), None);
    assert!(all_entries(&mut log).await.is_empty());
    drop(log);
    drop(_dir);
    let (_dir, mut log) = open_log_alone(tmp.path());
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(lid(1, 100)));
    assert_eq!(state.last_log_id, Some(lid(1, 100)));
    assert!(all_entries(&mut log).await.is_empty());
}

/// Writes blank entries of term 2 where format 5 and before kept the log:
/// sled's `log` tree, by big-endian index.
fn put_old_log_entries(dir: &DataDir, indexes: std::ops::RangeInclusive<u64>) {
    let tree = dir.db.open_tree("log").unwrap();
    for i in indexes {
        tree.insert(i.to_be_bytes(), crate::codec::encode(&blank(2, i)).unwrap())
            .unwrap();
    }
}

/// Format 5 and before kept the log in sled. Opening such a data dir moves
/// the entries above the purge marker, the vote and both markers into the
/// segment files, and drops the sled trees.
#[tokio::test]
async fn a_log_kept_in_sled_moves_into_the_segment_files() {
    let tmp = tempfile::tempdir().unwrap();
    let vote = Vote::new_committed(3, 2);
    {
        let dir = DataDir::open(tmp.path(), CACHE).unwrap();
        let meta = dir.db.open_tree("raft_meta").unwrap();
        // Entries 1..=3 are purged but still on disk, as format 5 left them.
        put_old_log_entries(&dir, 1..=8);
        meta.insert("vote", crate::codec::encode(&vote).unwrap())
            .unwrap();
        meta.insert("committed", crate::codec::encode(&Some(lid(2, 6))).unwrap())
            .unwrap();
        meta.insert("last_purged", crate::codec::encode(&lid(2, 3)).unwrap())
            .unwrap();
        set_format(&dir, 5);
        dir.db.flush().unwrap();
    }
    for _ in 0..2 {
        let (dir, mut log) = open_log_alone(tmp.path());
        assert_current_format(&dir);
        let names = dir.db.tree_names();
        assert!(
            !names
                .iter()
                .any(|n| n.as_ref() == b"log" || n.as_ref() == b"raft_meta"),
            "the sled trees are dropped"
        );
        assert_eq!(indexes(&all_entries(&mut log).await), [4, 5, 6, 7, 8]);
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(lid(2, 6)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(lid(2, 3)));
        assert_eq!(state.last_log_id, Some(lid(2, 8)));
    }
}

/// An import that finished, then a crash before sled dropped the old
/// trees for good (one dropped, the other not): the folder is the log,
/// and the trees left are dropped, not imported again.
#[tokio::test]
async fn a_finished_import_is_not_redone_from_trees_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let dir = DataDir::open(tmp.path(), CACHE).unwrap();
        put_old_log_entries(&dir, 1..=5);
        set_format(&dir, 5);
        dir.db.flush().unwrap();
    }
    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        assert_eq!(indexes(&all_entries(&mut log).await), [1, 2, 3, 4, 5]);
    }
    {
        // What such a crash leaves: the entries' tree gone, the markers'
        // tree still there.
        let dir = DataDir::open(tmp.path(), CACHE).unwrap();
        let meta = dir.db.open_tree("raft_meta").unwrap();
        meta.insert("vote", crate::codec::encode(&Vote::new(1, 1)).unwrap())
            .unwrap();
        dir.db.flush().unwrap();
    }
    let (dir, mut log) = open_log_alone(tmp.path());
    assert_eq!(indexes(&all_entries(&mut log).await), [1, 2, 3, 4, 5]);
    assert!(
        !dir.db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"raft_meta"),
        "the tree left is dropped"
    );
}

/// A data dir whose Raft log folder is gone must not start as a new node
/// would: it could vote twice in a term, or lose acknowledged writes.
#[tokio::test]
async fn a_data_dir_that_lost_its_log_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
    }
    std::fs::remove_dir_all(tmp.path().join("raft-log")).unwrap();
    let dir = DataDir::open(tmp.path(), CACHE).unwrap();
    let err = LogStore::open(&dir).unwrap_err();
    assert!(
        err.to_string().contains("the folder raft-log/ is missing"),
        "{err}"
    );
    // The same with a tree of the old log left behind by an import: it is
    // dropped, and the log's absence still refused.
    dir.db
        .open_tree("raft_meta")
        .unwrap()
        .insert("vote", crate::codec::encode(&Vote::new(1, 1)).unwrap())
        .unwrap();
    let err = LogStore::open(&dir).unwrap_err();
    assert!(
        err.to_string().contains("the folder raft-log/ is missing"),
        "{err}"
    );
    assert!(!tmp.path().join("raft-log").exists(), "no empty log made");
}

// ---------------------------------------------------------------------------
// The leader's own appends (see `log_sync`)
// ---------------------------------------------------------------------------

/// Opens the stores of a data dir as node 1, which `lid` names as leader.
fn open_as_node_1(path: &Path) -> (DataDir, LogStore, StateMachineStore) {
    let dir = DataDir::open(path, CACHE).expect("open data dir");
    if dir.node_id().unwrap().is_none() {
        dir.set_node_id(1).unwrap();
    }
    let (log, sm) = open_stores(&dir, FeedConfig::default()).expect("open stores");
    (dir, log, sm)
}

/// Opens the stores of a data dir as node 1, established as the leader of
/// term 1 (its appends are its own); also returns the log's `LogSync`.
async fn open_as_leader(path: &Path) -> (DataDir, LogStore, StateMachineStore, LogSync) {
    let (dir, mut log, sm) = open_as_node_1(path);
    log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    let sync = log.sync();
    (dir, log, sm, sync)
}

/// Lets the runtime run other tasks a few times.
async fn yield_a_few_times() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_leaders_own_appends_are_reported_at_once_and_applied_only_once_synced() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, mut sm, sync) = open_as_leader(tmp.path()).await;
    let entries = script();

    let held = sync.hold.hold();
    log.blocking_append(entries.clone()).await.unwrap();
    assert!(!sync.all_durable(), "reported before it is synced");
    assert_eq!(all_entries(&mut log).await, entries, "readable at once");
    assert_eq!(
        sync.commit_to_send(Some(lid(1, 6))),
        None,
        "followers are told of no commit that is not durable here"
    );
    let apply = tokio::spawn(async move {
        let responses = sm.apply(entries).await;
        (sm, responses)
    });
    yield_a_few_times().await;
    assert!(!apply.is_finished(), "applied before it is durable");

    drop(held);
    let (sm, responses) = apply.await.unwrap();
    assert_eq!(responses.unwrap().len(), 6);
    assert!(sync.all_durable());
    assert_eq!(registry_of(&sm).1, 6);
    assert_eq!(sync.commit_to_send(Some(lid(1, 6))), Some(lid(1, 6)));
}

#[tokio::test]
async fn appends_of_another_leader_or_a_candidate_are_synced_before_they_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, _sm) = open_as_node_1(tmp.path());
    let sync = log.sync();
    let entries = script();
    // The sync thread is held throughout: a write that waited for it, or
    // that it were left to, would not be durable when reported.
    let _held = sync.hold.hold();
    log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
    log.blocking_append(entries[..2].to_vec()).await.unwrap();
    assert!(sync.all_durable(), "a follower's append is synced first");
    log.save_vote(&Vote::new(2, 1)).await.unwrap();
    log.blocking_append(entries[2..4].to_vec()).await.unwrap();
    assert!(sync.all_durable(), "a candidate's vote is not a leader's");

    // A leader's own write, then a step down: the vote's sync covers it.
    log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    log.blocking_append(entries[4..].to_vec()).await.unwrap();
    assert!(!sync.all_durable());
    log.save_vote(&Vote::new(3, 3)).await.unwrap();
    assert!(
        sync.all_durable(),
        "the vote's sync covers the writes before it"
    );
    assert_eq!(all_entries(&mut log).await, entries);
}

#[tokio::test]
async fn a_lone_leader_syncs_its_appends_before_reporting_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, _sm, sync) = open_as_leader(tmp.path()).await;
    let entries = script();
    // The sync thread is held: only a sync before the report makes an
    // append durable.
    let _held = sync.hold.hold();
    let alone = log.alone();
    alone.set(true);
    log.blocking_append(entries[..3].to_vec()).await.unwrap();
    assert!(sync.all_durable(), "alone: synced before it is reported");
    alone.set(false);
    log.blocking_append(entries[3..].to_vec()).await.unwrap();
    assert!(!sync.all_durable(), "with others: reported before its sync");
    assert_eq!(all_entries(&mut log).await, entries);
}

#[test]
fn a_lone_leaders_sync_runs_on_its_only_worker() {
    runtime_of(1).block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let (_dir, mut log, _sm, sync) = open_as_leader(tmp.path()).await;
        let entries = script();
        let _held = sync.hold.hold();
        log.alone().set(true);
        // A slow sync (the first one runs where quick ones have run): the
        // task beside it waits for it.
        log.forget_slow_syncs();
        log.slow_next_syncs(1, crate::sync_place::SLOW_SYNC * 5);
        let calls = log.sync_calls();
        let (beside, appended) = append_beside_a_task(log.clone(), entries.clone()).await;
        assert_eq!(log.sync_calls(), calls + 1, "synced before it is reported");
        assert!(sync.all_durable());
        assert!(
            beside > appended,
            "the sync ran on the only worker: its LIFO task ran after it ({beside:?}, {appended:?})"
        );
        assert_eq!(all_entries(&mut log).await, entries);
    });
}

/// Appends `entries` as a follower in a task of its own, with a task
/// spawned from it just before (tokio keeps such a task in the worker's
/// LIFO slot, which no other worker takes): returns when that task ran and
/// when the append was reported, both measured from a common start.
async fn append_beside_a_task(
    log: LogStore,
    entries: Vec<Entry>,
) -> (std::time::Duration, std::time::Duration) {
    let start = std::time::Instant::now();
    tokio::spawn(async move {
        let mut log = log;
        let beside = tokio::spawn(async move { start.elapsed() });
        log.blocking_append(entries).await.unwrap();
        let appended = start.elapsed();
        (beside.await.unwrap(), appended)
    })
    .await
    .unwrap()
}

/// A multi-thread runtime of `workers` workers (the node's Raft runtime
/// has one on two cores).
fn runtime_of(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_followers_sync_runs_on_its_worker_until_one_is_slow() {
    // On a runtime of one worker too: there the hand-off (`block_in_place`)
    // moves the worker's scheduler, LIFO slot included, to another thread.
    for workers in [1, 2] {
        runtime_of(workers).block_on(a_followers_sync_runs_on_its_worker_until_one_is_slow_on());
    }
}

async fn a_followers_sync_runs_on_its_worker_until_one_is_slow_on() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, _sm) = open_as_node_1(tmp.path());
    log.save_vote(&Vote::new_committed(1, 2)).await.unwrap();
    let entries = script();

    // A slow sync on the worker: the task beside it waits, since the
    // worker does not hand its scheduler over.
    log.forget_slow_syncs();
    log.slow_next_syncs(1, crate::sync_place::SLOW_SYNC * 5);
    let calls = log.sync_calls();
    let (beside, appended) = append_beside_a_task(log.clone(), entries[..2].to_vec()).await;
    assert_eq!(log.sync_calls(), calls + 1, "synced before it is reported");
    assert!(
        beside > appended,
        "the sync ran on the worker: its LIFO task ran after it ({beside:?}, {appended:?})"
    );

    // After it, syncs are handed off: the task beside the next one runs
    // during it.
    log.slow_next_syncs(1, crate::sync_place::SLOW_SYNC * 5);
    let (beside, appended) = append_beside_a_task(log.clone(), entries[2..4].to_vec()).await;
    assert_eq!(log.sync_calls(), calls + 2);
    assert!(
        beside < appended,
        "after a slow sync the next is handed off: the task beside it ran during it \
         ({beside:?}, {appended:?})"
    );
    // A handed-off sync is timed too: a slow one keeps the next ones
    // handed off for longer.
    let first_slow = log.handed_off_until().expect("handed off");
    log.slow_next_syncs(1, crate::sync_place::SLOW_SYNC * 5);
    append_beside_a_task(log.clone(), entries[4..].to_vec()).await;
    let later_slow = log.handed_off_until().expect("handed off");
    assert!(
        later_slow > first_slow,
        "{later_slow:?} after {first_slow:?}"
    );
    assert_eq!(all_entries(&mut log).await, entries);
}

#[tokio::test]
async fn a_leader_reopened_stands_down_to_a_candidate_of_its_term_and_keeps_its_log() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = script();
    {
        let (_dir, mut log, _sm) = open_as_node_1(tmp.path());
        assert!(!log.stepped_down());
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        let sync = log.sync();
        let _held = sync.hold.hold();
        log.blocking_append(entries[..3].to_vec()).await.unwrap();
        assert!(!sync.all_durable());
        // Closed with the write not yet synced (it is in the page cache; a
        // start syncs the segment it finds).
    }
    let (dir, mut log, sm) = open_as_node_1(tmp.path());
    assert!(log.stepped_down());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new(1, 1)),
        "a candidate of the same term: openraft does not restore it as leader"
    );
    assert_eq!(all_entries(&mut log).await, entries[..3]);
    let sync = log.sync();
    let _held = sync.hold.hold();
    log.blocking_append(entries[3..].to_vec()).await.unwrap();
    assert!(sync.all_durable(), "not a leader: synced before reported");
    assert_eq!(all_entries(&mut log).await, entries);
    drop((dir, log, sm, _held, sync));

    // Only its own vote as leader is stepped down.
    {
        let (_dir, mut log, _sm) = open_as_node_1(tmp.path());
        assert!(!log.stepped_down());
        log.save_vote(&Vote::new_committed(2, 3)).await.unwrap();
    }
    let (_dir, mut log, _sm) = open_as_node_1(tmp.path());
    assert!(!log.stepped_down());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 3))
    );
}

#[tokio::test]
async fn after_a_failed_sync_nothing_pending_is_ever_reported_durable() {
    // The sync thread's sync fails; a later sync of the same file would
    // succeed on Linux, and must not settle what the failed one left.
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, mut sm, sync) = open_as_leader(tmp.path()).await;
    let entries = script();
    log.fail_next_sync();
    log.blocking_append(entries[..2].to_vec()).await.unwrap();
    let e = sync.wait_durable(2).await.unwrap_err();
    assert!(e.to_string().contains("planted"), "{e}");
    let e = sm.apply(entries[..2].to_vec()).await.unwrap_err();
    assert!(e.to_string().contains("planted"), "{e}");
    let e = log.save_vote(&Vote::new(2, 2)).await.unwrap_err();
    assert!(e.to_string().contains("failed"), "{e}");
    assert!(!sync.all_durable());

    // A vote's sync fails while the leader's write waits for the thread.
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, _sm, sync) = open_as_leader(tmp.path()).await;
    let held = sync.hold.hold();
    log.blocking_append(entries[..2].to_vec()).await.unwrap();
    log.fail_next_sync();
    log.save_vote(&Vote::new(2, 2)).await.unwrap_err();
    let calls = log.sync_calls();
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log.sync_calls() == calls {
        assert!(
            std::time::Instant::now() < deadline,
            "the sync thread never synced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    sync.wait_durable(2).await.unwrap_err();
    assert!(
        !sync.all_durable(),
        "the thread's sync after the failure settles nothing"
    );
}

#[tokio::test]
async fn the_commit_marker_outlives_a_kill_with_no_write_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (_dir, mut log) = open_log_alone(tmp.path());
        log.blocking_append(script()).await.unwrap();
        log.save_committed(Some(lid(1, 6))).await.unwrap();
        // No clean close (which writes a marker still pending): what a
        // kill leaves. The leaked store's sync thread waits until the
        // test process ends.
        std::mem::forget(log);
    }
    let (_dir, mut log) = open_log_alone(tmp.path());
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(lid(1, 6)),
        "a restart applies as far as the marker: it must not lag the answers given"
    );
}

#[tokio::test]
async fn applying_counts_the_entries_with_commands_and_their_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, mut log, mut sm) = open(tmp.path());
    let counts = |sm: &StateMachineStore| {
        let c = sm.registry().applied_counts();
        (c.entries, c.commands, c.offers)
    };
    assert_eq!(counts(&sm), (0, 0, 0));
    append_and_apply(&mut log, &mut sm, script()).await;
    // Four entries carry eight commands; the membership and the blank
    // entry carry none and are not counted. Nobody is subscribed.
    assert_eq!(counts(&sm), (4, 8, 0));
    append_and_apply(&mut log, &mut sm, vec![normal(1, 7, vec![])]).await;
    assert_eq!(counts(&sm), (4, 8, 0));
    // Two subscriptions: each entry with commands is offered to both.
    let registry = sm.registry();
    let _subscribed = [
        registry.read_and_subscribe(|_| ()).unwrap(),
        registry.read_and_subscribe(|_| ()).unwrap(),
    ];
    append_and_apply(
        &mut log,
        &mut sm,
        vec![
            normal(1, 8, vec![register("s1", 5, "m3")]),
            normal(1, 9, vec![register("s1", 6, "m4")]),
        ],
    )
    .await;
    assert_eq!(counts(&sm), (6, 10, 4));
}
