//! The linearizability check: index order across the whole history, then a
//! Wing–Gong search with Lowe's and Porcupine's memoization, member by
//! member.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use crate::history::{Consistency, Event, Op, Outcome, Ret};
use crate::project::{IndexFloor, by_member, indexed, validate};
use crate::violation::Violation;

/// Bounds on the work of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Search steps allowed per member before the check reports
    /// [`Violation::Undecided`]. Linearizability checking is NP-complete;
    /// the bound keeps a pathological history from stalling CI.
    pub max_steps: u64,
}

impl Default for Limits {
    fn default() -> Self {
        // A second or two of search per member, at worst, in a debug build.
        Self {
            max_steps: 10_000_000,
        }
    }
}

/// Checks that the writes and linearizable reads of `history` are
/// linearizable, and that their indexes respect real time. See the crate
/// docs for the model.
pub fn check_linearizable(history: &[Event]) -> Result<(), Violation> {
    check_linearizable_within(history, &Limits::default())
}

/// [`check_linearizable`] with explicit bounds.
pub fn check_linearizable_within(history: &[Event], limits: &Limits) -> Result<(), Violation> {
    validate(history)?;
    check_index_order(history)?;
    for (id, events) in by_member(history) {
        check_member(history, id, &events, limits)?;
    }
    Ok(())
}

/// A write must get a larger index than anything acknowledged before it
/// started (that entry was committed before the write was even sent), and a
/// linearizable read must report at least that index. Cheap, global, and
/// independent of any member: it catches an acknowledged write lost and
/// re-made by a new leader, or a read served by a deposed one.
fn check_index_order(history: &[Event]) -> Result<(), Violation> {
    let all = indexed(history);
    let floor = IndexFloor::new(&all);
    let mut by_call: Vec<_> = all.iter().collect();
    by_call.sort_by_key(|i| (i.call, i.event));
    for later in by_call {
        let Some((index, earlier)) = floor.before(later.call) else {
            continue;
        };
        let broken = if later.write {
            later.index <= index
        } else {
            later.index < index
        };
        if broken {
            let need = if later.write {
                "a write must get a larger index than"
            } else {
                "a linearizable read must report at least the index of"
            };
            return Err(Violation::IndexOrder {
                earlier,
                later: later.event,
                detail: format!(
                    "#{earlier} ({}) completed before #{} ({}) started: {need} anything acknowledged before it started",
                    history[earlier], later.event, history[later.event],
                ),
            });
        }
    }
    Ok(())
}

/// What a member's operation requires of the member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// Nothing (a register, or an operation whose answer is unknown).
    Any,
    /// The member exists (an acknowledged update or unregister).
    Present,
    /// The member is absent (a `NotFound` answer).
    Absent,
    /// The member has exactly this value (a read).
    Is(Option<u32>),
}

/// How a member's operation changes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Effect {
    /// Not at all.
    Keep,
    /// To this value.
    Set(u32),
    /// To this value if the member exists (an update of unknown outcome).
    SetIfPresent(u32),
    /// Removes the member.
    Remove,
}

/// The index an operation reported, and what it implies for its place
/// among the member's other operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// None reported.
    None,
    /// A write applied at this index.
    Write(u64),
    /// A read that reflects every write up to this index, and no later one.
    Read(u64),
}

/// One operation as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    /// What it requires.
    guard: Guard,
    /// What it does.
    effect: Effect,
    /// The index it reported.
    stamp: Stamp,
}

/// The model's state of one member. Values are interned strings, so that
/// states are cheap to hash for the memo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
struct State {
    /// The member's value, `None` if absent.
    value: Option<u32>,
    /// The largest index of a write linearized so far: a later read must
    /// report at least it, a later write at least it (writes of one log
    /// entry share an index).
    write_floor: u64,
    /// The largest index a linearized read reported: a later write must be
    /// above it, since that read did not see the write.
    read_floor: u64,
}

