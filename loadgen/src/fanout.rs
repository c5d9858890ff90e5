//! The `fanout` workload: many subscribers, a few writers, and the time from
//! a write's sending to each subscriber's receiving it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::args::{Cli, FanoutArgs};
use crate::progress;
use crate::report::{FanoutReport, Latency, histogram, record};
use crate::system::{CpuMeter, Received, Subscriber, System, Writer, now_ns, run_tag};
use crate::write::{micros, open_writers};

/// How many subscriptions are being opened at once while setting up.
const SUBSCRIBE_CONCURRENCY: usize = 256;

/// Subscribers record into this many histograms, each behind its own lock:
/// one histogram per subscriber would cost gigabytes at 10 000 of them, one
/// for all would make every delivery wait on the same lock.
const SHARDS: usize = 64;

/// How often the main task looks at the counts.
const POLL: Duration = Duration::from_millis(20);

pub async fn run<S: System>(cli: &Cli, args: &FanoutArgs, bars: bool) -> Result<FanoutReport> {
    let conns = args.conns as usize;
    let subscribers = args.subscribers as usize;
    let tag = run_tag();
    let system = S::connect(&cli.endpoints, conns, &tag).await?;

    // Every subscription is established before the first write, so every
    // subscriber is due every change.
    let setup_start = Instant::now();
    let bar = progress::bar(bars, "subscribing", subscribers as u64);
    let opened: Vec<S::Subscriber> = futures::stream::iter(0..subscribers)
        .map(|index| system.subscriber(index))
        .buffer_unordered(SUBSCRIBE_CONCURRENCY)
        .inspect(|_| bar.inc(1))
        .try_collect()
        .await
        .context("setting up the subscribers")?;
    bar.finish_and_clear();
    let setup_s = setup_start.elapsed().as_secs_f64();

    let (writing, writers) = Writing::<S>::open(cli, args, tag, bars).await?;

    let shared = Arc::new(Shared::new());
    let receivers: Vec<JoinHandle<()>> = opened
        .into_iter()
        .enumerate()
        .map(|(index, subscriber)| {
            tokio::spawn(receive(
                subscriber,
                index % SHARDS,
                args.updates as usize,
                shared.clone(),
            ))
        })
        .collect();

    let cpu = CpuMeter::start();
    let first_write_ns = now_ns();
    let write_start = Instant::now();
    let counts = split(args.updates, args.writers);
    let written = Arc::new(AtomicU64::new(0));
    let senders: Vec<JoinHandle<Sent<S::Writer>>> = writers
        .into_iter()
        .zip(counts)
        .map(|(writer, count)| {
            // Each writer gets its share of the total rate.
            let period = args
                .rate
                .map(|rate| Duration::from_secs_f64(f64::from(args.writers) / rate));
            writing
                .runtime()
                .spawn(send(writer, count, period, written.clone()))
        })
        .collect();

    // Watch the counts until every write is answered and then every
    // delivery is in, or the deadline passes.
    let due_at_most = u64::from(args.updates) * subscribers as u64;
    let bar = progress::bar(bars, "delivering", due_at_most);
    let mut writes_done_at = None;
    loop {
        tokio::time::sleep(POLL).await;
        let delivered = shared.deliveries.load(Ordering::Relaxed);
        bar.set_position(delivered);
        bar.set_message(format!(
            "{} of {} written",
            written.load(Ordering::Relaxed),
            args.updates
        ));
        let now = Instant::now();
        if writes_done_at.is_none() && senders.iter().all(JoinHandle::is_finished) {
            writes_done_at = Some(now);
        }
        if let Some(done_at) = writes_done_at {
            let due = written.load(Ordering::Relaxed) * subscribers as u64;
            if delivered >= due || now >= done_at + args.deadline {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let bench_cpu_cores = cpu.cores();
    for receiver in &receivers {
        receiver.abort();
    }

    let mut write_latency = histogram();
    let (mut writes, mut write_errors, mut first_error) = (0, 0, None);
    let mut writers = Vec::with_capacity(senders.len());
    let mut last_answer = write_start;
    for sender in senders {
        let sent = sender.await.context("a writer panicked")?;
        write_latency
            .add(&sent.latencies)
            .expect("histograms of equal bounds");
        writes += sent.ok;
        write_errors += sent.errors;
        first_error = first_error.or(sent.first_error);
        last_answer = last_answer.max(sent.finished);
        writers.push(sent.writer);
    }
    // The subscriptions go before the sessions, so that the removals the
    // closing makes are not delivered to anyone: the receivers end, and
    // dropping the subscribers' connections ends their streams on the
    // nodes. The sessions close on the writers' own connections, so a
    // node may still be ending some streams when the removals come; the
    // CPU meter stopped before either.
    for receiver in receivers {
        let _ = receiver.await;
    }
    drop(system);
    writing.close(writers).await;

    let mut latency = histogram();
    for shard in &shared.shards {
        latency
            .add(&*shard.lock().expect("histogram lock"))
            .expect("histograms of equal bounds");
    }
    let deliveries = shared.deliveries.load(Ordering::Relaxed);
    let expected = writes * subscribers as u64;
    let last_delivery_ns = shared.last_delivery_ns.load(Ordering::Relaxed);
    let delivery_window_s = last_delivery_ns.saturating_sub(first_write_ns) as f64 / 1e9;
    Ok(FanoutReport {
        workload: "fanout",
        target: S::TARGET,
        endpoints: cli.endpoints.clone(),
        subscribers: args.subscribers,
        updates: args.updates,
        writers: args.writers,
        conns,
        setup_s,
        writes,
        write_errors,
        write_window_s: (last_answer - write_start).as_secs_f64(),
        expected,
        deliveries,
        missing: expected.saturating_sub(deliveries),
        repeated: shared.repeated.load(Ordering::Relaxed),
        delivery_window_s,
        deliveries_per_s: if delivery_window_s > 0.0 {
            deliveries as f64 / delivery_window_s
        } else {
            0.0
        },
        resyncs: shared.resyncs.load(Ordering::Relaxed),
        subscriber_errors: shared.errors.load(Ordering::Relaxed),
        first_error: first_error.or_else(|| shared.first_error.lock().expect("error lock").clone()),
        latency: Latency::of(&latency),
        write_latency: Latency::of(&write_latency),
        bench_cpu_cores,
    })
}

/// The writers, on a runtime and connections of their own: in a
/// deployment they are other processes than the subscribers. Sharing the
/// subscribers' runtime, a writer's answer waited in the run queue behind
/// thousands of subscriber tasks busy with the previous change, so a
/// single writer wrote at the pace of the generator's own backlog.
struct Writing<S: System> {
    /// One worker thread, for the writers' tasks and their connections.
    /// Always `Some` until dropped: a runtime dropped in an async context
    /// panics, so `Drop` shuts it down in the background instead, on every
    /// path out of the run, an early error's included.
    runtime: Option<tokio::runtime::Runtime>,
    /// The writers' connections.
    system: Arc<S>,
}

impl<S: System> Writing<S> {
    /// Connects (one connection per writer, at most 16, as the write
    /// workload) and opens the writers' sessions, all on the new runtime.
    async fn open(
        cli: &Cli,
        args: &FanoutArgs,
        tag: String,
        bars: bool,
    ) -> Result<(Writing<S>, Vec<S::Writer>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fuddle-bench-writers")
            .enable_all()
            .build()
            .context("starting the writers' runtime")?;
        let endpoints = cli.endpoints.clone();
        let (count, value_bytes) = (args.writers as usize, args.value_bytes);
        let opened = runtime.spawn(async move {
            let system = Arc::new(S::connect(&endpoints, count.min(16), &tag).await?);
            let writers = open_writers(&*system, count, value_bytes, bars).await?;
            anyhow::Ok((system, writers))
        });
        let opened = opened.await.context("opening the writers panicked");
        match opened {
            Ok(Ok((system, writers))) => Ok((
                Writing {
                    runtime: Some(runtime),
                    system,
                },
                writers,
            )),
            Ok(Err(err)) | Err(err) => {
                runtime.shutdown_background();
                Err(err)
            }
        }
    }

    /// Where the writers' tasks run.
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime is there until drop")
    }

    /// Ends the writers' sessions; dropping `self` then stops the runtime.
    async fn close(self, writers: Vec<S::Writer>) {
        let system = self.system.clone();
        let closed = self
            .runtime()
            .spawn(async move { system.close_writers(writers).await });
        if closed.await.is_err() {
            eprintln!("fuddle-bench: closing the writers' sessions panicked");
        }
    }
}

impl<S: System> Drop for Writing<S> {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// `total` split into `parts` nearly equal shares.
fn split(total: u32, parts: u32) -> Vec<u32> {
    (0..parts)
        .map(|i| total / parts + u32::from(i < total % parts))
        .collect()
}

/// What the subscribers report, shared by all of them.
struct Shared {
    /// Changes received, each counted once per subscriber.
    deliveries: AtomicU64,
    /// Changes that carried a write the subscriber had already received.
    repeated: AtomicU64,
    /// When the latest delivery arrived, in Unix nanoseconds.
    last_delivery_ns: AtomicU64,
    resyncs: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn new() -> Self {
        Self {
            deliveries: AtomicU64::new(0),
            repeated: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
            shards: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }
}

/// Counts one subscriber's deliveries until it is aborted or its stream
/// fails.
async fn receive<Sub: Subscriber>(
    mut subscriber: Sub,
    shard: usize,
    updates: usize,
    shared: Arc<Shared>,
) {
    let mut sent = Vec::new();
    // Every write carries its own send time, so a time seen twice is a
    // write heard of twice: a duplicate (both systems promise none), or a
    // change the system made to a written member (a status flap). The set
    // is sized for every write at once and hashed with foldhash: grown
    // from empty and hashed with std's SipHash, this check was 5–6% of
    // the generator's CPU in a fan-out, the generator being the bound.
    // The times are the generator's own, so no one can pick colliding ones.
    let mut seen = hashbrown::HashSet::with_capacity(updates);
    loop {
        sent.clear();
        match subscriber.next(&mut sent).await {
            Ok(Received::Changes) if sent.is_empty() => {}
            Ok(Received::Changes) => {
                let now = now_ns();
                let (mut fresh, mut repeated) = (0, 0);
                {
                    let mut latencies = shared.shards[shard].lock().expect("histogram lock");
                    for &sent_ns in &sent {
                        if seen.insert(sent_ns) {
                            fresh += 1;
                            record(&mut latencies, now.saturating_sub(sent_ns) / 1000);
                        } else {
                            repeated += 1;
                        }
                    }
                }
                shared.deliveries.fetch_add(fresh, Ordering::Relaxed);
                shared.repeated.fetch_add(repeated, Ordering::Relaxed);
                shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
            }
            Ok(Received::Resync) => {
                shared.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared
                    .first_error
                    .lock()
                    .expect("error lock")
                    .get_or_insert_with(|| format!("subscriber: {err:#}"));
                return;
            }
        }
    }
}

/// What one writer did.
struct Sent<W> {
    writer: W,
    latencies: Histogram<u64>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// When its last answer came.
    finished: Instant,
}

/// Makes `count` writes, one at a time, at most one per `period`.
async fn send<W: Writer>(
    mut writer: W,
    count: u32,
    period: Option<Duration>,
    written: Arc<AtomicU64>,
) -> Sent<W> {
    let mut pace = period.map(|period| {
        let mut interval = tokio::time::interval(period);
        // A late write is not followed by a burst to catch up: the rate is
        // an upper bound.
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    let mut latencies = histogram();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for _ in 0..count {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let sent = Instant::now();
        match writer.write().await {
            Ok(()) => {
                ok += 1;
                written.fetch_add(1, Ordering::Relaxed);
                record(&mut latencies, micros(sent.elapsed()));
            }
            Err(err) => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("write: {err:#}"));
            }
        }
    }
    Sent {
        writer,
        latencies,
        ok,
        errors,
        first_error,
        finished: Instant::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        assert_eq!(split(100, 16).iter().sum::<u32>(), 100);
        assert_eq!(split(3, 2), vec![2, 1]);
        assert_eq!(split(1, 4), vec![1, 0, 0, 0]);
    }
}
