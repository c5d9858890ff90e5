//! Registrations committed per second on an in-process cluster of 1 and 3
//! nodes, with 1, 64 and 256 concurrent writers, each registration carrying
//! ~256 bytes of metadata. Writers spread over every node (followers
//! forward to the leader), through the SDK, as real clients would.
//!
//! `cargo bench -p fuddle-benches --bench write_throughput` runs it.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, spec};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fuddle_client::{Client, SessionOptions};

/// Writers share sessions in groups, as threads of one process would.
const WRITERS_PER_SESSION: usize = 16;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("write_throughput");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for nodes in [1usize, 3] {
        let cluster = runtime.block_on(Cluster::start(nodes));
        let addrs = cluster.addrs();
        for writers in [1usize, 64, 256] {
            let sessions = runtime.block_on(async {
                let mut sessions = Vec::new();
                for i in 0..writers.div_ceil(WRITERS_PER_SESSION) {
                    // Rotate the first address so sessions spread over nodes.
                    let mut a = addrs.clone();
                    a.rotate_left(i % addrs.len());
                    let client = Client::connect(a).await.unwrap();
                    sessions.push(Arc::new(
                        client
                            .open_session(SessionOptions::default())
                            .await
                            .unwrap(),
                    ));
                }
                sessions
            });
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(
                BenchmarkId::new(format!("{nodes}_nodes"), format!("{writers}_writers")),
                &writers,
                |b, &writers| {
                    b.to_async(&runtime).iter_custom(|iters| {
                        let sessions = sessions.clone();
                        async move {
                            let start = Instant::now();
                            let mut tasks = Vec::new();
                            for w in 0..writers {
                                let session = sessions[w / WRITERS_PER_SESSION].clone();
                                // Each writer does its share; ids rotate over
                                // a small set so the registry stays small.
                                let share = iters / writers as u64
                                    + u64::from((w as u64) < iters % writers as u64);
                                tasks.push(tokio::spawn(async move {
                                    for i in 0..share {
                                        session
                                            .register(spec(format!(
                                                "n{nodes}-c{writers}-w{w}-{}",
                                                i % 16
                                            )))
                                            .await
                                            .unwrap();
                                    }
                                }));
                            }
                            for t in tasks {
                                t.await.unwrap();
                            }
                            start.elapsed()
                        }
                    });
                },
            );
            drop(sessions);
        }
        runtime.block_on(cluster.shutdown());
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
