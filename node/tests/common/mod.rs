//! What the node's in-process tests share: configurations with short
//! timings (real sled in a temp dir, real tonic on 127.0.0.1 port 0).

use std::path::Path;
use std::time::Duration;

use fuddle_node::Config;
use fuddle_proto::registry as pb;
use fuddle_proto::registry::registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// A single node with short Raft and session timings.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::new(dir);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.raft.election_timeout_min = Duration::from_millis(300);
    c.raft.election_timeout_max = Duration::from_millis(600);
    c.raft.heartbeat_interval = Duration::from_millis(100);
    c.sessions.min_heartbeat_timeout = Duration::from_millis(200);
    c.sessions.min_reconnect_timeout = Duration::from_millis(200);
    c.sessions.tick = Duration::from_millis(50);
    c.cache_bytes = 8 << 20;
    c
}

/// A member of a cluster formed by `join`: gossip and membership checks
/// fast, elections a little slower (several nodes share two cores), and
/// no removal of nodes during a test.
#[allow(dead_code)]
pub fn cluster_config(dir: &Path, join: Vec<String>) -> Config {
    let mut c = config(dir);
    c.join = join;
    c.raft.election_timeout_min = Duration::from_millis(500);
    c.raft.election_timeout_max = Duration::from_millis(1000);
    c.gossip_interval = Duration::from_millis(100);
    c.membership.check_interval = Duration::from_millis(200);
    c.membership.dead_node_timeout = Duration::from_secs(600);
    c
}

/// Waits (at most `deadline`) until the node `c` talks to knows a leader,
/// so that writes do not race the first election.
#[allow(dead_code)]
pub async fn wait_for_leader(c: &mut RegistryClient<Channel>, deadline: Duration) {
    let deadline = tokio::time::Instant::now() + deadline;
    loop {
        let s = c
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        if s.leader != 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session opened over the raw protocol: the sender for heartbeats and
/// writes, the response stream (the session lives on after it ends) and
/// the answer to the open.
#[allow(dead_code)]
pub async fn open_raw_session(
    client: &mut RegistryClient<Channel>,
    heartbeat_timeout_ms: u64,
    reconnect_timeout_ms: u64,
) -> (
    mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionResponse>,
    pb::SessionOpened,
) {
    // Room for a burst of writes sent before any answer is read.
    let (tx, rx) = mpsc::channel(512);
    tx.send(pb::SessionRequest {
        kind: Some(pb::session_request::Kind::Open(pb::OpenSession {
            client_id: String::new(),
            heartbeat_timeout_ms,
            reconnect_timeout_ms,
        })),
    })
    .await
    .unwrap();
    let mut responses = client
        .session(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = responses.message().await.unwrap().unwrap();
    let Some(pb::session_response::Kind::Opened(opened)) = first.kind else {
        panic!("expected opened, got {first:?}");
    };
    (tx, responses, opened)
}
