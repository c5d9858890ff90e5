//! The subscription check: a stream, as a subscriber received it, against
//! the writes known to be committed and a final linearizable list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::history::Committed;
use crate::violation::{SubProblem, Violation};

/// A member as a stream carries it: the SDK's `Member` reduced to what the
/// check needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubMember {
    /// The member's id.
    pub id: String,
    /// Its value, derived as for the history (see [`crate::Op`]).
    pub value: String,
    /// The log index that last changed it.
    pub mod_index: u64,
}

/// One change of a [`SubEvent::Changes`], as the SDK's `Change`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubChange {
    /// The member as it is now: created, replaced, changed or now matching.
    Upsert(SubMember),
    /// The member with this id is gone or no longer matches.
    Removed(String),
}

impl SubChange {
    /// The member the change is about.
    pub fn id(&self) -> &str {
        match self {
            SubChange::Upsert(m) => &m.id,
            SubChange::Removed(id) => id,
        }
    }
}

/// One message of a subscription, as the SDK's `Event`, in the order the
/// subscriber received it (across reconnects, if it resumed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubEvent {
    /// Every matching member as of `index`; replaces the view.
    Snapshot {
        /// The matching members.
        members: Vec<SubMember>,
        /// The index the snapshot reflects.
        index: u64,
    },
    /// The changes one log entry made to the matching members.
    Changes {
        /// The entry's index.
        index: u64,
        /// Its changes.
        changes: Vec<SubChange>,
    },
    /// Nothing matching changed up to `index`.
    Progress {
        /// The index the stream is current up to.
        index: u64,
    },
}

impl SubEvent {
    /// The index the event is at.
    pub fn index(&self) -> u64 {
        match self {
            SubEvent::Snapshot { index, .. }
            | SubEvent::Changes { index, .. }
            | SubEvent::Progress { index } => *index,
        }
    }
}

/// A linearizable list of the watched members, to compare the final view
/// with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListView {
    /// Every watched member, by id, with its value.
    pub members: BTreeMap<String, String>,
    /// The index the list was answered at.
    pub index: u64,
}

/// Checks a subscription stream:
///
/// - it starts with a snapshot;
/// - ordered: no event goes back behind the index the stream covered (a
///   snapshot or progress may repeat it, changes must pass it);
/// - no duplicates: an entry's changes arrive once;
/// - atomic: one message per entry, holding every change `committed` says
///   that entry made (a split entry shows as a second message for it);
/// - no gaps: every entry of `committed` the stream moves past by changes
///   or progress (not by a resync snapshot) arrived; on a resumed stream
///   this is "it continues exactly after its last index";
/// - consistent: a change's `mod_index` is its entry's, a snapshot holds
///   nothing newer than itself, a removal removes a member the view holds;
/// - the view as of `final_list.index` equals `final_list`.
///
/// `committed` lists the writes known to be committed that touch watched
/// members ([`crate::committed_writes`] of the history, filtered as the
/// subscription is); the stream may carry more entries (writes of unknown
/// outcome, sessions going down or expiring). The stream must cover the
/// final list's index: read it until a progress or change at or past it.
pub fn check_subscription(
    stream: &[SubEvent],
    committed: &[Committed],
    final_list: &ListView,
) -> Result<(), Violation> {
    let mut expected: BTreeMap<u64, BTreeMap<&str, BTreeSet<Option<&str>>>> = BTreeMap::new();
    for c in committed {
        expected
            .entry(c.index)
            .or_default()
            .entry(c.id.as_str())
            .or_default()
            .insert(c.value.as_deref());
    }
    let mut sub = Subscriber {
        expected,
        view: BTreeMap::new(),
        pos: None,
        delivered: BTreeMap::new(),
    };
    let target = final_list.index;
    let mut at_target: Option<BTreeMap<String, String>> = None;
    let mut jumped: Option<u64> = None;
    for (position, event) in stream.iter().enumerate() {
        let fail = |problem| Violation::Subscription { position, problem };
        // The view as of the final list's index is the view just before the
        // stream moves past it by changes or progress: those say nothing
        // changed in between. A snapshot past it says nothing about it.
        if at_target.is_none()
            && let Some(pos) = sub.pos
            && pos <= target
            && event.index() > target
        {
            match event {
                SubEvent::Snapshot { index, .. } if pos < target => jumped = Some(*index),
                _ => at_target = Some(sub.values()),
            }
        }
        sub.apply(event).map_err(fail)?;
        if at_target.is_none() && sub.pos == Some(target) {
            at_target = Some(sub.values());
        }
    }
    let position = stream.len().saturating_sub(1);
    let fail = |problem| Violation::Subscription { position, problem };
    let Some(view) = at_target else {
        return Err(fail(match jumped {
            Some(snapshot) => SubProblem::FinalViewUnknown {
                index: target,
                snapshot,
            },
            None => SubProblem::NotCaughtUp {
                index: target,
                reached: sub.pos,
            },
        }));
    };
    if view != final_list.members {
        return Err(fail(SubProblem::FinalView {
            index: target,
            detail: diff(&view, &final_list.members),
        }));
    }
    Ok(())
}

/// The subscriber's side of the stream.
struct Subscriber<'a> {
    /// Committed writes by index, then member, with the values the entry
    /// may have left (several when one entry wrote a member twice).
    expected: BTreeMap<u64, BTreeMap<&'a str, BTreeSet<Option<&'a str>>>>,
    /// The view: members by id.
    view: BTreeMap<String, SubMember>,
    /// The index the stream covers; `None` before the first snapshot.
    pos: Option<u64>,
    /// The changes delivered since the last snapshot, by index, to tell a
    /// duplicate from a split entry.
    delivered: BTreeMap<u64, &'a [SubChange]>,
}

