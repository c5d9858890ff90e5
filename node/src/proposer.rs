//! Proposing client commands through Raft, many at a time, from any node.
//!
//! Commands queue here; a loop takes every command waiting (up to
//! `max_batch`) into one batch. On the leader a batch becomes one log entry
//! stamped with the leader's clock, so that one Raft round and one disk
//! flush serve many clients (group commit). On a follower the batch is
//! forwarded to the leader in one call. Several batches may be in flight at
//! once, so a slow flush does not stop the next batch from forming.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuddle_proto::raft::RaftMessage;
use fuddle_storage::codec::{decode, encode};
use fuddle_storage::{Command, CommandResult, Request, TypeConfig};
use openraft::Raft;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use std::error::Error as _;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::error::NodeError;
use crate::forward::{ForwardBatch, ForwardReply};
use crate::forward_stream::{Forwarded, Forwarder};
use crate::peers::{FORWARD_TIMEOUT, Peers, current_leader, peer_error, wait_for_leader};

/// How many batches may be proposed and not yet answered at once.
const MAX_IN_FLIGHT: usize = 16;

/// How long a batch may take in all before its clients are told to retry;
/// below the SDK's per-attempt timeout, so the client hears why.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a write waits for a leader to be elected before failing.
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// A command's outcome and the index of the entry that applied it.
pub type Proposed = Result<(CommandResult, u64), NodeError>;

/// Where a command may be proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Route {
    /// Here if this node leads, else forwarded to the leader.
    Anywhere,
    /// Only here: the command was forwarded once already, and forwarding
    /// it again could bounce it between nodes during a leader change.
    LocalOnly,
}

struct Pending {
    command: Command,
    route: Route,
    reply: oneshot::Sender<Proposed>,
}

/// What the batch tasks share.
struct Ctx {
    /// This node.
    node_id: u64,
    /// The local Raft.
    raft: Raft<TypeConfig>,
    /// Channels to the leader when it is another node.
    peers: Arc<Peers>,
    /// The stream batches are forwarded on.
    forwarder: Forwarder,
    /// A leader that has not heard from a quorum for this long refuses new
    /// writes at once (they could not commit) rather than time out.
    quorum_timeout: Duration,
}

/// The handle to queue commands for proposal.
#[derive(Clone)]
pub struct Proposer {
    /// Commands waiting for the next batch.
    tx: mpsc::Sender<Pending>,
}

impl Proposer {
    /// Starts the batching loop; it ends when every handle is dropped.
    pub fn start(
        node_id: u64,
        raft: Raft<TypeConfig>,
        peers: Arc<Peers>,
        max_batch: usize,
        quorum_timeout: Duration,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
        let ctx = Arc::new(Ctx {
            node_id,
            raft,
            forwarder: Forwarder::new(peers.clone()),
            peers,
            quorum_timeout,
        });
        tokio::spawn(run(ctx, rx, max_batch.max(1)));
        Proposer { tx }
    }

    /// Proposes one command (forwarding it to the leader if need be) and
    /// waits until it is committed and applied.
    pub async fn propose(&self, command: Command) -> Proposed {
        self.submit(command, Route::Anywhere).await
    }

    /// Proposes a command forwarded by another node: only this node may
    /// propose it, and if it is not the leader the caller hears so.
    pub async fn propose_local(&self, command: Command) -> Proposed {
        self.submit(command, Route::LocalOnly).await
    }

    async fn submit(&self, command: Command, route: Route) -> Proposed {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending {
                command,
                route,
                reply,
            })
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

async fn run(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Pending>, max_batch: usize) {
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
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let (commands, routes, replies) = split(batch);
            let results = submit_batch(&ctx, commands, &routes).await;
            drop(permit);
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        });
    }
}

fn split(batch: Vec<Pending>) -> (Vec<Command>, Vec<Route>, Vec<oneshot::Sender<Proposed>>) {
    let mut commands = Vec::with_capacity(batch.len());
    let mut routes = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for p in batch {
        commands.push(p.command);
        routes.push(p.route);
        replies.push(p.reply);
    }
    (commands, routes, replies)
}

