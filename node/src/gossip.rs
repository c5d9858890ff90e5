//! Discovery by gossip (chitchat over UDP).
//!
//! Gossip only tells a node which other nodes exist, how to reach them and
//! whether they look alive: no registry data ever travels by gossip, because
//! the registry is replicated by Raft and a UDP datagram holds at most ~64 KiB.
//! Each node publishes three small keys: [`KEY_GRPC_ADDR`], [`KEY_HTTP_ADDR`]
//! and [`KEY_RAFT_ID`].
//!
//! chitchat names a node by a [`ChitchatId`]: a string node id (here the Raft
//! node id in decimal), a generation and the gossip address. Every start uses
//! a higher generation (the start time in ms since the epoch), so that peers
//! tell the restarted node from the state they remember of its previous life;
//! with the same generation, peers would ignore the restarted node's heartbeat
//! and key versions because they are lower than the ones they already hold.
//! chitchat itself treats two generations as two unrelated nodes, so this
//! module reports only the newest generation of each node id.
//!
//! chitchat keeps its state behind an async mutex. So that the accessors here
//! are cheap synchronous calls, a background task copies what callers need
//! into a [`GossipView`] after each gossip round; see [`Gossip::start`].
//!
//! Liveness comes from chitchat's failure detector. It declares a node dead
//! when the time since its last heartbeat exceeds `phi_threshold` times the
//! mean observed heartbeat interval, where that mean is smoothed towards
//! `failure_detector_initial_interval` (as if five samples of that value had
//! been seen). Peers observe heartbeats about once per gossip interval, so a
//! stopped node is reported dead after roughly `phi_threshold ×
//! gossip_interval` once the cluster has run a while, and after up to
//! `phi_threshold × failure_detector_initial_interval` just after start. A
//! node that has just appeared is reported dead until its third heartbeat
//! arrives, which is why callers should only act on nodes dead for a while
//! (see [`Gossip::dead_nodes`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{info, warn};

/// The gossip key holding the node's advertised gRPC address (`host:port`).
pub const KEY_GRPC_ADDR: &str = "grpc_addr";
/// The gossip key holding the node's advertised HTTP address (may be empty).
pub const KEY_HTTP_ADDR: &str = "http_addr";
/// The gossip key holding the node's Raft id in decimal.
pub const KEY_RAFT_ID: &str = "raft_id";

/// The default cluster id.
pub const DEFAULT_CLUSTER_ID: &str = "fuddle";
/// The default time between two gossip rounds.
pub const DEFAULT_GOSSIP_INTERVAL: Duration = Duration::from_millis(500);
/// The default retention of deleted keys (chitchat has no default outside
/// its tests; Fuddle never deletes keys, so this only bounds memory).
pub const DEFAULT_MARKED_FOR_DELETION_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);
/// The default phi threshold (chitchat's default).
pub const DEFAULT_PHI_THRESHOLD: f64 = 8.0;
/// The default prior heartbeat interval of the failure detector.
pub const DEFAULT_FAILURE_DETECTOR_INITIAL_INTERVAL: Duration = Duration::from_secs(1);
/// The default time a dead node is remembered (chitchat's default is 24 h).
pub const DEFAULT_DEAD_NODE_GRACE_PERIOD: Duration = Duration::from_secs(60 * 60);

/// The longest value allowed for an advertised address: gossip state must
/// stay far below the ~64 KiB of one UDP datagram, and a DNS name with a port
/// fits easily.
const MAX_ADDR_LEN: usize = 512;

