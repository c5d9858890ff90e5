//! Subscriptions: a snapshot (or the history after `since_index`), then
//! every change strictly in index order, with periodic progress.
//!
//! Every node serves subscriptions from its own applied state. The
//! snapshot and the broadcast receiver are taken under the registry's lock
//! (see `Registry::read_and_subscribe`), so the stream has no gap and no
//! duplicate. A subscriber too slow for the broadcast buffer gets a fresh
//! snapshot instead of a silent gap.
//!
//! A subscription is a stream that the gRPC server pulls, not a task that
//! pushes into a channel: one entry reaches a subscriber with one task
//! wake-up instead of two and no channel in between, and when several
//! entries are waiting, the server takes them all in one poll (gathered
//! into one DATA frame by `subscribe_route.rs`) and they leave in one
//! write. With 10 000 subscribers every committed change costs
//! 10 000 deliveries, so this per-delivery cost decides fan-out throughput.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use fuddle_proto::registry as pb;
use fuddle_storage::{Applied, AppliedEntry, FeedItem, Filter, Member, Registry};
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::convert::{change_to_pb, matching_members, member_to_pb};
use crate::error::NodeError;

/// Members per Snapshot message, so no message nears gRPC's size limit.
const SNAPSHOT_CHUNK: usize = 1000;

/// How long a subscriber resuming at an index this node has not applied
/// yet waits for it before being told to try elsewhere.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// A subscription's parameters.
#[derive(Debug)]
pub struct Subscription {
    /// Which members.
    pub filter: Filter,
    /// The filter as the client sent it (encoded; empty for "everything"):
    /// subscribers with equal keys share one encoding of each entry.
    pub filter_key: Bytes,
    /// Resume after this index.
    pub since_index: Option<u64>,
    /// Progress interval on an idle stream.
    pub progress_interval: Duration,
    /// When the serving node leads: its last log index, past which no
    /// `since_index` can be valid (no such index was ever handed out).
    pub leader_last_index: Option<u64>,
}

/// The messages of a subscription, until the client goes away (the server
/// drops the stream) or the node shuts down (the stream ends with an
/// error telling the client to reconnect elsewhere). Once live, a stream
/// learns of the shutdown from the registry's feed (`Registry::close_feed`);
/// `shutdown` covers only the wait before it is live.
///
/// Each message is a whole gRPC frame ([`GRPC_HEADER`] bytes, then the
/// encoded `SubscribeResponse`): the node's own `Subscribe` route
/// (`subscribe_route.rs`) sends them as they are.
pub fn stream(
    registry: Arc<Registry>,
    sub: Subscription,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    let streamer = Streamer {
        shutdown,
        registry,
        sub,
        out: VecDeque::new(),
        snapshot: None,
        live: None,
        last: 0,
        closing: false,
    };
    // `None` once an error was yielded: the stream ends after it. Boxed,
    // so that each message moves a pointer in and out of the unfold rather
    // than the whole state: with one entry at a time to 10 000 streams,
    // those moves were about a tenth of the nodes' runtime samples in a
    // profile at 20 updates/s (docs/benchmarks.md, "What each change
    // bought").
    futures::stream::unfold(Some(Box::new(streamer)), |streamer| async move {
        let mut streamer = streamer?;
        match streamer.next().await {
            Ok(message) => Some((Ok(message), Some(streamer))),
            Err(e) => Some((Err(e.into()), None)),
        }
    })
}

/// One subscription's state between two messages.
struct Streamer {
    /// Cancelled when the node stops. Looked at only before the stream is
    /// live (a resume may wait for this node to catch up); after that the
    /// feed's [`FeedItem::Closed`] ends the stream, so that a delivery does
    /// not poll a second future beside the feed.
    shutdown: CancellationToken,
    /// Where the state, the history and the broadcast live.
    registry: Arc<Registry>,
    /// What the client asked for.
    sub: Subscription,
    /// Messages (gRPC frames) made but not yet taken by the server (a
    /// resumed history, entries, progress). Empty while `snapshot` is set:
    /// every way of setting it clears or finds `out` empty, and nothing is
    /// added to `out` until the snapshot is sent.
    out: VecDeque<Bytes>,
    /// A snapshot still being sent.
    snapshot: Option<PendingSnapshot>,
    /// The broadcast receiver and progress timer, once the start is sent.
    live: Option<Live>,
    /// The index the client's view is complete up to.
    last: u64,
    /// The feed said the node is shutting down: the stream ends once what
    /// `out` and `snapshot` hold is sent.
    closing: bool,
}

/// The live half of a subscription.
struct Live {
    /// Entries as they are applied.
    rx: broadcast::Receiver<FeedItem>,
    /// When to tell an idle client how far its view is complete.
    progress: Interval,
}