/// Proposes a batch here or forwards it; always one result per command.
async fn submit_batch(ctx: &Ctx, commands: Vec<Command>, routes: &[Route]) -> Vec<Proposed> {
    let n = commands.len();
    // Shared from here on: a retry after a change of leader, or a forward,
    // needs the commands the entry took.
    let commands: Arc<[Command]> = commands.into();
    let deadline = Instant::now() + PROPOSE_TIMEOUT;
    if let Some(e) = raft_stopped(&ctx.raft) {
        return vec![Err(e); n];
    }
    loop {
        let leader = match current_leader(&ctx.raft) {
            Some(l) => l,
            None => {
                match wait_for_leader(&ctx.raft, LEADER_WAIT.min(deadline - Instant::now())).await {
                    Some(l) => l,
                    None => return vec![Err(NodeError::NoLeader); n],
                }
            }
        };
        if leader.0 == ctx.node_id {
            if let Some(silent) = quorum_silence(&ctx.raft, ctx.quorum_timeout) {
                return vec![Err(NodeError::NoQuorum(silent.as_millis() as u64)); n];
            }
            let request = Request {
                now_ms: now_ms(),
                commands: Arc::clone(&commands),
            };
            let written = tokio::time::timeout_at(deadline, ctx.raft.client_write(request)).await;
            return match written {
                Ok(Ok(response)) => {
                    let index = response.log_id.index;
                    let mut results: Vec<Proposed> = response
                        .data
                        .results
                        .into_iter()
                        .map(|r| Ok((r, index)))
                        .collect();
                    results.resize_with(n, || {
                        Err(NodeError::Internal(
                            "apply answered fewer results than commands".into(),
                        ))
                    });
                    results
                }
                // Leadership moved while the entry was being proposed (it
                // was not appended): try again with the new leader.
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Err(e)) => vec![Err(write_error(e)); n],
                Err(_) => vec![
                    Err(NodeError::Timeout(
                        "waiting for the write to commit; it may still be applied".into()
                    ));
                    n
                ],
            };
        }
        return forward(ctx, leader, &commands, routes).await;
    }
}

/// Sends the forwardable commands of a batch to the leader.
async fn forward(
    ctx: &Ctx,
    (leader, addr): (u64, String),
    commands: &[Command],
    routes: &[Route],
) -> Vec<Proposed> {
    let not_leader = NodeError::NotLeader {
        leader: Some((leader, addr.clone())),
    };
    let mut results: Vec<Option<Proposed>> = routes
        .iter()
        .map(|r| (*r == Route::LocalOnly).then(|| Err(not_leader.clone())))
        .collect();
    // Commands forwarded here by another node are only ever proposed
    // where they were sent; a batch without them goes as it is.
    let to_send: Cow<'_, [Command]> = if routes.iter().all(|r| *r == Route::Anywhere) {
        Cow::Borrowed(commands)
    } else {
        commands
            .iter()
            .zip(routes)
            .filter(|(_, r)| **r == Route::Anywhere)
            .map(|(c, _)| c.clone())
            .collect()
    };
    let sent = to_send.len();
    let answers = if sent == 0 {
        Vec::new()
    } else {
        match forward_call(ctx, leader, &addr, to_send).await {
            Ok(reply) => reply.results,
            Err(e) => vec![Err(e); sent],
        }
    };
    let mut answers = answers.into_iter();
    results
        .iter_mut()
        .map(|slot| {
            slot.take().unwrap_or_else(|| {
                answers.next().unwrap_or_else(|| {
                    Err(NodeError::Internal(
                        "the leader answered too few results".into(),
                    ))
                })
            })
        })
        .collect()
}

async fn forward_call(
    ctx: &Ctx,
    leader: u64,
    addr: &str,
    commands: Cow<'_, [Command]>,
) -> Result<ForwardReply, NodeError> {
    let commands = match ctx.forwarder.forward(leader, addr, &commands).await {
        Forwarded::Done(result) => return result,
        Forwarded::Unsupported => commands,
    };
    let data =
        encode(&ForwardBatch { commands }).map_err(|e| NodeError::Internal(e.to_string()))?;
    let mut client = ctx.peers.raft(leader, addr)?;
    let mut request = tonic::Request::new(RaftMessage { data });
    request.set_timeout(FORWARD_TIMEOUT);
    let reply = client.forward(request).await.map_err(|status| {
        // Refused before anything was sent (no connection): surely not
        // applied. Anything else may have reached the leader: the outcome
        // is unknown, which must not read as UNAVAILABLE ("not carried out").
        if chain_has::<tonic::ConnectError>(&status)
            || status.code() == tonic::Code::Unavailable && status.source().is_none()
        {
            peer_error(leader, addr, status)
        } else {
            NodeError::Timeout(format!(
                "waiting for the leader's answer, which was lost ({}); the write may have been applied",
                status.message()
            ))
        }
    })?;
    decode(&reply.into_inner().data)
        .map_err(|e| NodeError::Internal(format!("undecodable forward reply: {e}")))
}

/// Why Raft has stopped on this node (a storage failure such as a full
/// disk), if it has: writes then fail at once, naming the cause.
pub fn raft_stopped(raft: &Raft<TypeConfig>) -> Option<NodeError> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    m.running_state
        .as_ref()
        .err()
        .map(|fatal| NodeError::Internal(format!("raft stopped on this node: {fatal}")))
}

/// Whether an error of type `E` is anywhere in `err`'s source chain.
fn chain_has<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// How long this leader has not heard from a quorum, if longer than
/// `limit`.
pub fn quorum_silence(raft: &Raft<TypeConfig>, limit: Duration) -> Option<Duration> {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    let silent = Duration::from_millis(m.millis_since_quorum_ack?);
    (silent > limit).then_some(silent)
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
