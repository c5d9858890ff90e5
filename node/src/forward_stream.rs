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
//! that surely never reached the leader fails as unreachable (the client
//! may retry it anywhere); once it may have, a lost answer is "may have
//! been applied". A leader of an earlier release answers the stream with
//! `UNIMPLEMENTED`; the caller then makes calls.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuddle_proto::raft::RaftMessage;
use fuddle_storage::Command;
use fuddle_storage::codec::{decode, encode};
use tokio::sync::{OnceCell, mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::NodeError;
use crate::forward::{Envelope, ForwardBatch, ForwardReply};
use crate::peers::{FORWARD_TIMEOUT, Peers, peer_error};

/// How many batches may wait to be written to the stream. The proposer has
/// at most 16 in flight.
const QUEUE: usize = 32;

/// How long a leader that answered `UNIMPLEMENTED` is sent calls before
/// the stream is tried again (it may have been upgraded in place).
const RETRY_UNSUPPORTED: Duration = Duration::from_secs(60);

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
    /// The stream to the leader as last known: open, opening, or failed to
    /// open. Held only to read or replace it, never across an await, so a
    /// slow open holds up only the batches for that leader, which share it.
    slot: Mutex<Option<Arc<Slot>>>,
}

/// One attempt at a stream to one leader, shared by every batch that
/// comes while it opens.
struct Slot {
    /// The leader's id and address: another leader needs another stream.
    leader: (u64, String),
    /// The open stream, once the attempt is over, or why it failed.
    opened: OnceCell<Result<Arc<Link>, NodeError>>,
    /// When the attempt started, to try again a leader without the stream.
    started: Instant,
}

/// An open stream to one leader.
struct Link {
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

impl Slot {
    /// Whether the next batch needs a new attempt: this one failed, its
    /// stream ended, or its leader had no stream a while ago.
    fn is_spent(&self) -> bool {
        match self.opened.get() {
            None => false,
            Some(Err(_)) => true,
            Some(Ok(link)) if link.unsupported => self.started.elapsed() > RETRY_UNSUPPORTED,
            Some(Ok(link)) => link.ended.load(Ordering::Acquire),
        }
    }
}

impl Forwarder {
    /// A forwarder over `peers`' channels.
    pub fn new(peers: Arc<Peers>) -> Forwarder {
        Forwarder {
            peers,
            slot: Mutex::new(None),
        }
    }

    /// Sends `commands` to the leader `leader` at `addr` and waits for its
    /// reply, all within `FORWARD_TIMEOUT`.
    pub async fn forward(&self, leader: u64, addr: &str, commands: &[Command]) -> Forwarded {
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let not_sent = |why: &str| Forwarded::Done(Err(not_read(leader, addr, why)));
        let link = match tokio::time::timeout_at(deadline, self.link(leader, addr)).await {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => return Forwarded::Done(Err(e)),
            Err(_) => return not_sent("opening the stream to the leader took too long"),
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
        // The reply task marks the stream ended and then takes the lock
        // this insert took to fail what is waiting: either it sees this
        // batch, or this load sees the mark. A batch registered after the
        // drain would otherwise wait in vain.
        if link.ended.load(Ordering::Acquire) {
            lock(&link.waiting).remove(&id);
            return not_sent("the stream to the leader ended");
        }
        // A send that fails or is cut short by the deadline queued nothing.
        let sent =
            tokio::time::timeout_at(deadline, link.requests.send(RaftMessage { data })).await;
        if !matches!(sent, Ok(Ok(()))) {
            lock(&link.waiting).remove(&id);
            return not_sent("the stream to the leader is full or ended");
        }
        let result = match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unknown_outcome("the stream to the leader ended")),
            Err(_) => {
                lock(&link.waiting).remove(&id);
                Err(unknown_outcome("no answer in time"))
            }
        };
        Forwarded::Done(result)
    }

    /// The stream to this leader: the current attempt if it is for this
    /// leader and not spent, else a new one. Batches that come while a
    /// stream opens wait for that attempt and share its outcome.
    async fn link(&self, leader: u64, addr: &str) -> Result<Arc<Link>, NodeError> {
        let slot = {
            let mut current = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            match current.as_ref() {
                Some(slot)
                    if slot.leader.0 == leader && slot.leader.1 == addr && !slot.is_spent() =>
                {
                    slot.clone()
                }
                _ => {
                    let slot = Arc::new(Slot {
                        leader: (leader, addr.to_string()),
                        opened: OnceCell::new(),
                        started: Instant::now(),
                    });
                    *current = Some(slot.clone());
                    slot
                }
            }
        };
        slot.opened
            .get_or_init(|| async { self.open(leader, addr).await.map(Arc::new) })
            .await
            .clone()
    }

    /// Opens a stream. Nothing is sent on it yet, so a failure here means
    /// no batch reached the leader.
    async fn open(&self, leader: u64, addr: &str) -> Result<Link, NodeError> {
        let (requests, queued) = mpsc::channel(QUEUE);
        let waiting: Arc<Waiting> = Arc::default();
        let ended = Arc::new(AtomicBool::new(false));
        let mut link = Link {
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
            Err(_) => return Err(not_read(leader, addr, "opening the stream took too long")),
        };
        let leader = (leader, addr.to_string());
        tokio::spawn(hand_out_replies(replies, waiting, ended, leader));
        Ok(link)
    }
}

/// Hands each reply to the batch waiting for it until the stream ends,
/// then fails the batches still waiting.
///
/// How it ended decides what they are told. The leader ends a stream
/// normally only when it shuts down (or this side closed, and then no
/// batch waits), and then only after it has answered every batch it read,
/// so a batch still waiting was never read: not applied. A stream that
/// breaks (a failed connection, an error, a response without a status,
/// which tonic 0.14.6 and later report as an error) leaves the outcome of
/// what was on it open.
async fn hand_out_replies(
    mut replies: tonic::Streaming<RaftMessage>,
    waiting: Arc<Waiting>,
    ended: Arc<AtomicBool>,
    (leader, addr): (u64, String),
) {
    let failure = loop {
        let message = match replies.message().await {
            Ok(Some(message)) => message,
            Ok(None) => {
                let why = "the leader stopped taking batches before it read this one";
                break not_read(leader, &addr, why);
            }
            Err(status) => {
                let why = format!("the stream to the leader failed: {}", status.message());
                break unknown_outcome(&why);
            }
        };
        let envelope: Envelope<ForwardReply> = match decode(&message.data) {
            Ok(envelope) => envelope,
            Err(e) => break unknown_outcome(&format!("undecodable forward reply: {e}")),
        };
        // Gone when its caller gave up waiting.
        if let Some(reply) = lock(&waiting).remove(&envelope.id) {
            let _ = reply.send(Ok(envelope.body));
        }
    };
    ended.store(true, Ordering::Release);
    for (_, reply) in lock(&waiting).drain() {
        let _ = reply.send(Err(failure.clone()));
    }
}

/// A batch the leader surely did not read: not applied, and the client may
/// send it again anywhere.
fn not_read(leader: u64, addr: &str, why: &str) -> NodeError {
    NodeError::Unreachable {
        node: leader,
        addr: addr.to_string(),
        reason: why.to_string(),
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
) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<ForwardReply, NodeError>>>> {
    waiting
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
