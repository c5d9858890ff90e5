//! The checks every scenario ends with, on the record of its clients and
//! the final state of its nodes:
//!
//! - the history (writes, linearizable and stale reads of the load's
//!   members) with `fuddle-checker`: linearizable, indexes in real-time
//!   order, stale reads showing the state at the index they report;
//! - every subscription with `fuddle-checker`: starts with a snapshot,
//!   ordered, no duplicate, no gap, one message per entry with all its
//!   changes, and its view at the final list's index equal to that list;
//! - durability: every member's last acknowledged write (with no later
//!   write that may have taken effect) is what every node holds;
//! - every node holds the same state at the same index;
//! - no split brain: no two nodes ever named different leaders for one
//!   term.

use std::collections::{BTreeMap, BTreeSet};

use fuddle_checker as checker;
use fuddle_client::{Change, ClusterStatus, Event, Member};

use super::history::{Op, Outcome, Record, Request, StatusSample};
use super::load::{LOAD_PREFIX, VALUE_KEY};

/// The final state of a scenario, read after the load stopped.
#[derive(Debug, Clone)]
pub struct Final {
    /// The final linearizable list.
    pub members: Vec<Member>,
    /// Its index.
    pub index: u64,
    /// Every node's stale list at or past that index, by node.
    pub per_node: Vec<(Vec<Member>, u64)>,
    /// The subscriptions' positions in the record.
    pub subscriptions: Vec<usize>,
    /// Every node's final cluster status.
    pub statuses: Vec<ClusterStatus>,
}

/// A member's value as the checker models it.
pub fn value_of(member: &Member) -> String {
    member.metadata.get(VALUE_KEY).cloned().unwrap_or_default()
}

fn is_load_member(id: &str) -> bool {
    id.starts_with(LOAD_PREFIX)
}

/// The history in the checker's terms: the load's members only (members
/// of a scenario's own, changed by session expiry, are not modelled).
pub fn to_checker(record: &Record) -> Vec<checker::Event> {
    record.ops.iter().filter_map(convert).collect()
}

/// The node each event of [`to_checker`]'s history was sent to.
fn vias(record: &Record) -> Vec<&str> {
    record
        .ops
        .iter()
        .filter(|op| convert(op).is_some())
        .map(|op| op.via.as_str())
        .collect()
}

fn convert(op: &Op) -> Option<checker::Event> {
    use checker::{Consistency, Ret};
    let checked_op = match &op.request {
        Request::Register { id, value } => checker::Op::Register {
            id: id.clone(),
            session: format!("writer {}", op.client),
            value: value.clone(),
        },
        Request::Unregister { id } => checker::Op::Unregister { id: id.clone() },
        Request::Get { id } => checker::Op::Get {
            id: id.clone(),
            consistency: Consistency::Linearizable,
        },
        Request::ListLinearizable => checker::Op::List {
            prefix: LOAD_PREFIX.into(),
            consistency: Consistency::Linearizable,
        },
        Request::ListStale => checker::Op::List {
            prefix: LOAD_PREFIX.into(),
            consistency: Consistency::Stale,
        },
    };
    if let Some(id) = checked_op.id()
        && !is_load_member(id)
    {
        return None;
    }
    let outcome = match (&op.request, &op.outcome) {
        (_, Outcome::Failed(_)) => checker::Outcome::Failed,
        (_, Outcome::Unknown(_)) => checker::Outcome::Unknown,
        (Request::Register { .. }, Outcome::Registered(m)) => {
            checker::Outcome::Ok(Ret::Written { index: m.mod_index })
        }
        (Request::Unregister { .. }, Outcome::Unregistered(index)) => {
            checker::Outcome::Ok(Ret::Written { index: *index })
        }
        (Request::Unregister { .. }, Outcome::NotFound) => checker::Outcome::Ok(Ret::NotFound),
        (Request::Get { .. }, Outcome::Found { member, index }) => {
            checker::Outcome::Ok(Ret::Read {
                value: Some(value_of(member)),
                index: Some(*index),
            })
        }
        (Request::Get { .. }, Outcome::NotFound) => checker::Outcome::Ok(Ret::Read {
            value: None,
            index: None,
        }),
        (Request::ListLinearizable | Request::ListStale, Outcome::Listed { members, index }) => {
            checker::Outcome::Ok(Ret::List {
                members: members
                    .iter()
                    .filter(|m| is_load_member(&m.id))
                    .map(|m| (m.id.clone(), value_of(m)))
                    .collect(),
                index: *index,
            })
        }
        (request, outcome) => panic!("the harness recorded {outcome:?} for {request:?}"),
    };
    Some(checker::Event {
        client: op.client as u64,
        op: checked_op,
        call: op.invoked,
        ret: op.completed,
        outcome,
    })
}