impl<'a> Subscriber<'a> {
    fn values(&self) -> BTreeMap<String, String> {
        self.view
            .iter()
            .map(|(id, m)| (id.clone(), m.value.clone()))
            .collect()
    }

    fn apply(&mut self, event: &'a SubEvent) -> Result<(), SubProblem> {
        let index = event.index();
        let Some(pos) = self.pos else {
            let SubEvent::Snapshot { members, .. } = event else {
                return Err(SubProblem::NoSnapshot { index });
            };
            return self.snapshot(members, index);
        };
        match event {
            SubEvent::Snapshot { members, index } => {
                if *index < pos {
                    return Err(SubProblem::OutOfOrder {
                        index: *index,
                        after: pos,
                    });
                }
                self.snapshot(members, *index)
            }
            SubEvent::Progress { index } => {
                if *index < pos {
                    return Err(SubProblem::OutOfOrder {
                        index: *index,
                        after: pos,
                    });
                }
                // Progress says nothing matching changed up to `index`.
                self.no_gap(pos, *index + 1)?;
                self.pos = Some(*index);
                Ok(())
            }
            SubEvent::Changes { index, changes } => {
                if *index <= pos {
                    return Err(match self.delivered.get(index) {
                        Some(&first) if first == changes.as_slice() => {
                            SubProblem::Duplicate { index: *index }
                        }
                        Some(_) => SubProblem::SplitEntry { index: *index },
                        None => SubProblem::OutOfOrder {
                            index: *index,
                            after: pos,
                        },
                    });
                }
                self.no_gap(pos, *index)?;
                self.changes(*index, changes)?;
                self.delivered.insert(*index, changes);
                self.pos = Some(*index);
                Ok(())
            }
        }
    }

    fn snapshot(&mut self, members: &[SubMember], index: u64) -> Result<(), SubProblem> {
        let mut view = BTreeMap::new();
        for m in members {
            if m.mod_index > index {
                return Err(SubProblem::BadModIndex {
                    index,
                    id: m.id.clone(),
                    mod_index: m.mod_index,
                });
            }
            if view.insert(m.id.clone(), m.clone()).is_some() {
                return Err(SubProblem::RepeatedMember {
                    index,
                    id: m.id.clone(),
                });
            }
        }
        self.view = view;
        self.pos = Some(index);
        // A snapshot at `index` covers every entry up to it: an entry at or
        // below it arriving later is out of order, not a duplicate.
        self.delivered.clear();
        Ok(())
    }

    /// Moving from `from` to just before `to`, the stream claims nothing
    /// watched changed in between: no committed entry may lie there.
    fn no_gap(&self, from: u64, to: u64) -> Result<(), SubProblem> {
        if to <= from + 1 {
            return Ok(());
        }
        if let Some((&missing, ids)) = self.expected.range(from + 1..to).next() {
            let id = ids.keys().next().copied().unwrap_or_default();
            return Err(SubProblem::Gap {
                missing,
                id: id.to_string(),
                from,
                to: to - 1,
            });
        }
        Ok(())
    }

    fn changes(&mut self, index: u64, changes: &[SubChange]) -> Result<(), SubProblem> {
        let mut seen = BTreeSet::new();
        for change in changes {
            if !seen.insert(change.id()) {
                return Err(SubProblem::RepeatedMember {
                    index,
                    id: change.id().to_string(),
                });
            }
        }
        if let Some(writes) = self.expected.get(&index) {
            for (&id, values) in writes {
                let got = match changes.iter().find(|c| c.id() == id) {
                    Some(SubChange::Upsert(m)) => Some(m.value.as_str()),
                    Some(SubChange::Removed(_)) => None,
                    // A member created and removed by one entry is no
                    // change at all.
                    None if values.contains(&None) && !self.view.contains_key(id) => continue,
                    None => {
                        return Err(SubProblem::NotAtomic {
                            index,
                            id: id.to_string(),
                        });
                    }
                };
                if !values.contains(&got) {
                    return Err(SubProblem::WrongChange {
                        index,
                        id: id.to_string(),
                        expected: values.iter().map(|v| v.map(str::to_string)).collect(),
                        got: got.map(str::to_string),
                    });
                }
            }
        }
        for change in changes {
            match change {
                SubChange::Upsert(m) => {
                    if m.mod_index != index {
                        return Err(SubProblem::BadModIndex {
                            index,
                            id: m.id.clone(),
                            mod_index: m.mod_index,
                        });
                    }
                    self.view.insert(m.id.clone(), m.clone());
                }
                SubChange::Removed(id) => {
                    if self.view.remove(id).is_none() {
                        return Err(SubProblem::RemovedAbsent {
                            index,
                            id: id.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

fn diff(view: &BTreeMap<String, String>, list: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let ids: BTreeSet<&String> = view.keys().chain(list.keys()).collect();
    for id in ids {
        match (view.get(id), list.get(id)) {
            (Some(v), Some(l)) if v != l => {
                let _ = write!(out, "{id}: view {v:?}, list {l:?}; ");
            }
            (Some(v), None) => {
                let _ = write!(out, "{id}: view {v:?}, list absent; ");
            }
            (None, Some(l)) => {
                let _ = write!(out, "{id}: view absent, list {l:?}; ");
            }
            _ => {}
        }
    }
    out.truncate(out.trim_end_matches("; ").len());
    out
}
