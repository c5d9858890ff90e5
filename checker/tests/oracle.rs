//! The search against brute force: on small random histories of one
//! member, answers anything (mostly wrong), the checker must agree with an
//! enumeration of every order of every admissible subset of requests.

use fuddle_checker::{Consistency, Event, Op, Outcome, Ret, check_linearizable};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Writes pick any of these; reads only the first two, so that some
/// values are never read (which the search merges).
const VALUES: [&str; 3] = ["x", "y", "z"];

fn pick_value(rng: &mut StdRng) -> Option<String> {
    match rng.gen_range(0..3) {
        0 => None,
        n => Some(VALUES[n - 1].to_string()),
    }
}

fn random_history(rng: &mut StdRng, len: usize, lost_percent: u32) -> Vec<Event> {
    (0..len)
        .map(|_| {
            let call = rng.gen_range(0..20);
            let ret = call + rng.gen_range(0..10);
            let op = match rng.gen_range(0..5) {
                0 | 1 => Op::Register {
                    id: "a".into(),
                    session: "s".into(),
                    value: VALUES[rng.gen_range(0..3)].into(),
                },
                2 => Op::Update {
                    id: "a".into(),
                    value: VALUES[rng.gen_range(0..3)].into(),
                },
                3 => Op::Unregister { id: "a".into() },
                _ => Op::Get {
                    id: "a".into(),
                    consistency: Consistency::Linearizable,
                },
            };
            let index = rng.gen_range(1..5);
            let roll = rng.gen_range(0..100);
            let outcome = match roll {
                _ if roll < lost_percent => Outcome::Unknown,
                _ if roll < lost_percent + 10 => Outcome::Failed,
                _ => Outcome::Ok(match &op {
                    Op::Get { .. } => Ret::Read {
                        value: pick_value(rng),
                        index: rng.gen_bool(0.5).then_some(index),
                    },
                    Op::Register { .. } => Ret::Written { index },
                    _ if rng.gen_bool(0.3) => Ret::NotFound,
                    _ => Ret::Written { index },
                }),
            };
            let ret = match outcome {
                Outcome::Unknown => None,
                _ => Some(ret),
            };
            Event {
                client: 0,
                op,
                call,
                ret,
                outcome,
            }
        })
        .collect()
}

/// The model, written again independently of the crate.
#[derive(Clone, Default)]
struct State {
    value: Option<String>,
    write_floor: u64,
    read_floor: u64,
}

fn apply(state: &State, e: &Event) -> Option<State> {
    let mut s = state.clone();
    let write_at = |s: &mut State, index: u64| {
        if index < s.write_floor || index <= s.read_floor {
            return false;
        }
        s.write_floor = index;
        true
    };
    match (&e.op, &e.outcome) {
        (Op::Register { value, .. }, Outcome::Unknown) => s.value = Some(value.clone()),
        (Op::Update { value, .. }, Outcome::Unknown) => {
            if s.value.is_some() {
                s.value = Some(value.clone());
            }
        }
        (Op::Unregister { .. }, Outcome::Unknown) => s.value = None,
        (_, Outcome::Ok(Ret::NotFound)) => {
            if s.value.is_some() {
                return None;
            }
        }
        (Op::Register { value, .. }, Outcome::Ok(Ret::Written { index })) => {
            if !write_at(&mut s, *index) {
                return None;
            }
            s.value = Some(value.clone());
        }
        (Op::Update { value, .. }, Outcome::Ok(Ret::Written { index })) => {
            if s.value.is_none() || !write_at(&mut s, *index) {
                return None;
            }
            s.value = Some(value.clone());
        }
        (Op::Unregister { .. }, Outcome::Ok(Ret::Written { index })) => {
            if s.value.is_none() || !write_at(&mut s, *index) {
                return None;
            }
            s.value = None;
        }
        (Op::Get { .. }, Outcome::Ok(Ret::Read { value, index })) => {
            if *value != s.value {
                return None;
            }
            if let Some(index) = index {
                if *index < s.write_floor {
                    return None;
                }
                s.read_floor = s.read_floor.max(*index);
            }
        }
        _ => unreachable!(),
    }
    Some(s)
}

/// Whether `a` must precede `b` in real time.
fn before(a: &Event, b: &Event) -> bool {
    a.ret.is_some_and(|r| r < b.call)
}

/// Every order of every set of requests holding all answered ones.
fn brute_force(h: &[Event]) -> bool {
    let ops: Vec<&Event> = h
        .iter()
        .filter(|e| match e.outcome {
            Outcome::Failed => false,
            // An unanswered read does nothing.
            Outcome::Unknown => e.op.is_write(),
            Outcome::Ok(_) => true,
        })
        .collect();
    fn go(ops: &[&Event], used: &mut Vec<bool>, state: &State) -> bool {
        let all_answered = ops
            .iter()
            .zip(used.iter())
            .all(|(e, u)| *u || e.ret.is_none());
        if all_answered {
            return true;
        }
        for i in 0..ops.len() {
            if used[i] {
                continue;
            }
            // Nothing unused may have to come before it.
            if (0..ops.len()).any(|j| !used[j] && j != i && before(ops[j], ops[i])) {
                continue;
            }
            if let Some(next) = apply(state, ops[i]) {
                used[i] = true;
                if go(ops, used, &next) {
                    return true;
                }
                used[i] = false;
            }
        }
        false
    }
    let mut used = vec![false; ops.len()];
    go(&ops, &mut used, &State::default()) && index_order(h)
}

/// The global rule, pair by pair.
fn index_order(h: &[Event]) -> bool {
    let stamp = |e: &Event| match &e.outcome {
        Outcome::Ok(Ret::Written { index }) => Some((*index, true)),
        Outcome::Ok(Ret::Read {
            index: Some(index), ..
        }) => Some((*index, false)),
        _ => None,
    };
    h.iter().all(|a| {
        h.iter().all(|b| match (stamp(a), stamp(b)) {
            (Some((ia, _)), Some((ib, write))) if before(a, b) => {
                if write {
                    ia < ib
                } else {
                    ia <= ib
                }
            }
            _ => true,
        })
    })
}

#[test]
fn the_search_agrees_with_brute_force() {
    let (mut passed, mut failed) = (0, 0);
    for seed in 0..8000 {
        let mut rng = StdRng::seed_from_u64(seed);
        let len = rng.gen_range(1..=8);
        // Half the histories with many lost requests, the hard part.
        let lost = if seed % 2 == 0 { 20 } else { 45 };
        let h = random_history(&mut rng, len, lost);
        let expected = brute_force(&h);
        let got = check_linearizable(&h);
        assert_eq!(got.is_ok(), expected, "seed {seed}: {got:?}\n{h:#?}");
        if expected {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    // Both sides are exercised.
    assert!(
        passed > 1000 && failed > 1000,
        "{passed} passed, {failed} failed"
    );
}