fn sub_member(member: &Member) -> checker::SubMember {
    checker::SubMember {
        id: member.id.clone(),
        value: value_of(member),
        mod_index: member.mod_index,
    }
}

/// A subscription's events in the checker's terms.
pub fn stream(events: &[Event]) -> Vec<checker::SubEvent> {
    events
        .iter()
        .map(|e| match e {
            Event::Snapshot { members, index } => checker::SubEvent::Snapshot {
                members: members.iter().map(sub_member).collect(),
                index: *index,
            },
            Event::Changes { index, changes } => checker::SubEvent::Changes {
                index: *index,
                changes: changes
                    .iter()
                    .map(|c| match c {
                        Change::Upsert(m) => checker::SubChange::Upsert(sub_member(m)),
                        Change::Removed(id) => checker::SubChange::Removed(id.clone()),
                    })
                    .collect(),
            },
            Event::Progress { index } => checker::SubEvent::Progress { index: *index },
        })
        .collect()
}

/// Every check; returns the problems found, one line (or paragraph) each.
pub fn check_all(record: &Record, fin: &Final) -> Vec<String> {
    let mut problems = Vec::new();
    let history = to_checker(record);

    // The history.
    let vias = vias(record);
    if let Err(v) = checker::check_linearizable(&history) {
        problems.push(format!("history: {v}{}", culprits(&v, &history, &vias)));
    }
    if let Err(v) = checker::check_stale_reads(&history) {
        problems.push(format!("stale reads: {v}{}", culprits(&v, &history, &vias)));
    }

    // The subscriptions.
    let committed = checker::committed_writes(&history);
    let list = checker::ListView {
        members: fin
            .members
            .iter()
            .map(|m| (m.id.clone(), value_of(m)))
            .collect(),
        index: fin.index,
    };
    for &s in &fin.subscriptions {
        let log = &record.subscriptions[s];
        if let Some(why) = &log.ended {
            problems.push(format!("{} ended: {why}", log.name));
        }
        let events: Vec<Event> = log.events.iter().map(|r| r.event.clone()).collect();
        if let Err(v) = checker::check_subscription(&stream(&events), &committed, &list) {
            let around = match &v {
                checker::Violation::Subscription { position, .. } => {
                    let from = position.saturating_sub(3);
                    let to = (position + 3).min(events.len());
                    format!("\n  events {from}..{to}: {:#?}", &events[from..to])
                }
                _ => String::new(),
            };
            problems.push(format!("{}: {v}{around}", log.name));
        }
    }

    // Durability and agreement.
    problems.extend(check_durability(record, fin));
    problems.extend(check_agreement(fin));
    problems.extend(check_terms(&record.statuses, &fin.statuses));
    problems
}

/// The requests a violation names, printed in full with the node each
/// was sent to.
fn culprits(v: &checker::Violation, history: &[checker::Event], vias: &[&str]) -> String {
    let events: Vec<usize> = match v {
        checker::Violation::IndexOrder { earlier, later, .. } => vec![*earlier, *later],
        checker::Violation::NotLinearizable { culprits, .. } => culprits.clone(),
        checker::Violation::StaleRead { event, .. } => vec![*event],
        checker::Violation::Malformed { event, .. } => vec![*event],
        _ => Vec::new(),
    };
    events
        .iter()
        .filter_map(|&e| Some((history.get(e)?, vias.get(e)?)))
        .map(|(e, via)| format!("\n  sent to {via}: {e}"))
        .collect()
}

