//! The parts of a running node that its services share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fuddle_proto::registry as pb;
use fuddle_storage::{Command, Registry, TypeConfig};
use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio_util::sync::CancellationToken;

use fuddle_proto::raft::RaftMessage;
use fuddle_storage::codec::decode;

use crate::config::Config;
use crate::counters::{CommitCounters, WriteCounters};
use crate::error::NodeError;
use crate::forward::ReadIndexReply;
use crate::gossip::{Gossip, Liveness};
use crate::peers::{Peers, current_leader, peer_error, wait_for_leader};
use crate::proposer::{Proposed, Proposer};
use crate::sessions::Heartbeats;
use crate::status::{self, SelfInfo};

/// How long a linearizable read may wait for the leader's confirmation.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long cluster status waits for each other node's own answer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A running node's shared parts.
pub struct Core {
    /// This node's id.
    pub id: u64,
    /// The address clients and peers use for this node.
    pub addr: String,
    /// The HTTP address, if serving (empty otherwise).
    pub http_addr: String,
    /// The configuration it started with.
    pub config: Arc<Config>,
    /// The local Raft.
    pub raft: Raft<TypeConfig>,
    /// The applied state, read by every query and subscription.
    pub registry: Arc<Registry>,
    /// Batches writes into log entries.
    pub proposer: Proposer,
    /// Channels to other nodes.
    pub peers: Arc<Peers>,
    /// Where session heartbeats go.
    pub heartbeats: Heartbeats,
    /// Writes received, by unary call or session stream, for `/metrics`.
    pub writes: WriteCounters,
    /// Commit-only AppendEntries this node, as leader, kept back and sent
    /// late (`commit_deferral`), for `/metrics` and tests.
    pub commits: Arc<CommitCounters>,
    /// What the node's spinners did (`spin`), for `/metrics` and tests.
    pub spin: Arc<crate::spin::SpinStats>,
    /// Discovery and liveness of other nodes.
    pub gossip: Arc<Gossip>,
    /// Cancelled when the node shuts down; long-lived streams watch it.
    pub shutdown: CancellationToken,
    /// When the node started, for uptime.
    pub started: Instant,
    /// The Raft term this node started in, and the last index of its log
    /// then. openraft 0.9 restores a node whose saved vote is its own as
    /// leader of that term without an election (openraft issue #1511), with
    /// a commit point read from unflushed storage that can lag the
    /// cluster's. Such a leader answers linearizable reads only once it has
    /// applied its whole log as it was at the start: every entry committed
    /// before the crash is in it (a leader holds every committed entry).
    pub startup_term: u64,
    /// See `startup_term`.
    pub startup_last_log: u64,
}

impl Core {
    /// Proposes a command and waits for it to be applied.
    pub async fn propose(&self, command: Command) -> Proposed {
        if self.shutdown.is_cancelled() {
            return Err(NodeError::ShuttingDown);
        }
        self.proposer.propose(command).await
    }

