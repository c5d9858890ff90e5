//! A scripted, in-memory stand-in for a Fuddle node: just enough of the
//! Registry service to exercise the SDK's retries, reconnects and resumes
//! without a Raft cluster.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuddle_proto::registry as proto;
use fuddle_proto::registry::registry_server::{Registry, RegistryServer};
use futures::Stream;
use proto::{session_request, session_response};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One write as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub kind: &'static str,
    pub id: String,
    pub client_id: String,
    pub seq: u64,
    pub ack_below: u64,
}

/// What the fake has seen and how it will behave next.
#[derive(Default)]
pub struct State {
    pub writes: Vec<Write>,
    /// Client ids of every OpenSession, in order.
    pub opens: Vec<String>,
    pub heartbeats: usize,
    /// Answer the next reopen of an existing id with `resumed: false`.
    pub expire_on_reopen: bool,
    /// How many of the next registers to answer too late.
    pub stall_registers: usize,
    /// The server side of the live session stream; dropping it ends the
    /// stream for the client.
    pub session_stream: Option<mpsc::Sender<Result<proto::SessionResponse, Status>>>,
    /// `since_index` of every Subscribe.
    pub subscribes: Vec<Option<u64>>,
    /// What each Subscribe call sends, in order; `true` ends the stream
    /// afterwards, `false` keeps it open.
    pub scripts: VecDeque<(Vec<proto::SubscribeResponse>, bool)>,
    pub index: u64,
}

#[derive(Clone, Default)]
pub struct Fake {
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    /// Serves the fake on a free local port and returns its address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = RegistryServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        addr
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn record(&self, kind: &'static str, id: &str, origin: Option<proto::WriteOrigin>) -> u64 {
        let origin = origin.unwrap_or_default();
        let mut state = self.state();
        state.writes.push(Write {
            kind,
            id: id.to_owned(),
            client_id: origin.client_id,
            seq: origin.seq,
            ack_below: origin.ack_below,
        });
        state.index += 1;
        state.index
    }
}

/// An address nothing listens on.
pub fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

pub fn member(id: &str, index: u64) -> proto::Member {
    proto::Member {
        id: id.into(),
        service: "svc".into(),
        status: proto::MemberStatus::Up as i32,
        create_index: index,
        mod_index: index,
        ..Default::default()
    }
}

pub fn snapshot(index: u64, ids: &[&str]) -> proto::SubscribeResponse {
    snapshot_part(index, ids, false)
}

/// One part of a snapshot sent in several messages.
pub fn snapshot_part(index: u64, ids: &[&str], more: bool) -> proto::SubscribeResponse {
    proto::SubscribeResponse {
        kind: Some(proto::subscribe_response::Kind::Snapshot(proto::Snapshot {
            members: ids.iter().map(|id| member(id, index)).collect(),
            index,
            more,
        })),
    }
}

pub fn upsert(index: u64, id: &str) -> proto::SubscribeResponse {
    proto::SubscribeResponse {
        kind: Some(proto::subscribe_response::Kind::Events(proto::Events {
            index,
            changes: vec![proto::Change {
                kind: Some(proto::change::Kind::Upsert(member(id, index))),
            }],
        })),
    }
}

#[tonic::async_trait]
impl Registry for Fake {
    type SessionStream = BoxStream<proto::SessionResponse>;
    type SubscribeStream = BoxStream<proto::SubscribeResponse>;

