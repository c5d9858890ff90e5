//! Randomized histories: generated from the model with random overlap they
//! must pass; with one read's answer changed they must fail.

use std::collections::BTreeMap;

use fuddle_checker::{
    Consistency, Event, Op, Outcome, Ret, Violation, check_history, check_linearizable,
    check_stale_reads,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The shape of a generated history.
#[derive(Clone, Copy)]
struct Shape {
    /// Requests in the history.
    ops: usize,
    /// Member ids they spread over.
    keys: usize,
    /// How far a request's call and return may lie from its linearization
    /// point; points are 1000 apart, so this sets the concurrency.
    spread: u64,
}

/// A sequential run of the model, each request stretched around its
/// linearization point. Acknowledged writes get increasing indexes, reads
/// report the index they saw, stale reads an older one.
fn generate(rng: &mut StdRng, shape: Shape) -> Vec<Event> {
    let mut members: BTreeMap<String, String> = BTreeMap::new();
    // The state after each write, by index, for stale reads.
    let mut states: Vec<(u64, BTreeMap<String, String>)> = vec![(0, BTreeMap::new())];
    let mut index = 0u64;
    let mut history = Vec::new();
    for i in 0..shape.ops {
        let point = shape.spread + 1000 * (i as u64 + 1);
        let call = point - rng.gen_range(0..=shape.spread);
        let ret = point + rng.gen_range(0..=shape.spread);
        let id = format!("k{}", rng.gen_range(0..shape.keys));
        let value = format!("v{i}");
        let roll = rng.gen_range(0..100);
        let (op, outcome) = if roll < 52 {
            let op = match roll {
                0..30 => Op::Register {
                    id: id.clone(),
                    session: format!("s-{id}"),
                    value: value.clone(),
                },
                30..42 => Op::Update {
                    id: id.clone(),
                    value: value.clone(),
                },
                _ => Op::Unregister { id: id.clone() },
            };
            let applies = match op {
                Op::Register { .. } => true,
                _ => members.contains_key(&id),
            };
            let fate = rng.gen_range(0..100);
            // Lost requests: some applied, some not; a few definite failures.
            let (applied, outcome) = match fate {
                0..6 => (applies, Outcome::Unknown),
                6..10 => (false, Outcome::Unknown),
                10..13 => (false, Outcome::Failed),
                _ if applies => (true, Outcome::Ok(Ret::Written { index: index + 1 })),
                _ => (false, Outcome::Ok(Ret::NotFound)),
            };
            if applied {
                index += 1;
                match op {
                    Op::Unregister { .. } => members.remove(&id),
                    _ => members.insert(id.clone(), value),
                };
                states.push((index, members.clone()));
            }
            (op, outcome)
        } else {
            let linearizable = roll < 82;
            let consistency = if linearizable {
                Consistency::Linearizable
            } else {
                Consistency::Stale
            };
            let (at, seen) = if linearizable {
                (index, &members)
            } else {
                let (at, seen) = &states[rng.gen_range(0..states.len())];
                (*at, seen)
            };
            if roll < 92 {
                let value = seen.get(&id).cloned();
                // The server reports no index with NOT_FOUND.
                let index = value.as_ref().map(|_| at);
                (
                    Op::Get { id, consistency },
                    Outcome::Ok(Ret::Read { value, index }),
                )
            } else {
                (
                    Op::List {
                        prefix: "k".into(),
                        consistency,
                    },
                    Outcome::Ok(Ret::List {
                        members: seen.clone(),
                        index: at,
                    }),
                )
            }
        };
        let ret = match outcome {
            Outcome::Unknown => None,
            _ => Some(ret),
        };
        history.push(Event {
            client: rng.gen_range(0..4),
            op,
            call,
            ret,
            outcome,
        });
    }
    history
}

fn is_read(e: &Event, consistency: Consistency) -> bool {
    matches!(&e.op, Op::Get { consistency: c, .. } if *c == consistency)
        && matches!(e.outcome, Outcome::Ok(Ret::Read { .. }))
}

fn set_read(e: &mut Event, value: Option<String>) {
    if let Outcome::Ok(Ret::Read { value: v, .. }) = &mut e.outcome {
        *v = value;
    }
}

const SMALL: Shape = Shape {
    ops: 60,
    keys: 2,
    spread: 2500,
};

#[test]
fn generated_histories_pass() {
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let h = generate(&mut rng, SMALL);
        if let Err(v) = check_history(&h) {
            panic!("seed {seed}: {v}");
        }
    }
}

#[test]
fn a_read_of_a_value_never_written_fails() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = generate(&mut rng, SMALL);
        let reads: Vec<usize> = (0..h.len())
            .filter(|&n| is_read(&h[n], Consistency::Linearizable))
            .collect();
        if reads.is_empty() {
            continue;
        }
        let n = reads[rng.gen_range(0..reads.len())];
        set_read(&mut h[n], Some("bogus".into()));
        mutated += 1;
        match check_linearizable(&h) {
            Err(Violation::NotLinearizable { culprits, .. }) => {
                assert!(
                    culprits.contains(&n),
                    "seed {seed}: {culprits:?} lacks #{n}"
                )
            }
            other => panic!("seed {seed}: expected NotLinearizable, got {other:?}"),
        }
    }
    assert!(mutated > 250);
}

