//! The background task that keeps a session alive: heartbeats, reconnects
//! and, after an expiry, re-registration.

use std::sync::Arc;

use backon::BackoffBuilder;
use fuddle_proto::registry as proto;
use futures::StreamExt;
use proto::{session_request, session_response};
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, MissedTickBehavior};

use super::Shared;
use super::open::{SessionStream, open_stream};
use crate::client::Client;
use crate::error::stream_failure;
use crate::nodes::humanize;
use crate::task::AbortOnDrop;

/// Heartbeats over `stream` until it breaks, then reopens the session
/// elsewhere, for as long as the session lives (the task is aborted when
/// the `Session` is dropped or closed).
pub(crate) async fn run(client: Client, shared: Arc<Shared>, mut stream: SessionStream) {
    // Held so that a re-registration in progress stops with this task.
    let mut _reregistering: Option<AbortOnDrop> = None;
    loop {
        let reason = keep_alive(&mut stream, &shared).await;
        shared.writes.detach();
        if shared.is_closing() {
            return;
        }
        let addr = client.nodes().get(stream.node).addr.clone();
        tracing::warn!(client_id = %shared.client_id(), %addr, %reason, "session stream lost; reconnecting");
        // The node may be going away: start over on a fresh connection to
        // the next one.
        client.nodes().get(stream.node).forget();
        client.nodes().advance_from(stream.node);
        let Some((new_stream, opened)) = reopen(&client, &shared).await else {
            return;
        };
        stream = new_stream;
        shared.writes.attach_if(&opened, &stream.requests);
        let resumed = opened.resumed;
        shared.opened(&opened);
        let addr = &client.nodes().get(stream.node).addr;
        if resumed {
            tracing::info!(client_id = %shared.client_id(), %addr, "session resumed");
        } else {
            // The session had expired and its members are gone: restore
            // them, alongside the heartbeats so the new session stays up
            // however long that takes.
            tracing::warn!(client_id = %shared.client_id(), %addr, "session had expired; registering its members again");
            _reregistering = Some(AbortOnDrop::spawn(reregister(
                client.clone(),
                shared.clone(),
            )));
        }
    }
}

/// Sends a heartbeat every heartbeat interval, reads the acks and hands
/// write results to their writers; returns why the stream is no longer
/// usable.
async fn keep_alive(stream: &mut SessionStream, shared: &Shared) -> String {
    let interval = shared.heartbeat_interval();
    // Two intervals without any ack means heartbeats are not getting
    // through, while there is still a third of the timeout left to
    // reconnect before the node marks the session down.
    let ack_deadline = interval * 2;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_ack = Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if last_ack.elapsed() > ack_deadline {
                    return format!("no heartbeat acknowledged for {}", humanize(ack_deadline));
                }
                let heartbeat = proto::SessionRequest {
                    kind: Some(session_request::Kind::Heartbeat(proto::Heartbeat {})),
                };
                // Never wait here: a full queue means the node is not
                // reading heartbeats, which is a broken stream too.
                match stream.requests.try_send(heartbeat) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => return "the node is not reading heartbeats".into(),
                    Err(TrySendError::Closed(_)) => return "the request stream closed".into(),
                }
            }
            message = stream.responses.next() => match message {
                Some(Ok(proto::SessionResponse { kind: Some(session_response::Kind::Ack(_)) })) => {
                    last_ack = Instant::now();
                }
                Some(Ok(proto::SessionResponse { kind: Some(session_response::Kind::Written(result)) })) => {
                    shared.writes.answer(result);
                }
                Some(Ok(other)) => tracing::debug!(?other, "unexpected message on the session stream"),
                Some(Err(status)) => return stream_failure(status),
                None => return "the node ended the stream".into(),
            },
        }
    }
}

/// Opens the session again under its id, retrying with growing pauses
/// until a node answers; `None` if the session is being closed meanwhile.
async fn reopen(client: &Client, shared: &Shared) -> Option<(SessionStream, proto::SessionOpened)> {
    let options = client.options();
    let mut pauses = options.backoff().build();
    loop {
        if shared.is_closing() {
            return None;
        }
        match open_stream(client, &shared.client_id(), &shared.requested).await {
            Ok(opened) => return Some(opened),
            Err(err) => {
                tracing::warn!(client_id = %shared.client_id(), error = %err, "cannot reopen the session yet");
                tokio::time::sleep(pauses.next().unwrap_or(options.max_backoff)).await;
            }
        }
    }
}

/// Registers again every member the session had registered, as last set.
async fn reregister(client: Client, shared: Arc<Shared>) {
    for id in shared.registered_ids() {
        // Read the spec afresh: the application may have changed or removed
        // the member since the re-registration started.
        let Some(spec) = shared.spec(&id) else {
            continue;
        };
        match shared.register(&client, &spec).await {
            Ok(_) => tracing::info!(%id, "member registered again"),
            Err(err) => tracing::warn!(%id, error = %err, "cannot register member again"),
        }
    }
}