    async fn session(
        &self,
        request: Request<Streaming<proto::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut incoming = request.into_inner();
        let Some(Ok(proto::SessionRequest {
            kind: Some(session_request::Kind::Open(open)),
        })) = incoming.next().await
        else {
            return Err(Status::invalid_argument(
                "first message must be OpenSession",
            ));
        };
        let (sender, outgoing) = mpsc::channel(16);
        let opened = {
            let mut state = self.state();
            let reopen = !open.client_id.is_empty();
            let client_id = if reopen {
                open.client_id.clone()
            } else {
                format!("c{}", state.opens.len() + 1)
            };
            state.opens.push(open.client_id.clone());
            let resumed = reopen && !std::mem::take(&mut state.expire_on_reopen);
            state.session_stream = Some(sender.clone());
            proto::SessionOpened {
                client_id,
                heartbeat_timeout_ms: open.heartbeat_timeout_ms.max(300),
                reconnect_timeout_ms: 60_000,
                resumed,
                index: state.index,
            }
        };
        sender
            .send(Ok(proto::SessionResponse {
                kind: Some(session_response::Kind::Opened(opened)),
            }))
            .await
            .unwrap();
        // Acks go through the sender kept in the state, so that dropping
        // it there ends the stream.
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(Ok(_)) = incoming.next().await {
                let sender = {
                    let mut state = state.lock().unwrap();
                    state.heartbeats += 1;
                    state.session_stream.clone()
                };
                let ack = proto::SessionResponse {
                    kind: Some(session_response::Kind::Ack(proto::HeartbeatAck {})),
                };
                match sender {
                    Some(sender) if sender.send(Ok(ack)).await.is_ok() => {}
                    _ => return,
                }
            }
        });
        drop(sender);
        Ok(Response::new(Box::pin(ReceiverStream::new(outgoing))))
    }

    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let request = request.into_inner();
        let member = request.member.unwrap_or_default();
        let client_id = request
            .origin
            .as_ref()
            .map(|o| o.client_id.clone())
            .unwrap_or_default();
        let index = self.record("register", &member.id, request.origin);
        let stall = {
            let mut state = self.state();
            let stall = state.stall_registers > 0;
            state.stall_registers = state.stall_registers.saturating_sub(1);
            stall
        };
        if stall {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let member = proto::Member {
            client_id,
            status: proto::MemberStatus::Up as i32,
            mod_index: index,
            ..member
        };
        Ok(Response::new(proto::WriteResponse {
            index,
            member: Some(member),
        }))
    }

    async fn update_metadata(
        &self,
        request: Request<proto::UpdateMetadataRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let request = request.into_inner();
        let index = self.record("update", &request.id, request.origin);
        let member = proto::Member {
            metadata: request.set,
            ..member(&request.id, index)
        };
        Ok(Response::new(proto::WriteResponse {
            index,
            member: Some(member),
        }))
    }

    async fn unregister(
        &self,
        request: Request<proto::UnregisterRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let request = request.into_inner();
        if request.id == "missing" {
            return Err(Status::not_found("member \"missing\" not found"));
        }
        let index = self.record("unregister", &request.id, request.origin);
        Ok(Response::new(proto::WriteResponse {
            index,
            member: None,
        }))
    }

    async fn close_session(
        &self,
        request: Request<proto::CloseSessionRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let request = request.into_inner();
        let origin = proto::WriteOrigin {
            client_id: request.client_id,
            ..Default::default()
        };
        let index = self.record("close", "", Some(origin));
        Ok(Response::new(proto::WriteResponse {
            index,
            member: None,
        }))
    }

    async fn get_member(
        &self,
        request: Request<proto::GetMemberRequest>,
    ) -> Result<Response<proto::GetMemberResponse>, Status> {
        let id = request.into_inner().id;
        let index = self.state().index;
        match id.as_str() {
            "missing" => Err(Status::not_found(format!("member {id:?} not found"))),
            _ => Ok(Response::new(proto::GetMemberResponse {
                member: Some(member(&id, index)),
                index,
            })),
        }
    }

    async fn list_members(
        &self,
        _request: Request<proto::ListMembersRequest>,
    ) -> Result<Response<proto::ListMembersResponse>, Status> {
        let index = self.state().index;
        Ok(Response::new(proto::ListMembersResponse {
            members: vec![member("a", 1)],
            index,
        }))
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let (messages, end) = {
            let mut state = self.state();
            state.subscribes.push(request.into_inner().since_index);
            state.scripts.pop_front().unwrap_or_default()
        };
        let sent = tokio_stream::iter(messages.into_iter().map(Ok));
        if end {
            Ok(Response::new(Box::pin(sent)))
        } else {
            Ok(Response::new(Box::pin(sent.chain(tokio_stream::pending()))))
        }
    }

    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        Ok(Response::new(proto::ClusterStatusResponse {
            leader: 1,
            term: 2,
            nodes: Vec::new(),
            answered_by: 1,
        }))
    }

    async fn node_status(
        &self,
        _request: Request<proto::NodeStatusRequest>,
    ) -> Result<Response<proto::NodeStatusResponse>, Status> {
        Err(Status::unavailable("no leader"))
    }
}
