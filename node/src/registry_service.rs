//! The public Registry service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fuddle_proto::encoded::EncodedSubscribeResponse;
use fuddle_proto::registry as pb;
use fuddle_proto::shared_server::registry_server::Registry as RegistryRpc;
use fuddle_storage::members::sort_by_id;
use fuddle_storage::{Command, Origin, Outcome};
use futures::{Stream, StreamExt};
use prost::Message;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{filter_from_pb, matching_members, member_to_pb, spec_from_pb};
use crate::core::Core;
use crate::error::NodeError;
use crate::subscribe::{self, Subscription};

/// How many writes one session stream may have in flight; more are refused
/// with `RESOURCE_EXHAUSTED`. The SDK keeps below it.
pub const MAX_STREAM_WRITES: usize = 64;

/// The largest request message the registry service reads (tonic's limit
/// for its methods, and the node's own `Subscribe` route's).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Shortest progress interval a subscriber may ask for.
const MIN_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves the public API from a node's core.
pub struct RegistryService {
    /// The node.
    core: Arc<Core>,
}

impl RegistryService {
    /// A service for `core`.
    pub fn new(core: Arc<Core>) -> RegistryService {
        RegistryService { core }
    }
}

fn origin_from_pb(origin: Option<pb::WriteOrigin>, core: &Core) -> Result<Origin, NodeError> {
    let origin = origin.unwrap_or_default();
    if !origin.client_id.is_empty() {
        core.config
            .limits
            .check_client_id("origin.client_id", &origin.client_id)?;
    }
    Ok(Origin {
        client_id: origin.client_id,
        seq: origin.seq,
        ack_below: origin.ack_below,
    })
}

fn write_response(outcome: Outcome, index: u64) -> pb::WriteResponse {
    match outcome {
        Outcome::Member(m) => pb::WriteResponse {
            index,
            member: Some(member_to_pb(&m)),
        },
        // The entry that removed the member, also when this answer is the
        // replay of an earlier attempt's: the caller asked when it went.
        Outcome::Removed { index } => pb::WriteResponse {
            index,
            member: None,
        },
        Outcome::Session { .. } | Outcome::Done => pb::WriteResponse {
            index,
            member: None,
        },
    }
}

