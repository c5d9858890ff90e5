//! Where the time of one write goes in the storage layer alone: appending
//! log entries to sled (with the flush that makes them durable), reading
//! them back as openraft does to replicate and apply them, applying
//! them to the registry state alone, and applying them through openraft's
//! state machine store (the state in memory plus the change feed; since
//! data dir format 4 it writes nothing to sled).
//!
//! `cargo bench -p fuddle-benches --bench storage` runs it; add
//! `-- --quick` for a smoke run.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fuddle_storage::{
    Command, DataDir, Entry, FeedConfig, LogStore, MemberSpec, Origin, RegistryState, Request,
    StateMachineStore, open_stores,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{EntryPayload, RaftLogReader};

/// Registrations per log entry: one entry carries a batch of client
/// commands, as the node's proposer builds them under load.
const BATCHES: [usize; 3] = [1, 64, 256];

/// A registration with ~256 bytes of metadata, like the write benchmark's.
fn register(client: &str, seq: u64, id: usize) -> Command {
    Command::Register {
        origin: Origin {
            client_id: client.to_string(),
            seq,
            ack_below: seq,
        },
        spec: MemberSpec {
            id: format!("member-{id}"),
            service: "orders".into(),
            locality: "aws.us-east-1.us-east-1b".into(),
            revision: "v1.4.2".into(),
            created_ms: 1,
            metadata: fuddle_storage::Metadata::from([("payload".to_string(), "x".repeat(240))]),
        },
    }
}

fn open_session(client: &str) -> Command {
    Command::OpenSession {
        client_id: client.to_string(),
        heartbeat_timeout_ms: 30_000,
        reconnect_timeout_ms: 600_000,
    }
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: openraft::testing::log_id(1, 1, index),
        payload: EntryPayload::Normal(Request {
            now_ms: index,
            commands: commands.into(),
        }),
    }
}

/// Entries 2.. each carrying `batch` registrations (entry 1 opens the
/// session), `count` entries in all.
fn entries(batch: usize, count: u64, first: u64, seq: &mut u64) -> Vec<Entry> {
    (first..first + count)
        .map(|index| {
            let commands = (0..batch)
                .map(|i| {
                    *seq += 1;
                    register("bench", *seq, (*seq as usize) * 7 + i)
                })
                .collect();
            entry(index, commands)
        })
        .collect()
}

/// Consecutive entries of `batch` registrations each, from index `first`.
fn entry_source(batch: usize, first: u64) -> impl FnMut() -> Vec<Entry> {
    let (mut index, mut seq) = (first, 0);
    move || {
        let e = entries(batch, 1, index, &mut seq);
        index += 1;
        e
    }
}

/// Stores on a fresh sled data dir (the temp dir lives as long as they do).
fn fresh_stores() -> (tempfile::TempDir, DataDir, LogStore, StateMachineStore) {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::open(dir.path(), 64 << 20).unwrap();
    let (log, sm) = open_stores(&data, FeedConfig::default()).unwrap();
    (dir, data, log, sm)
}

fn bench_log_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("log_append");
    group.sample_size(20);
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("registrations_per_entry", batch),
            &batch,
            |b, &batch| {
                let (_dir, _data, mut log, _sm) = fresh_stores();
                b.iter_batched(
                    entry_source(batch, 1),
                    // One append is one durable flush, as openraft drives
                    // it, and the commit marker openraft saves once the
                    // entry commits: the marker is not flushed itself but
                    // goes out with the next append's flush, which is how
                    // a sled batch once split every flush in three.
                    |e| {
                        let last = e.last().map(|e| e.log_id);
                        runtime.block_on(async {
                            log.blocking_append(e).await.unwrap();
                            log.save_committed(last).await.unwrap();
                        });
                    },
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

/// Reading one entry back: one just appended (openraft reads each entry
/// once per follower and once to apply it, right after appending it), and
/// one appended long before, which the log store no longer holds decoded
/// and reads from sled.
fn bench_log_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("log_read");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        let (_dir, _data, mut log, _sm) = fresh_stores();
        // Far more entries than the log store keeps decoded.
        let count = 1_000;
        let mut seq = 0;
        runtime.block_on(async {
            for e in entries(batch, count, 1, &mut seq) {
                log.blocking_append([e]).await.unwrap();
            }
        });
        for (name, index) in [("just_appended", count), ("older", 1)] {
            group.bench_with_input(BenchmarkId::new(name, batch), &index, |b, &index| {
                b.iter(|| {
                    let read = runtime
                        .block_on(log.try_get_log_entries(index..=index))
                        .unwrap();
                    assert_eq!(read.len(), 1);
                    read
                });
            });
        }
    }
    group.finish();
}