impl State {
    fn step(self, step: &Step) -> Option<State> {
        let ok = match step.guard {
            Guard::Any => true,
            Guard::Present => self.value.is_some(),
            Guard::Absent => self.value.is_none(),
            Guard::Is(value) => self.value == value,
        };
        if !ok {
            return None;
        }
        let mut next = self;
        match step.stamp {
            Stamp::None => {}
            Stamp::Write(index) => {
                if index < self.write_floor || index <= self.read_floor {
                    return None;
                }
                next.write_floor = index;
            }
            Stamp::Read(index) => {
                if index < self.write_floor {
                    return None;
                }
                next.read_floor = self.read_floor.max(index);
            }
        }
        match step.effect {
            Effect::Keep => {}
            Effect::Set(v) => next.value = Some(v),
            Effect::SetIfPresent(v) => {
                if next.value.is_some() {
                    next.value = Some(v);
                }
            }
            Effect::Remove => next.value = None,
        }
        Some(next)
    }
}

/// One request as it bears on one member.
#[derive(Debug, Clone)]
struct MemberOp {
    /// Its position in the history.
    event: usize,
    /// When it was sent.
    call: u64,
    /// When it was answered, and what the answer requires; `None` if it
    /// never was.
    answered: Option<(u64, Step)>,
    /// What it may have done if its answer is unknown (or cut off by a
    /// prefix); `None` if it then does nothing visible (a read).
    unanswered: Option<Step>,
}

/// The member's requests, with values interned.
fn member_ops(history: &[Event], id: &str, events: &[usize]) -> Vec<MemberOp> {
    let touches = |e: &Event| match &e.op {
        Op::List {
            prefix,
            consistency: Consistency::Linearizable,
        } => id.starts_with(prefix.as_str()),
        Op::List { .. }
        | Op::Get {
            consistency: Consistency::Stale,
            ..
        } => false,
        op => op.id() == Some(id),
    };
    // Values no read returned are all alike to the model (present, and
    // equal to no value any read expects), so they share one id: states
    // that differ only in which unread value the member holds merge in the
    // memo. Exact, and it collapses the search around writes nobody read.
    let mut read: HashSet<&str> = HashSet::new();
    for e in events.iter().map(|&n| &history[n]).filter(|e| touches(e)) {
        match &e.outcome {
            Outcome::Ok(Ret::Read {
                value: Some(value), ..
            }) => {
                read.insert(value);
            }
            Outcome::Ok(Ret::List { members, .. }) => {
                read.extend(members.get(id).map(String::as_str))
            }
            _ => {}
        }
    }
    const UNREAD: u32 = 0;
    let mut values: HashMap<&str, u32> = HashMap::new();
    let mut intern = |v: &str| -> u32 {
        match read.get(v) {
            None => UNREAD,
            Some(v) => {
                let next = values.len() as u32 + 1;
                *values.entry(v).or_insert(next)
            }
        }
    };
    let mut ops = Vec::new();
    for &event in events {
        let e = &history[event];
        if !touches(e) {
            continue;
        }
        let unanswered = match &e.op {
            Op::Register { value, .. } => Some(Step {
                guard: Guard::Any,
                effect: Effect::Set(intern(value)),
                stamp: Stamp::None,
            }),
            Op::Update { value, .. } => Some(Step {
                guard: Guard::Any,
                effect: Effect::SetIfPresent(intern(value)),
                stamp: Stamp::None,
            }),
            Op::Unregister { .. } => Some(Step {
                guard: Guard::Any,
                effect: Effect::Remove,
                stamp: Stamp::None,
            }),
            Op::Get { .. } | Op::List { .. } => None,
        };
        let answered = match (&e.outcome, e.ret) {
            (Outcome::Failed, _) => continue,
            (Outcome::Unknown, _) => None,
            (Outcome::Ok(ret), Some(time)) => {
                let step = match (&e.op, ret) {
                    (Op::Register { value, .. }, Ret::Written { index }) => Step {
                        guard: Guard::Any,
                        effect: Effect::Set(intern(value)),
                        stamp: Stamp::Write(*index),
                    },
                    (Op::Update { value, .. }, Ret::Written { index }) => Step {
                        guard: Guard::Present,
                        effect: Effect::Set(intern(value)),
                        stamp: Stamp::Write(*index),
                    },
                    (Op::Unregister { .. }, Ret::Written { index }) => Step {
                        guard: Guard::Present,
                        effect: Effect::Remove,
                        stamp: Stamp::Write(*index),
                    },
                    (_, Ret::NotFound) => Step {
                        guard: Guard::Absent,
                        effect: Effect::Keep,
                        stamp: Stamp::None,
                    },
                    (_, Ret::Read { value, index }) => Step {
                        guard: Guard::Is(value.as_deref().map(&mut intern)),
                        effect: Effect::Keep,
                        stamp: index.map_or(Stamp::None, Stamp::Read),
                    },
                    (_, Ret::List { members, index }) => Step {
                        guard: Guard::Is(members.get(id).map(|v| intern(v))),
                        effect: Effect::Keep,
                        stamp: Stamp::Read(*index),
                    },
                    // validate() refused every other pairing.
                    _ => continue,
                };
                Some((time, step))
            }
            // validate() refused an answer without a return time.
            (Outcome::Ok(_), None) => continue,
        };
        if answered.is_none() && unanswered.is_none() {
            continue;
        }
        ops.push(MemberOp {
            event,
            call: e.call,
            answered,
            unanswered,
        });
    }
    ops
}

