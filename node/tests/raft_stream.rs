//! A leader's AppendEntries to a follower travel on one long-lived stream
//! (`AppendEntriesStream`), and so do a follower's forwarded batches to the
//! leader (`ForwardStream`). These tests hold the client sides
//! (`fuddle_node::network`, `fuddle_node::forward_stream`) to their
//! promises: a stream is refused when it is meant for another node id, a
//! stream that timed out is replaced rather than read for a late reply,
//! replies out of order reach the batch they answer, a stream that breaks
//! tells its waiting batches that they may have been applied, a peer of
//! an earlier release (no stream) gets plain calls, and a commit the leader
//! answers itself (`fuddle_node::commit_deferral`) still reaches the
//! follower while probes and a read's round are always sent.
//!
//! The peers here are a real node, and, where a peer must misbehave or be of
//! an earlier release, a small server written in the test: no build of an
//! earlier release runs in the test suite.

mod common;

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuddle_node::connections::route;
use fuddle_node::forward::{Envelope, ForwardBatch, ForwardReply};
use fuddle_node::forward_stream::{Forwarded, Forwarder};
use fuddle_node::network::Network;
use fuddle_node::peers::Peers;
use fuddle_node::{Node, NodeError};
use fuddle_proto::raft::RaftMessage;
use fuddle_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use fuddle_storage::codec::{decode, encode};
use fuddle_storage::{Command, NodeAddr, NodeId, TypeConfig};
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use common::config;

/// An empty AppendEntries from node 7 in `term`, as a heartbeat is.
fn heartbeat(term: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, 7),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

type Reply = Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeAddr, RaftError<NodeId>>>;

type Connection = <Network as RaftNetworkFactory<TypeConfig>>::Network;

async fn send(connection: &mut Connection, term: u64, ttl: Duration) -> Reply {
    connection
        .append_entries(heartbeat(term), RPCOption::new(ttl))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_meant_for_another_node_id_is_refused_and_its_own_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let addr = NodeAddr {
        addr: node.local_addr.to_string(),
        http_addr: String::new(),
    };
    let mut network = Network::default();

    // A node whose data dir was wiped comes back under a new id at the old
    // address: traffic for the old id must not be answered, neither the
    // first AppendEntries of a connection (a call) nor the later ones (on
    // the stream).
    let mut wrong = network.new_client(node.core.id + 1, &addr).await;
    for round in 0..3 {
        match send(&mut wrong, 1, Duration::from_secs(10)).await {
            Err(RPCError::Unreachable(e)) => {
                assert!(e.to_string().contains("not node"), "round {round}: {e}");
            }
            other => panic!("round {round}: a message for another id was answered: {other:?}"),
        }
    }

    // Its own id: answered, on the stream from the second message on. The
    // node leads a term of its own, so a stranger's heartbeat of term 1
    // meets a higher vote, or is taken if the node is still in term 1's
    // election; either is an answer.
    let mut right = network.new_client(node.core.id, &addr).await;
    for round in 0..3 {
        let reply = send(&mut right, 1, Duration::from_secs(10)).await;
        assert!(reply.is_ok(), "round {round}: {reply:?}");
    }
    // The node ends its streams when it shuts down (else the leader's
    // heartbeats would hold its server open); `right` still holds one.
    node.shutdown().await;
}

/// What the test peer does.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// An earlier release: no `AppendEntriesStream`.
    EarlierRelease,
    /// Answers every request with its own term, and those of the terms in
    /// `SLOW_TERMS` only after `SLOW`, longer than the caller waits. Answers
    /// forwarded batches in pairs, the second first.
    Echo,
    /// Takes one forwarded batch on its first stream and then breaks that
    /// stream; answers on later streams.
    BreaksFirstForwardStream,
    /// Ends each forward stream without reading from it, as a leader that
    /// shuts down does.
    EndsForwardStreams,
    /// Takes AppendEntries as a follower would: a success for a request
    /// that follows the entries it holds, a conflict for one that does not.
    /// Keeps every AppendEntries it is sent.
    Follower,
}

/// A peer written for these tests, counting what it is sent.
#[derive(Clone)]
struct TestPeer {
    /// What it does.
    kind: Peer,
    /// Streams opened to it.
    streams: Arc<AtomicUsize>,
    /// AppendEntries sent as calls.
    calls: Arc<AtomicUsize>,
    /// What a `Follower` was sent.
    received: Arc<Mutex<Received>>,
}

