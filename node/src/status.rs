//! Cluster and node status, read from openraft's metrics.

use std::time::Instant;

use fuddle_proto::registry as pb;
use fuddle_storage::{NodeAddr, NodeId, Registry};
use openraft::{RaftMetrics, ServerState};

/// The role names of the command-line contract.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Learner => "learner",
        ServerState::Candidate => "candidate",
        ServerState::Shutdown => "shutdown",
    }
}

/// What the node knows of itself, for status answers.
pub struct SelfInfo<'a> {
    /// The node's advertised gRPC address.
    pub addr: &'a str,
    /// The node's HTTP address, if serving.
    pub http_addr: &'a str,
    /// The registry, for counts.
    pub registry: &'a Registry,
    /// When the node started.
    pub started: Instant,
    /// Where its data lives.
    pub data_dir: String,
}

/// This node as a `NodeInfo`.
pub fn self_info(m: &RaftMetrics<NodeId, NodeAddr>, me: &SelfInfo<'_>) -> pb::NodeInfo {
    let membership = m.membership_config.membership();
    let voter = membership.voter_ids().any(|v| v == m.id);
    // openraft reports a non-voter that follows the leader as a learner, and
    // a voter as a follower; both come from its own state.
    pb::NodeInfo {
        id: m.id,
        addr: me.addr.to_string(),
        http_addr: me.http_addr.to_string(),
        role: role_name(m.state).to_string(),
        voter,
        last_log_index: m.last_log_index.unwrap_or(0),
        applied_index: m.last_applied.map_or(0, |l| l.index),
        liveness: "self".to_string(),
    }
}

/// The whole cluster as this node sees it. Other nodes' applied indexes are
/// only known to the leader through replication (matched index).
pub fn cluster_status(
    m: &RaftMetrics<NodeId, NodeAddr>,
    me: &SelfInfo<'_>,
) -> pb::ClusterStatusResponse {
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let mut nodes = Vec::new();
    for (id, node) in membership.nodes() {
        if *id == m.id {
            nodes.push(self_info(m, me));
            continue;
        }
        let voter = voters.contains(id);
        let role = if m.current_leader == Some(*id) {
            "leader"
        } else if voter {
            "follower"
        } else {
            "learner"
        };
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(id).copied().flatten())
            .map_or(0, |l| l.index);
        nodes.push(pb::NodeInfo {
            id: *id,
            addr: node.addr.clone(),
            http_addr: node.http_addr.clone(),
            role: role.to_string(),
            voter,
            last_log_index: matched,
            applied_index: 0,
            liveness: "unknown".to_string(),
        });
    }
    if !nodes.iter().any(|n| n.id == m.id) {
        // Not (yet) in the membership: a node waiting to be added.
        nodes.push(self_info(m, me));
    }
    pb::ClusterStatusResponse {
        leader: m.current_leader.unwrap_or(0),
        term: m.current_term,
        nodes,
        answered_by: m.id,
    }
}

/// This node in detail.
pub fn node_status(m: &RaftMetrics<NodeId, NodeAddr>, me: &SelfInfo<'_>) -> pb::NodeStatusResponse {
    let (members, sessions, subscribers) = {
        let applied = me.registry.read();
        (
            applied.state.members.len() as u64,
            applied.state.sessions.len() as u64,
            applied.feed.receivers() as u64,
        )
    };
    pb::NodeStatusResponse {
        node: Some(self_info(m, me)),
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
        members,
        sessions,
        subscribers,
        committed_index: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map_or(0, |l| l.index),
        uptime_ms: me.started.elapsed().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: me.data_dir.clone(),
    }
}