/// An operation as the search sees it.
#[derive(Debug, Clone, Copy)]
struct Instance {
    /// When it was sent.
    call: u64,
    /// When it was answered; `None`: it may be linearized at any point
    /// after its call, or never.
    ret: Option<u64>,
    /// What it requires and does.
    step: Step,
}

/// The member's operations as of time `cut`: operations sent later are left
/// out, and answers that came later are unknown. `None`: the whole history.
fn instances(ops: &[MemberOp], cut: Option<u64>) -> Vec<Instance> {
    let cut = cut.unwrap_or(u64::MAX);
    ops.iter()
        .filter(|op| op.call <= cut)
        .filter_map(|op| match op.answered {
            Some((ret, step)) if ret <= cut => Some(Instance {
                call: op.call,
                ret: Some(ret),
                step,
            }),
            _ => op.unanswered.map(|step| Instance {
                call: op.call,
                ret: None,
                step,
            }),
        })
        .collect()
}

/// How a search ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    /// A linearization exists.
    Found,
    /// None exists.
    Impossible,
    /// The step bound ran out after this many steps.
    GaveUp(u64),
}

/// No entry.
const NIL: usize = usize::MAX;

/// Wing & Gong's search over the call/return entries, with Lowe's
/// memoization of explored configurations as Porcupine does it, which
/// turns the factorial search into one bounded by the reachable
/// configurations.
///
/// Prunings on top, each exact (none turns a linearizable history into a
/// failing one):
///
/// - Answered writes go in index order, and a read at index `r` after every
///   write at or below `r`: taking one out of turn leaves a write that can
///   never be linearized, so it is skipped at once rather than found out at
///   that write's return.
/// - A read that can be linearized now is linearized now and never tried
///   later: moving it earlier in any linearization keeps that valid (it
///   changes no value, what it must follow is done, the writes after it
///   have larger indexes). Without this, many concurrent reads of one value
///   make every subset of them a distinct configuration.
/// - Unanswered operations (lost requests) are the hard part: they never
///   return, so each may be linearized anywhere after its call, or never.
///   Those with the same effect are interchangeable, so they are used in
///   call order and a configuration counts the uses of each such class
///   instead of naming them (with unread values merged, see
///   [`member_ops`], lost writes fall into a few classes). One is never
///   tried where it would change nothing, and between two answered
///   operations only the runs of [`Run`] are.
/// - Answered operations are tried before unanswered ones, and a
///   configuration is pruned when one that failed had the same answered
///   operations and state but used no more of any class: an unused lost
///   request can still be used later, or never, so the failed one could do
///   everything this one can. Trying answered operations first makes the
///   frugal configurations come first.
fn search(instances: &[Instance], max_steps: u64) -> Search {
    let n = instances.len();
    // The answered operations' entries, 2i (call) and 2i+1 (return), sorted
    // by time. A call sorts before a return at the same time, so that
    // touching intervals count as concurrent: two requests are ordered only
    // when one returned strictly before the other was sent.
    let mut order: Vec<usize> = (0..2 * n)
        .filter(|e| instances[e / 2].ret.is_some())
        .collect();
    order.sort_by_key(|&e| {
        let inst = &instances[e / 2];
        if e % 2 == 0 {
            (inst.call, 0)
        } else {
            (inst.ret.unwrap_or(u64::MAX), 1)
        }
    });
    // A doubly linked list over `order` positions, with a head sentinel at
    // its end, so that lifting an operation out and back is O(1).
    let head = order.len();
    let mut next = vec![NIL; head + 1];
    let mut prev = vec![NIL; head + 1];
    let mut position = vec![0; 2 * n];
    let mut last = head;
    for (pos, &e) in order.iter().enumerate() {
        position[e] = pos;
        next[last] = pos;
        prev[pos] = last;
        last = pos;
    }
    // The unanswered operations by class (their effect), each class in
    // call order.
    let mut unanswered: Vec<usize> = (0..n).filter(|&i| instances[i].ret.is_none()).collect();
    unanswered.sort_by_key(|&i| (instances[i].call, i));
    let mut class_index: HashMap<Effect, usize> = HashMap::new();
    let mut classes: Vec<Vec<usize>> = Vec::new();
    for i in unanswered {
        let fresh = classes.len();
        let c = *class_index.entry(instances[i].step.effect).or_insert(fresh);
        if c == fresh {
            classes.push(Vec::new());
        }
        classes[c].push(i);
    }

    // Answered operations not linearized yet: the search ends when none is
    // left (unanswered ones may be left out: taken to happen after
    // everything, which nothing observes).
    let mut remaining = order.len() / 2;
    // Indexes of the writes not linearized yet, with their multiplicity.
    let mut pending_writes: BTreeMap<u64, usize> = BTreeMap::new();
    for inst in instances {
        if let Stamp::Write(index) = inst.step.stamp {
            *pending_writes.entry(index).or_default() += 1;
        }
    }
    // The configuration: the answered operations linearized, the uses per
    // class of unanswered ones, the state, and the current run.
    let mut answered = vec![0u64; n.div_ceil(64)];
    let mut used = vec![0usize; classes.len()];
    let mut state = State::default();
    let mut run = Run::None;
    let mut failed = Failed::default();
    let mut stack: Vec<Choice> = Vec::new();
    let mut cursor = Cursor::Answered(next[head]);
    let mut steps = 0u64;

    while remaining > 0 {
        steps += 1;
        if steps > max_steps {
            return Search::GaveUp(steps);
        }
        let dead_end = match cursor {
            Cursor::Answered(cur) => {
                // An answered operation's return is still in the list, so
                // the walk meets a return before it runs off the end.
                debug_assert_ne!(cur, NIL);
                let e = order[cur];
                let i = e / 2;
                let inst = &instances[i];
                if e % 2 == 1 {
                    // Every candidate lies before the first return: the
                    // answered ones are tried, now the unanswered ones sent
                    // before it.
                    cursor = Cursor::Unanswered {
                        class: 0,
                        limit: inst.ret.unwrap_or(u64::MAX),
                    };
                    continue;
                }
                cursor = Cursor::Answered(next[cur]);
                let lowest = pending_writes.first_key_value().map(|(&w, _)| w);
                let in_turn = match inst.step.stamp {
                    Stamp::None => true,
                    Stamp::Write(index) => lowest == Some(index),
                    Stamp::Read(index) => lowest.is_none_or(|w| w > index),
                };
                let Some(after) = state.step(&inst.step).filter(|_| in_turn) else {
                    continue;
                };
                let forced = inst.step.effect == Effect::Keep;
                answered[i / 64] ^= 1 << (i % 64);
                if failed.subsumes(&answered, after, &used) {
                    answered[i / 64] ^= 1 << (i % 64);
                    // A forced read leads only where this configuration
                    // leads, and that failed.
                    forced
                } else {
                    stack.push(Choice {
                        at: Cursor::Answered(cur),
                        state,
                        run,
                        forced,
                    });
                    state = after;
                    run = Run::None;
                    lift(&mut next, &mut prev, cur, position[e + 1]);
                    remaining -= 1;
                    if let Stamp::Write(index) = inst.step.stamp {
                        take(&mut pending_writes, index);
                    }
                    cursor = Cursor::Answered(next[head]);
                    continue;
                }
            }
            Cursor::Unanswered { class, limit } => match classes.get(class) {
                // Every candidate was tried.
                None => true,
                Some(ops) => {
                    cursor = Cursor::Unanswered {
                        class: class + 1,
                        limit,
                    };
                    // Only the class's next one, if it was sent in time.
                    let Some(inst) = ops.get(used[class]).map(|&i| &instances[i]) else {
                        continue;
                    };
                    if inst.call > limit || !run.allows(inst.step.effect) {
                        continue;
                    }
                    let Some(after) = state.step(&inst.step).filter(|after| *after != state) else {
                        continue;
                    };
                    used[class] += 1;
                    if failed.subsumes(&answered, after, &used) {
                        used[class] -= 1;
                        continue;
                    }
                    stack.push(Choice {
                        at: Cursor::Unanswered { class, limit },
                        state,
                        run,
                        forced: false,
                    });
                    state = after;
                    run = run.then(inst.step.effect);
                    cursor = Cursor::Answered(next[head]);
                    continue;
                }
            },
        };
        if !dead_end {
            continue;
        }
        // The current configuration failed: record it, undo choices up to
        // the last free one and try the next candidate after it.
        loop {
            let Some(choice) = stack.pop() else {
                return Search::Impossible;
            };
            failed.record(&answered, state, &used);
            state = choice.state;
            run = choice.run;
            match choice.at {
                Cursor::Answered(pos) => {
                    let e = order[pos];
                    let i = e / 2;
                    answered[i / 64] ^= 1 << (i % 64);
                    unlift(&mut next, &mut prev, pos, position[e + 1]);
                    remaining += 1;
                    if let Stamp::Write(index) = instances[i].step.stamp {
                        *pending_writes.entry(index).or_default() += 1;
                    }
                    cursor = Cursor::Answered(next[pos]);
                }
                Cursor::Unanswered { class, limit } => {
                    used[class] -= 1;
                    cursor = Cursor::Unanswered {
                        class: class + 1,
                        limit,
                    };
                }
            }
            if !choice.forced {
                break;
            }
        }
    }
    Search::Found
}

