//! Subscriptions: a snapshot (or the history after `since_index`), then
//! every change strictly in index order, with periodic progress.
//!
//! Every node serves subscriptions from its own applied state. The
//! snapshot and the broadcast receiver are taken under the registry's lock
//! (see `Registry::read_and_subscribe`), so the stream has no gap and no
//! duplicate. A subscriber too slow for the broadcast buffer gets a fresh
//! snapshot instead of a silent gap.

use std::sync::Arc;
use std::time::Duration;

use fuddle_proto::encoded::EncodedSubscribeResponse;
use fuddle_proto::registry as pb;
use fuddle_storage::{Applied, AppliedEntry, FeedItem, Filter, Registry};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::convert::{change_to_pb, matching_members};
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
    /// Resume after this index.
    pub since_index: Option<u64>,
    /// Progress interval on an idle stream.
    pub progress_interval: Duration,
    /// When the serving node leads: its last log index, past which no
    /// `since_index` can be valid (no such index was ever handed out).
    pub leader_last_index: Option<u64>,
}

type Tx = mpsc::Sender<Result<EncodedSubscribeResponse, Status>>;

/// Streams a subscription into `tx` until the client goes away or the node
/// shuts down.
pub async fn serve(
    registry: Arc<Registry>,
    sub: Subscription,
    tx: Tx,
    shutdown: CancellationToken,
) {
    let result = tokio::select! {
        r = stream(&registry, &sub, &tx) => r,
        _ = shutdown.cancelled() => Err(NodeError::ShuttingDown),
    };
    if let Err(e) = result {
        let _ = tx.send(Err(e.into())).await;
    }
}

/// The subscriber went away: not an error, just the end.
struct Gone;

impl From<Gone> for NodeError {
    fn from(_: Gone) -> NodeError {
        NodeError::ShuttingDown
    }
}

async fn send(tx: &Tx, kind: pb::subscribe_response::Kind) -> Result<(), Gone> {
    send_encoded(tx, encode(kind)).await
}

fn encode(kind: pb::subscribe_response::Kind) -> EncodedSubscribeResponse {
    EncodedSubscribeResponse::new(&pb::SubscribeResponse { kind: Some(kind) })
}

async fn send_encoded(tx: &Tx, message: EncodedSubscribeResponse) -> Result<(), Gone> {
    tx.send(Ok(message)).await.map_err(|_| Gone)
}

enum Start {
    Snapshot(Vec<pb::Member>, u64),
    Resume(Vec<Arc<AppliedEntry>>, u64),
}

fn snapshot_of(applied: &Applied, filter: &Filter) -> Start {
    Start::Snapshot(matching_members(&applied.state, filter), applied.index)
}

