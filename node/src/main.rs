//! `fuddle-node`: runs one registry node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fuddle_node::{Config, Node};

/// A Fuddle registry node.
#[derive(Debug, Parser)]
#[command(name = "fuddle-node", version, about)]
struct Args {
    /// Where the node keeps its data (created if missing).
    #[arg(long, default_value = "./fuddle-data", env = "FUDDLE_DATA_DIR")]
    data_dir: PathBuf,
    /// TCP address for gRPC (clients and peers). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8220")]
    bind: SocketAddr,
    /// The address other nodes and clients use for this node, if not --bind.
    #[arg(long)]
    advertise: Option<String>,
    /// Gossip seeds of an existing cluster (HOST:PORT, comma-separated).
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Remove a node from the Raft membership after gossip has not seen it
    /// alive for this long.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    dead_node_timeout: std::time::Duration,
    /// Gossip accepts only nodes with the same cluster id.
    #[arg(long, default_value = "fuddle")]
    cluster_id: String,
    /// HTTP address for health and metrics.
    #[arg(long, default_value = "127.0.0.1:8221")]
    http_bind: SocketAddr,
    /// Smallest heartbeat timeout a client may choose.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    min_heartbeat_timeout: std::time::Duration,
    /// Smallest reconnect timeout a client may choose.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    min_reconnect_timeout: std::time::Duration,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = Config::new(args.data_dir);
    config.bind = args.bind;
    config.advertise = args.advertise;
    config.join = args.join;
    config.membership.dead_node_timeout = args.dead_node_timeout;
    config.cluster_id = args.cluster_id;
    config.http_bind = Some(args.http_bind);
    config.sessions.min_heartbeat_timeout = args.min_heartbeat_timeout;
    config.sessions.min_reconnect_timeout = args.min_reconnect_timeout;

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        // One line on stdout that scripts and tests can wait for.
        println!(
            "fuddle-node {} listening on {}",
            node.core.id, node.local_addr
        );
        node.run_until(shutdown_signal()).await;
        ExitCode::SUCCESS
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the node can still be killed; wait forever.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