/// How a node joins gossip.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// The Raft node id; it becomes chitchat's node id (in decimal) so that
    /// gossip and Raft name nodes the same way.
    pub node_id: u64,
    /// Where the UDP socket is bound: the same IP and port number as the
    /// node's gRPC TCP listener, so that one address per node is enough.
    pub gossip_addr: SocketAddr,
    /// The address peers send gossip to, which differs from `gossip_addr`
    /// when the node binds a wildcard or sits behind NAT.
    pub advertise_gossip_addr: SocketAddr,
    /// The gRPC address (`host:port`) peers and the leader use to reach this
    /// node; discovering it is the point of gossip.
    pub grpc_addr: String,
    /// The HTTP address (`host:port`, or empty when HTTP is off), published so
    /// that tools can find every node's metrics and dashboard.
    pub http_addr: String,
    /// Gossip seeds (`host:port`, from `--join`): the first peers contacted.
    /// Names are resolved again every minute by chitchat; a seed that does
    /// not resolve only logs a warning.
    pub seeds: Vec<String>,
    /// Messages from another cluster id are rejected, which keeps separate
    /// clusters on one network apart (it is not authentication).
    pub cluster_id: String,
    /// The time between gossip rounds; it also paces the failure detector
    /// and how often [`Gossip`]'s view is refreshed.
    pub gossip_interval: Duration,
    /// How long deleted keys are kept before garbage collection; chitchat
    /// needs a value and its test default of 24 h holds memory for nothing.
    pub marked_for_deletion_grace_period: Duration,
    /// A node is declared dead once the silence since its last heartbeat
    /// exceeds this multiple of its mean heartbeat interval.
    pub phi_threshold: f64,
    /// The heartbeat interval assumed before real intervals are observed;
    /// it dominates the detection time of the first few seconds.
    pub failure_detector_initial_interval: Duration,
    /// How long a dead node is remembered before chitchat forgets it (it then
    /// becomes [`Liveness::Unknown`]); it must exceed the caller's own
    /// dead-node timeout, or that timeout never fires.
    pub dead_node_grace_period: Duration,
}

impl GossipConfig {
    /// A configuration with the defaults: advertised where it binds, gRPC
    /// on the gossip address, no HTTP address, no seeds.
    pub fn new(node_id: u64, gossip_addr: SocketAddr) -> Self {
        Self {
            node_id,
            gossip_addr,
            advertise_gossip_addr: gossip_addr,
            grpc_addr: gossip_addr.to_string(),
            http_addr: String::new(),
            seeds: Vec::new(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            gossip_interval: DEFAULT_GOSSIP_INTERVAL,
            marked_for_deletion_grace_period: DEFAULT_MARKED_FOR_DELETION_GRACE_PERIOD,
            phi_threshold: DEFAULT_PHI_THRESHOLD,
            failure_detector_initial_interval: DEFAULT_FAILURE_DETECTOR_INITIAL_INTERVAL,
            dead_node_grace_period: DEFAULT_DEAD_NODE_GRACE_PERIOD,
        }
    }

    /// Checks what chitchat would accept but peers could not use.
    fn validate(&self) -> Result<(), GossipError> {
        let advertise = self.advertise_gossip_addr;
        if advertise.ip().is_unspecified() || advertise.port() == 0 {
            return Err(GossipError::InvalidConfig(format!(
                "the advertised gossip address {advertise} cannot be reached by peers; \
                 advertise a concrete IP and port"
            )));
        }
        for (name, value) in [("gRPC", &self.grpc_addr), ("HTTP", &self.http_addr)] {
            if value.len() > MAX_ADDR_LEN {
                return Err(GossipError::InvalidConfig(format!(
                    "the advertised {name} address is {} bytes long, over the limit of \
                     {MAX_ADDR_LEN}",
                    value.len()
                )));
            }
        }
        if self.gossip_interval.is_zero() {
            return Err(GossipError::InvalidConfig(
                "the gossip interval must be above zero".to_string(),
            ));
        }
        if !(self.phi_threshold.is_finite() && self.phi_threshold > 0.0) {
            return Err(GossipError::InvalidConfig(format!(
                "the phi threshold must be a positive number, not {}",
                self.phi_threshold
            )));
        }
        Ok(())
    }
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The UDP socket could not be bound (the port is taken, or the address
    /// is not local).
    #[error("cannot bind the gossip UDP socket on {addr}: {source}")]
    Bind {
        /// The address that could not be bound.
        addr: SocketAddr,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("invalid gossip configuration: {0}")]
    InvalidConfig(String),
    /// chitchat failed to start for another reason.
    #[error("gossip failed to start: {0}")]
    Start(String),
}

/// A node as discovered by gossip.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerInfo {
    /// The node's Raft id.
    pub node_id: u64,
    /// Where to reach its gRPC services.
    pub grpc_addr: String,
    /// Where to reach its HTTP endpoint; empty when it has none.
    pub http_addr: String,
}

/// What gossip says of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The failure detector hears its heartbeat.
    Alive,
    /// The failure detector has stopped hearing it.
    Dead,
    /// Gossip has not heard of it, has forgotten it, or does not yet know
    /// its addresses.
    Unknown,
}

