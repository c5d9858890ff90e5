//! Subscriptions: a live stream of changes that survives node failures.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use backon::BackoffBuilder;
use fuddle_proto::registry as proto;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};
use tonic::{Response, Streaming};

use crate::chunks::Chunks;
use crate::client::Client;
use crate::error::{Error, is_transport_status, stream_failure};
use crate::event::Event;
use crate::filter::Filter;
use crate::resume::Resume;
use crate::retry::Retry;

/// A stream of [`Event`]s for the members matching a filter, strictly in
/// index order. When the node's stream breaks, the subscription resumes on
/// another node after the last delivered index: the consumer sees no gap
/// and no duplicate. It yields an error and ends only on a failure that
/// reconnecting cannot cure (a rejected filter).
///
/// It reads the node's stream only while the consumer asks for events: no
/// background task and no queue between the two, so an event costs one
/// task wake-up instead of two (which counts with thousands of
/// subscriptions in one process). A consumer that stops asking leaves the
/// node's stream unread; the node then notices the backlog and resyncs the
/// subscription with a snapshot. Dropping it closes the stream.
pub struct Subscription {
    events: Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Client {
    /// Subscribes to the members matching `filter`. Without `since_index`
    /// the stream starts with a snapshot; with it, after that index (or
    /// with a snapshot if the node no longer holds that history). Returns
    /// once a node has accepted the subscription.
    pub async fn subscribe(
        &self,
        filter: Filter,
        since_index: Option<u64>,
    ) -> Result<Subscription, Error> {
        let reader = Reader {
            client: self.clone(),
            filter: filter.into(),
            resume: Resume::new(since_index),
        };
        let (stream, node) = reader.open().await?;
        let idle = reader.client.options().stream_idle_timeout();
        let pump = Pump {
            reader,
            current: Some(Current::new(stream, node, idle)),
            ended: false,
        };
        let events = futures::stream::unfold(pump, |mut pump| async move {
            let event = pump.next().await?;
            Some((event, pump))
        });
        Ok(Subscription {
            events: Box::pin(events),
        })
    }
}

impl Subscription {
    /// The next event; `None` after the subscription ended (the last item
    /// before that is the error that ended it). Cancel-safe: an event not
    /// yet returned stays for the next call.
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        self.events.next().await
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

/// What a subscription asks nodes for, and how far it got.
struct Reader {
    client: Client,
    filter: proto::Filter,
    resume: Resume,
}

/// Why reading a stream stopped.
enum Stop {
    /// The stream broke in a way a reconnect may cure.
    Broken(String),
    /// A failure no reconnect cures.
    Fatal(Error),
}

/// The stream being read and what belongs to it alone.
struct Current {
    stream: Streaming<proto::SubscribeResponse>,
    /// The node it comes from (an index into the client's address list).
    node: usize,
    /// A snapshot cut short by a broken stream is dropped with it: the next
    /// stream starts from the last complete event.
    chunks: Chunks,
    /// How long it may stay silent.
    idle: Duration,
    /// When the stream last said anything.
    heard: Instant,
    /// Fires when the stream may have been silent too long. One timer for
    /// the whole stream, moved only when it fires: a timeout per message
    /// would register and cancel a timer for every message.
    deadline: Pin<Box<Sleep>>,
}

impl Current {
    fn new(stream: Streaming<proto::SubscribeResponse>, node: usize, idle: Duration) -> Current {
        Current {
            stream,
            node,
            chunks: Chunks::default(),
            idle,
            heard: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// The state behind a [`Subscription`].
struct Pump {
    reader: Reader,
    /// `None` while reconnecting.
    current: Option<Current>,
    /// After an error that ended the subscription.
    ended: bool,
}

impl Pump {
    /// The next event to deliver, reconnecting as often as needed.
    async fn next(&mut self) -> Option<Result<Event, Error>> {
        loop {
            if self.ended {
                return None;
            }
            let Some(current) = &mut self.current else {
                if let Err(err) = self.reconnect().await {
                    self.ended = true;
                    return Some(Err(err));
                }
                continue;
            };
            match read(current).await {
                Ok(Some(event)) => {
                    if self.reader.resume.accept(&event) {
                        return Some(Ok(event));
                    }
                }
                Ok(None) => {}
                Err(Stop::Fatal(err)) => {
                    self.ended = true;
                    return Some(Err(err));
                }
                Err(Stop::Broken(reason)) => {
                    let node = current.node;
                    let nodes = self.reader.client.nodes();
                    let addr = nodes.get(node).addr.clone();
                    tracing::warn!(%addr, %reason, since_index = ?self.reader.resume.since_index(), "subscription lost; resuming");
                    nodes.get(node).forget();
                    nodes.advance_from(node);
                    self.current = None;
                }
            }
        }
    }

    /// Opens a new stream after the last delivered index, with backoff;
    /// fails only on an error no retry cures.
    async fn reconnect(&mut self) -> Result<(), Error> {
        let options = self.reader.client.options().clone();
        let mut pauses = options.backoff().build();
        loop {
            match self.reader.open().await {
                Ok((stream, node)) => {
                    let idle = options.stream_idle_timeout();
                    self.current = Some(Current::new(stream, node, idle));
                    return Ok(());
                }
                Err(err) if err.is_transient() => {
                    tracing::warn!(error = %err, "cannot resume the subscription yet");
                    tokio::time::sleep(pauses.next().unwrap_or(options.max_backoff)).await;
                }
                Err(err) => return Err(err),
            }
        }
    }
}

/// Reads one message: an event, nothing yet (a snapshot part, progress
/// that moved nothing), or why the stream stopped.
async fn read(current: &mut Current) -> Result<Option<Event>, Stop> {
    let idle = current.idle;
    let received = loop {
        tokio::select! {
            biased;
            received = current.stream.message() => break received,
            () = current.deadline.as_mut() => {
                if current.heard.elapsed() < idle {
                    current.deadline.as_mut().reset(current.heard + idle);
                    continue;
                }
                return Err(Stop::Broken(format!(
                    "nothing heard for {}",
                    crate::nodes::humanize(idle)
                )));
            }
        }
    };
    current.heard = Instant::now();
    let message = match received {
        Ok(Some(message)) => message,
        Ok(None) => return Err(Stop::Broken("the node ended the stream".into())),
        Err(status) if is_transport_status(&status) => {
            return Err(Stop::Broken(stream_failure(status)));
        }
        Err(status) => {
            let err = Error::from(status);
            return Err(if err.is_transient() {
                Stop::Broken(err.to_string())
            } else {
                Stop::Fatal(err)
            });
        }
    };
    // A malformed message cannot be skipped (it may be a change the
    // consumer needs); resuming from the last good index can.
    current
        .chunks
        .feed(message)
        .map_err(|err| Stop::Broken(err.to_string()))
}

impl Reader {
    /// Opens a stream resuming after the last delivered index.
    async fn open(&self) -> Result<(Streaming<proto::SubscribeResponse>, usize), Error> {
        let request = proto::SubscribeRequest {
            filter: Some(self.filter.clone()),
            since_index: self.resume.since_index(),
            progress_interval_ms: u64::try_from(
                self.client.options().progress_interval.as_millis(),
            )
            .unwrap_or(u64::MAX),
        };
        self.client
            .call(Retry::Always, |mut rpc| {
                let request = request.clone();
                async move { rpc.subscribe(request).await.map(Response::into_inner) }
            })
            .await
    }
}
