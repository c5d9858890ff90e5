//! Hand-made histories that must pass and must fail.

use std::collections::BTreeMap;

use fuddle_checker::{
    Consistency, Event, Limits, Op, Outcome, Ret, Violation, check_history, check_linearizable,
    check_linearizable_within, check_stale_reads,
};

fn register(client: u64, id: &str, value: &str, call: u64, ret: u64, index: u64) -> Event {
    Event {
        client,
        op: Op::Register {
            id: id.into(),
            session: format!("s-{id}"),
            value: value.into(),
        },
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(Ret::Written { index }),
    }
}

fn register_lost(client: u64, id: &str, value: &str, call: u64) -> Event {
    Event {
        client,
        op: Op::Register {
            id: id.into(),
            session: format!("s-{id}"),
            value: value.into(),
        },
        call,
        ret: None,
        outcome: Outcome::Unknown,
    }
}

fn update(client: u64, id: &str, value: &str, call: u64, ret: u64, ret_: Ret) -> Event {
    Event {
        client,
        op: Op::Update {
            id: id.into(),
            value: value.into(),
        },
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(ret_),
    }
}

fn unregister(client: u64, id: &str, call: u64, ret: u64, ret_: Ret) -> Event {
    Event {
        client,
        op: Op::Unregister { id: id.into() },
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(ret_),
    }
}

fn read(
    consistency: Consistency,
    client: u64,
    id: &str,
    value: Option<&str>,
    index: Option<u64>,
    call: u64,
    ret: u64,
) -> Event {
    Event {
        client,
        op: Op::Get {
            id: id.into(),
            consistency,
        },
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(Ret::Read {
            value: value.map(str::to_string),
            index,
        }),
    }
}

fn get(
    client: u64,
    id: &str,
    value: Option<&str>,
    index: Option<u64>,
    call: u64,
    ret: u64,
) -> Event {
    read(
        Consistency::Linearizable,
        client,
        id,
        value,
        index,
        call,
        ret,
    )
}

fn stale(client: u64, id: &str, value: Option<&str>, index: u64, call: u64, ret: u64) -> Event {
    read(
        Consistency::Stale,
        client,
        id,
        value,
        Some(index),
        call,
        ret,
    )
}

