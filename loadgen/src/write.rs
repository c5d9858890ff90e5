//! The `write` workload: concurrent writers, each with one write in flight,
//! for a fixed time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::args::{Cli, WriteArgs};
use crate::progress;
use crate::report::{Latency, WriteReport, histogram, record};
use crate::system::{CpuMeter, System, Writer, run_tag};

/// How many sessions (leases) are opened at once while setting up: enough
/// to set up hundreds of writers quickly, few enough not to be a load test
/// of its own.
const SETUP_CONCURRENCY: usize = 32;

/// The pause after a failed write, so that a writer facing a cluster that
/// refuses at once does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

pub async fn run<S: System>(cli: &Cli, args: &WriteArgs, bars: bool) -> Result<WriteReport> {
    let conns = args.conns();
    let system = S::connect(&cli.endpoints, conns, &run_tag()).await?;
    let writers = open_writers(&system, args.clients as usize, args.value_bytes, bars).await?;

    let start = Instant::now();
    let cpu = CpuMeter::start();
    let window = Window {
        start: start + args.warmup,
        end: start + args.warmup + args.duration,
    };
    let live = Arc::new(Live::default());
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|writer| tokio::spawn(drive(writer, window, live.clone())))
        .collect();
    show_progress(bars, start, window, &live).await;

    let mut latencies = histogram();
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    let mut writers = Vec::with_capacity(tasks.len());
    for task in tasks {
        let outcome = task.await.context("a writer panicked")?;
        latencies
            .add(&outcome.latencies)
            .expect("histograms of equal bounds");
        ops += outcome.ops;
        errors += outcome.errors;
        first_error = first_error.or(outcome.first_error);
        writers.push(outcome.writer);
    }
    let bench_cpu_cores = cpu.cores();
    system.close_writers(writers).await;

    let duration_s = args.duration.as_secs_f64();
    Ok(WriteReport {
        workload: "write",
        target: S::TARGET,
        endpoints: cli.endpoints.clone(),
        clients: args.clients,
        conns,
        value_bytes: args.value_bytes,
        duration_s,
        warmup_s: args.warmup.as_secs_f64(),
        ops,
        ops_per_s: ops as f64 / duration_s,
        errors,
        first_error,
        latency: Latency::of(&latencies),
        bench_cpu_cores,
    })
}

/// Opens `count` writers, a few at a time, with a progress bar.
pub async fn open_writers<S: System>(
    system: &S,
    count: usize,
    value_bytes: usize,
    bars: bool,
) -> Result<Vec<S::Writer>> {
    let bar = progress::bar(bars, "sessions", count as u64);
    let writers = futures::stream::iter(0..count)
        .map(|index| {
            let bar = &bar;
            async move {
                let writer = system.writer(index, value_bytes).await;
                bar.inc(1);
                writer
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .try_collect()
        .await
        .context("setting up the writers");
    bar.finish_and_clear();
    writers
}

/// The measured part of the run: completions in it count.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Counts for the progress bar, over the whole run.
#[derive(Debug, Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// What one writer measured; it gives the writer back for closing.
struct Outcome<W> {
    writer: W,
    latencies: Histogram<u64>,
    ops: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn drive<W: Writer>(mut writer: W, window: Window, live: Arc<Live>) -> Outcome<W> {
    // Each writer keeps its own histogram: nothing is shared on the hot
    // path but two counters for the bar.
    let mut latencies = histogram();
    let (mut ops, mut errors, mut first_error) = (0, 0, None);
    loop {
        let sent = Instant::now();
        if sent >= window.end {
            break;
        }
        let result = writer.write().await;
        let done = Instant::now();
        // A write counts when its answer comes within the window: the
        // warm-up's answers are not counted, nor those after the end.
        let measured = done >= window.start && done <= window.end;
        match result {
            Ok(()) => {
                live.ops.fetch_add(1, Ordering::Relaxed);
                if measured {
                    ops += 1;
                    record(&mut latencies, micros(done - sent));
                }
            }
            Err(err) => {
                live.errors.fetch_add(1, Ordering::Relaxed);
                if measured {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{err:#}"));
                }
                tokio::time::sleep(ERROR_PAUSE).await;
            }
        }
    }
    Outcome {
        writer,
        latencies,
        ops,
        errors,
        first_error,
    }
}

/// Draws the run's progress until its end.
async fn show_progress(bars: bool, start: Instant, window: Window, live: &Live) {
    let total = window.end - start;
    let bar = progress::timer(bars, "writing", total.as_millis() as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut last_ops, mut last_at) = (0, start);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let ops = live.ops.load(Ordering::Relaxed);
        let rate = (ops - last_ops) as f64 / (now - last_at).as_secs_f64().max(1e-3);
        (last_ops, last_at) = (ops, now);
        let phase = if now < window.start { "warm-up, " } else { "" };
        bar.set_message(format!(
            "{phase}{rate:.0} ops/s, {} errors",
            live.errors.load(Ordering::Relaxed)
        ));
        bar.set_position((now - start).as_millis() as u64);
        if now >= window.end {
            break;
        }
    }
    bar.finish_and_clear();
}

/// A duration in whole microseconds, the histograms' unit.
pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
