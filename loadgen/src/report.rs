//! The summary of a run, as text for people or one JSON object for scripts.

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::Target;

/// Latencies are recorded in microseconds, up to an hour, to three
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Records one latency in microseconds; an out-of-range value is clamped
/// rather than lost, so the count stays right.
pub fn record(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.max(1));
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// How many latencies were recorded.
    pub count: u64,
    /// The mean.
    pub mean_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The 99.9th percentile.
    pub p999_ms: f64,
    /// The largest.
    pub max_ms: f64,
}

impl Latency {
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

impl fmt::Display for Latency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  (mean {:.2} ms, n={})",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms, self.count
        )
    }
}

/// Either workload's summary.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Write(WriteReport),
    Fanout(FanoutReport),
    Scale(crate::scale::ScaleReport),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Report::Write(report) => report.fmt(f),
            Report::Fanout(report) => report.fmt(f),
            Report::Scale(report) => report.fmt(f),
        }
    }
}

/// The summary of a `write` run.
#[derive(Debug, Serialize)]
pub struct WriteReport {
    /// Always `write`.
    pub workload: &'static str,
    /// The system under test.
    pub target: Target,
    /// The addresses the connections were spread over.
    pub endpoints: Vec<String>,
    /// Concurrent writers.
    pub clients: u32,
    /// gRPC connections the writers shared.
    pub conns: usize,
    /// Payload bytes per write.
    pub value_bytes: usize,
    /// The measured time, in seconds (the warm-up excluded).
    pub duration_s: f64,
    /// The warm-up, in seconds.
    pub warmup_s: f64,
    /// Writes answered successfully within the measured time.
    pub ops: u64,
    /// Successful writes per second.
    pub ops_per_s: f64,
    /// Writes that failed within the measured time.
    pub errors: u64,
    /// The first failure's message, to tell what went wrong.
    pub first_error: Option<String>,
    /// Latency of the successful writes, send to answer.
    pub latency: Latency,
    /// Cores the load generator kept busy on average while writing (it
    /// shares the machine with the cluster); absent where unknown.
    pub bench_cpu_cores: Option<f64>,
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} write: {} clients over {} connections to {}, {}-byte values, {:.1}s measured after {:.1}s warm-up",
            target_name(self.target),
            self.clients,
            self.conns,
            self.endpoints.join(","),
            self.value_bytes,
            self.duration_s,
            self.warmup_s
        )?;
        writeln!(
            f,
            "  throughput  {:.1} ops/s ({} ops)",
            self.ops_per_s, self.ops
        )?;
        writeln!(f, "  latency     {}", self.latency)?;
        write_cpu(f, self.bench_cpu_cores)?;
        write_errors(f, self.errors, self.first_error.as_deref())
    }
}

/// The summary of a `fanout` run.
#[derive(Debug, Serialize)]
pub struct FanoutReport {
    /// Always `fanout`.
    pub workload: &'static str,
    /// The system under test.
    pub target: Target,
    /// The addresses the connections were spread over.
    pub endpoints: Vec<String>,
    /// Subscriptions (etcd: watch streams).
    pub subscribers: u32,
    /// Changes the writers were to make.
    pub updates: u32,
    /// Concurrent writers.
    pub writers: u32,
    /// gRPC connections shared by subscribers and writers.
    pub conns: usize,
    /// Seconds it took to establish every subscription.
    pub setup_s: f64,
    /// Changes the writers made successfully.
    pub writes: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Seconds from the first write sent to the last write answered.
    pub write_window_s: f64,
    /// Deliveries due: every successful write to every subscriber.
    pub expected: u64,
    /// Changes received, summed over subscribers; a write one subscriber
    /// heard of twice counts once.
    pub deliveries: u64,
    /// Deliveries due that had not arrived by the deadline.
    pub missing: u64,
    /// Changes that carried a write a subscriber had already received,
    /// counted here and not in `deliveries`: a duplicate delivery, or a
    /// change the system itself made to a written member (Fuddle: its
    /// status going down and up again). Either way, traffic the workload
    /// did not ask for.
    pub repeated: u64,
    /// Seconds from the first write sent to the last delivery.
    pub delivery_window_s: f64,
    /// Deliveries per second over the delivery window.
    pub deliveries_per_s: f64,
    /// Times a subscriber was sent a fresh state instead of the changes
    /// (Fuddle: a resync snapshot).
    pub resyncs: u64,
    /// Subscriptions that failed or ended during the run.
    pub subscriber_errors: u64,
    /// The first failure's message (a write's or a subscriber's).
    pub first_error: Option<String>,
    /// Send-to-delivery latency, over all deliveries.
    pub latency: Latency,
    /// Latency of the writes, send to answer.
    pub write_latency: Latency,
    /// Cores the load generator kept busy on average from the first write
    /// to the last delivery; absent where unknown.
    pub bench_cpu_cores: Option<f64>,
}

impl fmt::Display for FanoutReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} fanout: {} subscribers over {} connections to {}, {} updates by {} writers",
            target_name(self.target),
            self.subscribers,
            self.conns,
            self.endpoints.join(","),
            self.updates,
            self.writers
        )?;
        writeln!(
            f,
            "  setup       {:.2}s to establish every subscription",
            self.setup_s
        )?;
        writeln!(
            f,
            "  throughput  {:.1} deliveries/s ({} of {} in {:.2}s; {} missing, {} repeated)",
            self.deliveries_per_s,
            self.deliveries,
            self.expected,
            self.delivery_window_s,
            self.missing,
            self.repeated
        )?;
        writeln!(f, "  latency     {}", self.latency)?;
        writeln!(
            f,
            "  writes      {} in {:.2}s, {}",
            self.writes, self.write_window_s, self.write_latency
        )?;
        writeln!(f, "  resyncs     {}", self.resyncs)?;
        write_cpu(f, self.bench_cpu_cores)?;
        write_errors(
            f,
            self.write_errors + self.subscriber_errors,
            self.first_error.as_deref(),
        )
    }
}

fn target_name(target: Target) -> &'static str {
    match target {
        Target::Fuddle => "fuddle",
        Target::Etcd => "etcd",
    }
}

fn write_cpu(f: &mut fmt::Formatter<'_>, cores: Option<f64>) -> fmt::Result {
    match cores {
        Some(cores) => writeln!(f, "  bench cpu   {cores:.2} cores"),
        None => Ok(()),
    }
}

fn write_errors(f: &mut fmt::Formatter<'_>, errors: u64, first: Option<&str>) -> fmt::Result {
    match first {
        Some(first) if errors > 0 => writeln!(f, "  errors      {errors} (first: {first})"),
        _ => writeln!(f, "  errors      {errors}"),
    }
}