fn list(client: u64, members: &[(&str, &str)], index: u64, call: u64, ret: u64) -> Event {
    Event {
        client,
        op: Op::List {
            prefix: String::new(),
            consistency: Consistency::Linearizable,
        },
        call,
        ret: Some(ret),
        outcome: Outcome::Ok(Ret::List {
            members: members
                .iter()
                .map(|(id, v)| (id.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            index,
        }),
    }
}

fn written(index: u64) -> Ret {
    Ret::Written { index }
}

#[track_caller]
fn not_linearizable(history: &[Event]) -> (Vec<usize>, String) {
    match check_linearizable(history) {
        Err(Violation::NotLinearizable { culprits, .. }) => {
            let text = check_linearizable(history).unwrap_err().to_string();
            (culprits, text)
        }
        other => panic!("expected NotLinearizable, got {other:?}"),
    }
}

#[test]
fn sequential_history_passes() {
    let h = [
        register(1, "a", "v1", 0, 10, 3),
        get(2, "a", Some("v1"), Some(3), 20, 30),
        update(1, "a", "v2", 40, 50, written(4)),
        get(2, "a", Some("v2"), Some(4), 60, 70),
        unregister(1, "a", 80, 90, written(5)),
        get(2, "a", None, None, 100, 110),
        unregister(1, "a", 120, 130, Ret::NotFound),
        update(1, "a", "v3", 140, 150, Ret::NotFound),
        stale(3, "a", Some("v1"), 3, 160, 170),
        stale(3, "a", None, 2, 160, 170),
        stale(3, "a", None, 9, 180, 190),
    ];
    check_history(&h).unwrap();
}

#[test]
fn concurrent_overlapping_writes_linearize_in_either_order() {
    // Two overlapping registers: a read after both sees whichever got the
    // larger index.
    for (x, y, last) in [(5, 6, "y"), (6, 5, "x")] {
        let h = [
            register(1, "a", "x", 0, 100, x),
            register(2, "a", "y", 10, 90, y),
            get(3, "a", Some(last), Some(6), 110, 120),
        ];
        check_history(&h).unwrap();
    }
    // Without indexes to tell (a read with no index), either value passes.
    for seen in ["x", "y"] {
        let h = [
            register(1, "a", "x", 0, 100, 5),
            register(2, "a", "y", 10, 90, 5),
            get(3, "a", Some(seen), None, 110, 120),
        ];
        check_history(&h).unwrap();
    }
    // A read overlapping both may see nothing, either, or both in turn.
    let h = [
        register(1, "a", "x", 0, 100, 5),
        register(2, "a", "y", 10, 90, 6),
        get(3, "a", None, None, 5, 50),
        get(3, "a", Some("x"), None, 55, 60),
        get(4, "a", Some("y"), None, 55, 95),
    ];
    check_history(&h).unwrap();
}

#[test]
fn overlapping_writes_must_follow_their_indexes() {
    // The write at 6 comes after the one at 5 in the log, so a read after
    // both cannot see the one at 5.
    let h = [
        register(1, "a", "x", 0, 100, 5),
        register(2, "a", "y", 10, 90, 6),
        get(3, "a", Some("x"), None, 110, 120),
    ];
    let (culprits, _) = not_linearizable(&h);
    assert_eq!(culprits, vec![2]);
}

#[test]
fn read_of_a_value_never_written_fails() {
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        get(2, "a", Some("v9"), Some(1), 20, 30),
    ];
    let (culprits, text) = not_linearizable(&h);
    assert_eq!(culprits, vec![1]);
    assert!(text.contains("#1 client 2"), "{text}");
    assert!(check_stale_reads(&h).is_err());
}

#[test]
fn stale_value_in_a_linearizable_get_fails() {
    // The second write was acknowledged before the read started.
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        register(1, "a", "v2", 20, 30, 2),
        get(2, "a", Some("v1"), None, 40, 50),
    ];
    let (culprits, _) = not_linearizable(&h);
    assert_eq!(culprits, vec![2]);

    // Reporting the old index is caught as index order, before the search.
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        register(1, "a", "v2", 20, 30, 2),
        get(2, "a", Some("v1"), Some(1), 40, 50),
    ];
    match check_linearizable(&h) {
        Err(Violation::IndexOrder { earlier, later, .. }) => assert_eq!((earlier, later), (1, 2)),
        other => panic!("expected IndexOrder, got {other:?}"),
    }

    // Reporting the new index with the old value: the stale-read check
    // catches it as well.
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        register(1, "a", "v2", 20, 30, 2),
        get(2, "a", Some("v1"), Some(2), 40, 50),
    ];
    not_linearizable(&h);
    assert!(matches!(
        check_stale_reads(&h),
        Err(Violation::StaleRead {
            event: 2,
            index: 2,
            ..
        })
    ));
}

#[test]
fn unknown_write_that_took_effect_passes() {
    let h = [
        register_lost(1, "a", "v1", 0),
        get(2, "a", Some("v1"), Some(4), 50, 60),
        get(2, "a", Some("v1"), Some(4), 70, 80),
    ];
    check_history(&h).unwrap();
    // ... and once seen it stays: it cannot be un-applied.
    let h = [
        register_lost(1, "a", "v1", 0),
        get(2, "a", Some("v1"), None, 50, 60),
        get(2, "a", None, None, 70, 80),
    ];
    let (culprits, _) = not_linearizable(&h);
    assert_eq!(culprits, vec![2]);
}

#[test]
fn unknown_write_that_never_took_effect_passes() {
    let h = [
        register_lost(1, "a", "v1", 0),
        get(2, "a", None, None, 50, 60),
    ];
    check_history(&h).unwrap();
    // It may also take effect late (a retried request), but not before its
    // call.
    let h = [
        register_lost(1, "a", "v1", 0),
        get(2, "a", None, None, 50, 60),
        get(2, "a", Some("v1"), None, 70, 80),
    ];
    check_history(&h).unwrap();
    let h = [
        get(2, "a", Some("v1"), None, 0, 10),
        register_lost(1, "a", "v1", 20),
    ];
    not_linearizable(&h);
}

