//! fuddle-bench: drives write and fan-out load against a running Fuddle or
//! etcd cluster and reports throughput and latency, so that the two can be
//! compared on the same machine with the same workload.

mod args;
mod etcd;
mod fanout;
mod fuddle;
mod progress;
mod report;
mod scale;
mod system;
mod write;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::args::{Cli, Command, Output, Target};
use crate::report::Report;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fuddle-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    // A bar drawn into a pipe or a log file is noise; indicatif hides it
    // there too, but --quiet also hides it on a terminal.
    let bars = !cli.quiet && std::io::stderr().is_terminal();
    let report = match (&cli.command, cli.target) {
        (Command::Write(args), Target::Fuddle) => {
            Report::Write(write::run::<fuddle::Fuddle>(&cli, args, bars).await?)
        }
        (Command::Write(args), Target::Etcd) => {
            Report::Write(write::run::<etcd::Etcd>(&cli, args, bars).await?)
        }
        (Command::Fanout(args), Target::Fuddle) => {
            Report::Fanout(fanout::run::<fuddle::Fuddle>(&cli, args, bars).await?)
        }
        (Command::Fanout(args), Target::Etcd) => {
            Report::Fanout(fanout::run::<etcd::Etcd>(&cli, args, bars).await?)
        }
        (Command::Scale(args), Target::Fuddle) => {
            Report::Scale(scale::run(&cli.endpoints, args).await?)
        }
        (Command::Scale(_), Target::Etcd) => {
            anyhow::bail!("scale measures Fuddle only")
        }
    };
    match cli.output {
        Output::Text => print!("{report}"),
        Output::Json => println!("{}", serde_json::to_string(&report)?),
    }
    Ok(())
}
