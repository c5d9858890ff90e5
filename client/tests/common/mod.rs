//! Real Fuddle nodes in process for the SDK's tests: real sled databases in
//! temp dirs, real tonic servers and gossip on 127.0.0.1 port 0, short Raft
//! and session timings. And a TCP relay that can cut a client off from a
//! node, or hold back the node's answers, without touching the node.

pub mod relay;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fuddle_client::{Client, ClientOptions, Consistency, Filter, Member};
use fuddle_node::{Config, Node};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Generous: tests wait on conditions, never on speed.
pub const DEADLINE: Duration = Duration::from_secs(45);

/// A node configuration with short timings, as in the node's own tests,
/// and session bounds low enough for sub-second session timeouts.
pub fn config(dir: &std::path::Path, join: Vec<String>) -> Config {
    let mut c = Config::new(dir);
    c.bind = "127.0.0.1:0".parse().unwrap();
    c.join = join;
    c.raft.heartbeat_interval = Duration::from_millis(100);
    c.raft.election_timeout_min = Duration::from_millis(500);
    c.raft.election_timeout_max = Duration::from_millis(1000);
    c.gossip_interval = Duration::from_millis(100);
    c.membership.check_interval = Duration::from_millis(200);
    // Nodes a test shuts down stay members: the two others keep a quorum.
    c.membership.dead_node_timeout = Duration::from_secs(600);
    c.sessions.min_heartbeat_timeout = Duration::from_millis(200);
    c.sessions.min_reconnect_timeout = Duration::from_millis(200);
    c.sessions.tick = Duration::from_millis(50);
    c.cache_bytes = 8 << 20;
    c
}

/// Client options for tests: patient (an election is waited out), quick to
/// move on from a dead node, and asking for frequent Progress so that an
/// idle subscription catches up with a list's index soon.
pub fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(15),
        retry_deadline: Duration::from_secs(30),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        progress_interval: Duration::from_millis(300),
        ..ClientOptions::default()
    }
}

/// Polls `check` until it holds, for up to [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `future` for up to [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A linearizable list, as a map by id.
pub async fn list(client: &Client) -> (BTreeMap<String, Member>, u64) {
    let (members, index) = client
        .list(Filter::all(), Consistency::Linearizable)
        .await
        .unwrap();
    (
        members.into_iter().map(|m| (m.id.clone(), m)).collect(),
        index,
    )
}

/// One member by a linearizable read, `None` if there is none.
pub async fn get(client: &Client, id: &str) -> Option<Member> {
    match client.get(id, Consistency::Linearizable).await {
        Ok((member, _)) => Some(member),
        Err(fuddle_client::Error::NotFound(_)) => None,
        Err(err) => panic!("get {id}: {err}"),
    }
}

/// How many tests of this binary run nodes at the same time, whatever
/// `--test-threads` says. sled 0.34 guards every database of a process with
/// one global lock, and with some twenty nodes in one process it was seen
/// to deadlock (a `flush_async` holding the lock's read side while waiting
/// for IO that needs it, behind a queued `apply_batch` writer). A few
/// clusters at a time also keep the timings of a loaded machine sane.
static SLOTS: Semaphore = Semaphore::const_new(3);

/// In-process nodes; a slot is `None` once its node was shut down.
pub struct Cluster {
    pub nodes: Vec<Option<Node>>,
    /// Each node's gRPC address, `host:port`, in start order.
    pub addrs: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
    /// Released when the cluster is gone.
    _slot: SemaphorePermit<'static>,
}

impl Cluster {
    /// One node that bootstraps a cluster of its own.
    pub async fn single() -> Cluster {
        Self::start(1).await
    }

    /// Three nodes: the first bootstraps, the others join it by gossip and
    /// are made voters by the leader. Returns once every node sees the same
    /// leader and three voters.
    pub async fn three() -> Cluster {
        Self::start(3).await
    }

    async fn start(n: usize) -> Cluster {
        let slot = SLOTS
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let first = Node::start(config(dirs[0].path(), vec![])).await.unwrap();
        let seed = first.local_addr.to_string();
        let mut nodes = vec![Some(first)];
        for dir in &dirs[1..] {
            let node = Node::start(config(dir.path(), vec![seed.clone()]))
                .await
                .unwrap();
            nodes.push(Some(node));
        }
        let addrs = nodes
            .iter()
            .flatten()
            .map(|n| n.local_addr.to_string())
            .collect();
        let cluster = Cluster {
            nodes,
            addrs,
            _dirs: dirs,
            _slot: slot,
        };
        cluster.ready().await;
        cluster
    }

    /// Waits until every running node knows the same leader, has applied
    /// an entry, and all started nodes are voters.
    async fn ready(&self) {
        let n = self.addrs.len();
        let mut clients = Vec::new();
        for addr in &self.addrs {
            clients.push(
                Client::connect_with([addr.clone()], options())
                    .await
                    .unwrap(),
            );
        }
        eventually("a cluster with every node a voter", || {
            let clients = clients.clone();
            async move {
                let mut leaders = Vec::new();
                for client in &clients {
                    let Ok(status) = client.cluster_status().await else {
                        return false;
                    };
                    let voters = status.nodes.iter().filter(|n| n.voter).count();
                    // A node elected a moment ago may not have applied
                    // its term's first entry yet, and would answer a
                    // stale read with index 0.
                    let applied = status
                        .nodes
                        .iter()
                        .any(|n| n.liveness == "self" && n.applied_index > 0);
                    if status.leader == 0 || voters != n || !applied {
                        return false;
                    }
                    leaders.push(status.leader);
                }
                leaders.windows(2).all(|w| w[0] == w[1])
            }
        })
        .await;
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// The position of the node that leads now, as the nodes themselves say.
    pub fn leader(&self) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                n.as_ref().is_some_and(|n| {
                    n.core.raft.metrics().borrow().current_leader == Some(n.core.id)
                })
            })
            .expect("a leader")
    }

    /// Every address, the node at `first` first: a client given them
    /// talks to that node until it fails.
    pub fn addrs_from(&self, first: usize) -> Vec<String> {
        let n = self.addrs.len();
        (0..n)
            .map(|k| self.addrs[(first + k) % n].clone())
            .collect()
    }

    /// Every address but the node at `skip`.
    pub fn addrs_without(&self, skip: usize) -> Vec<String> {
        let n = self.addrs.len();
        (1..n).map(|k| self.addrs[(skip + k) % n].clone()).collect()
    }

    /// Shuts one node down for good, as on SIGTERM.
    pub async fn stop(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node is running");
        node.shutdown().await;
    }

    pub async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            node.shutdown().await;
        }
    }
}
