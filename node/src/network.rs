//! openraft's network over tonic: the client side of the internal Raft
//! service. openraft's messages travel as postcard bytes inside
//! `RaftMessage`, which keeps the internal proto small and lets openraft
//! evolve its messages without a proto change.

use std::net::IpAddr;
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
use tonic::transport::{Channel, Endpoint};

use crate::connections::connect_internal;

/// The gRPC metadata key naming the node an internal message is meant for.
pub const TARGET_NODE_HEADER: &str = "fuddle-target-node";

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds connections to peers.
#[derive(Debug, Clone, Default)]
pub struct Network {
    /// The source IP for connections to peers: the node's bind IP, so that
    /// a peer (or a fault-injecting proxy in tests) sees which node calls.
    pub local_ip: Option<IpAddr>,
    /// What of this node's log is durable: a leader tells its followers of
    /// a commit only as far as that (see `fuddle_storage::log_sync`).
    pub sync: LogSync,
}

/// A lazily connected channel to a peer's internal service.
pub struct Connection {
    /// The peer, for errors.
    target: NodeId,
    /// The peer's address, for errors.
    node: NodeAddr,
    /// The channel (reconnects by itself after failures).
    client: Option<RaftClient<Channel>>,
    /// See `Network::sync`.
    sync: LogSync,
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
            target,
            node: node.clone(),
            client,
            sync: self.sync.clone(),
        }
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let e = std::io::Error::other(format!("bad address {:?}", self.node.addr));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        let data = encode(request).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut message = tonic::Request::new(RaftMessage { data });
        message.set_timeout(ttl);
        // Raft messages do not name their recipient. A node whose data dir
        // was wiped comes back with a new id, possibly at the old address;
        // it must refuse traffic meant for the old id instead of answering
        // it with an empty log.
        message.metadata_mut().insert(
            TARGET_NODE_HEADER,
            tonic::metadata::MetadataValue::from(self.target),
        );
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::FailedPrecondition => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.into_inner().data)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        rpc.leader_commit = self.sync.commit_to_send(rpc.leader_commit);
        self.call(Rpc::AppendEntries, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeAddr, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, option.hard_ttl()).await
    }
}
