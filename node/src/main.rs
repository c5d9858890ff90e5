//! `fuddle-node`: runs one registry node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use fuddle_node::workers::Workers;
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
    /// The address other nodes send gossip (UDP) to, if not --advertise.
    #[arg(long)]
    advertise_gossip: Option<String>,
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
    /// Raft leader heartbeat interval. Election timeouts are 6× and 12× it
    /// unless set.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    raft_heartbeat_interval: std::time::Duration,
    /// Smallest Raft election timeout (default: 6× the heartbeat interval).
    #[arg(long, value_parser = humantime::parse_duration)]
    election_timeout: Option<std::time::Duration>,
    /// Time between gossip rounds; failure detection scales with it.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    gossip_interval: std::time::Duration,
    /// How often the leader reviews the Raft membership against gossip.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    membership_check_interval: std::time::Duration,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Log entries kept behind a snapshot for followers that lag a little.
    #[arg(long, default_value_t = 1_000)]
    keep_behind_snapshot: u64,
    /// Also build a snapshot once this many commands were applied since the
    /// last one: the most a restart re-applies from the log.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_every_commands: u64,
    /// How often the leader checks sessions for missed heartbeats.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    session_tick: std::time::Duration,
    /// sled's page cache, in MiB (sled's own default of 1 GiB is far more
    /// than a registry needs).
    #[arg(long, default_value_t = 64)]
    cache_mb: u64,
    /// How long a worker thread looks for more work before it sleeps,
    /// while writes come one at a time: it saves waking a sleeping thread
    /// at each step of a write, at the cost of CPU while writes flow. 0
    /// turns it off.
    #[arg(long, default_value = fuddle_node::spin::DEFAULT_WINDOW_ARG, value_parser = humantime::parse_duration)]
    spin: std::time::Duration,
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
                .unwrap_or_else(|_| "info,openraft=warn,sled=warn,chitchat=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config = Config::new(args.data_dir);
    config.bind = args.bind;
    config.advertise = args.advertise;
    config.advertise_gossip = args.advertise_gossip;
    config.join = args.join;
    config.membership.dead_node_timeout = args.dead_node_timeout;
    config.cluster_id = args.cluster_id;
    config.raft.heartbeat_interval = args.raft_heartbeat_interval;
    let election = args
        .election_timeout
        .unwrap_or(args.raft_heartbeat_interval * 6);
    config.raft.election_timeout_min = election;
    config.raft.election_timeout_max = election * 2;
    config.gossip_interval = args.gossip_interval;
    config.membership.check_interval = args.membership_check_interval;
    config.raft.snapshot_every = args.snapshot_every;
    config.raft.keep_behind_snapshot = args.keep_behind_snapshot;
    config.raft.snapshot_every_commands = args.snapshot_every_commands;
    config.sessions.tick = args.session_tick;
    config.cache_bytes = args.cache_mb << 20;
    config.http_bind = Some(args.http_bind);
    config.sessions.min_heartbeat_timeout = args.min_heartbeat_timeout;
    config.sessions.min_reconnect_timeout = args.min_reconnect_timeout;

    config.spin = args.spin;

    let workers = Workers::here();
    let mut builder = workers.main_runtime();
    let spin = fuddle_node::spin::Trigger::install(&mut builder, workers.main, config.spin);
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(trigger) = spin {
            node.spin_here(trigger);
        }
        // One line on stdout that scripts and tests can wait for.
        println!(
            "fuddle-node {} listening on {}",
            node.core.id, node.local_addr
        );
        match node.run_until(shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(reason) => {
                eprintln!("error: {reason}");
                // Leave at once: a runtime whose Raft has failed may hold
                // tasks that never finish, and dropping it would wait.
                std::process::exit(1)
            }
        }
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
