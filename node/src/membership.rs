//! Automatic Raft membership, driven by gossip, run by the leader.
//!
//! Every check the leader compares the Raft membership with what gossip
//! sees and makes at most one change: remove nodes dead longer than the
//! dead-node timeout, add newly discovered live nodes as learners, promote
//! caught-up learners to voters up to an odd count of at most five, and
//! demote voters beyond that. [`decide`] is the pure rule, unit-tested;
//! [`run`] is the loop that feeds it and carries its decision out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuddle_storage::{NodeAddr, NodeId, TypeConfig};
use openraft::{ChangeMembers, Raft};
use tokio_util::sync::CancellationToken;

use crate::gossip::Gossip;
use crate::ticker::Ticker;

/// How membership is managed.
#[derive(Debug, Clone, Copy)]
pub struct MembershipConfig {
    /// A node unseen by gossip for this long is removed from the membership.
    pub dead_node_timeout: Duration,
    /// How often the leader checks.
    pub check_interval: Duration,
    /// Most voters; further nodes stay learners that serve reads.
    pub max_voters: usize,
    /// A learner this close to the leader's last log index counts as
    /// caught up and may be promoted.
    pub catch_up_lag: u64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            dead_node_timeout: Duration::from_secs(180),
            check_interval: Duration::from_secs(1),
            max_voters: 5,
            catch_up_lag: 100,
        }
    }
}

/// What the leader knows when it decides.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// The deciding leader.
    pub leader: NodeId,
    /// Current voters.
    pub voters: BTreeSet<NodeId>,
    /// Members that are not voters.
    pub learners: BTreeSet<NodeId>,
    /// Nodes gossip sees alive, with their addresses.
    pub live: BTreeMap<NodeId, NodeAddr>,
    /// How long each member has not been seen alive (absent: alive).
    pub unseen_for: BTreeMap<NodeId, Duration>,
    /// The log index each member has replicated (leader's view).
    pub matched: BTreeMap<NodeId, u64>,
    /// The leader's last log index.
    pub last_log_index: u64,
}

/// One membership change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Add a discovered node as a learner.
    AddLearner(NodeId, NodeAddr),
    /// Make exactly these nodes the voters (others stay as learners).
    SetVoters(BTreeSet<NodeId>),
    /// Remove these nodes from the membership altogether.
    RemoveNodes(BTreeSet<NodeId>),
}

/// The membership rule: at most one change per call, or none.
pub fn decide(view: &ClusterView, config: &MembershipConfig) -> Option<Action> {
    let expired = |id: &NodeId| {
        *id != view.leader
            && view
                .unseen_for
                .get(id)
                .is_some_and(|d| *d >= config.dead_node_timeout)
    };
    let dead_voters: BTreeSet<NodeId> = view.voters.iter().copied().filter(expired).collect();
    if !dead_voters.is_empty() {
        // The leader is never among them, so at least one voter remains.
        let voters = view.voters.difference(&dead_voters).copied().collect();
        return Some(Action::SetVoters(voters));
    }
    let dead_learners: BTreeSet<NodeId> = view.learners.iter().copied().filter(expired).collect();
    if !dead_learners.is_empty() {
        return Some(Action::RemoveNodes(dead_learners));
    }
    if let Some((id, addr)) = view
        .live
        .iter()
        .find(|(id, _)| !view.voters.contains(id) && !view.learners.contains(id))
    {
        return Some(Action::AddLearner(*id, addr.clone()));
    }
    let caught_up = |id: &NodeId| {
        view.live.contains_key(id)
            && view
                .matched
                .get(id)
                .is_some_and(|m| m + config.catch_up_lag >= view.last_log_index)
    };
    let ready: Vec<NodeId> = view.learners.iter().copied().filter(caught_up).collect();
    let eligible = view.voters.len() + ready.len();
    let mut target = eligible.min(config.max_voters.max(1));
    if target.is_multiple_of(2) {
        target -= 1;
    }
    let target = target.max(1);
    if view.voters.len() < target {
        let mut voters = view.voters.clone();
        voters.extend(ready.iter().take(target - view.voters.len()));
        return Some(Action::SetVoters(voters));
    }
    if view.voters.len() > target {
        // Demote the least useful voters first: unseen ones, then the
        // highest ids; never the leader.
        let mut candidates: Vec<NodeId> = view
            .voters
            .iter()
            .copied()
            .filter(|id| *id != view.leader)
            .collect();
        candidates.sort_by_key(|id| (!view.unseen_for.contains_key(id), std::cmp::Reverse(*id)));
        let demote: BTreeSet<NodeId> = candidates
            .into_iter()
            .take(view.voters.len() - target)
            .collect();
        let voters = view.voters.difference(&demote).copied().collect();
        return Some(Action::SetVoters(voters));
    }
    None
}

