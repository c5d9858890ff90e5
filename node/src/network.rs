//! openraft's network over tonic: the client side of the internal Raft
//! service. openraft's messages travel as postcard bytes inside
//! `RaftMessage`, which keeps the internal proto small and lets openraft
//! evolve its messages without a proto change.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use fuddle_proto::raft::RaftMessage;
use fuddle_proto::raft::raft_client::RaftClient;
use fuddle_storage::codec::{decode, encode};
use fuddle_storage::{LogSync, NodeAddr, NodeId, TypeConfig};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::commit_deferral::{self, Ack, Deferral, Offer};
use crate::connections::connect_internal;
use crate::counters::CommitCounters;

/// openraft's error for a failed message to a peer.
type RpcError<E = openraft::error::Infallible> = RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

/// openraft's error for a call that got no reply within its time.
fn timeout_error<E: std::error::Error>(ttl: Duration) -> RpcError<E> {
    let e = std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply within {ttl:?}"),
    );
    RPCError::Network(NetworkError::new(&e))
}

/// The gRPC metadata key naming the node an internal message is meant for.
pub const TARGET_NODE_HEADER: &str = "fuddle-target-node";

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds connections to peers.
#[derive(Debug, Clone)]
pub struct Network {
    /// The source IP for connections to peers: the node's bind IP, so that
    /// a peer (or a fault-injecting proxy in tests) sees which node calls.
    pub local_ip: Option<IpAddr>,
    /// What of this node's log is durable: a leader tells its followers of
    /// a commit only as far as that (see `fuddle_storage::log_sync`).
    pub sync: LogSync,
    /// How recent a follower's answer must be for a request to be answered
    /// for it (`commit_deferral::fresh_for` the node's Raft timings).
    pub fresh: Duration,
    /// The node's counts of commits kept back, for `/metrics`.
    pub commits: Arc<CommitCounters>,
}

impl Default for Network {
    fn default() -> Network {
        Network {
            local_ip: None,
            sync: LogSync::default(),
            fresh: commit_deferral::FRESH,
            commits: Arc::default(),
        }
    }
}

/// A lazily connected channel to a peer's internal service.
pub struct Connection {
    /// The peer: its id and address.
    peer: Peer,
    /// The channel (reconnects by itself after failures).
    client: Option<RaftClient<Channel>>,
    /// See `Network::sync`.
    sync: LogSync,
    /// The open `AppendEntriesStream`, once an AppendEntries has been sent.
    /// openraft makes one connection per replication to a follower and
    /// sends on it one request at a time (`&mut self`), so replies come
    /// back in order and need no ids. Taken out for each call and put back
    /// after its reply: a call that fails, times out or is dropped takes
    /// the stream with it, and the next call opens another.
    stream: Option<AppendStream>,
    /// Set when the peer answered UNIMPLEMENTED to the stream (a node of an
    /// earlier release, during a rolling upgrade): AppendEntries then goes
    /// as one call each, as before.
    unary_only: bool,
    /// Whether an AppendEntries has gone on this connection. The first goes
    /// as a call: openraft also makes a connection for a single message
    /// (the heartbeat round of a linearizable read), for which a stream
    /// would cost more than it saves. A replication's connection streams
    /// from its second message on.
    used: bool,
    /// The requests a replication's connection answers itself and keeps
    /// back (see `commit_deferral`).
    deferral: Deferral,
}

/// A peer's id, to mark requests with, and address, for errors.
#[derive(Clone)]
struct Peer {
    /// The peer's node id.
    target: NodeId,
    /// The peer's address.
    node: NodeAddr,
}

/// The two halves of an open `AppendEntriesStream`.
struct AppendStream {
    /// Requests to the peer.
    requests: mpsc::Sender<RaftMessage>,
    /// The peer's replies, one per request.
    replies: tonic::Streaming<RaftMessage>,
}

/// A gRPC channel to a peer at `addr` that connects on first use, as an
/// internal connection (see `connections.rs`).
pub fn lazy_channel(
    addr: &str,
    local_ip: Option<IpAddr>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri| {
            connect_internal(uri, local_ip)
        })),
    )
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Connection {
        let client = lazy_channel(&node.addr, self.local_ip).ok().map(|ch| {
            RaftClient::new(ch)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX)
        });
        Connection {
            peer: Peer {
                target,
                node: node.clone(),
            },
            client,
            sync: self.sync.clone(),
            stream: None,
            unary_only: false,
            used: false,
            deferral: Deferral::new(self.fresh, self.commits.clone()),
        }
    }
}

/// Sends a request that `commit_deferral` kept back, as a call: the
/// follower's answer, or `None` if there was none.
async fn send_kept_back(
    client: &mut RaftClient<Channel>,
    peer: &Peer,
    rpc: &AppendEntriesRequest<TypeConfig>,
    ttl: Duration,
) -> Option<AppendEntriesResponse<NodeId>> {
    let answer: Result<_, RpcError> = peer.call(client, Rpc::AppendEntries, rpc, ttl).await;
    answer
        .inspect_err(|e| {
            tracing::debug!(peer = peer.target, error = %e, "a commit kept back did not reach the peer");
        })
        .ok()
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// Maps a failed call's status to openraft's error: a peer that cannot be
/// reached (or is not the node meant) is `Unreachable`, so that openraft
/// backs off; anything else is a network error.
fn status_error<E: std::error::Error>(status: tonic::Status) -> RpcError<E> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

impl Peer {
    /// Why a connection to this peer has no client: its address could not
    /// be dialled.
    fn bad_address(&self) -> String {
        format!("bad address {:?}", self.node.addr)
    }

    /// A request to this peer, marked with its node id.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Raft messages do not name their recipient. A node whose data dir
        // was wiped comes back with a new id, possibly at the old address;
        // it must refuse traffic meant for the old id instead of answering
        // it with an empty log.
        request.metadata_mut().insert(
            TARGET_NODE_HEADER,
            tonic::metadata::MetadataValue::from(self.target),
        );
        request
    }

    /// Decodes a peer's reply into openraft's result.
    fn reply<Resp, E>(&self, data: &[u8]) -> Result<Resp, RpcError<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }

    /// Sends `request` to the peer as a call of kind `rpc` and waits at
    /// most `ttl` for its reply.
    async fn call<Req, Resp, E>(
        &self,
        client: &mut RaftClient<Channel>,
        rpc: Rpc,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = self.request(RaftMessage { data });
        message.set_timeout(ttl);
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(status_error)?;
        self.reply(&reply.into_inner().data)
    }
}