/// What a `Follower` test peer was sent.
#[derive(Default)]
struct Received {
    /// Every AppendEntries, in order.
    requests: Vec<AppendEntriesRequest<TypeConfig>>,
    /// The last entry it took (from requests it answered with success).
    held: u64,
}

impl TestPeer {
    /// Answers an AppendEntries as this peer does.
    async fn answer(&self, message: Result<RaftMessage, Status>) -> Result<RaftMessage, Status> {
        if self.kind != Peer::Follower {
            return echo(message).await;
        }
        let request: AppendEntriesRequest<TypeConfig> = decode(&message?.data).unwrap();
        let mut received = self.received.lock().unwrap();
        let follows = request
            .prev_log_id
            .is_none_or(|prev| prev.index <= received.held);
        if follows && let Some(last) = request.entries.last() {
            received.held = received.held.max(last.log_id.index);
        }
        let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> = Ok(if follows {
            AppendEntriesResponse::Success
        } else {
            AppendEntriesResponse::Conflict
        });
        received.requests.push(request);
        Ok(RaftMessage {
            data: encode(&reply).unwrap(),
        })
    }
}

/// Terms whose requests the `Echo` peer answers late.
const SLOW_TERMS: [u64; 2] = [2, 4];
/// How late.
const SLOW: Duration = Duration::from_secs(1);

/// The `Echo` peer's answer: a higher vote naming the request's term, so
/// that a reply taken for another request's shows.
async fn echo(message: Result<RaftMessage, Status>) -> Result<RaftMessage, Status> {
    let request: AppendEntriesRequest<TypeConfig> = decode(&message?.data).unwrap();
    let term = request.vote.leader_id().term;
    if SLOW_TERMS.contains(&term) {
        tokio::time::sleep(SLOW).await;
    }
    let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
        Ok(AppendEntriesResponse::HigherVote(Vote::new(term, 9)));
    Ok(RaftMessage {
        data: encode(&reply).unwrap(),
    })
}

/// A test peer's answer to a forwarded batch: one result per command, each
/// naming the batch's size, so that a reply given to the wrong batch shows.
fn answer(batch: &ForwardBatch) -> ForwardReply {
    let n = batch.commands.len();
    ForwardReply {
        results: (0..n)
            .map(|_| Err(NodeError::Internal(format!("a batch of {n}"))))
            .collect(),
    }
}

/// A batch of `n` commands.
fn commands(n: usize) -> Vec<Command> {
    (0..n)
        .map(|i| Command::CloseSession {
            client_id: format!("c{i}"),
        })
        .collect()
}

/// The size a test peer's answer names, for each of its results.
fn answered(forwarded: Forwarded) -> Vec<String> {
    match forwarded {
        Forwarded::Done(Ok(reply)) => reply
            .results
            .into_iter()
            .map(|r| match r {
                Err(NodeError::Internal(what)) => what,
                other => format!("unexpected {other:?}"),
            })
            .collect(),
        Forwarded::Done(Err(e)) => vec![format!("error: {e}")],
        Forwarded::Unsupported => vec!["unsupported".into()],
    }
}

/// The term an `Echo` reply names.
fn echoed(reply: &Reply) -> Option<u64> {
    match reply {
        Ok(AppendEntriesResponse::HigherVote(vote)) => Some(vote.leader_id().term),
        _ => None,
    }
}

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of this test"))
}

type Replies = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

