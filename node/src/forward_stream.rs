//! A follower's batches for the leader, as messages on one long-lived
//! stream (`ForwardStream`) instead of one call each.
//!
//! Under many writers a follower forwards hundreds of batches a second, and
//! each call cost both nodes an HTTP/2 stream, headers, trailers and a task.
//! On the stream a batch and its reply are data frames. Several batches are
//! in flight at once and the leader answers them as they commit, so each
//! carries an id, and a task of the stream's own hands each reply to the
//! batch waiting for it.
//!
//! What a caller is told follows the rule of the call it replaces: a batch
//! that surely never left this node fails as unreachable (the client may
//! retry it anywhere); once it may have reached the leader, a lost answer
//! is "may have been applied". A leader of an earlier release answers the
//! stream with `UNIMPLEMENTED`; the caller then makes calls.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuddle_proto::raft::RaftMessage;
use fuddle_storage::Command;
use fuddle_storage::codec::{decode, encode};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::NodeError;
use crate::forward::{Envelope, ForwardBatch, ForwardReply};
use crate::peers::{FORWARD_TIMEOUT, Peers, peer_error};

/// How many batches may wait to be written to the stream. The proposer has
/// at most 16 in flight.
const QUEUE: usize = 32;

/// Batches waiting for their replies, by id.
type Waiting = Mutex<HashMap<u64, oneshot::Sender<Result<ForwardReply, NodeError>>>>;

/// What a forward over the stream came to.
pub enum Forwarded {
    /// The leader's reply, or why there is none.
    Done(Result<ForwardReply, NodeError>),
    /// The leader has no stream (an earlier release): make a call.
    Unsupported,
}

/// The follower's stream to the leader, opened on first use and again
/// after it ends. One per node, for whichever node leads.
pub struct Forwarder {
    /// Channels to peers.
    peers: Arc<Peers>,
    /// The stream to the leader as last known, if one is open.
    link: tokio::sync::Mutex<Option<Arc<Link>>>,
}

/// An open stream to one leader.
struct Link {
    /// The leader's id and address: another leader needs another stream.
    leader: (u64, String),
    /// Batches to write to the stream.
    requests: mpsc::Sender<RaftMessage>,
    /// Batches sent and not yet answered.
    waiting: Arc<Waiting>,
    /// The next batch's id.
    next_id: AtomicU64,
    /// Set by the reply task when the stream ends: the next batch opens
    /// another.
    ended: Arc<AtomicBool>,
    /// Set when the leader answered `UNIMPLEMENTED`.
    unsupported: bool,
}

impl Forwarder {
    /// A forwarder over `peers`' channels.
    pub fn new(peers: Arc<Peers>) -> Forwarder {
        Forwarder {
            peers,
            link: tokio::sync::Mutex::new(None),
        }
    }

