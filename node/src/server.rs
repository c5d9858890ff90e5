//! Starting and stopping a node: one start function that opens the data
//! dir, starts Raft, serves gRPC and runs the background loops.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuddle_proto::raft::raft_server::RaftServer;
use fuddle_proto::shared_server::registry_server::RegistryServer;
use fuddle_storage::{DataDir, NodeAddr, OpenError, TypeConfig, open_stores};
use openraft::storage::RaftLogStorage;
use openraft::{Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connections::{self, Conn};
use crate::core::Core;
use crate::counters::CommitCounters;
use crate::gossip::{Gossip, GossipConfig, GossipError};
use crate::network::Network;
use crate::peers::Peers;
use crate::proposer::Proposer;
use crate::raft_service::RaftService;
use crate::registry_service::{MAX_REQUEST_BYTES, RegistryService};
use crate::sessions::{self, Heartbeats, SessionClock};
use crate::subscribe_route::SubscribeRoute;
use crate::workers::Workers;
use crate::{alone, commit_deferral, held_commits, http, membership, memory, snapshots, spin};

/// How often a running node looks whether Raft has stopped (a storage
/// failure, say), to exit saying why.
const RAFT_STOP_CHECK: Duration = Duration::from_millis(200);

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data dir is unusable.
    #[error(transparent)]
    DataDir(#[from] OpenError),
    /// The stored state cannot be read.
    #[error("cannot read the stored state: {0}")]
    Storage(String),
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Gossip could not start.
    #[error(transparent)]
    Gossip(#[from] GossipError),
    /// Raft refused to start.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// A started node.
pub struct Node {
    /// The shared parts, for in-process tests and embedding.
    pub core: Arc<Core>,
    /// The bound gRPC address (useful with port 0).
    pub local_addr: SocketAddr,
    /// Background tasks; each holds what it needs and ends on shutdown.
    tasks: JoinSet<()>,
    /// The internal gRPC server, on the Raft runtime.
    internal_server: tokio::task::JoinHandle<()>,
    /// Where Raft, the proposer and peers' connections run: a scheduler of
    /// their own, so that the write path never queues behind thousands of
    /// subscription streams on the main runtime (see `connections.rs`).
    /// Last field: dropped after everything that runs on it.
    raft_runtime: RaftRuntime,
}

/// The Raft runtime, shut down without blocking when the node goes away
/// (dropping a runtime blocks, which an async caller must not do).
struct RaftRuntime(Option<tokio::runtime::Runtime>);

impl RaftRuntime {
    /// Builds the runtime, and the trigger of its spinner if it has one
    /// (a `spin` window and one worker: see `spin`).
    fn start(spin: Duration) -> std::io::Result<(RaftRuntime, Option<spin::Trigger>)> {
        let workers = Workers::here().raft;
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(workers)
            .thread_name("fuddle-raft")
            .enable_all();
        let trigger = spin::Trigger::install(&mut builder, workers, spin);
        let runtime = builder.build()?;
        Ok((RaftRuntime(Some(runtime)), trigger))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }
}

impl Drop for RaftRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The spinner of the runtime `trigger` belongs to, ending on shutdown.
fn spin_task(core: &Arc<Core>, trigger: spin::Trigger) -> impl Future<Output = ()> + use<> {
    let registry = core.registry.clone();
    spin::run(
        trigger,
        core.config.spin,
        move || registry.applied_counts(),
        core.spin.clone(),
        core.shutdown.clone(),
    )
}

/// Serves every gRPC service on the connections that arrive on `incoming`
/// until the node shuts down.
async fn serve_grpc(
    core: Arc<Core>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<Conn>> + Send + 'static,
) {
    let registry_service = SubscribeRoute::new(
        RegistryServer::new(RegistryService::new(core.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(usize::MAX),
        core.clone(),
    );
    let raft_service = RaftServer::new(RaftService::new(core.clone()))
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(registry_service)
        .add_service(raft_service)
        .serve_with_incoming_shutdown(incoming, core.shutdown.clone().cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!("gRPC server failed: {e}");
    }
}

/// Opens the data dir and loads or creates the node id. A wiped data dir
/// gets a new id: a node must never come back under an old id without its
/// old log.
fn open_data_dir(config: &Config) -> Result<(DataDir, u64), StartError> {
    let dir = DataDir::open(&config.data_dir, config.cache_bytes)?;
    match dir.node_id()? {
        Some(id) => Ok((dir, id)),
        None => {
            // Ids are random so that two fresh nodes never collide; zero is
            // kept for "none" in the protocol. 53 bits keep them exact in
            // JSON readers that hold numbers as doubles.
            let id = loop {
                let id: u64 = rand::random::<u64>() >> 11;
                if id != 0 {
                    break id;
                }
            };
            dir.set_node_id(id)?;
            Ok((dir, id))
        }
    }
}

/// Starts gossip on UDP at the gRPC port number, advertising this node's
/// id and addresses to the seeds given by `--join`.
async fn start_gossip(
    config: &Config,
    id: u64,
    local_addr: SocketAddr,
    addr: &str,
    http_addr: &str,
) -> Result<Gossip, StartError> {
    let advertise_gossip_addr = match config
        .advertise_gossip
        .as_ref()
        .or(config.advertise.as_ref())
    {
        Some(a) => tokio::net::lookup_host(a.as_str())
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                StartError::Config(format!(
                    "{a}: not a resolvable host:port (from --advertise-gossip, or else --advertise)"
                ))
            })?,
        None => local_addr,
    };
    let mut gossip = GossipConfig::new(id, local_addr);
    gossip.advertise_gossip_addr = advertise_gossip_addr;
    gossip.grpc_addr = addr.to_string();
    gossip.http_addr = http_addr.to_string();
    gossip.seeds = config.join.clone();
    gossip.cluster_id = config.cluster_id.clone();
    gossip.gossip_interval = config.gossip_interval;
    gossip.failure_detector_initial_interval = config.gossip_interval * 2;
    // chitchat must remember a dead node longer than the dead-node timeout,
    // or the timeout could never fire.
    gossip.dead_node_grace_period = gossip
        .dead_node_grace_period
        .max(config.membership.dead_node_timeout * 2);
    Ok(Gossip::start(gossip).await?)
}

/// If this node leads, asks its most up-to-date voter to take over and
/// waits (briefly) until it has, so that clients see no election timeout.
///
/// openraft 0.9 has no leadership transfer; a caught-up follower that
/// starts an election wins at once, because the leader grants a vote for a
/// higher term once its own vote is older than the leader lease (the
/// largest election timeout). A leader elected more recently than that
/// refuses, and the cluster falls back to an ordinary election.
async fn hand_over_leadership(core: &Core) {
    let metrics = core.raft.metrics().borrow().clone();
    if metrics.current_leader != Some(core.id) {
        return;
    }
    let membership = metrics.membership_config.membership().clone();
    // Bring followers up to date first: a candidate behind the leader's log
    // would be refused.
    let _ = core.raft.trigger().heartbeat().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let target = loop {
        let m = core.raft.metrics().borrow().clone();
        let last = m.last_log_index.unwrap_or(0);
        let best = m.replication.as_ref().and_then(|r| {
            r.iter()
                .filter(|(id, _)| **id != core.id && membership.voter_ids().any(|v| v == **id))
                .filter_map(|(id, l)| l.map(|l| (l.index, *id)))
                .max()
        });
        match best {
            Some((matched, id)) if matched >= last => break Some(id),
            _ if tokio::time::Instant::now() >= deadline => break None,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let Some(target) = target else {
        return;
    };
    let Some(addr) = membership.get_node(&target).map(|n| n.addr.clone()) else {
        return;
    };
    tracing::info!(node = core.id, to = target, "handing leadership over");
    let Ok(mut client) = core.peers.raft(target, &addr) else {
        return;
    };
    let mut request = tonic::Request::new(fuddle_proto::raft::RaftMessage { data: Vec::new() });
    request.set_timeout(Duration::from_secs(2));
    if let Err(e) = client.elect(request).await {
        tracing::warn!("leadership hand-over failed: {e}");
        return;
    }
    let mut watch = core.raft.metrics();
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        watch.wait_for(|m| m.current_leader.is_some_and(|l| l != core.id)),
    )
    .await;
}

fn raft_config(config: &Config) -> Result<openraft::Config, StartError> {
    let t = &config.raft;
    if t.snapshot_every_commands == 0 {
        // The trigger would build a snapshot every second, forever.
        return Err(StartError::Config(
            "snapshot_every_commands must be at least 1".into(),
        ));
    }
    openraft::Config {
        cluster_name: "fuddle".into(),
        heartbeat_interval: t.heartbeat_interval.as_millis() as u64,
        election_timeout_min: t.election_timeout_min.as_millis() as u64,
        election_timeout_max: t.election_timeout_max.as_millis() as u64,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every),
        max_in_snapshot_log_to_keep: t.keep_behind_snapshot,
        max_payload_entries: 256,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Config(e.to_string()))
}

impl Node {
    /// Starts a node: opens its data dir, starts Raft (bootstrapping a
    /// one-voter cluster when the data dir is new and there is nothing to
    /// join), and serves gRPC on `config.bind`.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let started = Instant::now();
        // sled's open and flush block: keep them off the async workers.
        let (dir, id) = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || open_data_dir(&config))
                .await
                .map_err(|e| StartError::Storage(format!("opening the data dir panicked: {e}")))??
        };
        let listener = TcpListener::bind(config.bind)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.bind,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.bind,
            source,
        })?;
        if config.advertise.is_none() && local_addr.ip().is_unspecified() {
            return Err(StartError::Config(format!(
                "--bind {local_addr} is a wildcard address that peers and clients cannot use; \
                 give the address to reach this node with --advertise HOST:PORT"
            )));
        }
        let addr = config
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let http_listener = match config.http_bind {
            Some(bind) => Some(
                TcpListener::bind(bind)
                    .await
                    .map_err(|source| StartError::Bind { addr: bind, source })?,
            ),
            None => None,
        };
        let http_addr = match &http_listener {
            Some(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            None => String::new(),
        };

        // A wildcard bind lets the OS choose the source address.
        let local_ip = Some(local_addr.ip()).filter(|ip| !ip.is_unspecified());
        let gossip = Arc::new(start_gossip(&config, id, local_addr, &addr, &http_addr).await?);
        let (log_store, sm) =
            open_stores(&dir, config.feed).map_err(|e| StartError::Storage(e.to_string()))?;
        let registry = sm.registry();
        let sm_handle = sm.clone();
        // Where a restored leader must get before it answers linearizable
        // reads (see `Core::startup_term`). Read from storage, not from
        // openraft's metrics, which start at zero until Raft has loaded.
        let mut log_store = log_store;
        let log_sync = log_store.sync();
        let alone = log_store.alone();
        let stepped_down = log_store.stepped_down();
        let startup_term = log_store
            .read_vote()
            .await
            .map_err(|e| StartError::Storage(e.to_string()))?
            .map_or(0, |v| v.leader_id().term);
        let startup_last_log = log_store.last_index().unwrap_or(0);
        let (raft_runtime, raft_spin) = RaftRuntime::start(config.spin)
            .map_err(|e| StartError::Raft(format!("cannot start the Raft runtime: {e}")))?;
        // Raft spawns its tasks (core, state machine worker, replication)
        // where it is created.
        let raft_config = Arc::new(raft_config(&config)?);
        let commits = Arc::new(CommitCounters::default());
        let raft = raft_runtime
            .handle()
            .spawn(Raft::<TypeConfig>::new(
                id,
                raft_config,
                Network {
                    local_ip,
                    sync: log_sync.clone(),
                    fresh: commit_deferral::fresh_for(
                        config.raft.election_timeout_min,
                        config.raft.heartbeat_interval,
                    ),
                    commits: commits.clone(),
                },
                log_store,
                sm,
            ))
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?
            .map_err(|e| StartError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if !initialized && config.join.is_empty() {
            let me = NodeAddr {
                addr: addr.clone(),
                http_addr: http_addr.clone(),
            };
            raft.initialize(BTreeMap::from([(id, me)]))
                .await
                .map_err(|e| StartError::Raft(e.to_string()))?;
            tracing::info!(node = id, "bootstrapped a new one-voter cluster");
        }
        if stepped_down {
            // It led before this start; the log store made it a candidate
            // of that term (see `LogStore::reporting_own_appends_early`).
            // Standing at once makes a one-voter cluster lead again within
            // moments. In a larger one, followers that heard from it within
            // the leader lease refuse this call, and the election comes
            // after a timeout, as for any lost leader.
            if let Err(e) = raft.trigger().elect().await {
                tracing::warn!("could not stand for election after a restart: {e}");
            }
        }
        let shutdown = CancellationToken::new();
        let config = Arc::new(config);
        let peers = Arc::new(Peers::new(local_ip));
        let proposer = {
            let _on_raft_runtime = raft_runtime.handle().enter();
            Proposer::start(
                id,
                raft.clone(),
                peers.clone(),
                config.max_batch,
                config.raft.election_timeout_max,
            )
        };
        let clock = Arc::new(Mutex::new(SessionClock::new(Instant::now())));
        let heartbeats = Heartbeats::new(id, raft.clone(), clock.clone());
        let core = Arc::new(Core {
            id,
            addr,
            http_addr,
            config: config.clone(),
            raft: raft.clone(),
            registry: registry.clone(),
            proposer: proposer.clone(),
            peers: peers.clone(),
            heartbeats: heartbeats.clone(),
            writes: Default::default(),
            commits,
            spin: Default::default(),
            gossip: gossip.clone(),
            shutdown: shutdown.clone(),
            started,
            startup_term,
            startup_last_log,
        });

        let mut tasks = JoinSet::new();
        tasks.spawn(sessions::run_ticker(
            id,
            raft.clone(),
            registry,
            proposer,
            clock,
            config.sessions,
            shutdown.clone(),
        ));
        if let Some(listener) = http_listener {
            tasks.spawn(http::serve(listener, core.clone(), shutdown.clone()));
        }
        tasks.spawn(memory::run_trimmer(shutdown.clone()));
        // On this, the main runtime, where the subscriptions are: see
        // `Registry::run_broadcaster`.
        tasks.spawn({
            let registry = core.registry.clone();
            let stop = shutdown.clone().cancelled_owned();
            async move { registry.run_broadcaster(stop).await }
        });
        tasks.spawn(held_commits::run(raft.clone(), log_sync, shutdown.clone()));
        tasks.spawn(alone::run(raft.clone(), alone, shutdown.clone()));
        tasks.spawn(snapshots::run_trigger(
            raft.clone(),
            sm_handle,
            config.raft.snapshot_every_commands,
            shutdown.clone(),
        ));
        tasks.spawn(membership::run(
            id,
            raft.clone(),
            gossip.clone(),
            config.membership,
            shutdown.clone(),
        ));
        tasks.spawn(sessions::run_heartbeat_forwarder(
            heartbeats,
            peers,
            config.sessions.tick,
            shutdown.clone(),
        ));
        let routed = connections::route(listener, shutdown.clone());
        tasks.spawn(serve_grpc(core.clone(), ReceiverStream::new(routed.public)));
        let internal_server = raft_runtime.handle().spawn(serve_grpc(
            core.clone(),
            // Mapped where the server polls it, on the Raft runtime.
            ReceiverStream::new(routed.internal)
                .map(|conn| conn.and_then(Conn::on_current_runtime)),
        ));
        if let Some(trigger) = raft_spin {
            let _on_raft_runtime = raft_runtime.handle().enter();
            tasks.spawn(spin_task(&core, trigger));
        }
        tracing::info!(node = id, addr = %local_addr, "serving");
        Ok(Node {
            core,
            local_addr,
            tasks,
            internal_server,
            raft_runtime,
        })
    }

    /// Spins on the runtime this is called on, which `trigger` must have
    /// been installed on when it was built (the node binary's main
    /// runtime; the Raft runtime's spinner is started by [`Node::start`]).
    pub fn spin_here(&mut self, trigger: spin::Trigger) {
        self.tasks.spawn(spin_task(&self.core, trigger));
    }

    /// Runs until `signal` completes, then shuts down cleanly. Returns the
    /// reason instead if Raft stops on its own (a storage failure such as a
    /// full disk): a node that can no longer write should exit, so that a
    /// supervisor restarts it, rather than linger half alive.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), String> {
        let metrics = self.core.raft.metrics();
        // Looked at a few times a second, not watched: Raft's metrics
        // change with every write, and a watcher here woke this thread one
        // to two times per registration (each wake-up a context switch,
        // about 24 us of CPU on the benchmark machine, with one writer).
        let stopped = async {
            let mut check = tokio::time::interval(RAFT_STOP_CHECK);
            loop {
                check.tick().await;
                if let Err(fatal) = &metrics.borrow().running_state {
                    return fatal.to_string();
                }
                // The sender is gone once Raft's core has ended.
                if metrics.has_changed().is_err() {
                    return "raft stopped".to_string();
                }
            }
        };
        tokio::select! {
            _ = signal => {}
            // No clean-up: after a fatal error parts of Raft may never
            // answer again, and the caller exits at once, saying why.
            reason = stopped => return Err(format!("raft stopped: {reason}")),
        }
        self.shutdown().await;
        Ok(())
    }

    /// Stops serving: streams are told to reconnect elsewhere, Raft stops,
    /// and the database is flushed.
    pub async fn shutdown(mut self) {
        tracing::info!(node = self.core.id, "shutting down");
        hand_over_leadership(&self.core).await;
        self.core.shutdown.cancel();
        // Live subscriptions end when they read this from the feed.
        self.core.registry.close_feed();
        // Give streams a moment to send their goodbye, but never hang.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
            let _ = (&mut self.internal_server).await;
        })
        .await;
        self.tasks.abort_all();
        self.internal_server.abort();
        if let Err(e) = self.core.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        // Close the UDP socket so the port can be bound again at once.
        self.core.gossip.shutdown().await;
        // Whatever still runs there (replication streams winding down) stops.
        drop(self.raft_runtime);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_command_limit_of_zero_is_refused() {
        let mut config = Config::new("unused");
        assert!(raft_config(&config).is_ok());
        config.raft.snapshot_every_commands = 0;
        let err = raft_config(&config).unwrap_err().to_string();
        assert!(err.contains("snapshot_every_commands"), "{err}");
    }
}