/// Sessions of the re-registration benchmark, and members each: the write
/// benchmark's 256 writers with 8 ids each.
const WRITERS: u64 = 256;
const IDS_PER_WRITER: u64 = 8;
const FLEET: u64 = WRITERS * IDS_PER_WRITER;

/// Consecutive entries of `batch` registrations each, from index `first`,
/// of members cycling through a fleet of `FLEET`, each registered again
/// and again by its own session, as instances re-registering do (and the
/// write benchmark's writers).
fn reregistration_source(batch: usize, first: u64) -> impl FnMut() -> Entry {
    let clients = writer_clients();
    let (mut index, mut seq) = (first, 0u64);
    move || {
        let commands = (0..batch)
            .map(|_| {
                seq += 1;
                let member = seq % FLEET;
                register(
                    &clients[(member / IDS_PER_WRITER) as usize],
                    seq,
                    member as usize,
                )
            })
            .collect();
        index += 1;
        entry(index - 1, commands)
    }
}

/// The client ids of the re-registration benchmark's sessions.
fn writer_clients() -> Vec<String> {
    (0..WRITERS).map(|w| format!("bench-{w}")).collect()
}

/// A registry state with a session open for each of `clients` (entry 1).
fn with_sessions(clients: &[String]) -> RegistryState {
    let mut state = RegistryState::default();
    let open = Request {
        now_ms: 1,
        commands: clients
            .iter()
            .map(|c| open_session(c))
            .collect::<Vec<_>>()
            .into(),
    };
    state.apply(1, &open);
    state
}

/// Applies `e` to `state`, as the state machine does.
fn apply_entry(state: &mut RegistryState, e: &Entry) {
    if let EntryPayload::Normal(request) = &e.payload {
        state.apply(e.log_id.index, request);
    }
}

fn bench_apply_pure(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply_in_memory");
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("reregistrations_per_entry", batch),
            &batch,
            |b, &batch| {
                let mut state = with_sessions(&writer_clients());
                let mut source = reregistration_source(batch, 2);
                // The fleet registered once first: what follows replaces.
                for _ in 0..FLEET.div_ceil(batch as u64) {
                    apply_entry(&mut state, &source());
                }
                b.iter_batched(
                    &mut source,
                    |e| apply_entry(&mut state, &e),
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("registrations_per_entry", batch),
            &batch,
            |b, &batch| {
                let mut state = with_sessions(&["bench".to_string()]);
                let mut source = entry_source(batch, 2);
                b.iter_batched(
                    || source().remove(0),
                    |e| apply_entry(&mut state, &e),
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

fn bench_apply_store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("apply_state_machine");
    group.sample_size(20);
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("registrations_per_entry", batch),
            &batch,
            |b, &batch| {
                let (_dir, _data, _log, mut sm) = fresh_stores();
                runtime
                    .block_on(sm.apply([entry(1, vec![open_session("bench")])]))
                    .unwrap();
                b.iter_batched(
                    entry_source(batch, 2),
                    |e| runtime.block_on(sm.apply(e)).unwrap(),
                    criterion::BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_log_append,
    bench_log_read,
    bench_apply_pure,
    bench_apply_store
);
criterion_main!(benches);