/// A running gossip member. Dropping it stops gossip too; [`Gossip::shutdown`]
/// also waits for the UDP socket to be closed.
pub struct Gossip {
    /// The chitchat server; its shutdown closes the UDP socket. Taken out
    /// by [`Gossip::shutdown`], which may be called through a shared
    /// reference while other parts of the node still hold the `Gossip`.
    handle: Mutex<Option<ChitchatHandle>>,
    /// The view copied out of chitchat, read by the synchronous accessors.
    shared: Arc<Mutex<Shared>>,
    /// Hands out receivers of the live set for [`Gossip::watch`].
    live_rx: watch::Receiver<Vec<PeerInfo>>,
    /// The task that refreshes `shared` and the live set.
    refresher: Mutex<Option<JoinHandle<()>>>,
    /// Stops the refresher on [`Gossip::shutdown`].
    stop_token: CancellationToken,
    /// Stops the refresher also when the `Gossip` is dropped without
    /// [`Gossip::shutdown`].
    _stop: DropGuard,
    /// This start's generation, kept for logs and tests.
    generation_id: u64,
}

/// What the refresher shares with the accessors.
#[derive(Debug, Default)]
struct Shared {
    /// The newest generation of every node with a known liveness.
    view: GossipView,
    /// When each dead node was first seen dead by this node.
    dead_since: DeadSince,
}

impl Gossip {
    /// Binds the UDP socket, publishes this node's keys and starts gossiping
    /// with the seeds.
    pub async fn start(config: GossipConfig) -> Result<Gossip, GossipError> {
        config.validate()?;
        let generation_id = next_generation_id();
        let chitchat_id = ChitchatId::new(
            config.node_id.to_string(),
            generation_id,
            config.advertise_gossip_addr,
        );
        let chitchat_config = ChitchatConfig {
            chitchat_id,
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.gossip_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                initial_interval: config.failure_detector_initial_interval,
                dead_node_grace_period: config.dead_node_grace_period,
                ..FailureDetectorConfig::default()
            },
            marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            // V0 is the format every chitchat release decodes; the digest
            // compression of V1 only pays off with many more nodes than a
            // Raft cluster has.
            protocol_version: ProtocolVersion::V0,
        };
        let key_values = vec![
            (KEY_GRPC_ADDR.to_string(), config.grpc_addr.clone()),
            (KEY_HTTP_ADDR.to_string(), config.http_addr.clone()),
            (KEY_RAFT_ID.to_string(), config.node_id.to_string()),
        ];
        // chitchat resolves named seeds before binding and only logs the
        // ones that fail, so a bad seed never stops the node; an error here
        // is the bind.
        let handle = spawn_chitchat(chitchat_config, key_values, &UdpTransport)
            .await
            .map_err(|err| match err.downcast::<std::io::Error>() {
                Ok(source) => GossipError::Bind {
                    addr: config.gossip_addr,
                    source,
                },
                Err(err) => GossipError::Start(format!("{err:#}")),
            })?;

        let chitchat = handle.chitchat();
        let mut shared = Shared::default();
        let initial = {
            let guard = chitchat.lock().await;
            shared.refresh(view_of(&guard), Instant::now());
            shared.view.live.clone()
        };
        let shared = Arc::new(Mutex::new(shared));
        let (live_tx, live_rx) = watch::channel(initial);
        let token = CancellationToken::new();
        let refresher = tokio::spawn(refresh_loop(
            chitchat,
            shared.clone(),
            live_tx,
            config.gossip_interval,
            token.clone(),
        ));
        info!(
            node_id = config.node_id,
            generation_id,
            gossip_addr = %config.gossip_addr,
            advertise_gossip_addr = %config.advertise_gossip_addr,
            seeds = ?config.seeds,
            "gossip started"
        );
        Ok(Gossip {
            handle: Mutex::new(Some(handle)),
            shared,
            live_rx,
            refresher: Mutex::new(Some(refresher)),
            stop_token: token.clone(),
            _stop: token.drop_guard(),
            generation_id,
        })
    }

    /// The nodes gossip considers alive, this node included, by node id.
    pub fn live_nodes(&self) -> Vec<PeerInfo> {
        self.lock().view.live.clone()
    }

    /// The nodes gossip considers dead, by node id, each with how long this
    /// node has seen it dead (a node dead before this node started counts
    /// from when this node learned of it).
    pub fn dead_nodes(&self) -> Vec<(PeerInfo, Duration)> {
        let shared = self.lock();
        let now = Instant::now();
        shared
            .view
            .dead
            .iter()
            .map(|peer| {
                let dead_for = shared
                    .dead_since
                    .dead_for(peer.node_id, now)
                    .unwrap_or_default();
                (peer.clone(), dead_for)
            })
            .collect()
    }

    /// What gossip says of one node.
    pub fn liveness(&self, node_id: u64) -> Liveness {
        self.lock().view.liveness(node_id)
    }

    /// A receiver of the live set (as [`Gossip::live_nodes`] returns it),
    /// marked changed whenever a node joins, leaves or changes its addresses.
    pub fn watch(&self) -> watch::Receiver<Vec<PeerInfo>> {
        self.live_rx.clone()
    }

    /// This start's generation: the start time in ms since the Unix epoch,
    /// raised if needed to stay above the previous start in this process.
    pub fn generation_id(&self) -> u64 {
        self.generation_id
    }

    /// Stops gossiping and waits until the UDP socket is closed, so that the
    /// port can be bound again at once. Peers notice through their failure
    /// detectors: chitchat has no leave message.
    pub async fn shutdown(&self) {
        self.stop_token.cancel();
        let refresher = self.refresher.lock().ok().and_then(|mut r| r.take());
        if let Some(refresher) = refresher
            && let Err(err) = refresher.await
        {
            warn!(error = %err, "the gossip refresher failed");
        }
        let handle = self.handle.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle
            && let Err(err) = handle.shutdown().await
        {
            warn!(error = %format!("{err:#}"), "gossip stopped with an error");
        }
    }

    /// Locks the shared view; a poisoned lock still holds a usable view, as
    /// every update replaces it whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Shared {
    /// Takes a new view and updates the dead-since clocks with it.
    fn refresh(&mut self, view: GossipView, now: Instant) {
        self.dead_since
            .observe(view.dead.iter().map(|peer| peer.node_id), now);
        self.view = view;
    }
}

