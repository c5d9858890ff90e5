//! The cluster's and a node's status, as plain serializable values.

use serde::{Deserialize, Serialize};

/// One node as the answering node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: u64,
    /// The gRPC (and gossip) address.
    pub addr: String,
    /// The HTTP address (metrics, health, dashboard).
    pub http_addr: String,
    /// `leader`, `follower`, `learner`, `candidate` or `unknown`.
    pub role: String,
    /// Whether the node votes in elections.
    pub voter: bool,
    /// The last log index the node holds.
    pub last_log_index: u64,
    /// The last log index the node has applied.
    pub applied_index: u64,
    /// What the answering node knows of this node's liveness: `alive`,
    /// `dead`, `unknown` or `self`.
    pub liveness: String,
}

/// The Raft view of the whole cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's node id; 0 when there is none.
    pub leader: u64,
    /// The current Raft term.
    pub term: u64,
    /// Every node of the membership.
    pub nodes: Vec<NodeInfo>,
    /// The node that answered.
    pub answered_by: u64,
}

/// One node's detailed status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node itself; its fields are flattened into the JSON form.
    #[serde(flatten)]
    pub node: NodeInfo,
    /// The current Raft term.
    pub term: u64,
    /// The leader's node id; 0 when there is none.
    pub leader: u64,
    /// How many members the node's state holds.
    pub members: u64,
    /// How many sessions the node's state holds.
    pub sessions: u64,
    /// How many subscriptions the node serves.
    pub subscribers: u64,
    /// The highest log index known to be committed.
    pub committed_index: u64,
    /// The log index of the latest snapshot.
    pub snapshot_index: u64,
    /// How long the node has been running, in milliseconds.
    pub uptime_ms: u64,
    /// The node's software version.
    pub version: String,
    /// The node's data directory.
    pub data_dir: String,
}