#[test]
fn write_indexes_contradicting_real_time_fail() {
    // Different members: index order is global.
    let h = [
        register(1, "a", "x", 0, 10, 5),
        register(2, "b", "y", 20, 30, 4),
    ];
    match check_linearizable(&h) {
        Err(Violation::IndexOrder { earlier, later, .. }) => assert_eq!((earlier, later), (0, 1)),
        other => panic!("expected IndexOrder, got {other:?}"),
    }
    // An equal index is as wrong: the first entry was committed before the
    // second write was sent.
    let h = [
        register(1, "a", "x", 0, 10, 5),
        register(2, "b", "y", 20, 30, 5),
    ];
    assert!(matches!(
        check_linearizable(&h),
        Err(Violation::IndexOrder { .. })
    ));
    // Overlapping writes may share an entry.
    let h = [
        register(1, "a", "x", 0, 10, 5),
        register(2, "b", "y", 5, 30, 5),
    ];
    check_linearizable(&h).unwrap();
}

#[test]
fn not_found_answers_are_observations() {
    // An unregister answering NotFound after an acknowledged register,
    // with nothing in between, is a lost write.
    let h = [
        register(1, "a", "x", 0, 10, 1),
        unregister(2, "a", 20, 30, Ret::NotFound),
    ];
    not_linearizable(&h);
    // An update answering written for an absent member is as wrong.
    let h = [update(1, "a", "x", 0, 10, written(1))];
    not_linearizable(&h);
}

#[test]
fn failed_requests_are_left_out() {
    let h = [
        Event {
            client: 1,
            op: Op::Register {
                id: "a".into(),
                session: "s".into(),
                value: "x".into(),
            },
            call: 0,
            ret: Some(10),
            outcome: Outcome::Failed,
        },
        get(2, "a", None, None, 20, 30),
    ];
    check_history(&h).unwrap();
}

#[test]
fn lists_are_read_member_by_member_at_their_index() {
    let h = [
        register(1, "a", "x", 0, 100, 5),
        register(2, "b", "y", 0, 100, 6),
        list(3, &[("a", "x")], 5, 0, 100),
        list(3, &[("a", "x"), ("b", "y")], 6, 0, 100),
        list(3, &[("a", "x"), ("b", "y")], 7, 110, 120),
    ];
    check_history(&h).unwrap();
    // At index 6 both writes are in: a list there cannot miss the one at 5.
    let h = [
        register(1, "a", "x", 0, 100, 5),
        register(2, "b", "y", 0, 100, 6),
        list(3, &[("b", "y")], 6, 0, 100),
    ];
    // All three answered at 100: together they cannot be explained.
    let (culprits, text) = not_linearizable(&h);
    assert_eq!(culprits, vec![0, 2]);
    assert!(text.contains("member \"a\""), "{text}");
    // A list after both writes must hold both.
    let h = [
        register(1, "a", "x", 0, 10, 5),
        register(2, "b", "y", 0, 10, 6),
        list(3, &[("a", "x")], 6, 20, 30),
    ];
    not_linearizable(&h);
}

