//! The server side of the internal service: Raft messages from peers, and
//! what followers forward to the leader.

use std::pin::Pin;
use std::sync::Arc;

use fuddle_proto::raft::RaftMessage;
use fuddle_proto::raft::raft_server::Raft as RaftRpc;
use fuddle_storage::codec::{decode, encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::core::Core;
use crate::forward::{Envelope, ForwardBatch, ForwardReply, HeartbeatBatch, ReadIndexReply};
use crate::network::TARGET_NODE_HEADER;
use crate::peers::current_leader;

/// Serves peers from a node's core.
pub struct RaftService {
    /// The node.
    core: Arc<Core>,
}

impl RaftService {
    /// A service for `core`.
    pub fn new(core: Arc<Core>) -> RaftService {
        RaftService { core }
    }
}

impl RaftService {
    /// Refuses a Raft message meant for another node id (this address
    /// belonged to a node whose data dir was wiped).
    fn check_target<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(value) = request.metadata().get(TARGET_NODE_HEADER) else {
            return Ok(());
        };
        let target: Option<u64> = value.to_str().ok().and_then(|v| v.parse().ok());
        match target {
            Some(t) if t == self.core.id => Ok(()),
            _ => Err(Status::failed_precondition(format!(
                "this is node {}, not node {}",
                self.core.id,
                value.to_str().unwrap_or("?")
            ))),
        }
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    decode_message(&request.into_inner())
}

fn decode_message<T: DeserializeOwned>(message: &RaftMessage) -> Result<T, Status> {
    decode(&message.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable internal message: {e}")))
}

fn encode_message<T: Serialize>(reply: &T) -> Result<RaftMessage, Status> {
    encode(reply)
        .map(|data| RaftMessage { data })
        .map_err(|e| Status::internal(format!("cannot encode internal reply: {e}")))
}

fn encode_reply<T: Serialize>(reply: &T) -> Result<Response<RaftMessage>, Status> {
    encode_message(reply).map(Response::new)
}

/// Proposes a follower's batch here, as one proposal per command: proposed
/// together, they share the leader's next entry.
async fn propose_forwarded(core: &Core, batch: ForwardBatch<'_>) -> ForwardReply {
    let proposals = batch
        .commands
        .into_owned()
        .into_iter()
        .map(|command| core.proposer.propose_local(command));
    ForwardReply {
        results: futures::future::join_all(proposals).await,
    }
}

/// A `ForwardStream` batch's way to its reply. The follower takes a stream
/// that ends normally to mean that every batch it has not had a reply for
/// was never read; a batch task that ends without answering (a panic)
/// must therefore end the stream with an error instead.
struct Unanswered(Option<mpsc::Sender<Result<RaftMessage, Status>>>);

impl Unanswered {
    async fn answer(mut self, reply: Result<RaftMessage, Status>) {
        if let Some(replies) = self.0.take() {
            let _ = replies.send(reply).await;
        }
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(replies) = self.0.take() {
            let _ = replies.try_send(Err(Status::internal(
                "a forwarded batch was read and not answered",
            )));
        }
    }
}

/// How many replies of a `ForwardStream` may wait to be sent. A follower
/// has at most 16 batches in flight.
const FORWARD_STREAM_QUEUE: usize = 32;

/// The replies of an `AppendEntriesStream` or a `ForwardStream`.
type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for RaftService {
    type AppendEntriesStreamStream = ReplyStream;
    type ForwardStreamStream = ReplyStream;

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&request)?;
        let rpc = decode_request(request)?;
        encode_reply(&self.core.raft.append_entries(rpc).await)
    }

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.check_target(&request)?;
        let raft = self.core.raft.clone();
        // One request at a time, in order, as the leader sends them: the
        // leader's replication to this node waits for each reply before its
        // next request anyway. A message that does not decode ends the
        // stream with the error; the leader opens another. The stream also
        // ends when this node shuts down: the leader would otherwise keep
        // it open with heartbeats, and the server, which waits for its
        // streams to end, with it.
        let shutdown = self.core.shutdown.clone().cancelled_owned();
        let requests = futures::StreamExt::take_until(request.into_inner(), shutdown);
        let replies = requests.then(move |message| {
            let raft = raft.clone();
            async move {
                let rpc = decode_message(&message?)?;
                encode_message(&raft.append_entries(rpc).await)
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&request)?;
        let rpc = decode_request(request)?;
        encode_reply(&self.core.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.check_target(&request)?;
        let rpc = decode_request(request)?;
        encode_reply(&self.core.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let batch: ForwardBatch = decode_request(request)?;
        encode_reply(&propose_forwarded(&self.core, batch).await)
    }

    async fn forward_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let (replies, out) = mpsc::channel(FORWARD_STREAM_QUEUE);
        let mut requests = request.into_inner();
        let core = self.core.clone();
        // Reads the follower's batches and proposes each in a task of its
        // own, so that they share the leader's next entries as calls
        // would; each task holds a sender, so the replies end once the
        // requests have and every batch is answered. A node shutting down
        // reads no more (the stream would otherwise hold its server open).
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = core.shutdown.cancelled() => break,
                    message = requests.message() => message,
                };
                let message = match message {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        let _ = replies.send(Err(status)).await;
                        break;
                    }
                };
                // The id first (an `Envelope` is its id, then its body): a
                // batch that does not decode is answered with no results
                // (the follower reports them missing) instead of ending
                // the stream under the batches in flight.
                let Ok((id, body)) = postcard::take_from_bytes::<u64>(&message.data) else {
                    let status = Status::invalid_argument("a forwarded batch without an id");
                    let _ = replies.send(Err(status)).await;
                    break;
                };
                let batch: Option<ForwardBatch> = decode(body).ok();
                let (core, replies) = (core.clone(), Unanswered(Some(replies.clone())));
                tokio::spawn(async move {
                    let body = match batch {
                        Some(batch) => propose_forwarded(&core, batch).await,
                        None => ForwardReply { results: vec![] },
                    };
                    replies.answer(encode_message(&Envelope { id, body })).await;
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }

    async fn forward_heartbeats(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        // Only the leader's clock counts: a node that no longer leads refuses, so
        // the follower keeps the heartbeats for the leader it finds next.
        if current_leader(&self.core.raft).map(|(id, _)| id) != Some(self.core.id) {
            return Err(Status::unavailable("this node is not the leader"));
        }
        let batch: HeartbeatBatch = decode_request(request)?;
        self.core
            .heartbeats
            .record_at_leader(batch.client_ids.iter().map(String::as_str));
        encode_reply(&())
    }

    async fn elect(&self, _request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        tracing::info!("asked to take over leadership");
        self.core
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        encode_reply(&())
    }

    async fn read_index(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let index = self.core.leader_read_index().await;
        encode_reply(&ReadIndexReply { index })
    }
}
