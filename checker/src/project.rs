//! What both history checks share: validating a history, the set of member
//! ids it touches, and the real-time bounds that indexes must respect.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::history::{Consistency, Event, Op, Outcome, Ret};
use crate::violation::Violation;

/// Refuses a history a harness could not have recorded from a real server,
/// so that its bugs are not reported as the server's.
pub(crate) fn validate(history: &[Event]) -> Result<(), Violation> {
    for (n, e) in history.iter().enumerate() {
        let malformed = |reason: String| Violation::Malformed { event: n, reason };
        let Outcome::Ok(ret) = &e.outcome else {
            continue;
        };
        let Some(time) = e.ret else {
            return Err(malformed("answered, but without a return time".into()));
        };
        if time < e.call {
            return Err(malformed(format!(
                "returns at {time}, before its call at {}",
                e.call
            )));
        }
        // u64::MAX stands for "never returns" in the search.
        if time == u64::MAX {
            return Err(malformed("return time u64::MAX is reserved".into()));
        }
        let fits = match (&e.op, ret) {
            (Op::Register { .. }, Ret::Written { .. }) => true,
            (Op::Update { .. } | Op::Unregister { .. }, Ret::Written { .. } | Ret::NotFound) => {
                true
            }
            (Op::Get { .. }, Ret::Read { .. }) => true,
            (Op::List { prefix, .. }, Ret::List { members, .. }) => {
                if let Some(id) = members.keys().find(|id| !id.starts_with(prefix.as_str())) {
                    return Err(malformed(format!(
                        "list of prefix {prefix:?} holds {id:?}: filter the answer by the prefix"
                    )));
                }
                true
            }
            _ => false,
        };
        if !fits {
            return Err(malformed(format!("{} cannot answer {}", ret, e.op)));
        }
    }
    Ok(())
}

/// The requests that bear on each member the history names, in history
/// order: its own requests, and every list whose prefix it starts with.
/// A member named only in a list's answer is there too (with its reads), so
/// that a list showing a member never written is caught.
pub(crate) fn by_member(history: &[Event]) -> BTreeMap<&str, Vec<usize>> {
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for e in history {
        if let Some(id) = e.op.id() {
            members.entry(id).or_default();
        }
        if let Outcome::Ok(Ret::List {
            members: listed, ..
        }) = &e.outcome
        {
            for id in listed.keys() {
                members.entry(id).or_default();
            }
        }
    }
    for (n, e) in history.iter().enumerate() {
        match &e.op {
            Op::List { prefix, .. } => {
                // The ids under a prefix are one range of the sorted map.
                for (_, events) in members
                    .range_mut::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                    .take_while(|(id, _)| id.starts_with(prefix.as_str()))
                {
                    events.push(n);
                }
            }
            op => {
                if let Some(events) = op.id().and_then(|id| members.get_mut(id)) {
                    events.push(n);
                }
            }
        }
    }
    members
}

/// An answered request whose index must respect real time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Indexed {
    /// Its position in the history.
    pub event: usize,
    /// When it was sent.
    pub call: u64,
    /// When it was answered.
    pub ret: u64,
    /// The index it reported.
    pub index: u64,
    /// Whether it is a write (which needs an index strictly above anything
    /// acknowledged before it started; a read only needs at least that).
    pub write: bool,
}

/// The answered requests that report an index and respect real time:
/// acknowledged writes, and linearizable reads. Stale reads are left out,
/// since they may answer from a lagging node.
pub(crate) fn indexed(history: &[Event]) -> Vec<Indexed> {
    history
        .iter()
        .enumerate()
        .filter_map(|(event, e)| {
            let (Outcome::Ok(ret), Some(time)) = (&e.outcome, e.ret) else {
                return None;
            };
            let (index, write) = match (&e.op, ret) {
                (_, Ret::Written { index }) => (*index, true),
                (
                    Op::Get {
                        consistency: Consistency::Linearizable,
                        ..
                    },
                    Ret::Read {
                        index: Some(index), ..
                    },
                )
                | (
                    Op::List {
                        consistency: Consistency::Linearizable,
                        ..
                    },
                    Ret::List { index, .. },
                ) => (*index, false),
                _ => return None,
            };
            Some(Indexed {
                event,
                call: e.call,
                ret: time,
                index,
                write,
            })
        })
        .collect()
}

/// For any time `t`, the largest index among the requests answered strictly
/// before `t`: a write sent at `t` must get a larger index.
pub(crate) struct IndexFloor {
    /// Return times, ascending.
    rets: Vec<u64>,
    /// `max[i]`: the largest index and its event among `rets[..=i]`.
    max: Vec<(u64, usize)>,
}

impl IndexFloor {
    pub(crate) fn new(indexed: &[Indexed]) -> Self {
        let mut by_ret: Vec<&Indexed> = indexed.iter().collect();
        by_ret.sort_by_key(|i| i.ret);
        let mut max = Vec::with_capacity(by_ret.len());
        let mut best: Option<(u64, usize)> = None;
        for i in &by_ret {
            if best.is_none_or(|(index, _)| i.index > index) {
                best = Some((i.index, i.event));
            }
            max.extend(best);
        }
        Self {
            rets: by_ret.iter().map(|i| i.ret).collect(),
            max,
        }
    }

    /// The largest index (and its event) answered strictly before `t`.
    pub(crate) fn before(&self, t: u64) -> Option<(u64, usize)> {
        let n = self.rets.partition_point(|&r| r < t);
        n.checked_sub(1).map(|i| self.max[i])
    }
}