#[test]
fn a_linearizable_read_of_an_overwritten_value_fails() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = generate(&mut rng, SMALL);
        // A read, the newest acknowledged write to its member completed
        // before it started, and an older acknowledged write's value.
        let candidate = (0..h.len()).find_map(|r| {
            if !is_read(&h[r], Consistency::Linearizable) {
                return None;
            }
            let id = h[r].op.id()?;
            let writes: Vec<(u64, Option<&String>)> = h
                .iter()
                .filter(|w| w.op.id() == Some(id))
                .filter_map(|w| match (&w.op, &w.outcome) {
                    (
                        Op::Register { value, .. } | Op::Update { value, .. },
                        Outcome::Ok(Ret::Written { index }),
                    ) => Some((*index, Some(value), w.ret?)),
                    (Op::Unregister { .. }, Outcome::Ok(Ret::Written { index })) => {
                        Some((*index, None, w.ret?))
                    }
                    _ => None,
                })
                .filter(|(_, _, ret)| *ret < h[r].call)
                .map(|(index, value, _)| (index, value))
                .collect();
            let newest = writes.iter().map(|(i, _)| *i).max()?;
            let old = writes
                .iter()
                .find(|(i, v)| *i < newest && v.is_some())?
                .1
                .cloned();
            Some((r, old))
        });
        let Some((r, old)) = candidate else { continue };
        set_read(&mut h[r], old);
        mutated += 1;
        assert!(
            check_linearizable(&h).is_err(),
            "seed {seed}: read #{r} of an overwritten value passed"
        );
    }
    assert!(mutated > 100, "{mutated}");
}

#[test]
fn a_stale_read_off_its_index_fails() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = generate(&mut rng, SMALL);
        let reads: Vec<usize> = (0..h.len())
            .filter(|&n| is_read(&h[n], Consistency::Stale))
            .collect();
        if reads.is_empty() {
            continue;
        }
        let n = reads[rng.gen_range(0..reads.len())];
        // Never written, and reported at an index so that it is checked.
        h[n].outcome = Outcome::Ok(Ret::Read {
            value: Some("bogus".into()),
            index: Some(rng.gen_range(0..50)),
        });
        mutated += 1;
        check_linearizable(&h).unwrap();
        match check_stale_reads(&h) {
            Err(Violation::StaleRead { event, .. }) => assert_eq!(event, n, "seed {seed}"),
            other => panic!("seed {seed}: expected StaleRead, got {other:?}"),
        }
    }
    assert!(mutated > 200, "{mutated}");
}

#[test]
fn a_read_index_behind_a_completed_write_fails() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = generate(&mut rng, SMALL);
        let candidate = (0..h.len()).find_map(|r| {
            if !is_read(&h[r], Consistency::Linearizable) {
                return None;
            }
            let floor = h
                .iter()
                .filter(|w| w.ret.is_some_and(|t| t < h[r].call))
                .filter_map(|w| match w.outcome {
                    Outcome::Ok(Ret::Written { index }) => Some(index),
                    _ => None,
                })
                .max()?;
            Some((r, floor - 1))
        });
        let Some((r, behind)) = candidate else {
            continue;
        };
        if let Outcome::Ok(Ret::Read { index, .. }) = &mut h[r].outcome {
            *index = Some(behind);
        }
        mutated += 1;
        match check_linearizable(&h) {
            Err(Violation::IndexOrder { later, .. }) => assert_eq!(later, r, "seed {seed}"),
            other => panic!("seed {seed}: expected IndexOrder, got {other:?}"),
        }
    }
    assert!(mutated > 200, "{mutated}");
}

#[test]
fn a_long_failing_history_with_lost_writes_is_decided() {
    // A failure at the very end makes the search exhaust everything before
    // it, including every place the lost writes could have gone.
    for seed in 0..3 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut h = generate(
            &mut rng,
            Shape {
                ops: 600,
                keys: 1,
                spread: 4000,
            },
        );
        let last = (0..h.len())
            .rev()
            .find(|&n| is_read(&h[n], Consistency::Linearizable))
            .unwrap();
        set_read(&mut h[last], Some("bogus".into()));
        let start = std::time::Instant::now();
        match check_linearizable(&h) {
            Err(Violation::NotLinearizable { culprits, .. }) => {
                assert!(culprits.contains(&last), "seed {seed}")
            }
            other => panic!("seed {seed}: expected NotLinearizable, got {other:?}"),
        }
        assert!(
            start.elapsed().as_secs() < 5,
            "seed {seed} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn large_histories_stay_fast() {
    // Many members, and one hot member with heavy overlap.
    for (seed, shape) in [
        (
            1,
            Shape {
                ops: 3000,
                keys: 30,
                spread: 3000,
            },
        ),
        (
            2,
            Shape {
                ops: 400,
                keys: 1,
                spread: 4000,
            },
        ),
    ] {
        let mut rng = StdRng::seed_from_u64(seed);
        let h = generate(&mut rng, shape);
        let start = std::time::Instant::now();
        if let Err(v) = check_history(&h) {
            panic!("seed {seed}: {v}");
        }
        assert!(
            start.elapsed().as_secs() < 5,
            "seed {seed} took {:?}",
            start.elapsed()
        );
    }
}