/// For every load member, its last acknowledged write must be what the
/// final list shows, unless a later write of its (sequential) writer may
/// have taken effect.
fn check_durability(record: &Record, fin: &Final) -> Vec<String> {
    let mut problems = Vec::new();
    let final_members: BTreeMap<&str, &Member> =
        fin.members.iter().map(|m| (m.id.as_str(), m)).collect();
    // Writes by member, in invocation order (one writer per member, one
    // request at a time).
    let mut by_member: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in &record.ops {
        let id = match &op.request {
            Request::Register { id, .. } | Request::Unregister { id } => id.as_str(),
            _ => continue,
        };
        by_member.entry(id).or_default().push(op);
    }
    let mut checked = 0;
    for (id, ops) in &by_member {
        let Some(last_ack) = ops.iter().rposition(|op| {
            matches!(
                op.outcome,
                Outcome::Registered(_) | Outcome::Unregistered(_) | Outcome::NotFound
            )
        }) else {
            continue;
        };
        let later_may_apply = ops[last_ack + 1..]
            .iter()
            .any(|op| matches!(op.outcome, Outcome::Unknown(_)));
        if later_may_apply {
            continue;
        }
        checked += 1;
        let present = final_members.get(id);
        match (&ops[last_ack].outcome, present) {
            (Outcome::Registered(written), Some(now))
                if value_of(now) != value_of(written)
                    || now.create_index != written.create_index =>
            {
                problems.push(format!(
                    "durability: {id} was last written (acknowledged) as {written:?}, the final state holds {now:?}"
                ));
            }
            (Outcome::Registered(written), None) => problems.push(format!(
                "durability: the acknowledged write of {id} at index {} is lost: the final state lacks {id}",
                written.mod_index
            )),
            (Outcome::Unregistered(_) | Outcome::NotFound, Some(now)) => {
                problems.push(format!(
                    "durability: {id} was last removed (acknowledged: {:?}), the final state holds {now:?}",
                    ops[last_ack].outcome
                ));
            }
            _ => {}
        }
    }
    if checked == 0 && !by_member.is_empty() {
        problems.push("durability: no member had a settled last write to check".into());
    }
    problems
}

/// Every node holds the final list's state at the final index.
fn check_agreement(fin: &Final) -> Vec<String> {
    let mut problems = Vec::new();
    let expected: BTreeMap<&str, &Member> =
        fin.members.iter().map(|m| (m.id.as_str(), m)).collect();
    for (i, (members, index)) in fin.per_node.iter().enumerate() {
        if *index != fin.index {
            // Something was written after the final list (a session going
            // down, say); compare with the nodes at the same index instead.
            continue;
        }
        let got: BTreeMap<&str, &Member> = members.iter().map(|m| (m.id.as_str(), m)).collect();
        if got != expected {
            fn ids<'a>(m: &BTreeMap<&'a str, &Member>) -> BTreeSet<&'a str> {
                m.keys().copied().collect()
            }
            problems.push(format!(
                "agreement: n{} at index {index} differs from the final list: only there {:?}, missing {:?}",
                i + 1,
                ids(&got).difference(&ids(&expected)).collect::<Vec<_>>(),
                ids(&expected).difference(&ids(&got)).collect::<Vec<_>>(),
            ));
        }
    }
    let same_index: Vec<&(Vec<Member>, u64)> = fin
        .per_node
        .iter()
        .filter(|(_, index)| *index != fin.index)
        .collect();
    for pair in same_index.windows(2) {
        if pair[0].1 == pair[1].1 && pair[0].0 != pair[1].0 {
            problems.push(format!(
                "agreement: two nodes hold different states at index {}",
                pair[0].1
            ));
        }
    }
    problems
}

/// Election safety as the nodes reported it: one leader per term.
pub fn check_terms(samples: &[StatusSample], finals: &[ClusterStatus]) -> Vec<String> {
    let mut leaders: BTreeMap<u64, BTreeMap<u64, (u64, u64)>> = BTreeMap::new();
    let all = samples
        .iter()
        .map(|s| (s.term, s.leader, s.node, s.at))
        .chain(
            finals
                .iter()
                .map(|s| (s.term, s.leader, s.answered_by, u64::MAX)),
        );
    for (term, leader, node, at) in all {
        if leader == 0 {
            continue;
        }
        leaders
            .entry(term)
            .or_default()
            .entry(leader)
            .or_insert((node, at));
    }
    leaders
        .iter()
        .filter(|(_, named)| named.len() > 1)
        .map(|(term, named)| {
            format!(
                "split brain: term {term} had leaders {:?} (leader -> (first node naming it, time))",
                named
            )
        })
        .collect()
}