/// Where the search's walk is among a configuration's candidates.
#[derive(Debug, Clone, Copy)]
enum Cursor {
    /// At this position of the list of answered entries.
    Answered(usize),
    /// At this class of unanswered operations; those sent after `limit`
    /// (the first pending return) are not candidates yet.
    Unanswered {
        /// The class.
        class: usize,
        /// The time of the first pending return.
        limit: u64,
    },
}

/// A choice the search made, to undo it.
#[derive(Debug, Clone, Copy)]
struct Choice {
    /// The candidate taken.
    at: Cursor,
    /// The state before it.
    state: State,
    /// The run before it.
    run: Run,
    /// Whether it was a read linearized as early as possible, which needs
    /// no alternative.
    forced: bool,
}

/// The unanswered operations linearized since the last answered one.
///
/// Between two answered operations only the state the unanswered ones
/// leave matters (nobody observes them), and every state they can leave is
/// left by at most two of those used: the last `Remove`, the last `Set`, or
/// the last `SetIfPresent` after the last `Set`. Dropping the others keeps a
/// linearization valid (they may never have happened) and keeps them for
/// later; so only runs of those shapes are tried, which also keeps the
/// search from cycling through states by spending lost writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    /// None yet: any may come.
    None,
    /// One `Set`: a `SetIfPresent` may follow.
    Set,
    /// Nothing more may follow.
    Full,
}

