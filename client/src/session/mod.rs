//! Sessions: the liveness of a client process, and the writes it makes.

mod heartbeat;
mod open;
mod seq;
mod writes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuddle_proto::registry as proto;
use fuddle_proto::registry::session_write::Kind as Write;
use tonic::{Code, Response, Status};

use crate::client::{Client, written_member};
use crate::error::Error;
use crate::member::{Member, MemberSpec};
use crate::retry::Retry;
use crate::task::AbortOnDrop;
use seq::SeqTracker;
use writes::{Answer, StreamWrites};

/// The heartbeat timeout assumed when a node grants 0 (which it should not).
const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// What a client asks of its session; `None` takes the node's default.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// How long the session may stay silent before its members are marked
    /// down.
    pub heartbeat_timeout: Option<Duration>,
    /// How long the session may stay down before its members are removed.
    pub reconnect_timeout: Option<Duration>,
}

/// An open session. Members registered through it belong to it: they go
/// down when its heartbeats stop and are removed when it closes or expires.
///
/// A background task heartbeats every third of the heartbeat timeout,
/// reconnects to another node when the stream breaks, and registers the
/// session's members again if the session expired meanwhile. Dropping the
/// `Session` stops the task without closing the session (its members go
/// down, then expire); [`Session::close`] removes them at once.
pub struct Session {
    client: Client,
    shared: Arc<Shared>,
    _heartbeat: AbortOnDrop,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client_id", &self.client_id())
            .finish_non_exhaustive()
    }
}

/// The state a session shares with its heartbeat task.
struct Shared {
    /// The timeouts the client asked for, asked again on every reopen.
    requested: SessionOptions,
    /// What the node granted: id and timeouts.
    granted: Mutex<Granted>,
    seqs: Mutex<SeqTracker>,
    /// The last spec of every member registered through the session, to
    /// register again after an expiry.
    specs: Mutex<BTreeMap<String, MemberSpec>>,
    /// Set once the application closes the session, so that the heartbeat
    /// task lets the stream end instead of opening the session again.
    closing: AtomicBool,
    /// Writes on the session stream, the fast path of every write.
    writes: StreamWrites,
}

#[derive(Debug, Clone)]
struct Granted {
    client_id: String,
    heartbeat_timeout: Duration,
    reconnect_timeout: Duration,
}

impl Client {
    /// Opens a new session and starts heartbeating. Returns once a node has
    /// confirmed the session.
    pub async fn open_session(&self, options: SessionOptions) -> Result<Session, Error> {
        let (stream, opened) = open::open_stream(self, "", &options).await?;
        let shared = Arc::new(Shared {
            requested: options,
            granted: Mutex::new(Granted::from(&opened)),
            seqs: Mutex::new(SeqTracker::default()),
            specs: Mutex::new(BTreeMap::new()),
            closing: AtomicBool::new(false),
            writes: StreamWrites::default(),
        });
        shared.writes.attach_if(&opened, &stream.requests);
        let heartbeat = AbortOnDrop::spawn(heartbeat::run(self.clone(), shared.clone(), stream));
        Ok(Session {
            client: self.clone(),
            shared,
            _heartbeat: heartbeat,
        })
    }
}

impl Session {
    /// The session's id, as the node named it.
    pub fn client_id(&self) -> String {
        self.shared.client_id()
    }

    /// The heartbeat timeout the node granted.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.shared
            .granted
            .lock()
            .expect("session lock")
            .heartbeat_timeout
    }

    /// The reconnect timeout the node granted.
    pub fn reconnect_timeout(&self) -> Duration {
        self.shared
            .granted
            .lock()
            .expect("session lock")
            .reconnect_timeout
    }

    /// Creates or replaces a member owned by this session.
    pub async fn register(&self, spec: MemberSpec) -> Result<Member, Error> {
        let member = self.shared.register(&self.client, &spec).await?;
        self.shared
            .specs
            .lock()
            .expect("session lock")
            .insert(spec.id.clone(), spec);
        Ok(member)
    }

    /// Sets and removes metadata keys of a member; returns the member as it
    /// is after the change.
    pub async fn update_metadata(
        &self,
        id: &str,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    ) -> Result<Member, Error> {
        let request = proto::UpdateMetadataRequest {
            origin: None,
            id: id.to_owned(),
            set,
            remove,
        };
        let response = self
            .shared
            .write(&self.client, |origin| {
                Write::UpdateMetadata(proto::UpdateMetadataRequest {
                    origin: Some(origin),
                    ..request.clone()
                })
            })
            .await?;
        let member = written_member(response)?;
        if let Some(spec) = self.shared.specs.lock().expect("session lock").get_mut(id) {
            spec.apply_update(&request.set, &request.remove);
        }
        Ok(member)
    }

    /// Removes a member; returns the index that removed it.
    pub async fn unregister(&self, id: &str) -> Result<u64, Error> {
        // Forget the spec first, so that a re-registration running
        // meanwhile cannot bring the member back.
        let spec = self.shared.specs.lock().expect("session lock").remove(id);
        let result = self
            .shared
            .write(&self.client, |origin| {
                Write::Unregister(proto::UnregisterRequest {
                    origin: Some(origin),
                    id: id.to_owned(),
                })
            })
            .await;
        match result {
            Ok(response) => Ok(response.index),
            Err(err) => {
                if let (Some(spec), false) = (spec, matches!(err, Error::NotFound(_))) {
                    self.shared
                        .specs
                        .lock()
                        .expect("session lock")
                        .entry(id.to_owned())
                        .or_insert(spec);
                }
                Err(err)
            }
        }
    }

    /// Ends the session gracefully: the node removes its members at once.
    /// Heartbeats stop whether or not the node could be told. Returns the
    /// index of the entry that closed the session (closing a session the
    /// node no longer knows also succeeds: a retried close is harmless).
    pub async fn close(self) -> Result<u64, Error> {
        // Heartbeats go on until the node has the close (a slow close must
        // not mark the members down first), but once the node ends the
        // stream in answer, the task must not bring the session back.
        self.shared.closing.store(true, Ordering::SeqCst);
        let request = proto::CloseSessionRequest {
            client_id: self.client_id(),
        };
        let result = self
            .client
            .call(Retry::Always, |mut rpc| {
                let request = request.clone();
                async move { rpc.close_session(request).await.map(Response::into_inner) }
            })
            .await;
        result.map(|(response, _)| response.index)
    }
}

