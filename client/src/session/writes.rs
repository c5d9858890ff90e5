//! Writes sent on the session stream, and the answers they wait for.
//!
//! A unary call costs a whole HTTP/2 request on both ends (a new stream,
//! headers and trailers, a task on the node). On the session stream that
//! is already open for heartbeats, a write is one message each way. The
//! stream is only a fast path: a write that cannot be sent on it, or whose
//! answer does not come back on it, goes through the unary call with the
//! same seq, which carries the failover and retry logic (and the node
//! applies a seq once, so a write sent both ways is applied once).

use std::collections::HashMap;
use std::sync::Mutex;

use fuddle_proto::registry as proto;
use proto::{session_request, session_write, write_result};
use tokio::sync::{mpsc, oneshot};

/// How many writes the SDK keeps in flight on one session stream; more go
/// as unary calls. Below the node's own limit (64), so that the node
/// rarely refuses one (it can, when writes the SDK stopped waiting for
/// still run there; such a refusal falls back to the call too), and below
/// the request channel's capacity ([`REQUEST_QUEUE`]), so heartbeats
/// always find room.
const MAX_IN_FLIGHT: usize = 32;

/// Capacity of a session stream's request channel: the writes in flight
/// and a margin for heartbeats.
pub(crate) const REQUEST_QUEUE: usize = MAX_IN_FLIGHT + 16;

/// The answer to one write, as the node sent it.
pub(crate) type Answer = write_result::Kind;

/// The session's current stream, as far as writes are concerned.
#[derive(Default)]
pub(crate) struct StreamWrites {
    /// `None` while the session has no stream (reconnecting).
    current: Mutex<Option<Current>>,
}

struct Current {
    /// Where the stream's messages go; heartbeats share it.
    requests: mpsc::Sender<proto::SessionRequest>,
    /// Writes sent on this stream and not answered yet, by id. Dropping a
    /// sender (the stream was lost) tells its writer to fall back.
    pending: HashMap<u64, oneshot::Sender<Answer>>,
}

impl StreamWrites {
    /// Starts sending writes on a newly opened stream.
    pub(crate) fn attach(&self, requests: mpsc::Sender<proto::SessionRequest>) {
        *self.current.lock().expect("stream writes lock") = Some(Current {
            requests,
            pending: HashMap::new(),
        });
    }

    /// Starts sending writes on a newly opened stream if its node takes
    /// them there (a node of an earlier release ends the stream on a
    /// message it does not know).
    pub(crate) fn attach_if(
        &self,
        opened: &proto::SessionOpened,
        requests: &mpsc::Sender<proto::SessionRequest>,
    ) {
        if opened.stream_writes {
            self.attach(requests.clone());
        } else {
            self.detach();
        }
    }

    /// The stream is gone: writes waiting on it fall back to unary calls.
    pub(crate) fn detach(&self) {
        self.current.lock().expect("stream writes lock").take();
    }

    /// Hands an answer that came on the stream to the write waiting for
    /// it. An answer nobody waits for (the writer timed out and went the
    /// unary way) is dropped.
    pub(crate) fn answer(&self, result: proto::WriteResult) {
        let mut current = self.current.lock().expect("stream writes lock");
        let waiter = current.as_mut().and_then(|c| c.pending.remove(&result.id));
        if let (Some(waiter), Some(answer)) = (waiter, result.kind) {
            let _ = waiter.send(answer);
        }
    }

    /// Sends write `id` on the stream, if there is one with room. The
    /// returned guard yields the answer, or nothing if the stream is lost
    /// first.
    pub(crate) fn send(&self, id: u64, write: session_write::Kind) -> Option<Pending<'_>> {
        let mut guard = self.current.lock().expect("stream writes lock");
        let current = guard.as_mut()?;
        if current.pending.len() >= MAX_IN_FLIGHT {
            return None;
        }
        let message = proto::SessionRequest {
            kind: Some(session_request::Kind::Write(proto::SessionWrite {
                id,
                kind: Some(write),
            })),
        };
        // Never wait under the lock: a full queue means the node is not
        // reading, and the unary call does better then.
        current.requests.try_send(message).ok()?;
        let (tx, rx) = oneshot::channel();
        current.pending.insert(id, tx);
        Some(Pending {
            writes: self,
            id,
            answer: rx,
        })
    }

    fn forget(&self, id: u64) {
        if let Some(current) = self.current.lock().expect("stream writes lock").as_mut() {
            current.pending.remove(&id);
        }
    }
}

