//! Channels to the other nodes, by id, for forwarding and status.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use fuddle_proto::raft::raft_client::RaftClient;
use fuddle_proto::registry::registry_client::RegistryClient;
use tonic::transport::Channel;

use crate::error::NodeError;
use crate::network::lazy_channel;

/// A peer's channel and the address it was made for.
struct Peer {
    /// The address the channel connects to; a new address replaces it.
    addr: String,
    /// The (lazily connected, self-healing) channel.
    channel: Channel,
}

/// Cached channels to peers. Channels are cheap to clone and reconnect by
/// themselves, so one per peer serves every caller.
#[derive(Default)]
pub struct Peers {
    /// Channels by node id.
    peers: Mutex<HashMap<u64, Peer>>,
    /// The source IP for connections (see [`crate::network::Network`]).
    local_ip: Option<std::net::IpAddr>,
}

impl Peers {
    /// Channels whose connections come from `local_ip`.
    pub fn new(local_ip: Option<std::net::IpAddr>) -> Peers {
        Peers {
            peers: Mutex::default(),
            local_ip,
        }
    }

    fn channel(&self, node: u64, addr: &str) -> Result<Channel, NodeError> {
        let mut peers = self.peers.lock().expect("peers lock poisoned");
        if let Some(peer) = peers.get(&node)
            && peer.addr == addr
        {
            return Ok(peer.channel.clone());
        }
        let channel = lazy_channel(addr, self.local_ip).map_err(|e| NodeError::Unreachable {
            node,
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
        peers.insert(
            node,
            Peer {
                addr: addr.to_string(),
                channel: channel.clone(),
            },
        );
        Ok(channel)
    }

    /// The internal service of a peer.
    pub fn raft(&self, node: u64, addr: &str) -> Result<RaftClient<Channel>, NodeError> {
        Ok(RaftClient::new(self.channel(node, addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// The public service of a peer (for status questions).
    pub fn registry(&self, node: u64, addr: &str) -> Result<RegistryClient<Channel>, NodeError> {
        Ok(RegistryClient::new(self.channel(node, addr)?))
    }
}

/// Turns a failed call to a peer into the node's error.
pub fn peer_error(node: u64, addr: &str, status: tonic::Status) -> NodeError {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            NodeError::Unreachable {
                node,
                addr: addr.to_string(),
                reason: status.message().to_string(),
            }
        }
        tonic::Code::DeadlineExceeded => {
            NodeError::Timeout(format!("waiting for node {node} at {addr}"))
        }
        _ => NodeError::Internal(format!("node {node} at {addr}: {}", status.message())),
    }
}

/// How long a forwarded call may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The current leader and its address, as this node knows them.
pub fn current_leader(raft: &openraft::Raft<fuddle_storage::TypeConfig>) -> Option<(u64, String)> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let leader = m.current_leader?;
    let addr = m
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone())?;
    Some((leader, addr))
}

/// Waits (at most `wait`) until some node is leader.
pub async fn wait_for_leader(
    raft: &openraft::Raft<fuddle_storage::TypeConfig>,
    wait: Duration,
) -> Option<(u64, String)> {
    let mut metrics = raft.metrics();
    let _ = tokio::time::timeout(wait, metrics.wait_for(|m| m.current_leader.is_some())).await;
    current_leader(raft)
}
