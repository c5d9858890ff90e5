//! A leader's AppendEntries to a follower travel on one long-lived stream
//! (`AppendEntriesStream`). These tests hold the client side
//! (`fuddle_node::network`) to its promises: a stream is refused when it is
//! meant for another node id, a stream that timed out is replaced rather
//! than read for a late reply, and a peer of an earlier release (no stream)
//! gets plain calls.
//!
//! The peers here are a real node, and, where a peer must misbehave or be of
//! an earlier release, a small server written in the test: no build of an
//! earlier release runs in the test suite.

mod common;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fuddle_node::Node;
use fuddle_node::connections::route;
use fuddle_node::network::Network;
use fuddle_proto::raft::RaftMessage;
use fuddle_proto::raft::raft_server::{Raft as RaftRpc, RaftServer};
use fuddle_storage::codec::{decode, encode};
use fuddle_storage::{NodeAddr, NodeId, TypeConfig};
use openraft::Vote;
use openraft::error::{RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
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

async fn send(
    connection: &mut <Network as RaftNetworkFactory<TypeConfig>>::Network,
    ttl: Duration,
) -> Reply {
    connection
        .append_entries(heartbeat(1), RPCOption::new(ttl))
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
    // address: traffic for the old id must not be answered.
    let mut wrong = network.new_client(node.core.id + 1, &addr).await;
    match send(&mut wrong, Duration::from_secs(10)).await {
        Err(RPCError::Unreachable(e)) => {
            assert!(e.to_string().contains("not node"), "{e}");
        }
        other => panic!("a stream for another id was not refused: {other:?}"),
    }

    // Its own id: answered, and again on the same stream. The node leads a
    // term of its own, so a stranger's heartbeat of term 1 meets a higher
    // vote, or is taken if the node is still in term 1's election.
    let mut right = network.new_client(node.core.id, &addr).await;
    for round in 0..3 {
        let reply = send(&mut right, Duration::from_secs(10)).await;
        assert!(reply.is_ok(), "round {round}: {reply:?}");
    }
    node.shutdown().await;
}

/// What the test peer does.
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// An earlier release: no `AppendEntriesStream`.
    EarlierRelease,
    /// Never answers on the first stream opened to it; answers on the rest.
    SilentFirstStream,
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
}

fn success() -> Result<RaftMessage, Status> {
    let reply: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
        Ok(AppendEntriesResponse::Success);
    Ok(RaftMessage {
        data: encode(&reply).unwrap(),
    })
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
        let _: AppendEntriesRequest<TypeConfig> = decode(&request.into_inner().data).unwrap();
        self.calls.fetch_add(1, Ordering::SeqCst);
        success().map(Response::new)
    }

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<Replies>, Status> {
        if self.kind == Peer::EarlierRelease {
            return Err(Status::unimplemented("unknown method"));
        }
        let opened = self.streams.fetch_add(1, Ordering::SeqCst);
        let requests = request.into_inner();
        if opened == 0 {
            // Takes the requests and never answers (a peer that hangs).
            let silent = requests.filter_map(|_| None::<Result<RaftMessage, Status>>);
            return Ok(Response::new(Box::pin(silent)));
        }
        let replies = requests.map(|message| {
            let _: AppendEntriesRequest<TypeConfig> = decode(&message?.data).unwrap();
            success()
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
    async fn forward(&self, _: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        unused()
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
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_stream_gets_one_call_per_append_entries() {
    let peer = test_peer(Peer::EarlierRelease);
    let (addr, stop) = serve(peer.clone()).await;
    let mut connection = Network::default().new_client(2, &addr).await;
    for round in 1..=3 {
        let reply = send(&mut connection, Duration::from_secs(10)).await;
        assert!(
            matches!(reply, Ok(AppendEntriesResponse::Success)),
            "round {round}: {reply:?}"
        );
        assert_eq!(peer.calls.load(Ordering::SeqCst), round);
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_timed_out_is_replaced_and_a_good_one_is_kept() {
    let peer = test_peer(Peer::SilentFirstStream);
    let (addr, stop) = serve(peer.clone()).await;
    let mut connection = Network::default().new_client(2, &addr).await;

    // The first stream never answers: the call fails after its time, and
    // the stream is dropped (a late reply must not answer the next call).
    let reply = send(&mut connection, Duration::from_millis(300)).await;
    assert!(
        matches!(reply, Err(RPCError::Network(_))),
        "a silent peer's reply: {reply:?}"
    );
    // The next calls go on a second stream, all of them.
    for round in 0..3 {
        let reply = send(&mut connection, Duration::from_secs(10)).await;
        assert!(
            matches!(reply, Ok(AppendEntriesResponse::Success)),
            "round {round}: {reply:?}"
        );
    }
    assert_eq!(peer.streams.load(Ordering::SeqCst), 2);
    assert_eq!(peer.calls.load(Ordering::SeqCst), 0);
    stop.cancel();
}
