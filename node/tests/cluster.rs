//! Three real nodes in process (real sled, real tonic and gossip on
//! 127.0.0.1), forming a cluster by `join` alone.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use fuddle_node::{Config, Node};
use fuddle_proto::registry as pb;
use fuddle_proto::registry::registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const DEADLINE: Duration = Duration::from_secs(60);

fn config(dir: &std::path::Path, join: Vec<String>) -> Config {
    common::cluster_config(dir, join)
}

async fn client(addr: std::net::SocketAddr) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(c: &mut RegistryClient<Channel>) -> pb::ClusterStatusResponse {
    c.cluster_status(pb::ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn voters(s: &pb::ClusterStatusResponse) -> BTreeSet<u64> {
    s.nodes.iter().filter(|n| n.voter).map(|n| n.id).collect()
}

struct Cluster {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<Option<Node>>,
}

async fn three_nodes() -> Cluster {
    three_nodes_with(|c| c).await
}

/// Three nodes of the test configuration changed by `change`.
async fn three_nodes_with(change: fn(Config) -> Config) -> Cluster {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let config = |i: usize, join| change(config(dirs[i].path(), join));
    let first = Node::start(config(0, vec![])).await.unwrap();
    let seed = first.local_addr.to_string();
    let second = Node::start(config(1, vec![seed.clone()])).await.unwrap();
    let third = Node::start(config(2, vec![seed])).await.unwrap();
    let cluster = Cluster {
        _dirs: dirs,
        nodes: vec![Some(first), Some(second), Some(third)],
    };
    let mut c = client(cluster.node(0).local_addr).await;
    let ids: BTreeSet<u64> = cluster.nodes.iter().flatten().map(|n| n.core.id).collect();
    eventually("three voters", || {
        let mut c = c.clone();
        let ids = ids.clone();
        async move { voters(&status(&mut c).await) == ids }
    })
    .await;
    let _ = status(&mut c).await;
    cluster
}

impl Cluster {
    fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().unwrap()
    }

    fn leader_index(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            n.as_ref()
                .is_some_and(|n| n.core.raft.metrics().borrow().current_leader == Some(n.core.id))
        })
    }

    async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            node.shutdown().await;
        }
    }
}

fn member(id: &str) -> pb::Member {
    pb::Member {
        id: id.into(),
        service: "svc".into(),
        ..Default::default()
    }
}

