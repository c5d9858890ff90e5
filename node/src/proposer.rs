//! Proposing client commands through Raft, many at a time.
//!
//! Commands queue here; a loop takes every command waiting (up to
//! `max_batch`) into one log entry stamped with the leader's clock, so that
//! one Raft round and one disk flush serve many clients (group commit).
//! Several entries may be in flight at once, so a slow flush does not stop
//! the next batch from forming.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuddle_storage::{Command, CommandResult, Request, TypeConfig};
use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::NodeError;

/// How many log entries may be proposed and not yet applied at once.
const MAX_IN_FLIGHT: usize = 16;

/// How long a proposal may take before the client is told to retry.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A command's outcome and the index of the entry that applied it.
pub type Proposed = Result<(CommandResult, u64), NodeError>;

struct Pending {
    command: Command,
    reply: oneshot::Sender<Proposed>,
}

/// The handle to queue commands for proposal.
#[derive(Clone)]
pub struct Proposer {
    /// Commands waiting for the next batch.
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching loop; it ends when every handle is dropped.
    pub fn start(raft: Raft<TypeConfig>, max_batch: usize) -> Proposer {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        tokio::spawn(run(raft, rx, max_batch.max(1)));
        Proposer { tx }
    }

    /// Proposes one command and waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Proposed {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { command, reply })
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        rx.await.map_err(|_| NodeError::ShuttingDown)?
    }
}

/// The leader's wall clock, stamped into entries so apply needs no clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while we waited for a permit joins this batch.
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (commands, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.command, p.reply)).unzip();
            let request = Request {
                now_ms: now_ms(),
                commands,
            };
            let outcome = tokio::time::timeout(PROPOSE_TIMEOUT, raft.client_write(request)).await;
            drop(permit);
            match outcome {
                Ok(Ok(response)) => {
                    let index = response.log_id.index;
                    let mut results = response.data.results.into_iter();
                    for reply in replies {
                        let result = results.next().ok_or_else(|| {
                            NodeError::Internal("apply answered fewer results than commands".into())
                        });
                        let _ = reply.send(result.map(|r| (r, index)));
                    }
                }
                Ok(Err(e)) => {
                    let e = write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(NodeError::Timeout(
                            "waiting for the write to commit; it may still be applied".into(),
                        )));
                    }
                }
            }
        });
    }
}

/// Maps openraft's write errors to the node's.
pub fn write_error(
    e: RaftError<u64, ClientWriteError<u64, fuddle_storage::NodeAddr>>,
) -> NodeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) => NodeError::NotLeader {
                    leader: Some((id, node.addr)),
                },
                _ => NodeError::NoLeader,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            NodeError::Internal(e.to_string())
        }
        RaftError::Fatal(e) => NodeError::Internal(format!("raft stopped: {e}")),
    }
}
