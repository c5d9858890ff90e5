//! The stale-read check: every read that reports an index must show the
//! member as the committed writes left it at that index.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::history::{Event, Op, Outcome, Ret};
use crate::project::{IndexFloor, by_member, indexed, validate};
use crate::violation::Violation;

/// Checks every read that reports an index, stale or linearizable, `Get` or
/// `List`: the value read must be the member's value as of that index.
///
/// The value as of index `r` is the value of the acknowledged write with
/// the largest index `≤ r` (absent before the first one: the history must
/// start from members that do not exist yet). Writes of one log entry share
/// an index and are not ordered by it, so any of them may be the one read.
/// A write whose outcome is unknown has an unknown index; it may be the one
/// read when it could lie at or below `r`: it was sent before the read
/// returned, and nothing acknowledged before it was sent has an index of
/// `r` or more. That is permissive (it may let a stale read through when
/// unknown writes blur the picture), never a false alarm.
pub fn check_stale_reads(history: &[Event]) -> Result<(), Violation> {
    validate(history)?;
    let floor = IndexFloor::new(&indexed(history));
    for (id, events) in by_member(history) {
        check_member(history, id, &events, &floor)?;
    }
    Ok(())
}

/// A write to the member that may have taken effect.
struct Write<'a> {
    /// Its position in the history.
    event: usize,
    /// The member's value after it.
    value: Option<&'a str>,
}

fn check_member(
    history: &[Event],
    id: &str,
    events: &[usize],
    floor: &IndexFloor,
) -> Result<(), Violation> {
    // Acknowledged writes by index, and writes of unknown outcome with the
    // lowest index they can have had (above anything acknowledged before
    // they were sent).
    let mut known: Vec<(u64, Write<'_>)> = Vec::new();
    let mut unknown: Vec<(u64, Option<u64>, Write<'_>)> = Vec::new();
    for &event in events {
        let e = &history[event];
        let value = match &e.op {
            Op::Register { value, .. } | Op::Update { value, .. } => Some(value.as_str()),
            Op::Unregister { .. } => None,
            Op::Get { .. } | Op::List { .. } => continue,
        };
        let write = Write { event, value };
        match &e.outcome {
            Outcome::Ok(Ret::Written { index }) => known.push((*index, write)),
            Outcome::Unknown => unknown.push((e.call, floor.before(e.call).map(|f| f.0), write)),
            _ => {}
        }
    }
    known.sort_by_key(|(index, w)| (*index, w.event));

    for &event in events {
        let e = &history[event];
        let (Outcome::Ok(ret), Some(time)) = (&e.outcome, e.ret) else {
            continue;
        };
        let (read, index) = match (&e.op, ret) {
            (
                Op::Get { id: of, .. },
                Ret::Read {
                    value,
                    index: Some(index),
                },
            ) if of == id => (value.as_deref(), *index),
            (Op::List { prefix, .. }, Ret::List { members, index })
                if id.starts_with(prefix.as_str()) =>
            {
                (members.get(id).map(String::as_str), *index)
            }
            _ => continue,
        };
        // The writes of the last entry at or below the read's index.
        let upto = known.partition_point(|(i, _)| *i <= index);
        let last = upto.checked_sub(1).map(|n| known[n].0);
        let deciding: Vec<&Write<'_>> = known[..upto]
            .iter()
            .rev()
            .take_while(|(i, _)| Some(*i) == last)
            .map(|(_, w)| w)
            .collect();
        let mut allowed: BTreeSet<Option<&str>> = deciding.iter().map(|w| w.value).collect();
        if deciding.is_empty() {
            allowed.insert(None);
        }
        let blurring: Vec<&Write<'_>> = unknown
            .iter()
            .filter(|(call, lowest, _)| *call < time && lowest.is_none_or(|l| l < index))
            .map(|(_, _, w)| w)
            .collect();
        allowed.extend(blurring.iter().map(|w| w.value));
        if allowed.contains(&read) {
            continue;
        }
        let mut detail = format!(
            "#{event} ({}) read {} at index {index}; ",
            history[event],
            show(read)
        );
        if deciding.is_empty() {
            let _ = write!(
                detail,
                "no acknowledged write to {id:?} is at or below {index}"
            );
        } else {
            let _ = write!(detail, "as of {index} the member was left by");
            for w in &deciding {
                let _ = write!(detail, " #{} ({})", w.event, history[w.event]);
            }
        }
        if !blurring.is_empty() {
            let _ = write!(detail, "; writes of unknown outcome that may lie between:");
            for w in &blurring {
                let _ = write!(detail, " #{}", w.event);
            }
        }
        return Err(Violation::StaleRead {
            event,
            id: id.to_string(),
            index,
            read: read.map(str::to_string),
            allowed: allowed.into_iter().map(|v| v.map(str::to_string)).collect(),
            detail,
        });
    }
    Ok(())
}

fn show(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{v:?}"),
        None => "absent".to_string(),
    }
}