/// Copies chitchat's view into `shared` after every gossip round, and
/// publishes the live set when it changes.
async fn refresh_loop(
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    shared: Arc<Mutex<Shared>>,
    live_tx: watch::Sender<Vec<PeerInfo>>,
    interval: Duration,
    stop: CancellationToken,
) {
    // chitchat's own watcher fires when its live set changes, which brings
    // joins and deaths to callers without waiting for the tick; the tick
    // catches what that watcher does not report (forgotten dead nodes).
    let mut changes = chitchat.lock().await.live_nodes_watcher();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() {
                    // chitchat is gone: nothing will change any more.
                    return;
                }
            }
            _ = ticker.tick() => {}
        }
        let view = view_of(&*chitchat.lock().await);
        let live = view.live.clone();
        {
            let mut shared = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log_changes(&shared.view, &view);
            shared.refresh(view, Instant::now());
        }
        live_tx.send_if_modified(|current| {
            if *current == live {
                false
            } else {
                *current = live;
                true
            }
        });
    }
}

/// Logs nodes that became alive or dead, which is what an operator wants to
/// see of gossip.
fn log_changes(before: &GossipView, after: &GossipView) {
    let was_live: HashSet<u64> = before.live.iter().map(|p| p.node_id).collect();
    let was_dead: HashSet<u64> = before.dead.iter().map(|p| p.node_id).collect();
    for peer in &after.live {
        if !was_live.contains(&peer.node_id) {
            info!(node_id = peer.node_id, grpc_addr = %peer.grpc_addr, "gossip: node alive");
        }
    }
    for peer in &after.dead {
        if !was_dead.contains(&peer.node_id) {
            info!(node_id = peer.node_id, grpc_addr = %peer.grpc_addr, "gossip: node dead");
        }
    }
}

/// One generation of a node as chitchat knows it.
#[derive(Debug, Clone)]
struct Sighting {
    /// Its chitchat identity.
    id: ChitchatId,
    /// What the failure detector says of it.
    liveness: Liveness,
    /// Its published gRPC address, if already received.
    grpc_addr: Option<String>,
    /// Its published HTTP address, if already received.
    http_addr: Option<String>,
}

/// Gossip's view, one entry per node id (its newest generation).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct GossipView {
    /// Nodes alive, by node id.
    live: Vec<PeerInfo>,
    /// Nodes dead, by node id.
    dead: Vec<PeerInfo>,
}

impl GossipView {
    /// What the view says of one node.
    fn liveness(&self, node_id: u64) -> Liveness {
        if self.live.iter().any(|p| p.node_id == node_id) {
            Liveness::Alive
        } else if self.dead.iter().any(|p| p.node_id == node_id) {
            Liveness::Dead
        } else {
            Liveness::Unknown
        }
    }
}