    /// Waits until a read at the requested consistency may be answered from
    /// the local state: nothing for stale reads, the leader's read index for
    /// linearizable ones.
    pub async fn read_barrier(&self, consistency: i32) -> Result<(), NodeError> {
        match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Stale) => return Ok(()),
            Ok(pb::Consistency::Linearizable) => {}
            Err(_) => {
                return Err(NodeError::BadRequest(format!(
                    "consistency: unknown value {consistency}"
                )));
            }
        }
        let leader = match current_leader(&self.raft) {
            Some(l) => l,
            None => wait_for_leader(&self.raft, READ_BARRIER_TIMEOUT)
                .await
                .ok_or(NodeError::NoLeader)?,
        };
        let wanted = match leader {
            (leader, _) if leader == self.id => self.leader_read_index().await?,
            (leader, addr) => self.remote_read_index(leader, &addr).await?,
        };
        // The leader confirmed `wanted` is committed; a read here is
        // linearizable once this node has applied it.
        let mut watch = self.registry.watch_index();
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, watch.wait_for(|i| *i >= wanted)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NodeError::Behind {
                applied: self.registry.index(),
                wanted,
            }),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the
    /// index up to which a read is linearizable (openraft's read index,
    /// already applied here when this returns).
    pub async fn leader_read_index(&self) -> Result<u64, NodeError> {
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(log_id)) => {
                // A leader may answer reads only once it has applied an
                // entry of its own term (Raft §8): before that, what it
                // knows to be committed can lag the cluster's commit point.
                // And a leader restored without an election only once it
                // has applied its log as it was at the start (see
                // `startup_term`).
                let mut metrics = self.raft.metrics();
                let own_term = tokio::time::timeout(READ_BARRIER_TIMEOUT, async {
                    metrics
                        .wait_for(|m| {
                            let applied = m.last_applied.map_or(0, |l| l.index);
                            let recovered = m.current_term > self.startup_term
                                || applied >= self.startup_last_log;
                            recovered
                                && m.last_applied
                                    .is_some_and(|l| l.leader_id.term == m.current_term)
                        })
                        .await
                        .is_ok()
                })
                .await;
                if own_term != Ok(true) {
                    return Err(NodeError::NoLeader);
                }
                let applied = self.registry.index();
                Ok(log_id.map_or(0, |l| l.index).max(applied))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(match (f.leader_id, f.leader_node) {
                    (Some(id), Some(node)) => NodeError::NotLeader {
                        leader: Some((id, node.addr)),
                    },
                    _ => NodeError::NoLeader,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(NodeError::NoLeader)
            }
            Ok(Err(RaftError::Fatal(e))) => Err(NodeError::Internal(format!("raft stopped: {e}"))),
            Err(_) => Err(NodeError::Timeout(
                "waiting for the leader to confirm a linearizable read".into(),
            )),
        }
    }

    async fn remote_read_index(&self, leader: u64, addr: &str) -> Result<u64, NodeError> {
        let mut request = tonic::Request::new(RaftMessage { data: Vec::new() });
        request.set_timeout(READ_BARRIER_TIMEOUT);
        let reply = self
            .peers
            .raft(leader, addr)?
            .read_index(request)
            .await
            .map_err(|s| peer_error(leader, addr, s))?;
        let reply: ReadIndexReply = decode(&reply.into_inner().data)
            .map_err(|e| NodeError::Internal(format!("undecodable read index reply: {e}")))?;
        reply.index
    }

    fn self_info(&self) -> SelfInfo<'_> {
        SelfInfo {
            addr: &self.addr,
            http_addr: &self.http_addr,
            registry: &self.registry,
            started: self.started,
            data_dir: self.config.data_dir.display().to_string(),
        }
    }

    /// The cluster as this node sees it, with each other node's own account
    /// of its role and indexes (asked concurrently, briefly) and gossip's
    /// view of its liveness.
    pub async fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let metrics = self.raft.metrics().borrow().clone();
        let mut status = status::cluster_status(&metrics, &self.self_info());
        let asks = status.nodes.iter().filter(|n| n.id != self.id).map(|n| {
            let (id, addr) = (n.id, n.addr.clone());
            async move {
                (
                    id,
                    self.ask_node_status(id, &addr, PEER_STATUS_TIMEOUT).await,
                )
            }
        });
        let answers: std::collections::HashMap<u64, Result<pb::NodeStatusResponse, NodeError>> =
            futures::future::join_all(asks).await.into_iter().collect();
        for node in &mut status.nodes {
            if node.id == self.id {
                continue;
            }
            node.liveness = match self.gossip.liveness(node.id) {
                Liveness::Alive => "alive",
                Liveness::Dead => "dead",
                Liveness::Unknown => "unknown",
            }
            .to_string();
            if let Some(Ok(answer)) = answers.get(&node.id)
                && let Some(info) = &answer.node
            {
                node.role = info.role.clone();
                node.last_log_index = info.last_log_index;
                node.applied_index = info.applied_index;
            } else {
                node.role = "unreachable".to_string();
            }
        }
        status
    }

    /// This node in detail, or another node's own answer.
    pub async fn node_status(&self, node: u64) -> Result<pb::NodeStatusResponse, NodeError> {
        if node == 0 || node == self.id {
            let metrics = self.raft.metrics().borrow().clone();
            return Ok(status::node_status(&metrics, &self.self_info()));
        }
        let addr = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config
                .membership()
                .get_node(&node)
                .map(|n| n.addr.clone())
        };
        let addr = match addr {
            Some(a) => a,
            None => self
                .gossip
                .live_nodes()
                .into_iter()
                .find(|p| p.node_id == node)
                .map(|p| p.grpc_addr)
                .ok_or(NodeError::UnknownNode(node))?,
        };
        self.ask_node_status(node, &addr, READ_BARRIER_TIMEOUT)
            .await
    }

    async fn ask_node_status(
        &self,
        node: u64,
        addr: &str,
        timeout: Duration,
    ) -> Result<pb::NodeStatusResponse, NodeError> {
        let mut request = tonic::Request::new(pb::NodeStatusRequest { node_id: 0 });
        request.set_timeout(timeout);
        let answer = tokio::time::timeout(
            timeout,
            self.peers.registry(node, addr)?.node_status(request),
        )
        .await
        .map_err(|_| NodeError::Timeout(format!("waiting for node {node} at {addr}")))?
        .map_err(|s| peer_error(node, addr, s))?
        .into_inner();
        // A node whose data dir was wiped may answer at the old address
        // under a new id: that is not the node asked about.
        match &answer.node {
            Some(info) if info.id == node => Ok(answer),
            _ => Err(NodeError::UnknownNode(node)),
        }
    }
}
