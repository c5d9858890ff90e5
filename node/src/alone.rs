//! Tells the log whether this node is alone in its membership, so that a
//! lone leader syncs its appends before reporting them (see
//! `fuddle_storage::LogStore::alone`).

use std::time::Duration;

use fuddle_storage::{Alone, NodeAddr, NodeId, TypeConfig};
use openraft::{Membership, Raft};
use tokio_util::sync::CancellationToken;

use crate::ticker::Ticker;

/// How often the membership is looked at. Looked at, not watched: Raft's
/// metrics change with every write, and a watcher would wake for each.
/// Either setting is safe at any moment, so a change seen late only costs
/// a little speed for that long.
const CHECK: Duration = Duration::from_millis(500);

/// Whether `membership` holds no node but this one, voter or learner: a
/// leader then has nobody to replicate to.
pub fn is_alone(membership: &Membership<NodeId, NodeAddr>) -> bool {
    membership.nodes().count() <= 1
}

/// Keeps `alone` up to date until `shutdown`.
pub async fn run(raft: Raft<TypeConfig>, alone: Alone, shutdown: CancellationToken) {
    let mut ticker = Ticker::new(CHECK, shutdown);
    while ticker.tick().await {
        let metrics = raft.metrics();
        let lone = is_alone(metrics.borrow().membership_config.membership());
        alone.set(lone);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn node() -> NodeAddr {
        NodeAddr {
            addr: "127.0.0.1:1".into(),
            http_addr: String::new(),
        }
    }

    #[test]
    fn only_a_membership_of_one_node_is_alone() {
        let one = Membership::new(vec![BTreeSet::from([1])], BTreeMap::from([(1, node())]));
        assert!(is_alone(&one));
        let with_learner = Membership::new(
            vec![BTreeSet::from([1])],
            BTreeMap::from([(1, node()), (2, node())]),
        );
        assert!(!is_alone(&with_learner), "a learner is replicated to");
        let three = Membership::new(
            vec![BTreeSet::from([1, 2, 3])],
            BTreeMap::from([(1, node()), (2, node()), (3, node())]),
        );
        assert!(!is_alone(&three));
    }
}