/// A snapshot being sent. Its members were picked under the registry's
/// lock, at `index`; they are converted and encoded one chunk at a time, as
/// the server takes them, so that the client decodes one chunk while the
/// node makes the next (made all at once, a 100 000-member snapshot reached
/// the client only after the node had encoded the whole of it).
struct PendingSnapshot {
    /// The members not yet sent, in id order.
    members: std::vec::IntoIter<Arc<Member>>,
    /// The index the snapshot is complete up to.
    index: u64,
}

enum Start {
    Snapshot(Vec<Arc<Member>>, u64),
    Resume(Vec<Arc<AppliedEntry>>, u64),
}

fn snapshot_of(applied: &Applied, filter: &Filter) -> Start {
    Start::Snapshot(matching_members(&applied.state, filter), applied.index)
}

/// The length of a gRPC message's frame header: a compression flag, then
/// the message's length as a big-endian `u32`.
pub const GRPC_HEADER: usize = 5;

/// A message as one uncompressed gRPC frame. A message of 4 GiB or more
/// cannot be framed (the length is a `u32`): an entry that marks down
/// every member of a session of a hundred thousand members with large
/// metadata could come near that, and is refused rather than cut.
fn encode(kind: pb::subscribe_response::Kind) -> Result<Bytes, NodeError> {
    let message = pb::SubscribeResponse { kind: Some(kind) };
    let len = message.encoded_len();
    let framed_len = u32::try_from(len).map_err(|_| NodeError::MessageTooLarge)?;
    let mut frame = Vec::with_capacity(GRPC_HEADER + len);
    frame.put_u8(0);
    frame.put_u32(framed_len);
    message
        .encode(&mut frame)
        .expect("a Vec grows to fit the message");
    Ok(Bytes::from(frame))
}

/// What an entry's cache holds for a filter whose message could not be
/// framed: never a frame, which is at least `GRPC_HEADER` bytes long.
const UNFRAMEABLE: Bytes = Bytes::new();

impl Streamer {
    /// The next message to send.
    async fn next(&mut self) -> Result<Bytes, NodeError> {
        loop {
            if let Some(message) = self.out.pop_front() {
                return Ok(message);
            }
            if let Some(chunk) = self.snapshot_chunk() {
                return chunk;
            }
            if self.closing {
                return Err(NodeError::ShuttingDown);
            }
            self.make().await?;
        }
    }

    /// Waits for something to send and puts it in `out` (possibly nothing,
    /// when an entry has no change for this filter).
    async fn make(&mut self) -> Result<(), NodeError> {
        let Some(live) = &mut self.live else {
            let shutdown = self.shutdown.clone();
            return tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(NodeError::ShuttingDown),
                started = self.start() => started,
            };
        };
        // The feed first: when an entry is waiting, the timer is not
        // looked at.
        tokio::select! {
            biased;
            item = live.rx.recv() => match item {
                Ok(FeedItem::Entry(entry)) => self.entry(&entry)?,
                Ok(FeedItem::Reset(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // History before this point is gone for this subscriber:
                    // replace its view rather than leave a gap.
                    self.resync()?;
                }
                Ok(FeedItem::Closed) | Err(broadcast::error::RecvError::Closed) => {
                    self.closing = true;
                }
            },
            _ = live.progress.tick() => self.progress()?,
        }
        Ok(())
    }