/// Keeps, per member, since when it has not been seen alive.
#[derive(Debug, Default)]
struct Unseen {
    /// First moment each member was found not alive.
    since: HashMap<NodeId, Instant>,
}

impl Unseen {
    fn update(
        &mut self,
        members: &BTreeSet<NodeId>,
        live: &BTreeMap<NodeId, NodeAddr>,
        now: Instant,
    ) -> BTreeMap<NodeId, Duration> {
        self.since
            .retain(|id, _| members.contains(id) && !live.contains_key(id));
        let mut out = BTreeMap::new();
        for id in members {
            if !live.contains_key(id) {
                let since = *self.since.entry(*id).or_insert(now);
                out.insert(*id, now.saturating_duration_since(since));
            }
        }
        out
    }

    fn clear(&mut self) {
        self.since.clear();
    }
}

/// Runs the leader's membership checks until `shutdown`.
pub async fn run(
    node_id: NodeId,
    raft: Raft<TypeConfig>,
    gossip: Arc<Gossip>,
    config: MembershipConfig,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(config.check_interval, shutdown);
    let mut unseen = Unseen::default();
    while ticker.tick().await {
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(node_id) || !metrics.state.is_leader() {
            // A new leader counts absences afresh, like session clocks.
            unseen.clear();
            continue;
        }
        if metrics.last_applied.as_ref() < metrics.membership_config.log_id().as_ref() {
            // The last change is committed in openraft's view, which counts
            // the leader before its own copy is durable
            // (`fuddle_storage::log_sync`), and openraft would take the next
            // change on that. Applied, it is durable on a majority: a change
            // that timed out here is followed by no other before then.
            continue;
        }
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let members: BTreeSet<NodeId> = voters.union(&learners).copied().collect();
        let mut live: BTreeMap<NodeId, NodeAddr> = gossip
            .live_nodes()
            .into_iter()
            .map(|p| {
                (
                    p.node_id,
                    NodeAddr {
                        addr: p.grpc_addr,
                        http_addr: p.http_addr,
                    },
                )
            })
            .collect();
        // The leader is alive by definition, whatever gossip says yet.
        if let Some(me) = membership.get_node(&node_id) {
            live.entry(node_id).or_insert_with(|| me.clone());
        }
        let view = ClusterView {
            leader: node_id,
            unseen_for: unseen.update(&members, &live, Instant::now()),
            voters,
            learners,
            live,
            matched: metrics
                .replication
                .as_ref()
                .map(|r| {
                    r.iter()
                        .map(|(id, l)| (*id, l.map_or(0, |l| l.index)))
                        .collect()
                })
                .unwrap_or_default(),
            last_log_index: metrics.last_log_index.unwrap_or(0),
        };
        let Some(action) = decide(&view, &config) else {
            continue;
        };
        tracing::info!(?action, "membership change");
        let result = match action {
            Action::AddLearner(id, addr) => {
                tokio::time::timeout(Duration::from_secs(10), raft.add_learner(id, addr, false))
                    .await
                    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
            }
            Action::SetVoters(voters) => tokio::time::timeout(
                Duration::from_secs(10),
                raft.change_membership(ChangeMembers::ReplaceAllVoters(voters), true),
            )
            .await
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            Action::RemoveNodes(nodes) => tokio::time::timeout(
                Duration::from_secs(10),
                raft.change_membership(ChangeMembers::RemoveNodes(nodes), false),
            )
            .await
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("membership change failed: {e}"),
            Err(_) => tracing::warn!("membership change timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(id: NodeId) -> NodeAddr {
        NodeAddr {
            addr: format!("127.0.0.1:{}", 9000 + id),
            http_addr: String::new(),
        }
    }

    fn view(voters: &[NodeId], learners: &[NodeId], live: &[NodeId]) -> ClusterView {
        ClusterView {
            leader: 1,
            voters: voters.iter().copied().collect(),
            learners: learners.iter().copied().collect(),
            live: live.iter().map(|id| (*id, addr(*id))).collect(),
            unseen_for: BTreeMap::new(),
            matched: voters.iter().chain(learners).map(|id| (*id, 100)).collect(),
            last_log_index: 100,
        }
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn three_nodes_join_and_become_three_voters() {
        let c = MembershipConfig::default();
        let v = view(&[1], &[], &[1, 2, 3]);
        assert_eq!(decide(&v, &c), Some(Action::AddLearner(2, addr(2))));
        let v = view(&[1], &[2], &[1, 2, 3]);
        assert_eq!(decide(&v, &c), Some(Action::AddLearner(3, addr(3))));
        // One caught-up learner: two voters would be even, so wait.
        let mut v = view(&[1], &[2], &[1, 2]);
        assert_eq!(decide(&v, &c), None);
        v = view(&[1], &[2, 3], &[1, 2, 3]);
        assert_eq!(decide(&v, &c), Some(Action::SetVoters(set(&[1, 2, 3]))));
        assert_eq!(decide(&view(&[1, 2, 3], &[], &[1, 2, 3]), &c), None);
    }

    #[test]
    fn a_learner_behind_is_not_promoted() {
        let c = MembershipConfig::default();
        let mut v = view(&[1], &[2, 3], &[1, 2, 3]);
        v.last_log_index = 1000;
        v.matched = BTreeMap::from([(1, 1000), (2, 1000), (3, 10)]);
        assert_eq!(decide(&v, &c), None);
    }

    #[test]
    fn at_most_five_voters_and_always_odd() {
        let c = MembershipConfig::default();
        let v = view(&[1, 2, 3], &[4], &[1, 2, 3, 4]);
        assert_eq!(decide(&v, &c), None, "four voters would be even");
        let v = view(&[1, 2, 3], &[4, 5], &[1, 2, 3, 4, 5]);
        assert_eq!(
            decide(&v, &c),
            Some(Action::SetVoters(set(&[1, 2, 3, 4, 5])))
        );
        let v = view(&[1, 2, 3, 4, 5], &[6, 7], &[1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(decide(&v, &c), None, "further nodes stay learners");
    }

    #[test]
    fn a_briefly_dead_voter_is_kept() {
        let c = MembershipConfig::default();
        let mut v = view(&[1, 2, 3], &[], &[1, 2]);
        v.unseen_for.insert(3, Duration::from_secs(10));
        assert_eq!(decide(&v, &c), None);
    }

    #[test]
    fn a_long_dead_voter_is_removed_then_the_count_made_odd() {
        let c = MembershipConfig::default();
        let mut v = view(&[1, 2, 3, 4, 5], &[], &[1, 2, 3, 4]);
        v.unseen_for.insert(5, c.dead_node_timeout);
        assert_eq!(decide(&v, &c), Some(Action::SetVoters(set(&[1, 2, 3, 4]))));
        // Now 5 is a learner (retained), still dead: removed next.
        let mut v = view(&[1, 2, 3, 4], &[5], &[1, 2, 3, 4]);
        v.unseen_for.insert(5, c.dead_node_timeout);
        assert_eq!(decide(&v, &c), Some(Action::RemoveNodes(set(&[5]))));
        // Four voters: one is demoted to keep the count odd.
        let v = view(&[1, 2, 3, 4], &[], &[1, 2, 3, 4]);
        assert_eq!(decide(&v, &c), Some(Action::SetVoters(set(&[1, 2, 3]))));
    }

    #[test]
    fn the_leader_is_never_removed_or_demoted() {
        let c = MembershipConfig::default();
        let mut v = view(&[1, 2], &[], &[2]);
        v.unseen_for.insert(1, c.dead_node_timeout * 2);
        assert_eq!(decide(&v, &c), Some(Action::SetVoters(set(&[1]))));
    }
}