/// A session with the given heartbeat timeout: its id, the sender for
/// heartbeats and the response stream.
async fn open_session(
    c: &mut RegistryClient<Channel>,
    hb_ms: u64,
) -> (
    String,
    mpsc::Sender<pb::SessionRequest>,
    tonic::Streaming<pb::SessionResponse>,
) {
    let (tx, responses, opened) = common::open_raw_session(c, hb_ms, 60_000).await;
    (opened.client_id, tx, responses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_writes_and_serves_reads_and_subscriptions() {
    let cluster = three_nodes().await;
    let leader = cluster.leader_index().expect("a leader");
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let mut fc = client(cluster.node(follower).local_addr).await;
    let mut oc = client(cluster.node(other).local_addr).await;

    let mut on_other = oc
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut on_follower = fc
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();

    let (client_id, _hb, _responses) = open_session(&mut fc, 10_000).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let r = fc
            .register(pb::RegisterRequest {
                origin: Some(pb::WriteOrigin {
                    client_id: client_id.clone(),
                    seq: i + 1,
                    ack_below: i + 1,
                }),
                member: Some(member(&format!("m-{i}"))),
            })
            .await
            .unwrap()
            .into_inner();
        acked.push(r.index);
        // A linearizable read on another follower sees the write at once.
        let got = oc
            .get_member(pb::GetMemberRequest {
                id: format!("m-{i}"),
                consistency: pb::Consistency::Linearizable as i32,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.index >= r.index);
    }

    // Both followers' subscribers see exactly the same sequence.
    async fn collect(
        stream: &mut tonic::Streaming<pb::SubscribeResponse>,
        n: usize,
    ) -> Vec<(u64, String)> {
        let mut seen = Vec::new();
        while seen.len() < n {
            let msg = tokio::time::timeout(DEADLINE, stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(pb::subscribe_response::Kind::Events(e)) = msg.kind {
                for ch in e.changes {
                    if let Some(pb::change::Kind::Upsert(m)) = ch.kind {
                        seen.push((e.index, m.id));
                    }
                }
            }
        }
        seen
    }
    let a = collect(&mut on_follower, 20).await;
    let b = collect(&mut on_other, 20).await;
    assert_eq!(a, b);
    assert_eq!(a.iter().map(|(i, _)| *i).collect::<Vec<_>>(), acked);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_through_a_follower_survive_a_leader_change() {
    let mut cluster = three_nodes().await;
    let leader = cluster.leader_index().expect("a leader");
    let follower = (leader + 1) % 3;
    let mut fc = client(cluster.node(follower).local_addr).await;
    let (client_id, hb, _responses) = open_session(&mut fc, 1500).await;
    fc.register(pb::RegisterRequest {
        origin: Some(pb::WriteOrigin {
            client_id: client_id.clone(),
            seq: 1,
            ack_below: 1,
        }),
        member: Some(member("alive")),
    })
    .await
    .unwrap();
    let beat = {
        let hb = hb.clone();
        tokio::spawn(async move {
            loop {
                let msg = pb::SessionRequest {
                    kind: Some(pb::session_request::Kind::Heartbeat(pb::Heartbeat {})),
                };
                if hb.send(msg).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Stay up for a few heartbeat timeouts, then lose the leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old = cluster.nodes[leader].take().unwrap();
    let old_id = old.core.id;
    old.shutdown().await;
    eventually("a new leader", || {
        let mut fc = fc.clone();
        async move {
            let s = status(&mut fc).await;
            s.leader != 0 && s.leader != old_id
        }
    })
    .await;
    // Writes resume through the follower.
    let mut fc2 = fc.clone();
    eventually("a write after the leader change", || {
        let mut fc2 = fc2.clone();
        let client_id = client_id.clone();
        async move {
            fc2.register(pb::RegisterRequest {
                origin: Some(pb::WriteOrigin {
                    client_id,
                    seq: 2,
                    ack_below: 2,
                }),
                member: Some(member("after")),
            })
            .await
            .is_ok()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let members = fc2
        .list_members(pb::ListMembersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    for m in &members {
        assert_eq!(m.status, pb::MemberStatus::Up as i32, "{m:?} went down");
    }
    assert_eq!(members.len(), 2);
    beat.abort();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shutting_down_hands_leadership_over() {
    let mut cluster = three_nodes().await;
    // A leader grants another node's vote only once its own vote is older
    // than the leader lease (the largest election timeout, 1 s here).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.leader_index().expect("a leader");
    let old = cluster.nodes[leader].take().unwrap();
    let old_id = old.core.id;
    old.shutdown().await;
    // The hand-over completed before shutdown returned: one of the others
    // already leads, without waiting for an election timeout.
    let leaders: Vec<u64> = cluster
        .nodes
        .iter()
        .flatten()
        .filter(|n| n.core.raft.metrics().borrow().current_leader == Some(n.core.id))
        .map(|n| n.core.id)
        .collect();
    assert_eq!(leaders.len(), 1, "no new leader at once: {leaders:?}");
    assert_ne!(leaders[0], old_id);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_learn_of_the_last_commit_without_a_heartbeat() {
    // Heartbeats far apart: within the test's wait, followers can learn of
    // a commit only from the message the leader sends for it, which it
    // keeps back for a few milliseconds in case entries carry it
    // (`commit_deferral`).
    let cluster = three_nodes_with(|mut c| {
        c.raft.heartbeat_interval = Duration::from_secs(30);
        c.raft.election_timeout_min = Duration::from_secs(60);
        c.raft.election_timeout_max = Duration::from_secs(90);
        c
    })
    .await;
    let leader = cluster.leader_index().expect("a leader");
    let mut lc = client(cluster.node(leader).local_addr).await;
    // The longest session a node allows: its expiry, a write of its own,
    // must not come within the test and carry the commit.
    let (client_id, _hb, _responses) = open_session(&mut lc, 300_000).await;
    let sent_late = || cluster.node(leader).core.commits.get().1;
    let (mut seq, mut kept_back_last) = (0, false);
    // A burst of concurrent writes, so that entries go to the followers
    // close together and the leader keeps the last commit back; then
    // nothing. Until a burst's last commit has been kept back and sent
    // late, at most 20 rounds (a busy machine may space even these writes
    // out).
    for round in 0..20 {
        let writes = (0..10).map(|_| {
            seq += 1;
            let mut lc = lc.clone();
            let request = pb::RegisterRequest {
                origin: Some(pb::WriteOrigin {
                    client_id: client_id.clone(),
                    seq,
                    ack_below: 10 * round + 1,
                }),
                member: Some(member(&format!("m-{seq}"))),
            };
            async move { lc.register(request).await.unwrap().into_inner().index }
        });
        let index = futures::future::join_all(writes)
            .await
            .into_iter()
            .max()
            .unwrap();
        // No entries follow the burst: a commit sent late from here on is
        // its last one's.
        let sent_before = sent_late();
        // Well within the heartbeat interval.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for node in cluster.nodes.iter().flatten() {
            let mut metrics = node.core.raft.metrics();
            let applied = tokio::time::timeout_at(
                deadline,
                metrics.wait_for(|m| m.last_applied.is_some_and(|a| a.index >= index)),
            )
            .await;
            assert!(
                matches!(applied, Ok(Ok(_))),
                "node {} did not apply round {round}'s last write (index {index})",
                node.core.id
            );
        }
        if sent_late() > sent_before {
            kept_back_last = true;
            break;
        }
    }
    assert!(kept_back_last, "no burst's last commit was kept back");
    cluster.shutdown().await;
}