impl Run {
    fn allows(self, effect: Effect) -> bool {
        match self {
            Run::None => true,
            Run::Set => matches!(effect, Effect::SetIfPresent(_)),
            Run::Full => false,
        }
    }

    fn then(self, effect: Effect) -> Run {
        match (self, effect) {
            (Run::None, Effect::Set(_)) => Run::Set,
            _ => Run::Full,
        }
    }
}

/// The configurations whose exploration failed. Recorded when the search
/// leaves them, never while it is still inside: a configuration pruned
/// against one still being explored could be the only way out of it.
#[derive(Default)]
struct Failed {
    /// By answered set, then state: the uses per class that failed, none
    /// of them using at most as many of every class as another.
    seen: HashMap<Vec<u64>, HashMap<State, Vec<Vec<usize>>>>,
}

impl Failed {
    /// Whether a failed configuration does at least all this one can.
    fn subsumes(&self, answered: &[u64], state: State, used: &[usize]) -> bool {
        self.seen
            .get(answered)
            .and_then(|by_state| by_state.get(&state))
            .is_some_and(|uses| uses.iter().any(|u| at_most(u, used)))
    }

    fn record(&mut self, answered: &[u64], state: State, used: &[usize]) {
        let uses = self
            .seen
            .entry(answered.to_vec())
            .or_default()
            .entry(state)
            .or_default();
        if uses.iter().any(|u| at_most(u, used)) {
            return;
        }
        uses.retain(|u| !at_most(used, u));
        uses.push(used.to_vec());
    }
}