#[tonic::async_trait]
impl RaftRpc for TestPeer {
    type AppendEntriesStreamStream = Replies;

    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.answer(Ok(request.into_inner()))
            .await
            .map(Response::new)
    }

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Replies>, Status> {
        self.streams.fetch_add(1, Ordering::SeqCst);
        if self.kind == Peer::EarlierRelease {
            return Err(Status::unimplemented("unknown method"));
        }
        let peer = self.clone();
        let replies = request.into_inner().then(move |message| {
            let peer = peer.clone();
            async move { peer.answer(message).await }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unused()
    }
    async fn install_snapshot(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        unused()
    }
    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let batch: ForwardBatch = decode(&request.into_inner().data).unwrap();
        Ok(Response::new(RaftMessage {
            data: encode(&answer(&batch)).unwrap(),
        }))
    }

    type ForwardStreamStream = Replies;

    async fn forward_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Replies>, Status> {
        let opened = self.streams.fetch_add(1, Ordering::SeqCst);
        let mut requests = request.into_inner();
        let (replies, out) = tokio::sync::mpsc::channel(8);
        match self.kind {
            Peer::EarlierRelease => return Err(Status::unimplemented("unknown method")),
            Peer::EndsForwardStreams => {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    drop((requests, replies));
                });
            }
            Peer::BreaksFirstForwardStream if opened == 0 => {
                tokio::spawn(async move {
                    let _ = requests.message().await;
                    let _ = replies.send(Err(Status::internal("broken"))).await;
                });
            }
            _ => {
                let in_pairs = self.kind == Peer::Echo;
                tokio::spawn(async move {
                    let mut held: Option<Envelope<ForwardBatch<'static>>> = None;
                    while let Ok(Some(message)) = requests.message().await {
                        let envelope: Envelope<ForwardBatch> = decode(&message.data).unwrap();
                        let mut batch = vec![envelope];
                        if in_pairs {
                            match held.take() {
                                // The second of a pair is answered first.
                                Some(first) => batch.push(first),
                                None => {
                                    held = batch.pop();
                                    continue;
                                }
                            }
                        }
                        for envelope in batch {
                            let reply = Envelope {
                                id: envelope.id,
                                body: answer(&envelope.body),
                            };
                            let data = encode(&reply).unwrap();
                            if replies.send(Ok(RaftMessage { data })).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(out))))
    }
    async fn forward_heartbeats(
        &self,
        _: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        unused()
    }
    async fn read_index(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unused()
    }
    async fn elect(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unused()
    }
}

/// Serves `peer` on 127.0.0.1 as a node's internal server would (peers'
/// connections start with a preamble); its address and a stop switch.
async fn serve(peer: TestPeer) -> (NodeAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let routed = route(listener, stop.clone());
    let until = stop.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(RaftServer::new(peer))
            .serve_with_incoming_shutdown(ReceiverStream::new(routed.internal), until.cancelled())
            .await
            .unwrap();
    });
    let addr = NodeAddr {
        addr: addr.to_string(),
        http_addr: String::new(),
    };
    (addr, stop)
}

