//! Gossip over real UDP on 127.0.0.1: discovery, death and restart.
//!
//! Every wait is bounded by a generous deadline and polls: the tests check
//! what eventually happens, never how fast.

use std::net::SocketAddr;
use std::time::Duration;

use fuddle_node::gossip::{Gossip, GossipConfig, GossipError, Liveness, PeerInfo};
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};

/// How long anything may take before a test fails; far above the expected
/// second or two, so a loaded machine does not fail the tests.
const DEADLINE: Duration = Duration::from_secs(20);

/// A gossip configuration fit for tests: fast rounds, and a failure detector
/// that declares a stopped node dead within a few seconds.
fn config(node_id: u64, addr: SocketAddr, seeds: &[SocketAddr]) -> GossipConfig {
    let mut config = GossipConfig::new(node_id, addr);
    config.grpc_addr = format!("grpc-{node_id}.test:{}", addr.port());
    config.http_addr = format!("http-{node_id}.test:80");
    config.seeds = seeds.iter().map(SocketAddr::to_string).collect();
    config.gossip_interval = Duration::from_millis(100);
    config.failure_detector_initial_interval = Duration::from_millis(200);
    config
}

/// Starts gossip the way a node does: UDP on the port number of the node's
/// gRPC TCP listener, which the caller keeps open. A UDP port already taken
/// by someone else only means trying another port.
async fn start_next_to_tcp(
    node_id: u64,
    seeds: &[SocketAddr],
    cluster_id: Option<&str>,
) -> (Gossip, TcpListener, SocketAddr) {
    for _ in 0..20 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = config(node_id, addr, seeds);
        if let Some(cluster_id) = cluster_id {
            config.cluster_id = cluster_id.to_string();
        }
        match Gossip::start(config).await {
            Ok(gossip) => return (gossip, listener, addr),
            Err(GossipError::Bind { .. }) => continue,
            Err(err) => panic!("gossip failed to start: {err}"),
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// Polls `check` until it holds, failing the test with `what` at the deadline.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

fn live_ids(gossip: &Gossip) -> Vec<u64> {
    gossip.live_nodes().iter().map(|p| p.node_id).collect()
}

fn expected_peer(node_id: u64, addr: SocketAddr) -> PeerInfo {
    PeerInfo {
        node_id,
        grpc_addr: format!("grpc-{node_id}.test:{}", addr.port()),
        http_addr: format!("http-{node_id}.test:80"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discover_detect_death_and_see_a_restart() {
    let (g1, _tcp1, a1) = start_next_to_tcp(1, &[], None).await;
    let (g2, _tcp2, a2) = start_next_to_tcp(2, &[a1], None).await;
    let (g3, tcp3, a3) = start_next_to_tcp(3, &[a1], None).await;
    // A node of another cluster seeded with node 1 must stay apart.
    let (stranger, _tcp4, _) = start_next_to_tcp(4, &[a1], Some("elsewhere")).await;

    // Node 1's watch wakes it up as the others join.
    let mut watch = g1.watch();
    timeout(DEADLINE, watch.wait_for(|live| live.len() == 3))
        .await
        .expect("node 1 sees three live nodes")
        .unwrap();

    let expected = vec![
        expected_peer(1, a1),
        expected_peer(2, a2),
        expected_peer(3, a3),
    ];
    for (name, gossip) in [("node 1", &g1), ("node 2", &g2), ("node 3", &g3)] {
        eventually(&format!("{name} sees all three nodes live"), || {
            gossip.live_nodes() == expected
        })
        .await;
        assert_eq!(gossip.liveness(2), Liveness::Alive);
        assert_eq!(gossip.liveness(99), Liveness::Unknown);
    }

    // Node 3 stops: the others' failure detectors notice.
    let old_generation = g3.generation_id();
    g3.shutdown().await;
    for (name, gossip) in [("node 1", &g1), ("node 2", &g2)] {
        eventually(&format!("{name} sees node 3 dead"), || {
            gossip.liveness(3) == Liveness::Dead
        })
        .await;
        assert_eq!(live_ids(gossip), vec![1, 2]);
        let dead = gossip.dead_nodes();
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(dead[0].0, expected_peer(3, a3));
    }
    // The dead-for clock runs while node 3 stays dead.
    let before = g1.dead_nodes()[0].1;
    sleep(Duration::from_millis(300)).await;
    let after = g1.dead_nodes();
    assert_eq!(after[0].0.node_id, 3);
    assert!(after[0].1 > before, "{before:?} then {after:?}");

    // Node 3 restarts on the same address with a newer generation: it is
    // live again, reported once, and no longer dead.
    let g3 = Gossip::start(config(3, a3, &[a1])).await.unwrap();
    assert!(g3.generation_id() > old_generation);
    for (name, gossip) in [("node 1", &g1), ("node 2", &g2), ("node 3", &g3)] {
        eventually(&format!("{name} sees the restarted node 3 live"), || {
            gossip.live_nodes() == expected && gossip.dead_nodes().is_empty()
        })
        .await;
        assert_eq!(gossip.liveness(3), Liveness::Alive);
    }

    // All the while the node of the other cluster heard of nobody, and
    // nobody heard of it.
    assert_eq!(live_ids(&stranger), vec![4]);
    for gossip in [&g1, &g2, &g3] {
        assert_eq!(gossip.liveness(4), Liveness::Unknown);
    }

    drop(tcp3);
    for gossip in [g1, g2, g3, stranger] {
        gossip.shutdown().await;
    }
}

#[tokio::test]
async fn a_taken_port_is_a_bind_error_naming_the_address() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = match Gossip::start(config(1, addr, &[])).await {
        Ok(_) => panic!("gossip bound a port already taken"),
        Err(err) => err,
    };
    assert!(matches!(err, GossipError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn seeds_that_do_not_resolve_do_not_stop_the_node() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = config(1, addr, &[]);
    config.seeds = vec!["no port here".to_string(), "missing-port".to_string()];
    let gossip = Gossip::start(config).await.unwrap();
    assert_eq!(live_ids(&gossip), vec![1]);
    assert_eq!(gossip.liveness(1), Liveness::Alive);
    gossip.shutdown().await;
}