async fn stream(registry: &Registry, sub: &Subscription, tx: &Tx) -> Result<(), NodeError> {
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
        wait_for_index(registry, since).await?;
    }
    let (start, mut rx) = registry.read_and_subscribe(|applied| match sub.since_index {
        Some(since) => match applied.feed.since(since) {
            Some(entries) => Start::Resume(entries, since),
            None => snapshot_of(applied, &sub.filter),
        },
        None => snapshot_of(applied, &sub.filter),
    });
    let mut last = match start {
        Start::Snapshot(members, index) => {
            send_snapshot(tx, members, index).await?;
            index
        }
        Start::Resume(entries, since) => {
            let mut last = since;
            for entry in entries {
                last = send_entry(tx, &entry, &sub.filter, last).await?;
            }
            last
        }
    };
    let mut progress = tokio::time::interval(sub.progress_interval);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    progress.tick().await;
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Ok(FeedItem::Entry(entry)) => {
                    last = send_entry(tx, &entry, &sub.filter, last).await?;
                }
                Ok(FeedItem::Reset(_)) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // History before this point is gone for this subscriber:
                    // replace its view rather than leave a gap.
                    last = resync(registry, &sub.filter, tx, &mut rx).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(NodeError::ShuttingDown),
            },
            _ = progress.tick() => {
                // Everything applied up to the index read under the lock is
                // already in `rx` (publishing happens under the write lock),
                // so after sending what is queued, that index is complete.
                let (queued, index) = {
                    let applied = registry.read();
                    let mut queued = Vec::new();
                    let mut lagged = false;
                    loop {
                        match rx.try_recv() {
                            Ok(item) => queued.push(item),
                            Err(broadcast::error::TryRecvError::Lagged(_)) => { lagged = true; break; }
                            Err(_) => break,
                        }
                    }
                    (if lagged { None } else { Some(queued) }, applied.index)
                };
                let Some(queued) = queued else {
                    last = resync(registry, &sub.filter, tx, &mut rx).await?;
                    continue;
                };
                let mut reset = false;
                for item in queued {
                    match item {
                        FeedItem::Entry(entry) => last = send_entry(tx, &entry, &sub.filter, last).await?,
                        FeedItem::Reset(_) => reset = true,
                    }
                }
                if reset {
                    last = resync(registry, &sub.filter, tx, &mut rx).await?;
                    continue;
                }
                if index > last {
                    last = index;
                }
                send(tx, pb::subscribe_response::Kind::Progress(pb::Progress { index: last })).await?;
            }
        }
    }
}

/// Replaces the subscriber's view with a fresh snapshot and a new receiver
/// positioned right after it; returns the snapshot's index.
async fn resync(
    registry: &Registry,
    filter: &Filter,
    tx: &Tx,
    rx: &mut broadcast::Receiver<FeedItem>,
) -> Result<u64, Gone> {
    let ((members, index), new_rx) =
        registry.read_and_subscribe(|a| (matching_members(&a.state, filter), a.index));
    *rx = new_rx;
    send_snapshot(tx, members, index).await?;
    Ok(index)
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

async fn send_snapshot(tx: &Tx, members: Vec<pb::Member>, index: u64) -> Result<(), Gone> {
    let mut chunks = members.chunks(SNAPSHOT_CHUNK).peekable();
    if chunks.peek().is_none() {
        return send(
            tx,
            pb::subscribe_response::Kind::Snapshot(pb::Snapshot {
                members: Vec::new(),
                index,
                more: false,
            }),
        )
        .await;
    }
    while let Some(chunk) = chunks.next() {
        let more = chunks.peek().is_some();
        send(
            tx,
            pb::subscribe_response::Kind::Snapshot(pb::Snapshot {
                members: chunk.to_vec(),
                index,
                more,
            }),
        )
        .await?;
    }
    Ok(())
}

/// Sends an entry's changes if it is newer than `last` and any change
/// passes the filter; returns the new last index.
async fn send_entry(
    tx: &Tx,
    entry: &AppliedEntry,
    filter: &Filter,
    last: u64,
) -> Result<u64, Gone> {
    if entry.index <= last {
        return Ok(last);
    }
    if filter.is_all() {
        // Every unfiltered subscriber sends the same bytes: the first one
        // encodes, the rest share (a reference-counted buffer).
        let bytes = entry.encoded.get_or_init(|| {
            let changes = entry
                .changes
                .iter()
                .filter_map(|c| change_to_pb(c, filter))
                .collect();
            encode(pb::subscribe_response::Kind::Events(pb::Events {
                index: entry.index,
                changes,
            }))
            .0
        });
        if !entry.changes.is_empty() {
            send_encoded(tx, EncodedSubscribeResponse(bytes.clone())).await?;
        }
        return Ok(entry.index);
    }
    let changes: Vec<pb::Change> = entry
        .changes
        .iter()
        .filter_map(|c| change_to_pb(c, filter))
        .collect();
    if !changes.is_empty() {
        send(
            tx,
            pb::subscribe_response::Kind::Events(pb::Events {
                index: entry.index,
                changes,
            }),
        )
        .await?;
    }
    Ok(entry.index)
}