/// A session timeout from a request: 0 means the default; anything else
/// must lie within the node's bounds.
fn timeout_ms(
    field: &str,
    asked: u64,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<u64, NodeError> {
    if asked == 0 {
        return Ok(default.as_millis() as u64);
    }
    let asked_d = Duration::from_millis(asked);
    if asked_d < min || asked_d > max {
        return Err(NodeError::BadRequest(format!(
            "{field}: {} is outside the node's bounds of {} to {}",
            humantime::format_duration(asked_d),
            humantime::format_duration(min),
            humantime::format_duration(max),
        )));
    }
    Ok(asked)
}

fn new_client_id() -> String {
    let n: u64 = rand::thread_rng().r#gen();
    format!("c-{n:016x}")
}

/// Proposes a write and answers with what it did.
async fn write(core: &Core, command: Command) -> Result<pb::WriteResponse, NodeError> {
    let (result, index) = core.propose(command).await?;
    Ok(write_response(result?, index))
}

/// The command a `RegisterRequest` asks for, once its fields pass the
/// node's limits.
fn register_command(core: &Core, request: pb::RegisterRequest) -> Result<Command, NodeError> {
    let origin = origin_from_pb(request.origin, core)?;
    if origin.client_id.is_empty() {
        return Err(NodeError::BadRequest(
            "origin.client_id: a member must be registered by a session; open one first".into(),
        ));
    }
    let member = request
        .member
        .ok_or_else(|| NodeError::BadRequest("member: missing".into()))?;
    let spec = spec_from_pb(member);
    core.config.limits.check_spec(&spec)?;
    Ok(Command::Register { origin, spec })
}

/// The command an `UpdateMetadataRequest` asks for, once its fields and
/// the merged metadata pass the node's limits.
fn update_metadata_command(
    core: &Core,
    request: pb::UpdateMetadataRequest,
) -> Result<Command, NodeError> {
    let limits = &core.config.limits;
    let origin = origin_from_pb(request.origin, core)?;
    limits.check_id("id", &request.id)?;
    for key in &request.remove {
        limits.check_metadata_key("remove", key)?;
    }
    limits.check_metadata("set", &request.set)?;
    // The merged map must fit the limits too. This checks against the
    // state at proposal time: concurrent updates of one member could
    // together pass a little over, which apply (having no limits, so
    // that every node applies alike) tolerates.
    let merged = {
        let applied = core.registry.read();
        applied.state.members.get(&request.id).map(|m| {
            let mut merged = m.spec.metadata.clone();
            merged.extend(request.set.clone());
            for key in &request.remove {
                merged.remove(key);
            }
            merged
        })
    };
    if let Some(merged) = merged {
        limits.check_metadata("metadata", &merged)?;
    }
    Ok(Command::UpdateMetadata {
        origin,
        id: request.id,
        set: request.set,
        remove: request.remove,
    })
}

/// The command an `UnregisterRequest` asks for.
fn unregister_command(core: &Core, request: pb::UnregisterRequest) -> Result<Command, NodeError> {
    let origin = origin_from_pb(request.origin, core)?;
    core.config.limits.check_id("id", &request.id)?;
    Ok(Command::Unregister {
        origin,
        id: request.id,
    })
}

/// Carries out a write received on the stream of session `client_id`. The
/// origin may leave the session out but must not name another one: a
/// stream's writes are its session's.
async fn stream_write(
    core: &Core,
    client_id: &str,
    mut write: pb::session_write::Kind,
) -> Result<pb::WriteResponse, NodeError> {
    use pb::session_write::Kind;
    let origin = match &mut write {
        Kind::Register(r) => &mut r.origin,
        Kind::UpdateMetadata(r) => &mut r.origin,
        Kind::Unregister(r) => &mut r.origin,
    };
    let origin = origin.get_or_insert_default();
    if origin.client_id.is_empty() {
        origin.client_id = client_id.to_owned();
    } else if origin.client_id != client_id {
        return Err(NodeError::BadRequest(format!(
            "origin.client_id: {:?} is not this stream's session {client_id:?}; a session stream carries only its own session's writes",
            origin.client_id
        )));
    }
    let command = match write {
        Kind::Register(r) => register_command(core, r)?,
        Kind::UpdateMetadata(r) => update_metadata_command(core, r)?,
        Kind::Unregister(r) => unregister_command(core, r)?,
    };
    self::write(core, command).await
}

/// The `WriteResult` message answering write `id`.
fn write_result(id: u64, result: Result<pb::WriteResponse, NodeError>) -> pb::SessionResponse {
    use pb::write_result::Kind;
    let kind = match result {
        Ok(response) => Kind::Ok(response),
        Err(err) => {
            let status = Status::from(err);
            Kind::Error(pb::WriteError {
                code: status.code() as i32,
                message: status.message().to_owned(),
            })
        }
    };
    pb::SessionResponse {
        kind: Some(pb::session_response::Kind::Written(pb::WriteResult {
            id,
            kind: Some(kind),
        })),
    }
}

impl RegistryService {
    async fn open_session(&self, open: pb::OpenSession) -> Result<pb::SessionOpened, NodeError> {
        let s = &self.core.config.sessions;
        let heartbeat_timeout_ms = timeout_ms(
            "open.heartbeat_timeout_ms",
            open.heartbeat_timeout_ms,
            s.default_heartbeat_timeout,
            s.min_heartbeat_timeout,
            s.max_heartbeat_timeout,
        )?;
        let reconnect_timeout_ms = timeout_ms(
            "open.reconnect_timeout_ms",
            open.reconnect_timeout_ms,
            s.default_reconnect_timeout,
            s.min_reconnect_timeout,
            s.max_reconnect_timeout,
        )?;
        let client_id = if open.client_id.is_empty() {
            new_client_id()
        } else {
            self.core
                .config
                .limits
                .check_client_id("open.client_id", &open.client_id)?;
            open.client_id
        };
        // Count the open as a heartbeat before proposing, so a resumed down
        // session is not expired while the open is in flight.
        self.core.heartbeats.record([client_id.as_str()]);
        let (result, index) = self
            .core
            .propose(Command::OpenSession {
                client_id: client_id.clone(),
                heartbeat_timeout_ms,
                reconnect_timeout_ms,
            })
            .await?;
        match result? {
            Outcome::Session {
                client_id,
                resumed,
                heartbeat_timeout_ms,
                reconnect_timeout_ms,
            } => Ok(pb::SessionOpened {
                client_id,
                heartbeat_timeout_ms,
                reconnect_timeout_ms,
                resumed,
                index,
                stream_writes: true,
            }),
            other => Err(NodeError::Internal(format!(
                "open session answered {other:?}"
            ))),
        }
    }
}

#[tonic::async_trait]
impl RegistryRpc for RegistryService {
    type SessionStream = BoxStream<pb::SessionResponse>;
    type SubscribeStream = BoxStream<EncodedSubscribeResponse>;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        use pb::session_request::Kind as In;
        use pb::session_response::Kind as Out;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("session stream ended before its open message")
        })?;
        let Some(In::Open(open)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message of a session stream must be `open`",
            ));
        };
        let opened = self.open_session(open).await?;
        let client_id = opened.client_id.clone();
        let index = opened.index;
        // Room for every write in flight to answer without waiting, and
        // for the heartbeat acks between them.
        let (tx, rx) = mpsc::channel(MAX_STREAM_WRITES + 16);
        let in_flight = Arc::new(Semaphore::new(MAX_STREAM_WRITES));
        let _ = tx
            .send(Ok(pb::SessionResponse {
                kind: Some(Out::Opened(opened)),
            }))
            .await;
        let core = self.core.clone();
        let opened_at = index;
        tokio::spawn(async move {
            // A session opened through this follower is applied on the
            // leader first; wait until it is here too before checking it.
            let mut applied = core.registry.watch_index();
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                applied.wait_for(|i| *i >= opened_at),
            )
            .await;
            loop {
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = core.shutdown.cancelled() => {
                        let _ = tx.send(Err(NodeError::ShuttingDown.into())).await;
                        return;
                    }
                };
                match message {
                    Ok(Some(pb::SessionRequest {
                        kind: Some(In::Heartbeat(_)),
                    })) => {
                        let exists = core.registry.read().state.sessions.contains_key(&client_id);
                        if !exists {
                            let _ = tx
                                .send(Err(Status::not_found(format!(
                                    "session {client_id:?} has expired; open a new session"
                                ))))
                                .await;
                            return;
                        }
                        core.heartbeats.record([client_id.as_str()]);
                        let ack = pb::SessionResponse {
                            kind: Some(Out::Ack(pb::HeartbeatAck {})),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(pb::SessionRequest {
                        kind: Some(In::Write(write)),
                    })) => {
                        core.writes.session_stream();
                        let id = write.id;
                        let Some(kind) = write.kind else {
                            let missing = NodeError::BadRequest("write.kind: missing".into());
                            if tx.send(Ok(write_result(id, Err(missing)))).await.is_err() {
                                return;
                            }
                            continue;
                        };
                        // Refused rather than waited for: a reader that
                        // waited would stop reading the session's heartbeats.
                        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                            let busy = NodeError::TooManyWrites(MAX_STREAM_WRITES);
                            if tx.send(Ok(write_result(id, Err(busy)))).await.is_err() {
                                return;
                            }
                            continue;
                        };
                        let (core, tx, client_id) = (core.clone(), tx.clone(), client_id.clone());
                        tokio::spawn(async move {
                            let result = stream_write(&core, &client_id, kind).await;
                            let _ = tx.send(Ok(write_result(id, result))).await;
                            drop(permit);
                        });
                    }
                    Ok(Some(_)) => {
                        let _ = tx
                            .send(Err(Status::invalid_argument(
                                "after `open`, a session stream carries only heartbeats and writes",
                            )))
                            .await;
                        return;
                    }
                    // The client went away; the session lives on until its
                    // heartbeat timeout, so it can resume on another stream.
                    Ok(None) | Err(_) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.core.writes.unary();
        let command = register_command(&self.core, request.into_inner())?;
        Ok(Response::new(write(&self.core, command).await?))
    }

    async fn update_metadata(
        &self,
        request: Request<pb::UpdateMetadataRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.core.writes.unary();
        let command = update_metadata_command(&self.core, request.into_inner())?;
        Ok(Response::new(write(&self.core, command).await?))
    }

    async fn unregister(
        &self,
        request: Request<pb::UnregisterRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.core.writes.unary();
        let command = unregister_command(&self.core, request.into_inner())?;
        Ok(Response::new(write(&self.core, command).await?))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::WriteResponse>, Status> {
        self.core.writes.unary();
        let request = request.into_inner();
        self.core
            .config
            .limits
            .check_client_id("client_id", &request.client_id)
            .map_err(NodeError::from)?;
        let command = Command::CloseSession {
            client_id: request.client_id,
        };
        Ok(Response::new(write(&self.core, command).await?))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::GetMemberResponse>, Status> {
        let request = request.into_inner();
        self.core
            .config
            .limits
            .check_id("id", &request.id)
            .map_err(NodeError::from)?;
        self.core.read_barrier(request.consistency).await?;
        let applied = self.core.registry.read();
        let member = applied
            .state
            .members
            .get(&request.id)
            .ok_or_else(|| NodeError::NotFound(request.id.clone()))?;
        Ok(Response::new(pb::GetMemberResponse {
            member: Some(member_to_pb(member)),
            index: applied.index,
        }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let request = request.into_inner();
        let filter = filter_from_pb(request.filter)?;
        self.core.read_barrier(request.consistency).await?;
        let (mut members, index) = {
            let applied = self.core.registry.read();
            (matching_members(&applied.state, &filter), applied.index)
        };
        sort_by_id(&mut members);
        Ok(Response::new(pb::ListMembersResponse {
            members: members.iter().map(|m| member_to_pb(m)).collect(),
            index,
        }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        // Served by the node's own route (`subscribe_route.rs`), which sends
        // the frames as they are; this one remains for a server built
        // without it, and takes the frame headers off for tonic's encoder.
        let frames = open_subscription(&self.core, request.into_inner())?;
        let messages = frames.map(|frame| {
            frame.map(|bytes| EncodedSubscribeResponse(bytes.slice(subscribe::GRPC_HEADER..)))
        });
        Ok(Response::new(Box::pin(messages)))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(self.core.cluster_status().await))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let wanted = request.into_inner().node_id;
        Ok(Response::new(self.core.node_status(wanted).await?))
    }
}

/// Checks a Subscribe request and opens its stream of gRPC frames (see
/// `subscribe::stream`).
pub(crate) fn open_subscription(
    core: &Core,
    request: pb::SubscribeRequest,
) -> Result<impl Stream<Item = Result<Bytes, Status>> + Send + 'static, Status> {
    let filter_key = match &request.filter {
        Some(f) if *f != pb::Filter::default() => Bytes::from(f.encode_to_vec()),
        _ => Bytes::new(),
    };
    let filter = filter_from_pb(request.filter)?;
    let progress_interval = match request.progress_interval_ms {
        0 => core.config.progress_interval,
        ms => Duration::from_millis(ms).max(MIN_PROGRESS_INTERVAL),
    };
    let leader_last_index = {
        let metrics = core.raft.metrics();
        let m = metrics.borrow();
        (m.current_leader == Some(core.id)).then(|| m.last_log_index.unwrap_or(0))
    };
    Ok(subscribe::stream(
        core.registry.clone(),
        Subscription {
            filter,
            filter_key,
            since_index: request.since_index,
            progress_interval,
            leader_last_index,
        },
        core.shutdown.clone(),
    ))
}
