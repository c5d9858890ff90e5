//! Fan-out: N subscribers (1 000 and 10 000, spread over the nodes of a
//! 3-node in-process cluster) each receiving every committed change. One
//! iteration is one registration committed and delivered to every
//! subscriber, so criterion's time is the commit-to-last-delivery latency
//! and its throughput (elements = N) is deliveries per second.
//!
//! `cargo bench -p fuddle-benches --bench fanout` runs it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, spec};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fuddle_client::{Client, Event, Filter, SessionOptions};
use futures::StreamExt;
use tokio::sync::Notify;

/// Subscriptions share this many gRPC connections per node, as a client
/// library multiplexes streams.
const CONNECTIONS_PER_NODE: usize = 8;

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let cluster = runtime.block_on(Cluster::start(3));
    let addrs = cluster.addrs();
    for subscribers in [1_000usize, 10_000] {
        // Every delivery of an `Events` message bumps the counter; the
        // writer waits until all subscribers saw its change.
        let delivered = Arc::new(AtomicU64::new(0));
        let notify = Arc::new(Notify::new());
        let (session, tasks) = runtime.block_on(async {
            let mut clients = Vec::new();
            for addr in &addrs {
                for _ in 0..CONNECTIONS_PER_NODE {
                    clients.push(Client::connect([addr.clone()]).await.unwrap());
                }
            }
            let mut tasks = Vec::new();
            for i in 0..subscribers {
                let client = clients[i % clients.len()].clone();
                let mut sub = client.subscribe(Filter::all(), None).await.unwrap();
                let delivered = delivered.clone();
                let notify = notify.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(Ok(event)) = sub.next().await {
                        if let Event::Changes { changes, .. } = event {
                            delivered.fetch_add(changes.len() as u64, Ordering::Relaxed);
                            notify.notify_waiters();
                        }
                    }
                }));
            }
            let writer = Client::connect(addrs.clone()).await.unwrap();
            (
                writer
                    .open_session(SessionOptions::default())
                    .await
                    .unwrap(),
                tasks,
            )
        });
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::new("3_nodes", format!("{subscribers}_subscribers")),
            &subscribers,
            |b, &n| {
                let mut i = 0u64;
                b.to_async(&runtime).iter_custom(|iters| {
                    let delivered = delivered.clone();
                    let notify = notify.clone();
                    let session = &session;
                    let start_i = i;
                    i += iters;
                    async move {
                        let start = Instant::now();
                        for k in 0..iters {
                            let target = delivered.load(Ordering::Relaxed) + n as u64;
                            session
                                .register(spec(format!("f{n}-{}", (start_i + k) % 64)))
                                .await
                                .unwrap();
                            while delivered.load(Ordering::Relaxed) < target {
                                let _ = tokio::time::timeout(
                                    Duration::from_millis(10),
                                    notify.notified(),
                                )
                                .await;
                            }
                        }
                        start.elapsed()
                    }
                });
            },
        );
        for t in tasks {
            t.abort();
        }
        drop(session);
    }
    runtime.block_on(cluster.shutdown());
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