    /// Sends `commands` to the leader `leader` at `addr` and waits (at most
    /// `FORWARD_TIMEOUT`) for its reply.
    pub async fn forward(&self, leader: u64, addr: &str, commands: &[Command]) -> Forwarded {
        let link = match self.link(leader, addr).await {
            Ok(link) => link,
            Err(e) => return Forwarded::Done(Err(e)),
        };
        if link.unsupported {
            return Forwarded::Unsupported;
        }
        let id = link.next_id.fetch_add(1, Ordering::Relaxed);
        let data = match encode(&Envelope {
            id,
            body: ForwardBatch {
                commands: Cow::Borrowed(commands),
            },
        }) {
            Ok(data) => data,
            Err(e) => return Forwarded::Done(Err(NodeError::Internal(e.to_string()))),
        };
        let (reply, answer) = oneshot::channel();
        lock(&link.waiting).insert(id, reply);
        // The reply task marks the stream ended before it fails what is
        // waiting: a batch registered after that would wait in vain.
        if link.ended.load(Ordering::Acquire) {
            lock(&link.waiting).remove(&id);
            let e = tonic::Status::unavailable("the stream to the leader ended");
            return Forwarded::Done(Err(peer_error(leader, addr, e)));
        }
        if link.requests.send(RaftMessage { data }).await.is_err() {
            // The stream ended before the batch was queued: it was not sent.
            lock(&link.waiting).remove(&id);
            link.ended.store(true, Ordering::Release);
            let e = tonic::Status::unavailable("the stream to the leader ended");
            return Forwarded::Done(Err(peer_error(leader, addr, e)));
        }
        let result = match tokio::time::timeout(FORWARD_TIMEOUT, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unknown_outcome("the stream to the leader ended")),
            Err(_) => {
                lock(&link.waiting).remove(&id);
                Err(unknown_outcome("no answer in time"))
            }
        };
        Forwarded::Done(result)
    }

    /// The open stream to this leader, opening one if there is none.
    async fn link(&self, leader: u64, addr: &str) -> Result<Arc<Link>, NodeError> {
        let mut current = self.link.lock().await;
        if let Some(link) = current.as_ref()
            && link.leader.0 == leader
            && link.leader.1 == addr
            && !link.ended.load(Ordering::Acquire)
        {
            return Ok(link.clone());
        }
        let link = Arc::new(self.open(leader, addr).await?);
        *current = Some(link.clone());
        Ok(link)
    }

    /// Opens a stream. Nothing is sent on it yet, so a failure here means
    /// no batch reached the leader.
    async fn open(&self, leader: u64, addr: &str) -> Result<Link, NodeError> {
        let (requests, queued) = mpsc::channel(QUEUE);
        let waiting: Arc<Waiting> = Arc::default();
        let ended = Arc::new(AtomicBool::new(false));
        let mut link = Link {
            leader: (leader, addr.to_string()),
            requests,
            waiting: waiting.clone(),
            next_id: AtomicU64::new(0),
            ended: ended.clone(),
            unsupported: false,
        };
        let mut client = self.peers.raft(leader, addr)?;
        let opened = tokio::time::timeout(
            FORWARD_TIMEOUT,
            client.forward_stream(ReceiverStream::new(queued)),
        )
        .await;
        let replies = match opened {
            Ok(Ok(replies)) => replies.into_inner(),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    leader,
                    "leader has no ForwardStream (an earlier release): forwarding as calls"
                );
                link.unsupported = true;
                return Ok(link);
            }
            Ok(Err(status)) => return Err(peer_error(leader, addr, status)),
            Err(_) => {
                let e = tonic::Status::unavailable("opening the stream took too long");
                return Err(peer_error(leader, addr, e));
            }
        };
        tokio::spawn(hand_out_replies(replies, waiting, ended));
        Ok(link)
    }
}

/// Hands each reply to the batch waiting for it until the stream ends,
/// then fails the batches still waiting: they may have reached the leader.
async fn hand_out_replies(
    mut replies: tonic::Streaming<RaftMessage>,
    waiting: Arc<Waiting>,
    ended: Arc<AtomicBool>,
) {
    let why = loop {
        let message = match replies.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break "the leader ended the stream".to_string(),
            Err(status) => break format!("the stream to the leader failed: {}", status.message()),
        };
        let envelope: Envelope<ForwardReply> = match decode(&message.data) {
            Ok(envelope) => envelope,
            Err(e) => break format!("undecodable forward reply: {e}"),
        };
        // Gone when its caller gave up waiting.
        if let Some(reply) = lock(&waiting).remove(&envelope.id) {
            let _ = reply.send(Ok(envelope.body));
        }
    };
    ended.store(true, Ordering::Release);
    for (_, reply) in lock(&waiting).drain() {
        let _ = reply.send(Err(unknown_outcome(&why)));
    }
}

/// A batch that may have reached the leader and whose answer was lost.
fn unknown_outcome(why: &str) -> NodeError {
    NodeError::Timeout(format!(
        "waiting for the leader's answer, which was lost ({why}); the write may have been applied"
    ))
}

fn lock(
    waiting: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<ForwardReply, NodeError>>>> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