#[test]
fn stale_reads_are_checked_against_their_index() {
    let writes = [
        register(1, "a", "v1", 0, 10, 1),
        register(1, "a", "v2", 20, 30, 2),
        unregister(1, "a", 40, 50, written(4)),
    ];
    let with = |r: Event| {
        let mut h = writes.to_vec();
        h.push(r);
        h
    };
    // Old but true to its index: fine, even long after.
    check_stale_reads(&with(stale(2, "a", Some("v1"), 1, 100, 110))).unwrap();
    check_stale_reads(&with(stale(2, "a", Some("v2"), 3, 100, 110))).unwrap();
    check_stale_reads(&with(stale(2, "a", None, 0, 100, 110))).unwrap();
    check_stale_reads(&with(stale(2, "a", None, 4, 100, 110))).unwrap();
    check_linearizable(&with(stale(2, "a", Some("v1"), 1, 100, 110))).unwrap();
    // Older than its index.
    let err = check_stale_reads(&with(stale(2, "a", Some("v1"), 2, 100, 110))).unwrap_err();
    let Violation::StaleRead { event, allowed, .. } = &err else {
        panic!("expected StaleRead, got {err:?}");
    };
    assert_eq!(*event, 3);
    assert_eq!(allowed, &vec![Some("v2".to_string())]);
    assert!(err.to_string().contains("#1"), "{err}");
    // Newer than its index.
    assert!(check_stale_reads(&with(stale(2, "a", Some("v2"), 1, 100, 110))).is_err());
    // Still there after its removal.
    assert!(check_stale_reads(&with(stale(2, "a", Some("v2"), 5, 100, 110))).is_err());
}

#[test]
fn stale_reads_allow_unknown_writes_that_may_lie_below_their_index() {
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        register_lost(1, "a", "v2", 20),
        stale(2, "a", Some("v2"), 3, 30, 40),
        stale(2, "a", Some("v1"), 3, 30, 40),
    ];
    check_stale_reads(&h).unwrap();
    // An unknown write sent after the read returned cannot be what it read.
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        stale(2, "a", Some("v2"), 3, 30, 40),
        register_lost(1, "a", "v2", 50),
    ];
    assert!(check_stale_reads(&h).is_err());
    // Nor one whose index must exceed the read's: a write at 3 was
    // acknowledged before it was sent.
    let h = [
        register(1, "a", "v1", 0, 10, 1),
        register(1, "b", "w", 12, 15, 3),
        register_lost(1, "a", "v2", 20),
        stale(2, "a", Some("v2"), 3, 30, 40),
    ];
    assert!(check_stale_reads(&h).is_err());
}

#[test]
fn malformed_histories_are_refused() {
    let mut bad = get(1, "a", None, None, 10, 20);
    bad.ret = None;
    assert!(matches!(
        check_linearizable(&[bad]),
        Err(Violation::Malformed { event: 0, .. })
    ));
    let mut bad = register(1, "a", "x", 10, 5, 1);
    assert!(matches!(
        check_linearizable(std::slice::from_ref(&bad)),
        Err(Violation::Malformed { .. })
    ));
    bad.ret = Some(20);
    bad.outcome = Outcome::Ok(Ret::NotFound);
    assert!(matches!(
        check_stale_reads(&[bad]),
        Err(Violation::Malformed { .. })
    ));
}

#[test]
fn the_report_names_the_smallest_failing_prefix() {
    // A long, valid history on "a", then one bad read, then more requests.
    let mut h = Vec::new();
    for i in 0..20u64 {
        let t = i * 100;
        h.push(register(1, "a", &format!("v{i}"), t, t + 10, i + 1));
        h.push(get(
            2,
            "a",
            Some(&format!("v{i}")),
            Some(i + 1),
            t + 20,
            t + 30,
        ));
    }
    let bad = h.len();
    h.push(get(3, "a", Some("v3"), None, 2000, 2010));
    for i in 0..5u64 {
        let t = 3000 + i * 100;
        h.push(get(2, "a", Some("v19"), Some(20), t, t + 10));
    }
    let Err(Violation::NotLinearizable {
        id,
        culprits,
        events,
        ..
    }) = check_linearizable(&h)
    else {
        panic!("expected NotLinearizable");
    };
    assert_eq!(id, "a");
    assert_eq!(culprits, vec![bad]);
    assert_eq!(events.last(), Some(&bad));
}

#[test]
fn an_exhausted_search_is_undecided_not_passed() {
    let h = [
        register(1, "a", "x", 0, 100, 5),
        register(2, "a", "y", 10, 90, 6),
        get(3, "a", Some("y"), None, 110, 120),
    ];
    assert!(matches!(
        check_linearizable_within(&h, &Limits { max_steps: 1 }),
        Err(Violation::Undecided { .. })
    ));
}