/// Reads chitchat's state into a view.
fn view_of(chitchat: &Chitchat) -> GossipView {
    let live: HashSet<&ChitchatId> = chitchat.live_nodes().collect();
    let dead: HashSet<&ChitchatId> = chitchat.dead_nodes().collect();
    let sightings = chitchat
        .node_states()
        .iter()
        .map(|(id, state)| Sighting {
            id: id.clone(),
            liveness: if live.contains(id) {
                Liveness::Alive
            } else if dead.contains(id) {
                Liveness::Dead
            } else {
                Liveness::Unknown
            },
            grpc_addr: state.get(KEY_GRPC_ADDR).map(str::to_string),
            http_addr: state.get(KEY_HTTP_ADDR).map(str::to_string),
        })
        .collect();
    select_view(chitchat.self_chitchat_id(), sightings)
}

/// Keeps the newest generation of each node id and sorts the nodes into
/// alive and dead. This node is always itself, whatever generations of its id
/// peers remember. Nodes whose liveness or gRPC address is not known yet, or
/// whose id is not a number (not a Fuddle node), are left out.
fn select_view(self_id: &ChitchatId, sightings: Vec<Sighting>) -> GossipView {
    let mut newest: BTreeMap<u64, Sighting> = BTreeMap::new();
    for sighting in sightings {
        let Ok(node_id) = sighting.id.node_id.parse::<u64>() else {
            continue;
        };
        if sighting.id.node_id == self_id.node_id && sighting.id != *self_id {
            if sighting.id.generation_id > self_id.generation_id {
                warn!(
                    node_id,
                    ours = self_id.generation_id,
                    theirs = sighting.id.generation_id,
                    "gossip knows a newer generation of this node's id: \
                     two nodes share an id, or the clock went back"
                );
            }
            continue;
        }
        match newest.get(&node_id) {
            Some(known) if known.id.generation_id >= sighting.id.generation_id => {}
            _ => {
                newest.insert(node_id, sighting);
            }
        }
    }
    let mut view = GossipView::default();
    for (node_id, sighting) in newest {
        let Some(grpc_addr) = sighting.grpc_addr else {
            continue;
        };
        let peer = PeerInfo {
            node_id,
            grpc_addr,
            http_addr: sighting.http_addr.unwrap_or_default(),
        };
        match sighting.liveness {
            Liveness::Alive => view.live.push(peer),
            Liveness::Dead => view.dead.push(peer),
            Liveness::Unknown => {}
        }
    }
    view
}

/// When each dead node was first seen dead, so that callers can act only on
/// nodes dead longer than a timeout. Time is passed in.
#[derive(Debug, Default)]
struct DeadSince {
    /// Node id → the first check that found it dead, in this dead spell.
    since: HashMap<u64, Instant>,
}

impl DeadSince {
    /// Records the nodes dead at `now`: a node newly dead starts its clock,
    /// a node still dead keeps it, and a node no longer dead (alive again or
    /// forgotten) loses it, so a later death starts afresh.
    fn observe(&mut self, dead: impl IntoIterator<Item = u64>, now: Instant) {
        let dead: HashSet<u64> = dead.into_iter().collect();
        self.since.retain(|node_id, _| dead.contains(node_id));
        for node_id in dead {
            self.since.entry(node_id).or_insert(now);
        }
    }

    /// How long a node has been dead at `now`, if it is.
    fn dead_for(&self, node_id: u64, now: Instant) -> Option<Duration> {
        self.since
            .get(&node_id)
            .map(|since| now.saturating_duration_since(*since))
    }
}

/// The generation of the last start in this process.
static LAST_GENERATION: AtomicU64 = AtomicU64::new(0);