/// Whether `a` uses at most as many of every class as `b`.
fn at_most(a: &[usize], b: &[usize]) -> bool {
    a.iter().zip(b).all(|(x, y)| x <= y)
}

/// Takes the call entry at `pos` and its return at `ret_pos` out of the
/// list; their own links stay, for [`unlift`].
fn lift(next: &mut [usize], prev: &mut [usize], pos: usize, ret_pos: usize) {
    for p in [pos, ret_pos] {
        next[prev[p]] = next[p];
        if next[p] != NIL {
            prev[next[p]] = prev[p];
        }
    }
}

/// Puts back what [`lift`] took out, in the reverse order, as dancing
/// links require.
fn unlift(next: &mut [usize], prev: &mut [usize], pos: usize, ret_pos: usize) {
    for p in [ret_pos, pos] {
        next[prev[p]] = p;
        if next[p] != NIL {
            prev[next[p]] = p;
        }
    }
}

/// Removes one write at `index` from the pending ones.
fn take(pending: &mut BTreeMap<u64, usize>, index: u64) {
    if let Some(count) = pending.get_mut(&index) {
        *count -= 1;
        if *count == 0 {
            pending.remove(&index);
        }
    }
}

/// Checks one member's operations, and on failure finds the smallest
/// prefix of them that fails.
fn check_member(
    history: &[Event],
    id: &str,
    events: &[usize],
    limits: &Limits,
) -> Result<(), Violation> {
    let ops = member_ops(history, id, events);
    match search(&instances(&ops, None), limits.max_steps) {
        Search::Found => return Ok(()),
        Search::GaveUp(steps) => {
            return Err(Violation::Undecided {
                id: id.to_string(),
                steps,
            });
        }
        Search::Impossible => {}
    }
    // Linearizability is prefix-closed, so "the prefix up to time t fails"
    // is monotone in t and a binary search over return times finds the
    // first answer that cannot be explained.
    let times: Vec<u64> = ops
        .iter()
        .filter_map(|op| op.answered.map(|(t, _)| t))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (mut lo, mut hi) = (0, times.len().saturating_sub(1));
    while lo < hi {
        let mid = (lo + hi) / 2;
        match search(&instances(&ops, Some(times[mid])), limits.max_steps) {
            Search::Found => lo = mid + 1,
            // A prefix too hard to decide is reported as failing: the
            // report is then less precise, never wrong about the history.
            Search::Impossible | Search::GaveUp(_) => hi = mid,
        }
    }
    let cut = times.get(lo).copied().unwrap_or(u64::MAX);
    let mut prefix: Vec<&MemberOp> = ops.iter().filter(|op| op.call <= cut).collect();
    prefix.sort_by_key(|op| (op.call, op.event));
    let culprits: Vec<usize> = prefix
        .iter()
        .filter(|op| op.answered.is_some_and(|(t, _)| t == cut))
        .map(|op| op.event)
        .collect();
    Err(Violation::NotLinearizable {
        id: id.to_string(),
        detail: render(history, &prefix, &culprits),
        culprits,
        events: prefix.iter().map(|op| op.event).collect(),
    })
}

/// How many requests a report lists; the latest ones, nearest the culprit.
const REPORT_LINES: usize = 40;

fn render(history: &[Event], prefix: &[&MemberOp], culprits: &[usize]) -> String {
    let mut out = String::new();
    let skip = prefix.len().saturating_sub(REPORT_LINES);
    // A long request can be a culprit though it started early: keep it.
    let shown: Vec<&&MemberOp> = prefix
        .iter()
        .enumerate()
        .filter(|(n, op)| *n >= skip || culprits.contains(&op.event))
        .map(|(_, op)| op)
        .collect();
    if prefix.len() > shown.len() {
        let _ = writeln!(
            out,
            "  ... {} earlier requests on this member",
            prefix.len() - shown.len()
        );
    }
    for op in shown {
        let mark = if culprits.contains(&op.event) {
            "  <- unexplainable"
        } else {
            ""
        };
        let _ = writeln!(out, "  #{} {}{mark}", op.event, history[op.event]);
    }
    out.truncate(out.trim_end().len());
    out
}