    /// The snapshot, or the history after `since_index`.
    async fn start(&mut self) -> Result<(), NodeError> {
        let sub = &self.sub;
        if let Some(since) = sub.since_index {
            if let Some(last) = sub.leader_last_index
                && since > last
            {
                // Nothing past the leader's log was ever handed out, and
                // waiting would not help.
                return Err(NodeError::BadRequest(format!(
                    "since_index: {since} is beyond the last index of the log, {last}"
                )));
            }
            wait_for_index(&self.registry, since).await?;
        }
        let (start, rx) = self
            .registry
            .read_and_subscribe(|applied| match sub.since_index {
                Some(since) => match applied.feed.since(since) {
                    Some(entries) => Start::Resume(entries, since),
                    None => snapshot_of(applied, &sub.filter),
                },
                None => snapshot_of(applied, &sub.filter),
            })
            .ok_or(NodeError::ShuttingDown)?;
        let mut progress = tokio::time::interval(sub.progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick is immediate; the first progress is due one
        // interval from now.
        progress.reset();
        self.live = Some(Live { rx, progress });
        match start {
            Start::Snapshot(members, index) => self.snapshot(members, index),
            Start::Resume(entries, since) => {
                self.last = since;
                for entry in entries {
                    self.entry(&entry)?;
                }
            }
        }
        Ok(())
    }

    /// Everything queued up to what the feed has broadcast (at most the
    /// applied index), then a Progress with that index.
    fn progress(&mut self) -> Result<(), NodeError> {
        let Some(live) = &mut self.live else {
            return Ok(());
        };
        // Everything up to the index read under the lock is already in
        // `rx` (items are sent under the write lock, and `broadcast_index`
        // leaves out what the broadcaster has not sent yet), so after
        // sending what is queued, that index is complete.
        let (queued, index) = {
            let applied = self.registry.read();
            let mut queued = Vec::new();
            let mut lagged = false;
            loop {
                match live.rx.try_recv() {
                    Ok(item) => queued.push(item),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        lagged = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            (
                if lagged { None } else { Some(queued) },
                applied.broadcast_index(),
            )
        };
        let Some(queued) = queued else {
            return self.resync();
        };
        for item in queued {
            match item {
                FeedItem::Entry(entry) => self.entry(&entry)?,
                FeedItem::Reset(_) => return self.resync(),
                FeedItem::Closed => {
                    // The entries before it are still sent, but no Progress:
                    // entries applied after the close are not broadcast, so
                    // the applied index read above may not be complete.
                    self.closing = true;
                    return Ok(());
                }
            }
        }
        self.last = self.last.max(index);
        self.out
            .push_back(encode(pb::subscribe_response::Kind::Progress(
                pb::Progress { index: self.last },
            ))?);
        Ok(())
    }

    /// Replaces the subscriber's view with a fresh snapshot and a new
    /// receiver positioned right after it; fails once the feed is closed.
    fn resync(&mut self) -> Result<(), NodeError> {
        let filter = &self.sub.filter;
        let ((members, index), rx) = self
            .registry
            .read_and_subscribe(|a| (matching_members(&a.state, filter), a.index))
            .ok_or(NodeError::ShuttingDown)?;
        if let Some(live) = &mut self.live {
            live.rx = rx;
        }
        // Messages not yet taken are older than the snapshot.
        self.out.clear();
        self.snapshot(members, index);
        Ok(())
    }

    /// Starts sending a snapshot (see [`PendingSnapshot`]); the client's
    /// view is complete up to `index` once the last chunk is taken.
    fn snapshot(&mut self, mut members: Vec<Arc<Member>>, index: u64) {
        // In id order, as listings are; sorted here, off the registry's lock
        // (about 20 ms for 100 000 members).
        fuddle_storage::members::sort_by_id(&mut members);
        self.last = index;
        self.snapshot = Some(PendingSnapshot {
            members: members.into_iter(),
            index,
        });
    }

    /// The next message of the snapshot being sent, if any: up to
    /// `SNAPSHOT_CHUNK` members, with `more` set on all but the last (an
    /// empty snapshot is one message with no member).
    fn snapshot_chunk(&mut self) -> Option<Result<Bytes, NodeError>> {
        let pending = self.snapshot.as_mut()?;
        let members: Vec<pb::Member> = pending
            .members
            .by_ref()
            .take(SNAPSHOT_CHUNK)
            .map(|m| member_to_pb(&m))
            .collect();
        let more = pending.members.len() > 0;
        let index = pending.index;
        if !more {
            self.snapshot = None;
        }
        Some(encode(pb::subscribe_response::Kind::Snapshot(
            pb::Snapshot {
                members,
                index,
                more,
            },
        )))
    }

    /// Queues an entry's changes if it is newer than what the client has
    /// and any change passes the filter.
    fn entry(&mut self, entry: &AppliedEntry) -> Result<(), NodeError> {
        if entry.index <= self.last {
            return Ok(());
        }
        self.last = entry.index;
        let filter = &self.sub.filter;
        // Subscribers with the same filter send the same bytes: the first
        // one encodes, the rest share a reference-counted buffer.
        let encoded = entry.encoded.get_or_encode(&self.sub.filter_key, || {
            let changes: Vec<pb::Change> = entry
                .changes
                .iter()
                .filter_map(|c| change_to_pb(c, filter))
                .collect();
            (!changes.is_empty()).then(|| {
                encode(pb::subscribe_response::Kind::Events(pb::Events {
                    index: entry.index,
                    changes,
                }))
                // Remembered, so that the other subscribers do not encode
                // gigabytes again to learn the same.
                .unwrap_or(UNFRAMEABLE)
            })
        });
        match encoded {
            Some(bytes) if bytes.is_empty() => Err(NodeError::MessageTooLarge),
            Some(bytes) => {
                self.out.push_back(bytes);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

async fn wait_for_index(registry: &Registry, wanted: u64) -> Result<(), NodeError> {
    let mut watch = registry.watch_index();
    let reached = tokio::time::timeout(CATCH_UP_WAIT, watch.wait_for(|i| *i >= wanted)).await;
    match reached {
        Ok(Ok(_)) => Ok(()),
        _ => Err(NodeError::Behind {
            applied: registry.index(),
            wanted,
        }),
    }
}