/// The start time in ms since the epoch, raised when needed to stay above
/// the previous start in this process: a node restarted within the same
/// millisecond (tests that restart in-process nodes) still gets a higher
/// generation.
fn next_generation_id() -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let previous = LAST_GENERATION
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(now_ms.max(last.saturating_add(1)))
        })
        .unwrap_or_else(|last| last);
    now_ms.max(previous.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn sighting(node_id: &str, generation: u64, liveness: Liveness) -> Sighting {
        Sighting {
            id: ChitchatId::new(node_id, generation, addr(7000)),
            liveness,
            grpc_addr: Some(format!("grpc-{node_id}-{generation}")),
            http_addr: None,
        }
    }

    fn ids(peers: &[PeerInfo]) -> Vec<u64> {
        peers.iter().map(|p| p.node_id).collect()
    }

    #[test]
    fn dead_since_starts_keeps_and_resets_clocks() {
        let t0 = Instant::now();
        let mut dead = DeadSince::default();
        dead.observe([1, 2], t0);
        assert_eq!(dead.dead_for(1, t0), Some(Duration::ZERO));

        // Still dead later: the clock runs from the first sighting.
        let t1 = t0 + Duration::from_secs(10);
        dead.observe([1, 2, 3], t1);
        assert_eq!(dead.dead_for(1, t1), Some(Duration::from_secs(10)));
        assert_eq!(dead.dead_for(3, t1), Some(Duration::ZERO));

        // Node 1 came back; when it dies again the clock starts afresh.
        let t2 = t0 + Duration::from_secs(20);
        dead.observe([2, 3], t2);
        assert_eq!(dead.dead_for(1, t2), None);
        assert_eq!(dead.dead_for(2, t2), Some(Duration::from_secs(20)));
        let t3 = t0 + Duration::from_secs(30);
        dead.observe([1], t3);
        assert_eq!(dead.dead_for(1, t3), Some(Duration::ZERO));
        assert_eq!(dead.dead_for(2, t3), None);
        assert_eq!(dead.dead_for(4, t3), None);
    }

    #[test]
    fn dead_since_never_goes_negative() {
        let t0 = Instant::now();
        let mut dead = DeadSince::default();
        dead.observe([1], t0 + Duration::from_secs(5));
        assert_eq!(dead.dead_for(1, t0), Some(Duration::ZERO));
    }

    #[test]
    fn newest_generation_wins() {
        let me = ChitchatId::new("1", 100, addr(7000));
        let view = select_view(
            &me,
            vec![
                Sighting {
                    id: me.clone(),
                    liveness: Liveness::Alive,
                    grpc_addr: Some("me".into()),
                    http_addr: Some("me-http".into()),
                },
                sighting("2", 5, Liveness::Alive),
                sighting("2", 9, Liveness::Dead),
                sighting("3", 9, Liveness::Dead),
                sighting("3", 12, Liveness::Alive),
            ],
        );
        assert_eq!(ids(&view.live), vec![1, 3]);
        assert_eq!(view.live[0].http_addr, "me-http");
        assert_eq!(view.live[1].grpc_addr, "grpc-3-12");
        assert_eq!(ids(&view.dead), vec![2]);
        assert_eq!(view.dead[0].grpc_addr, "grpc-2-9");
        assert_eq!(view.liveness(2), Liveness::Dead);
        assert_eq!(view.liveness(3), Liveness::Alive);
        assert_eq!(view.liveness(4), Liveness::Unknown);
    }

    #[test]
    fn self_is_always_the_running_generation() {
        let me = ChitchatId::new("1", 100, addr(7000));
        let view = select_view(
            &me,
            vec![
                sighting("1", 50, Liveness::Dead),
                sighting("1", 150, Liveness::Dead),
                Sighting {
                    id: me.clone(),
                    liveness: Liveness::Alive,
                    grpc_addr: Some("me".into()),
                    http_addr: None,
                },
            ],
        );
        assert_eq!(ids(&view.live), vec![1]);
        assert!(view.dead.is_empty());
    }

    #[test]
    fn incomplete_or_foreign_nodes_are_left_out() {
        let me = ChitchatId::new("1", 100, addr(7000));
        let mut no_addr = sighting("2", 1, Liveness::Alive);
        no_addr.grpc_addr = None;
        let view = select_view(
            &me,
            vec![
                no_addr,
                sighting("3", 1, Liveness::Unknown),
                sighting("not-a-number", 1, Liveness::Alive),
            ],
        );
        assert_eq!(view, GossipView::default());
    }

    #[test]
    fn generations_increase_within_the_process() {
        let first = next_generation_id();
        let second = next_generation_id();
        assert!(second > first);
        // Milliseconds since the epoch: far beyond a plain counter.
        assert!(first > 1_600_000_000_000);
    }

    #[test]
    fn unreachable_advertise_addresses_are_refused() {
        let mut config = GossipConfig::new(1, addr(7000));
        config.advertise_gossip_addr = SocketAddr::from(([0, 0, 0, 0], 7000));
        assert!(matches!(
            config.validate(),
            Err(GossipError::InvalidConfig(_))
        ));
        config.advertise_gossip_addr = addr(0);
        assert!(config.validate().is_err());
        config.advertise_gossip_addr = addr(7000);
        assert!(config.validate().is_ok());
        config.grpc_addr = "x".repeat(MAX_ADDR_LEN + 1);
        assert!(config.validate().is_err());
    }
}
