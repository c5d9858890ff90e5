//! Subscriptions: a live stream of changes that survives node failures.

use std::pin::Pin;
use std::task::{Context, Poll};

use backon::{BackoffBuilder, ExponentialBuilder};
use fuddle_proto::registry as proto;
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Response, Streaming};

use crate::chunks::Chunks;
use crate::client::Client;
use crate::error::{Error, is_transport_status, stream_failure};
use crate::event::Event;
use crate::filter::Filter;
use crate::resume::Resume;
use crate::retry::Retry;
use crate::task::AbortOnDrop;

/// How many events may wait for a slow consumer before the reader stops
/// reading; the node then notices the backlog and resyncs with a snapshot.
const BUFFER: usize = 64;

/// A stream of [`Event`]s for the members matching a filter, strictly in
/// index order. When the node's stream breaks, a background task resumes
/// on another node after the last delivered index: the consumer sees no
/// gap and no duplicate. It yields an error and ends only on a failure that
/// reconnecting cannot cure (a rejected filter). Dropping it stops the task.
pub struct Subscription {
    events: mpsc::Receiver<Result<Event, Error>>,
    _reader: AbortOnDrop,
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
        let (sender, events) = mpsc::channel(BUFFER);
        let task = AbortOnDrop::spawn(reader.run(stream, node, sender));
        Ok(Subscription {
            events,
            _reader: task,
        })
    }
}

impl Subscription {
    /// The next event; `None` after the subscription ended (the last item
    /// before that is the error that ended it).
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        self.events.recv().await
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.poll_recv(cx)
    }
}

/// The background half of a subscription.
struct Reader {
    client: Client,
    filter: proto::Filter,
    resume: Resume,
}

/// Why reading a stream stopped.
enum Stop {
    /// The consumer dropped the subscription.
    ConsumerGone,
    /// The stream broke in a way a reconnect may cure.
    Broken(String),
    /// A failure no reconnect cures.
    Fatal(Error),
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

    async fn run(
        mut self,
        mut stream: Streaming<proto::SubscribeResponse>,
        mut node: usize,
        sender: mpsc::Sender<Result<Event, Error>>,
    ) {
        let options = self.client.options().clone();
        loop {
            let reason = match self.pump(&mut stream, &sender).await {
                Stop::ConsumerGone => return,
                Stop::Fatal(err) => {
                    let _ = sender.send(Err(err)).await;
                    return;
                }
                Stop::Broken(reason) => reason,
            };
            let addr = self.client.nodes().get(node).addr.clone();
            tracing::warn!(%addr, %reason, since_index = ?self.resume.since_index(), "subscription lost; resuming");
            self.client.nodes().get(node).forget();
            self.client.nodes().advance_from(node);
            let mut pauses = ExponentialBuilder::new()
                .with_min_delay(options.min_backoff)
                .with_max_delay(options.max_backoff)
                .with_jitter()
                .without_max_times()
                .build();
            (stream, node) = loop {
                match self.open().await {
                    Ok(opened) => break opened,
                    Err(err) if err.is_transient() => {
                        tracing::warn!(error = %err, "cannot resume the subscription yet");
                        if sender.is_closed() {
                            return;
                        }
                        tokio::time::sleep(pauses.next().unwrap_or(options.max_backoff)).await;
                    }
                    Err(err) => {
                        let _ = sender.send(Err(err)).await;
                        return;
                    }
                }
            };
        }
    }

    /// Passes the stream's fresh events on until the stream stops.
    async fn pump(
        &mut self,
        stream: &mut Streaming<proto::SubscribeResponse>,
        sender: &mpsc::Sender<Result<Event, Error>>,
    ) -> Stop {
        let idle = self.client.options().stream_idle_timeout();
        // A snapshot cut short by a broken stream is dropped with it: the
        // next stream starts from the last complete event.
        let mut chunks = Chunks::default();
        // One timer for the whole stream, moved only when it fires: a
        // timeout per message would register and cancel a timer for every
        // message, which at thousands of subscriptions per process is a
        // measurable part of receiving.
        let mut heard = Instant::now();
        let deadline = tokio::time::sleep(idle);
        tokio::pin!(deadline);
        loop {
            let received = tokio::select! {
                biased;
                received = stream.message() => received,
                () = &mut deadline => {
                    if heard.elapsed() < idle {
                        deadline.as_mut().reset(heard + idle);
                        continue;
                    }
                    return Stop::Broken(format!(
                        "nothing heard for {}",
                        crate::nodes::humanize(idle)
                    ));
                }
            };
            heard = Instant::now();
            let message = match received {
                Ok(Some(message)) => message,
                Ok(None) => return Stop::Broken("the node ended the stream".into()),
                Err(status) if is_transport_status(&status) => {
                    return Stop::Broken(stream_failure(status));
                }
                Err(status) => {
                    let err = Error::from(status);
                    return if err.is_transient() {
                        Stop::Broken(err.to_string())
                    } else {
                        Stop::Fatal(err)
                    };
                }
            };
            // A malformed message cannot be skipped (it may be a change the
            // consumer needs); resuming from the last good index can.
            let event = match chunks.feed(message) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(err) => return Stop::Broken(err.to_string()),
            };
            if self.resume.accept(&event) && sender.send(Ok(event)).await.is_err() {
                return Stop::ConsumerGone;
            }
        }
    }
}