fn test_peer(kind: Peer) -> TestPeer {
    TestPeer {
        kind,
        streams: Arc::default(),
        calls: Arc::default(),
        received: Arc::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_stream_gets_one_call_per_append_entries() {
    let peer = test_peer(Peer::EarlierRelease);
    let (addr, stop) = serve(peer.clone()).await;
    let mut connection = Network::default().new_client(2, &addr).await;
    for (round, term) in [1, 3, 5, 6].into_iter().enumerate() {
        let reply = send(&mut connection, term, Duration::from_secs(10)).await;
        assert_eq!(echoed(&reply), Some(term), "{reply:?}");
        assert_eq!(peer.calls.load(Ordering::SeqCst), round + 1);
    }
    // The second message tried the stream once; the rest did not.
    assert_eq!(peer.streams.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_never_taken_for_a_later_request() {
    let peer = test_peer(Peer::Echo);
    let (addr, stop) = serve(peer.clone()).await;
    let mut connection = Network::default().new_client(2, &addr).await;
    let short = Duration::from_millis(300);
    let long = Duration::from_secs(10);

    // The first message of a connection is a call.
    let reply = send(&mut connection, 1, long).await;
    assert_eq!(echoed(&reply), Some(1), "{reply:?}");
    // The second opens a stream, and its reply comes after the caller's
    // time: the call fails and the stream goes with it.
    let reply = send(&mut connection, 2, short).await;
    assert!(matches!(reply, Err(RPCError::Network(_))), "{reply:?}");
    // The next is answered on a new stream, with its own reply, not the
    // late one for term 2.
    let reply = send(&mut connection, 3, long).await;
    assert_eq!(echoed(&reply), Some(3), "{reply:?}");
    // A call dropped by its caller (as openraft's own timeout drops it)
    // takes the stream with it too.
    let dropped = tokio::time::timeout(short, send(&mut connection, 4, long)).await;
    assert!(dropped.is_err(), "term 4 was answered in time: {dropped:?}");
    for term in [5, 6, 7] {
        let reply = send(&mut connection, term, long).await;
        assert_eq!(echoed(&reply), Some(term), "{reply:?}");
    }
    // Streams: term 2's, terms 3 and 4's, and terms 5 to 7's.
    assert_eq!(peer.streams.load(Ordering::SeqCst), 3);
    assert_eq!(peer.calls.load(Ordering::SeqCst), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_batches_answered_out_of_order_each_get_their_own_reply() {
    let peer = test_peer(Peer::Echo);
    let (addr, stop) = serve(peer.clone()).await;
    let forwarder = forwarder();
    let (one, two) = (commands(1), commands(2));
    for round in 0..3 {
        // The peer answers each pair second first.
        let (a, b) = tokio::join!(
            forwarder.forward(2, &addr.addr, &one),
            forwarder.forward(2, &addr.addr, &two),
        );
        assert_eq!(answered(a), ["a batch of 1"], "round {round}");
        assert_eq!(
            answered(b),
            ["a batch of 2", "a batch of 2"],
            "round {round}"
        );
    }
    assert_eq!(peer.streams.load(Ordering::SeqCst), 1);
    assert_eq!(peer.calls.load(Ordering::SeqCst), 0);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_forward_stream_leaves_the_outcome_open_and_is_replaced() {
    let peer = test_peer(Peer::BreaksFirstForwardStream);
    let (addr, stop) = serve(peer.clone()).await;
    let forwarder = forwarder();
    // The batch reached the leader, whose answer was lost: the client must
    // not take it for a write that was never made. It is told as soon as
    // the stream breaks, not when the batch's time runs out.
    match forwarder.forward(2, &addr.addr, &commands(1)).await {
        Forwarded::Done(Err(NodeError::Timeout(why))) => {
            assert!(why.contains("may have been applied"), "{why}");
            assert!(why.contains("stream to the leader failed"), "{why}");
        }
        other => panic!("a lost answer: {:?}", answered(other)),
    }
    for round in 0..3 {
        let reply = forwarder.forward(2, &addr.addr, &commands(3)).await;
        assert_eq!(answered(reply), ["a batch of 3"; 3], "round {round}");
    }
    assert_eq!(peer.streams.load(Ordering::SeqCst), 2);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_the_forward_stream_is_sent_calls() {
    let peer = test_peer(Peer::EarlierRelease);
    let (addr, stop) = serve(peer.clone()).await;
    let forwarder = forwarder();
    for _ in 0..3 {
        let reply = forwarder.forward(2, &addr.addr, &commands(1)).await;
        assert_eq!(answered(reply), ["unsupported"]);
    }
    // Asked once; the proposer then makes calls (`Forward`).
    assert_eq!(peer.streams.load(Ordering::SeqCst), 1);
    stop.cancel();
}

/// A forwarder of this node's own, over channels of its own.
fn forwarder() -> Forwarder {
    Forwarder::new(Arc::new(Peers::new(None)))
}

/// Whether a forward failed as surely not sent (the client may retry).
fn not_sent(forwarded: Forwarded) -> Result<(), Vec<String>> {
    match forwarded {
        Forwarded::Done(Err(NodeError::Unreachable { .. })) => Ok(()),
        other => Err(answered(other)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_leader_never_read_is_reported_not_sent() {
    // Nothing listens at this address: the stream never opens.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nobody = closed.local_addr().unwrap().to_string();
    drop(closed);
    let forwarder = forwarder();
    not_sent(forwarder.forward(2, &nobody, &commands(1)).await).unwrap();

    // A leader that shuts down ends its streams after answering what it
    // read; what it did not read was not applied.
    let peer = test_peer(Peer::EndsForwardStreams);
    let (addr, stop) = serve(peer.clone()).await;
    for round in 0..3 {
        let reply = forwarder.forward(3, &addr.addr, &commands(1)).await;
        not_sent(reply).unwrap_or_else(|e| panic!("round {round}: {e:?}"));
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_gets_its_own_stream_and_a_silent_one_holds_up_nobody() {
    let (first, second) = (test_peer(Peer::Echo), test_peer(Peer::Echo));
    let (first_addr, stop_first) = serve(first.clone()).await;
    let (second_addr, stop_second) = serve(second.clone()).await;
    // A leader that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let forwarder = Arc::new(forwarder());
    let one = commands(1);

    let (a, b) = tokio::join!(
        forwarder.forward(2, &first_addr.addr, &one),
        forwarder.forward(2, &first_addr.addr, &one),
    );
    assert_eq!(
        [answered(a), answered(b)],
        [["a batch of 1"], ["a batch of 1"]]
    );
    // Leadership moves: the next batches go to the new leader, on a stream
    // of their own.
    let (a, b) = tokio::join!(
        forwarder.forward(3, &second_addr.addr, &one),
        forwarder.forward(3, &second_addr.addr, &one),
    );
    assert_eq!(
        [answered(a), answered(b)],
        [["a batch of 1"], ["a batch of 1"]]
    );
    assert_eq!(first.streams.load(Ordering::SeqCst), 1);
    assert_eq!(second.streams.load(Ordering::SeqCst), 1);

    // A stream opening to a leader that does not answer holds up only the
    // batches for that leader.
    let stuck = {
        let forwarder = forwarder.clone();
        tokio::spawn(async move { forwarder.forward(4, &silent_addr, &commands(1)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (a, b) = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::join!(
            forwarder.forward(3, &second_addr.addr, &one),
            forwarder.forward(3, &second_addr.addr, &one),
        )
    })
    .await
    .expect("batches for a leader that answers waited for one that does not");
    assert_eq!(
        [answered(a), answered(b)],
        [["a batch of 1"], ["a batch of 1"]]
    );
    assert!(!stuck.is_finished(), "the silent leader answered");
    stuck.abort();
    held.abort();
    stop_first.cancel();
    stop_second.cancel();
}

/// An AppendEntries of leader 7 in term 1 after entry `prev`, with the
/// entries up to `last` and commit `commit` (0: none).
fn append(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
    let id = |index| LogId::new(CommittedLeaderId::new(1, 7), index);
    AppendEntriesRequest {
        vote: Vote::new_committed(1, 7),
        prev_log_id: (prev > 0).then(|| id(prev)),
        entries: (prev + 1..=last)
            .map(|index| Entry {
                log_id: id(index),
                payload: EntryPayload::Blank,
            })
            .collect(),
        leader_commit: (commit > 0).then(|| id(commit)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_answered_by_the_leader_still_reaches_the_follower_and_probes_are_sent() {
    let peer = test_peer(Peer::Follower);
    let (addr, stop) = serve(peer.clone()).await;
    let mut connection = Network::default().new_client(2, &addr).await;
    let ttl = RPCOption::new(Duration::from_secs(10));
    let sent = |commit: u64| {
        peer.received
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.entries.is_empty() && r.leader_commit.map(|c| c.index) == Some(commit))
            .count()
    };

    let ok = |reply: &Reply| matches!(reply, Ok(AppendEntriesResponse::Success));
    // Writes close together: entries, then the commit. The leader answers
    // the commit itself and keeps it back for entries to carry; none come,
    // so it is sent on its own, as a call (the replication's stream
    // carries only what openraft waits on). Whether it is kept back
    // depends on the writes being less than a few milliseconds apart,
    // which a busy machine may not manage at once; every commit must reach
    // the follower either way.
    let (mut held, mut kept_back) = (0, false);
    for _ in 0..20 {
        for (prev, last) in [(held, held + 3), (held + 3, held + 4)] {
            let reply = connection
                .append_entries(append(prev, last, held), ttl.clone())
                .await;
            assert!(ok(&reply), "{reply:?}");
        }
        held += 4;
        let calls = peer.calls.load(Ordering::SeqCst);
        let reply = connection
            .append_entries(append(held, held, held), ttl.clone())
            .await;
        assert!(ok(&reply), "{reply:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sent(held) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "commit {held} never sent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if peer.calls.load(Ordering::SeqCst) > calls {
            kept_back = true;
            break;
        }
    }
    assert!(kept_back, "no commit was kept back in 20 tries");
    // A probe for where the follower's log matches is always sent, and its
    // answer is the follower's.
    let reply = connection
        .append_entries(append(held + 5, held + 5, held), ttl.clone())
        .await;
    assert!(
        matches!(reply, Ok(AppendEntriesResponse::Conflict)),
        "{reply:?}"
    );
    // So is the heartbeat round of a linearizable read, on a connection of
    // its own: a commit on it is sent at once, not kept back.
    let mut read_round = Network::default().new_client(2, &addr).await;
    let calls = peer.calls.load(Ordering::SeqCst);
    let reply = read_round
        .append_entries(append(held, held, held + 1), ttl)
        .await;
    assert!(ok(&reply), "{reply:?}");
    assert_eq!(sent(held + 1), 1);
    assert_eq!(peer.calls.load(Ordering::SeqCst), calls + 1);
    stop.cancel();
}
