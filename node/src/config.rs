//! A node's configuration. `main` fills it from the command line; tests
//! build it directly, with short timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use fuddle_storage::{FeedConfig, Limits};

use crate::membership::MembershipConfig;

/// Everything a node needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the sled database lives.
    pub data_dir: PathBuf,
    /// TCP address for gRPC (public and internal services). Port 0 picks a
    /// free port, which the started node reports.
    pub bind: SocketAddr,
    /// The address other nodes and clients should use, when it differs from
    /// `bind` (a wildcard bind, NAT). Defaults to the bound address.
    pub advertise: Option<String>,
    /// The UDP address peers use for gossip, when it differs from the
    /// advertised gRPC address (defaults to `advertise`, then the bind).
    pub advertise_gossip: Option<String>,
    /// HTTP address for health and metrics; `None` disables it.
    pub http_bind: Option<SocketAddr>,
    /// Gossip seeds. Empty: bootstrap a new cluster if the data dir is new.
    pub join: Vec<String>,
    /// Keeps separate clusters on one network apart in gossip.
    pub cluster_id: String,
    /// Time between gossip rounds; failure detection scales with it.
    pub gossip_interval: Duration,
    /// Automatic membership: dead-node timeout, voter count.
    pub membership: MembershipConfig,
    /// Limits on client input.
    pub limits: Limits,
    /// Session timeouts: defaults and the bounds a client may choose within.
    pub sessions: SessionConfig,
    /// Raft timing.
    pub raft: RaftTiming,
    /// How much change history is kept for resuming subscribers.
    pub feed: FeedConfig,
    /// How often an idle subscription gets a Progress message by default.
    pub progress_interval: Duration,
    /// Most commands in one log entry (one proposal).
    pub max_batch: usize,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// How long a runtime worker looks for more work before it sleeps,
    /// while writes come one at a time (see `spin`); zero, the default
    /// here, turns it off. The node binary turns it on (`--spin`); an
    /// embedding process or a test chooses, since spinning spends CPU the
    /// process may want elsewhere.
    pub spin: Duration,
}

/// Session timeouts.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    /// Heartbeat timeout when a client asks for none.
    pub default_heartbeat_timeout: Duration,
    /// Smallest heartbeat timeout a client may ask for.
    pub min_heartbeat_timeout: Duration,
    /// Largest heartbeat timeout a client may ask for.
    pub max_heartbeat_timeout: Duration,
    /// Reconnect timeout when a client asks for none.
    pub default_reconnect_timeout: Duration,
    /// Smallest reconnect timeout a client may ask for.
    pub min_reconnect_timeout: Duration,
    /// Largest reconnect timeout a client may ask for.
    pub max_reconnect_timeout: Duration,
    /// How often the leader checks for silent and expired sessions.
    pub tick: Duration,
    /// Most sessions marked down or expired in one log entry, so that a mass
    /// expiry cannot stall the log.
    pub max_transitions_per_tick: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            default_heartbeat_timeout: Duration::from_secs(30),
            min_heartbeat_timeout: Duration::from_millis(500),
            max_heartbeat_timeout: Duration::from_secs(300),
            default_reconnect_timeout: Duration::from_secs(600),
            min_reconnect_timeout: Duration::from_secs(1),
            max_reconnect_timeout: Duration::from_secs(7 * 24 * 3600),
            tick: Duration::from_millis(100),
            max_transitions_per_tick: 1000,
        }
    }
}

/// Raft timing, chosen for a loaded machine: an AppendEntries RPC must
/// finish (including the follower's flush) within the heartbeat interval.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Smallest election timeout.
    pub election_timeout_min: Duration,
    /// Largest election timeout.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub keep_behind_snapshot: u64,
    /// Build a snapshot once this many commands were applied since the
    /// last one: the most a restart re-applies (see `snapshots`).
    pub snapshot_every_commands: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat_interval: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1500),
            election_timeout_max: Duration::from_millis(3000),
            snapshot_every: 10_000,
            keep_behind_snapshot: 1_000,
            snapshot_every_commands: 100_000,
        }
    }
}

impl Config {
    /// A configuration with the design's defaults for the given data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8220)),
            advertise: None,
            advertise_gossip: None,
            http_bind: None,
            join: Vec::new(),
            cluster_id: crate::gossip::DEFAULT_CLUSTER_ID.to_string(),
            gossip_interval: crate::gossip::DEFAULT_GOSSIP_INTERVAL,
            membership: MembershipConfig::default(),
            limits: Limits::default(),
            sessions: SessionConfig::default(),
            raft: RaftTiming::default(),
            feed: FeedConfig::default(),
            progress_interval: Duration::from_secs(5),
            max_batch: 1024,
            cache_bytes: 64 << 20,
            spin: Duration::ZERO,
        }
    }
}
