//! The server side of the internal Raft service.

use fuddle_proto::raft::RaftMessage;
use fuddle_proto::raft::raft_server::Raft as RaftRpc;
use fuddle_storage::TypeConfig;
use fuddle_storage::codec::{decode, encode};
use openraft::Raft;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

/// Hands peers' Raft messages to the local Raft.
pub struct RaftService {
    /// The local Raft.
    raft: Raft<TypeConfig>,
}

impl RaftService {
    /// A service for `raft`.
    pub fn new(raft: Raft<TypeConfig>) -> RaftService {
        RaftService { raft }
    }
}

fn decode_request<T: DeserializeOwned>(request: Request<RaftMessage>) -> Result<T, Status> {
    decode(&request.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn encode_reply<T: Serialize>(reply: &T) -> Result<Response<RaftMessage>, Status> {
    encode(reply)
        .map(|data| Response::new(RaftMessage { data }))
        .map_err(|e| Status::internal(format!("cannot encode raft reply: {e}")))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc = decode_request(request)?;
        encode_reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        Err(Status::unimplemented(
            "forwarding to the leader is not built yet",
        ))
    }

    async fn forward_heartbeats(
        &self,
        _request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        Err(Status::unimplemented(
            "forwarding heartbeats is not built yet",
        ))
    }
}
