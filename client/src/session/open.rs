//! Opening (or resuming) a session stream.

use std::time::Duration;

use fuddle_proto::registry as proto;
use proto::{session_request, session_response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::SessionOptions;
use super::writes::REQUEST_QUEUE;
use crate::client::Client;
use crate::error::Error;
use crate::retry::Retry;

/// An open session stream: heartbeats and writes go out through
/// `requests`, acks and write results come back on `responses`.
pub(crate) struct SessionStream {
    pub(crate) requests: mpsc::Sender<proto::SessionRequest>,
    pub(crate) responses: Streaming<proto::SessionResponse>,
    /// The index of the node that holds the stream.
    pub(crate) node: usize,
}

/// Opens a session stream on the first node that answers and waits for the
/// node's `SessionOpened`. An empty `client_id` asks for a new session; a
/// set one resumes it (or recreates it if it expired).
pub(crate) async fn open_stream(
    client: &Client,
    client_id: &str,
    options: &SessionOptions,
) -> Result<(SessionStream, proto::SessionOpened), Error> {
    let open = proto::OpenSession {
        client_id: client_id.to_owned(),
        heartbeat_timeout_ms: millis(options.heartbeat_timeout),
        reconnect_timeout_ms: millis(options.reconnect_timeout),
    };
    // Opening again after a lost answer at worst leaves an empty session
    // behind to expire, so the open is always retried.
    let ((requests, responses, opened), node) = client
        .call(Retry::Always, |mut rpc| {
            let open = open.clone();
            async move {
                let (requests, outgoing) = mpsc::channel(REQUEST_QUEUE);
                let first = proto::SessionRequest {
                    kind: Some(session_request::Kind::Open(open)),
                };
                requests.try_send(first).map_err(|_| {
                    Status::internal("the session's request channel refused its first message")
                })?;
                let mut responses = rpc
                    .session(ReceiverStream::new(outgoing))
                    .await?
                    .into_inner();
                match responses.message().await? {
                    Some(proto::SessionResponse {
                        kind: Some(session_response::Kind::Opened(opened)),
                    }) => Ok((requests, responses, opened)),
                    Some(_) => Err(Status::internal(
                        "the node answered OpenSession with something else",
                    )),
                    None => Err(Status::unavailable(
                        "the node closed the session stream before opening it",
                    )),
                }
            }
        })
        .await?;
    Ok((
        SessionStream {
            requests,
            responses,
            node,
        },
        opened,
    ))
}

/// A timeout on the wire, where 0 means "the node's default".
fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