/// A write sent on the stream. Dropping it (answered, timed out, or the
/// caller gone) forgets the write, so the table holds only live waiters.
pub(crate) struct Pending<'a> {
    writes: &'a StreamWrites,
    id: u64,
    answer: oneshot::Receiver<Answer>,
}

impl Pending<'_> {
    /// The node's answer, or `None` if the stream was lost before it came.
    pub(crate) async fn answer(&mut self) -> Option<Answer> {
        (&mut self.answer).await.ok()
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.writes.forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unregister(id: &str) -> session_write::Kind {
        session_write::Kind::Unregister(proto::UnregisterRequest {
            origin: None,
            id: id.into(),
        })
    }

    fn ok(id: u64, index: u64) -> proto::WriteResult {
        proto::WriteResult {
            id,
            kind: Some(Answer::Ok(proto::WriteResponse {
                index,
                member: None,
            })),
        }
    }

    #[tokio::test]
    async fn answers_reach_their_writers_in_any_order() {
        let writes = StreamWrites::default();
        let (tx, mut rx) = mpsc::channel(REQUEST_QUEUE);
        writes.attach(tx);
        let mut first = writes.send(1, unregister("a")).expect("sent");
        let mut second = writes.send(2, unregister("b")).expect("sent");
        let sent: Vec<u64> = [rx.recv().await, rx.recv().await]
            .into_iter()
            .map(|m| match m.and_then(|m| m.kind) {
                Some(session_request::Kind::Write(w)) => w.id,
                other => panic!("not a write: {other:?}"),
            })
            .collect();
        assert_eq!(sent, [1, 2]);
        writes.answer(ok(2, 20));
        writes.answer(ok(1, 10));
        let index = |a: Option<Answer>| match a {
            Some(Answer::Ok(r)) => r.index,
            other => panic!("{other:?}"),
        };
        assert_eq!(index(first.answer().await), 10);
        assert_eq!(index(second.answer().await), 20);
    }

    #[tokio::test]
    async fn a_lost_stream_releases_its_waiters_and_takes_no_more() {
        let writes = StreamWrites::default();
        assert!(writes.send(1, unregister("a")).is_none(), "no stream yet");
        let (tx, _rx) = mpsc::channel(REQUEST_QUEUE);
        writes.attach(tx);
        let mut waiting = writes.send(1, unregister("a")).expect("sent");
        writes.detach();
        assert!(waiting.answer().await.is_none());
        assert!(writes.send(2, unregister("b")).is_none());
    }

    #[tokio::test]
    async fn beyond_the_limit_or_a_full_queue_writes_go_elsewhere() {
        let writes = StreamWrites::default();
        let (tx, _rx) = mpsc::channel(REQUEST_QUEUE);
        writes.attach(tx);
        let held: Vec<_> = (0..MAX_IN_FLIGHT as u64)
            .map(|id| writes.send(id, unregister("a")).expect("room"))
            .collect();
        assert!(writes.send(99, unregister("a")).is_none(), "over the limit");
        drop(held);
        // The dropped writes are forgotten: room again.
        assert!(writes.send(100, unregister("a")).is_some());
        // A queue the node does not read fills up: no waiting, no write.
        let (tx, _unread) = mpsc::channel(1);
        writes.attach(tx);
        let _first = writes.send(1, unregister("a")).expect("room in the queue");
        assert!(writes.send(2, unregister("a")).is_none(), "queue full");
    }

    #[tokio::test]
    async fn a_node_that_does_not_take_stream_writes_gets_none() {
        let writes = StreamWrites::default();
        let (tx, _rx) = mpsc::channel(REQUEST_QUEUE);
        let mut opened = proto::SessionOpened {
            stream_writes: true,
            ..Default::default()
        };
        writes.attach_if(&opened, &tx);
        assert!(writes.send(1, unregister("a")).is_some());
        // The session reopened on a node of an earlier release.
        opened.stream_writes = false;
        writes.attach_if(&opened, &tx);
        assert!(writes.send(2, unregister("a")).is_none());
    }

    #[tokio::test]
    async fn an_answer_nobody_waits_for_is_dropped() {
        let writes = StreamWrites::default();
        let (tx, _rx) = mpsc::channel(REQUEST_QUEUE);
        writes.attach(tx);
        let pending = writes.send(1, unregister("a")).expect("sent");
        drop(pending);
        let waiting = |w: &StreamWrites| w.current.lock().unwrap().as_ref().unwrap().pending.len();
        assert_eq!(waiting(&writes), 0, "a dropped write is forgotten at once");
        writes.answer(ok(1, 10));
        writes.answer(ok(7, 70));
        assert!(
            writes
                .current
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .pending
                .is_empty()
        );
    }
}
