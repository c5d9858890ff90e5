//! The command line, as clap parses it.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Drive write and fan-out load against a running Fuddle or etcd cluster.
#[derive(Debug, Parser)]
#[command(name = "fuddle-bench", version)]
pub struct Cli {
    /// The cluster's client addresses, as HOST:PORT, separated by commas.
    /// Connections are spread over them in turn.
    #[arg(
        long,
        global = true,
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        default_value = "127.0.0.1:8220"
    )]
    pub endpoints: Vec<String>,

    /// Which kind of cluster the endpoints belong to.
    #[arg(long, global = true, value_enum, default_value_t = Target::Fuddle)]
    pub target: Target,

    /// How to print the summary.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// No progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Fuddle, through the Rust SDK: sessions, registrations, subscriptions.
    Fuddle,
    /// etcd v3 over gRPC: leases, puts, watches.
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A few aligned lines for people.
    Text,
    /// One JSON object for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Concurrent writers, each with its own session (etcd: lease),
    /// registering members (etcd: putting keys) as fast as answers come.
    Write(WriteArgs),
    /// Many subscribers (etcd: watchers) each receiving every change a few
    /// writers make; measures deliveries per second and send-to-delivery
    /// latency.
    Fanout(FanoutArgs),
    /// Fuddle only: register many distinct members, then time a full list
    /// and a new subscription's first snapshot.
    Scale(crate::scale::ScaleArgs),
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    /// How many writers run at once; each waits for its answer before
    /// sending again.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,

    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How long to write before measuring, so that connections, caches and
    /// the leader's batching have settled.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Bytes of payload per write: a metadata value (Fuddle) or the value
    /// (etcd).
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,

    /// How many gRPC connections the writers share (default: one per
    /// writer, at most 16, as etcd's own benchmark tool does).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: Option<u32>,
}

impl WriteArgs {
    pub fn conns(&self) -> usize {
        self.conns.unwrap_or(self.clients.min(16)) as usize
    }
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// How many subscriptions (etcd: watch streams), each on its own gRPC
    /// stream.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub subscribers: u32,

    /// How many changes the writers make in all.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub updates: u32,

    /// How many writers share the updates, each sending its next change
    /// once the last one is answered.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub writers: u32,

    /// How many gRPC connections the subscribers share. The writers have
    /// their own (one per writer, at most 16) on a thread of their own, as
    /// the separate processes they stand for would.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub conns: u32,

    /// Writes per second across all writers (more than 0); without it they
    /// write as fast as answers come.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Bytes of payload per write.
    #[arg(long, default_value_t = 256)]
    pub value_bytes: usize,

    /// How long to wait for the last deliveries after the last write was
    /// answered; whatever has not arrived by then counts as missing.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub deadline: Duration,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a number of writes per second above 0, got {text:?}"
        )),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_is_a_number_above_zero() {
        assert_eq!(parse_rate("10"), Ok(10.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "0.0", "-3", "inf", "NaN", "fast"] {
            let err = parse_rate(bad).unwrap_err();
            assert!(err.contains("above 0"), "{bad}: {err}");
        }
    }
}
