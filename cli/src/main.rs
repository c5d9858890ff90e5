//! fuddle-cli: inspect and drive a Fuddle registry from the command line.

mod args;
mod commands;
mod exit;
mod output;
mod signal;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // Clap prints its own usage errors and exits with code 2.
    let cli = args::Cli::parse();
    init_logging();
    match commands::run(cli).await {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(err) => exit::outcome(&err).report(),
    }
}

/// Logs go to stderr. By default only warnings show, which is where the
/// SDK reports a lost session or subscription it is reconnecting; a
/// one-shot command that fails prints nothing but its error line.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}
