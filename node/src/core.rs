//! The parts of a running node that its services share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fuddle_proto::registry as pb;
use fuddle_storage::{Command, Registry, TypeConfig};
use openraft::Raft;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::NodeError;
use crate::proposer::{Proposed, Proposer};
use crate::sessions::Heartbeats;
use crate::status::{self, SelfInfo};

/// How long a linearizable read may wait for the leader's confirmation.
const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Where session heartbeats go.
    pub heartbeats: Heartbeats,
    /// Cancelled when the node shuts down; long-lived streams watch it.
    pub shutdown: CancellationToken,
    /// When the node started, for uptime.
    pub started: Instant,
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
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
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

    fn self_info(&self) -> SelfInfo<'_> {
        SelfInfo {
            addr: &self.addr,
            http_addr: &self.http_addr,
            registry: &self.registry,
            started: self.started,
            data_dir: self.config.data_dir.display().to_string(),
        }
    }

    /// The cluster as this node sees it.
    pub fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let metrics = self.raft.metrics().borrow().clone();
        status::cluster_status(&metrics, &self.self_info())
    }

    /// This node in detail.
    pub fn node_status(&self) -> pb::NodeStatusResponse {
        let metrics = self.raft.metrics().borrow().clone();
        status::node_status(&metrics, &self.self_info())
    }
}