impl Shared {
    fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    fn client_id(&self) -> String {
        self.granted.lock().expect("session lock").client_id.clone()
    }

    /// A third of the granted heartbeat timeout, as the design asks.
    fn heartbeat_interval(&self) -> Duration {
        let timeout = self.granted.lock().expect("session lock").heartbeat_timeout;
        (timeout / 3).max(Duration::from_millis(10))
    }

    /// Records what a node granted on (re)opening.
    fn opened(&self, opened: &proto::SessionOpened) {
        let mut granted = self.granted.lock().expect("session lock");
        let renewed = Granted::from(opened);
        if renewed.client_id != granted.client_id {
            tracing::warn!(old = %granted.client_id, new = %renewed.client_id, "the node renamed the session");
        }
        *granted = renewed;
    }

    fn registered_ids(&self) -> Vec<String> {
        self.specs
            .lock()
            .expect("session lock")
            .keys()
            .cloned()
            .collect()
    }

    fn spec(&self, id: &str) -> Option<MemberSpec> {
        self.specs.lock().expect("session lock").get(id).cloned()
    }

    async fn register(&self, client: &Client, spec: &MemberSpec) -> Result<Member, Error> {
        let member = proto::Member::from(spec);
        let response = self
            .write(client, |origin| {
                Write::Register(proto::RegisterRequest {
                    origin: Some(origin),
                    member: Some(member.clone()),
                })
            })
            .await?;
        written_member(response)
    }

    /// Sends a write with the session's origin: on the session stream if
    /// it is up, else (or if its answer does not come back there) as a
    /// unary call that fails over between nodes. Every attempt carries the
    /// same seq, so the node applies the write once however often a lost
    /// answer makes the client send it.
    async fn write<F>(&self, client: &Client, make: F) -> Result<proto::WriteResponse, Error>
    where
        F: Fn(proto::WriteOrigin) -> Write,
    {
        let in_flight = InFlight::begin(&self.seqs);
        let origin = || proto::WriteOrigin {
            client_id: self.client_id(),
            seq: in_flight.seq,
            ack_below: self.seqs.lock().expect("session lock").ack_below(),
        };
        // Whether an attempt on the stream may have been carried out.
        let mut outcome_open = false;
        if let Some(mut pending) = self.writes.send(in_flight.seq, make(origin())) {
            let timeout = client.options().request_timeout;
            match tokio::time::timeout(timeout, pending.answer()).await {
                Ok(Some(Answer::Ok(response))) => return Ok(response),
                Ok(Some(Answer::Error(error))) => {
                    let status = Status::new(Code::from(error.code), error.message);
                    // A node that refused the write did not apply it, and
                    // one that gave up waiting for the commit may have: in
                    // both cases the unary call below tries again, on
                    // another node if need be. Anything else is the answer.
                    match status.code() {
                        Code::Unavailable | Code::ResourceExhausted => {}
                        Code::DeadlineExceeded => outcome_open = true,
                        _ => return Err(Error::from(status)),
                    }
                    tracing::debug!(%status, "session stream write refused; sending it as a call");
                }
                // The stream broke, or the answer is late: whether the
                // write was applied is open, and the same seq settles it.
                Ok(None) | Err(_) => {
                    outcome_open = true;
                    tracing::debug!("no answer on the session stream; sending the write as a call");
                }
            }
        }
        let (answer, _) = client
            .call(Retry::Write { outcome_open }, |mut rpc| {
                let write = make(origin());
                async move {
                    let response = match write {
                        Write::Register(r) => rpc.register(r).await,
                        Write::UpdateMetadata(r) => rpc.update_metadata(r).await,
                        Write::Unregister(r) => rpc.unregister(r).await,
                    };
                    response.map(Response::into_inner)
                }
            })
            .await?;
        Ok(answer)
    }
}

/// A write whose seq may still be sent; settled when dropped, which covers
/// an answer, an error and a caller that stopped waiting alike.
struct InFlight<'a> {
    seqs: &'a Mutex<SeqTracker>,
    seq: u64,
}

impl<'a> InFlight<'a> {
    fn begin(seqs: &'a Mutex<SeqTracker>) -> Self {
        let seq = seqs.lock().expect("session lock").begin();
        Self { seqs, seq }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.seqs.lock().expect("session lock").finish(self.seq);
    }
}

impl From<&proto::SessionOpened> for Granted {
    fn from(opened: &proto::SessionOpened) -> Self {
        let heartbeat_timeout = match opened.heartbeat_timeout_ms {
            0 => DEFAULT_HEARTBEAT_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        Self {
            client_id: opened.client_id.clone(),
            heartbeat_timeout,
            reconnect_timeout: Duration::from_millis(opened.reconnect_timeout_ms),
        }
    }
}