/// A connection's client, or `Unreachable` for an address that cannot be
/// dialled. A function of the two fields rather than a method, so that the
/// peer stays borrowed beside it.
fn dialled<'a, E: std::error::Error>(
    client: &'a mut Option<RaftClient<Channel>>,
    peer: &Peer,
) -> Result<&'a mut RaftClient<Channel>, RpcError<E>> {
    client.as_mut().ok_or_else(|| {
        let e = std::io::Error::other(peer.bad_address());
        RPCError::Unreachable(Unreachable::new(&e))
    })
}

impl Connection {
    /// Sends an AppendEntries on the stream (opening it with this request
    /// if none is open) and waits at most `ttl` for its reply. `None`: the
    /// peer does not serve the stream; send it as a call.
    async fn stream_call(
        &mut self,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Option<Result<AppendEntriesResponse<NodeId>, RpcError>> {
        let message = RaftMessage { data };
        let exchange = async {
            let mut stream =
                match self.stream.take() {
                    Some(stream) => {
                        stream.requests.send(message).await.map_err(|_| {
                            tonic::Status::unavailable("the stream to the peer ended")
                        })?;
                        stream
                    }
                    None => self.open_stream(message).await?,
                };
            match stream.replies.message().await? {
                Some(reply) => Ok((stream, reply)),
                None => Err(tonic::Status::unavailable("the peer ended the stream")),
            }
        };
        // On any failure the stream is dropped: a late reply must not be
        // taken for the next request's.
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok((stream, reply))) => {
                self.stream = Some(stream);
                Some(self.peer.reply(&reply.data))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                tracing::info!(
                    peer = self.peer.target,
                    "peer has no AppendEntriesStream (an earlier release): sending calls"
                );
                self.unary_only = true;
                None
            }
            Ok(Err(status)) => Some(Err(status_error(status))),
            Err(_) => Some(Err(timeout_error(ttl))),
        }
    }

    /// Opens an `AppendEntriesStream` to the peer with `first` already in
    /// it, so that the request goes with the stream's headers instead of
    /// after a round trip for the peer's.
    async fn open_stream(&mut self, first: RaftMessage) -> Result<AppendStream, tonic::Status> {
        // One request in flight at a time, so one slot is enough.
        let (requests, receiver) = mpsc::channel(1);
        requests
            .try_send(first)
            .expect("a new channel has room for one");
        let request = self.peer.request(ReceiverStream::new(receiver));
        let client = self
            .client
            .as_mut()
            .ok_or_else(|| tonic::Status::unavailable(self.peer.bad_address()))?;
        let replies = client.append_entries_stream(request).await?.into_inner();
        Ok(AppendStream { requests, replies })
    }

    /// Sends an AppendEntries: on the stream if `stream` and the peer
    /// serves it, else as a call.
    async fn send_append_entries(
        &mut self,
        stream: bool,
        rpc: &AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        if stream && !self.unary_only {
            let data = encode(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
            if let Some(result) = self.stream_call(data, ttl).await {
                return result;
            }
        }
        let client = dialled(&mut self.client, &self.peer)?;
        self.peer.call(client, Rpc::AppendEntries, rpc, ttl).await
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        rpc.leader_commit = self.sync.commit_to_send(rpc.leader_commit);
        let ttl = option.hard_ttl();
        // Only a replication's connection answers requests itself: a
        // one-message connection is the heartbeat round of a linearizable
        // read, whose answers must be the followers' own. A connection
        // without a client could not send what it keeps back.
        let replicating = self.used;
        self.used = true;
        if replicating && let Some(client) = &self.client {
            match self.deferral.offer(rpc, ttl) {
                Offer::Send(to_send) => rpc = to_send,
                Offer::Answered => return Ok(AppendEntriesResponse::Success),
                Offer::Deferred { .. } => {
                    if self.deferral.needs_sender() {
                        let (client, peer) = (client.clone(), self.peer.clone());
                        self.deferral.start_sender(move |rpc, ttl| {
                            let (mut client, peer) = (client.clone(), peer.clone());
                            async move { send_kept_back(&mut client, &peer, &rpc, ttl).await }
                        });
                    }
                    return Ok(AppendEntriesResponse::Success);
                }
            }
        }
        let ack = Ack::of(&rpc, tokio::time::Instant::now());
        let result = self.send_append_entries(replicating, &rpc, ttl).await;
        self.deferral.replied(ack, result.as_ref().ok());
        result
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let client = dialled(&mut self.client, &self.peer)?;
        self.peer
            .call(client, Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let client = dialled(&mut self.client, &self.peer)?;
        self.peer
            .call(client, Rpc::Vote, &rpc, option.hard_ttl())
            .await
    }
}
