//! What a workload needs of the system under test. Fuddle and etcd each
//! implement it, so both run exactly the same workload code.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::args::Target;

/// A cluster under test, reached through a fixed number of connections.
pub trait System: Sized + Send + Sync + 'static {
    type Writer: Writer;
    type Subscriber: Subscriber;

    /// Which kind of system this is, for the report.
    const TARGET: Target;

    /// Opens `conns` connections, spread over `endpoints` in turn. Every
    /// key, member and service the run touches lives under `tag`, so that
    /// runs neither collide with nor see each other.
    fn connect(
        endpoints: &[String],
        conns: usize,
        tag: &str,
    ) -> impl Future<Output = Result<Self>> + Send;

    /// A writer with its own session (etcd: lease) on connection
    /// `index % conns`, writing `value_bytes` of payload per write.
    fn writer(
        &self,
        index: usize,
        value_bytes: usize,
    ) -> impl Future<Output = Result<Self::Writer>> + Send;

    /// A subscriber on its own stream on connection `index % conns` to
    /// everything the writers write; returns once the stream is
    /// established (Fuddle: the snapshot arrived; etcd: the watch was
    /// created), so that no write made afterwards can be missed.
    fn subscriber(&self, index: usize) -> impl Future<Output = Result<Self::Subscriber>> + Send;

    /// Ends the writers' sessions (etcd: nothing; leases expire), so that
    /// a run leaves nothing behind in the registry.
    fn close_writers(&self, writers: Vec<Self::Writer>) -> impl Future<Output = ()> + Send;
}

/// One writer: one write in flight at a time.
pub trait Writer: Send + 'static {
    /// Makes one write carrying the time it was sent, and waits for it to
    /// be committed.
    fn write(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// What a subscriber received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Changes made by the writers; their send times were appended.
    Changes,
    /// The stream started over from a fresh state (Fuddle: a resync
    /// snapshot; etcd: the watch was compacted away): changes in between
    /// were skipped.
    Resync,
}

/// One subscriber's stream.
pub trait Subscriber: Send + 'static {
    /// Waits for the next message and appends the send time (Unix ns) of
    /// each change it carries to `sent`. An error means the stream is over.
    fn next(&mut self, sent: &mut Vec<u64>) -> impl Future<Output = Result<Received>> + Send;
}

/// The wall clock in Unix nanoseconds. Sender and receiver run in the same
/// process, so their clocks agree and the difference is the delivery time.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The CPU time (user and system) this process has used so far, from
/// `/proc/self/stat`; `None` where there is no such file. The load
/// generator shares the machine with the cluster, so a report says how much
/// of it the generator took.
pub fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the
    // name, in ticks of USER_HZ, which Linux fixes at 100 for /proc.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Measures the CPU this process uses from now on, as average cores busy.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    wall: std::time::Instant,
    cpu: Option<Duration>,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self {
            wall: std::time::Instant::now(),
            cpu: cpu_time(),
        }
    }

    /// Average cores busy since the start (1.0 = one core all the time).
    pub fn cores(&self) -> Option<f64> {
        let used = cpu_time()?.checked_sub(self.cpu?)?;
        let wall = self.wall.elapsed().as_secs_f64();
        (wall > 0.0).then(|| used.as_secs_f64() / wall)
    }
}

/// A tag unique to this run: the process id and the start time.
pub fn run_tag() -> String {
    format!("bench-{:x}-{:x}", std::process::id(), now_ns() / 1_000_000)
}

/// The width of a send time written as decimal digits, padded so that a
/// value can carry it at a fixed place.
pub const STAMP_WIDTH: usize = 20;

/// A value of `value_bytes` (at least the stamp's width) that starts with
/// the send time.
pub fn stamped_value(sent_ns: u64, value_bytes: usize) -> Vec<u8> {
    let mut value = format!("{sent_ns:0STAMP_WIDTH$}").into_bytes();
    value.resize(value_bytes.max(STAMP_WIDTH), b'x');
    value
}

/// The send time at the start of a value made by [`stamped_value`].
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value.get(..STAMP_WIDTH)?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_survives_the_value() {
        let value = stamped_value(1_700_000_000_123_456_789, 256);
        assert_eq!(value.len(), 256);
        assert_eq!(read_stamp(&value), Some(1_700_000_000_123_456_789));
        // A payload smaller than the stamp still carries it whole.
        assert_eq!(stamped_value(7, 4).len(), STAMP_WIDTH);
        assert_eq!(read_stamp(b"short"), None);
    }

    #[test]
    fn cpu_time_grows() {
        let Some(before) = cpu_time() else { return };
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time().unwrap() > before);
    }
}
