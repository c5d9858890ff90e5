//! In-process clusters for the benchmarks: real nodes (sled in temp dirs,
//! tonic and gossip on 127.0.0.1), formed by `join` exactly as in
//! production, with production Raft timings.

use std::collections::BTreeMap;
use std::time::Duration;

use fuddle_client::MemberSpec;
use fuddle_node::{Config, Node};

/// A running in-process cluster; its temp dirs live as long as it does.
pub struct Cluster {
    /// Kept so the data dirs outlive the nodes.
    _dirs: Vec<tempfile::TempDir>,
    /// The nodes.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `n` nodes and waits until all are voters (or learners, past
    /// five) and a leader is known.
    pub async fn start(n: usize) -> Cluster {
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut nodes = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let mut c = Config::new(dir.path());
            c.bind = "127.0.0.1:0".parse().unwrap();
            c.gossip_interval = Duration::from_millis(100);
            c.membership.check_interval = Duration::from_millis(200);
            if i > 0 {
                c.join = vec![
                    nodes
                        .first()
                        .map(|n: &Node| n.local_addr.to_string())
                        .unwrap(),
                ];
            }
            nodes.push(Node::start(c).await.unwrap());
        }
        let cluster = Cluster { _dirs: dirs, nodes };
        let want = n.min(5) - usize::from(n.min(5).is_multiple_of(2));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let m = cluster.nodes[0].core.raft.metrics().borrow().clone();
            let voters = m.membership_config.membership().voter_ids().count();
            if voters >= want && m.current_leader.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cluster did not form"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
    }

    /// Every node's gRPC address.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.local_addr.to_string())
            .collect()
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

/// A registration carrying ~256 bytes of metadata.
pub fn spec(id: String) -> MemberSpec {
    MemberSpec {
        id,
        service: "bench".into(),
        locality: "local.a".into(),
        revision: "v1".into(),
        created_ms: 1,
        metadata: BTreeMap::from([("payload".to_string(), "x".repeat(240))]),
    }
}
