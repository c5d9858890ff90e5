//! Hand-made subscription streams that must pass and must fail.

use fuddle_checker::{
    Committed, ListView, SubChange, SubEvent, SubMember, SubProblem, Violation, check_subscription,
};

fn member(id: &str, value: &str, mod_index: u64) -> SubMember {
    SubMember {
        id: id.into(),
        value: value.into(),
        mod_index,
    }
}

fn upsert(id: &str, value: &str, index: u64) -> SubChange {
    SubChange::Upsert(member(id, value, index))
}

fn removed(id: &str) -> SubChange {
    SubChange::Removed(id.into())
}

fn changes(index: u64, changes: Vec<SubChange>) -> SubEvent {
    SubEvent::Changes { index, changes }
}

fn snapshot(index: u64, members: Vec<SubMember>) -> SubEvent {
    SubEvent::Snapshot { members, index }
}

fn progress(index: u64) -> SubEvent {
    SubEvent::Progress { index }
}

fn committed(index: u64, id: &str, value: Option<&str>) -> Committed {
    Committed {
        index,
        id: id.into(),
        value: value.map(str::to_string),
    }
}

fn list(index: u64, members: &[(&str, &str)]) -> ListView {
    ListView {
        members: members
            .iter()
            .map(|(id, v)| (id.to_string(), v.to_string()))
            .collect(),
        index,
    }
}

/// Writes at 2 (a), 4 (b), 5 (a and b in one entry), 7 (a removed).
fn reference() -> Vec<Committed> {
    vec![
        committed(2, "a", Some("a1")),
        committed(4, "b", Some("b1")),
        committed(5, "a", Some("a2")),
        committed(5, "b", Some("b2")),
        committed(7, "a", None),
    ]
}

fn good_stream() -> Vec<SubEvent> {
    vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        progress(3),
        changes(4, vec![upsert("b", "b1", 4)]),
        changes(5, vec![upsert("a", "a2", 5), upsert("b", "b2", 5)]),
        progress(6),
        changes(7, vec![removed("a")]),
        progress(9),
    ]
}

#[track_caller]
fn problem(stream: &[SubEvent], reference: &[Committed], final_list: &ListView) -> SubProblem {
    match check_subscription(stream, reference, final_list) {
        Err(Violation::Subscription { problem, .. }) => problem,
        other => panic!("expected a subscription violation, got {other:?}"),
    }
}

#[test]
fn a_good_stream_passes() {
    let stream = good_stream();
    check_subscription(&stream, &reference(), &list(8, &[("b", "b2")])).unwrap();
    // The view as of an earlier index is compared at that index.
    check_subscription(&stream, &reference(), &list(5, &[("a", "a2"), ("b", "b2")])).unwrap();
    check_subscription(&stream, &reference(), &list(3, &[("a", "a1")])).unwrap();
}

#[test]
fn extra_entries_are_allowed() {
    // A session going down, or a write of unknown outcome, changes members
    // the reference does not know of.
    let mut stream = good_stream();
    stream[2] = changes(3, vec![upsert("a", "a1", 3)]);
    check_subscription(&stream, &reference(), &list(9, &[("b", "b2")])).unwrap();
}

#[test]
fn a_resync_snapshot_passes() {
    // The subscriber fell behind and got a fresh snapshot at 6.
    let stream = vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        snapshot(6, vec![member("a", "a2", 5), member("b", "b2", 5)]),
        changes(7, vec![removed("a")]),
        progress(9),
    ];
    check_subscription(&stream, &reference(), &list(9, &[("b", "b2")])).unwrap();
}

#[test]
fn a_resumed_stream_continues_exactly_after_its_last_index() {
    // Reconnected after 5 and resumed: 7 arrives, nothing repeats.
    let stream = vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        changes(4, vec![upsert("b", "b1", 4)]),
        changes(5, vec![upsert("a", "a2", 5), upsert("b", "b2", 5)]),
        // -- reconnect with since_index 5 --
        changes(7, vec![removed("a")]),
        progress(8),
    ];
    check_subscription(&stream, &reference(), &list(8, &[("b", "b2")])).unwrap();
}

#[test]
fn a_gap_fails() {
    let mut stream = good_stream();
    // Entry 4 never arrives.
    stream.remove(3);
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2")]));
    assert!(
        matches!(
            p,
            SubProblem::Gap {
                missing: 4,
                from: 3,
                to: 4,
                ..
            }
        ),
        "{p:?}"
    );
    // A resumed stream that skips what came after its last index.
    let stream = vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        changes(4, vec![upsert("b", "b1", 4)]),
        // -- reconnect with since_index 4, entry 5 lost --
        changes(7, vec![removed("a")]),
    ];
    let p = problem(&stream, &reference(), &list(7, &[("b", "b2")]));
    assert!(matches!(p, SubProblem::Gap { missing: 5, .. }), "{p:?}");
    // Progress past an entry that never arrived is a gap too.
    let stream = vec![snapshot(1, vec![]), progress(3)];
    let p = problem(&stream, &reference(), &list(3, &[]));
    assert!(matches!(p, SubProblem::Gap { missing: 2, .. }), "{p:?}");
}

#[test]
fn a_duplicate_fails() {
    let mut stream = good_stream();
    stream.insert(4, changes(4, vec![upsert("b", "b1", 4)]));
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2")]));
    assert_eq!(p, SubProblem::Duplicate { index: 4 });
    // A resumed stream that repeats its last entry.
    let stream = vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        // -- reconnect with since_index 2 --
        changes(2, vec![upsert("a", "a1", 2)]),
    ];
    let p = problem(&stream, &reference(), &list(2, &[("a", "a1")]));
    assert_eq!(p, SubProblem::Duplicate { index: 2 });
}

#[test]
fn out_of_order_fails() {
    let stream = vec![
        snapshot(1, vec![]),
        changes(4, vec![upsert("b", "b1", 4)]),
        changes(2, vec![upsert("a", "a1", 2)]),
    ];
    // Unordered changes also skip entry 2 on the way to 4; with no
    // reference the order itself is what fails.
    let p = problem(&stream, &[], &list(4, &[]));
    assert_eq!(p, SubProblem::OutOfOrder { index: 2, after: 4 });
    // A snapshot older than what the stream already covered.
    let mut stream = good_stream();
    stream.push(snapshot(5, vec![member("b", "b2", 5)]));
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2")]));
    assert_eq!(p, SubProblem::OutOfOrder { index: 5, after: 9 });
    // Progress going backwards.
    let mut stream = good_stream();
    stream.push(progress(8));
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2")]));
    assert_eq!(p, SubProblem::OutOfOrder { index: 8, after: 9 });
}

#[test]
fn a_split_entry_fails() {
    // Entry 5 changed a and b; they arrive as two messages.
    let mut stream = good_stream();
    stream.splice(
        4..5,
        [
            changes(5, vec![upsert("a", "a2", 5)]),
            changes(5, vec![upsert("b", "b2", 5)]),
        ],
    );
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2")]));
    assert_eq!(
        p,
        SubProblem::NotAtomic {
            index: 5,
            id: "b".into()
        }
    );
    // Without a reference for the entry, the second message gives it away.
    let p = problem(&stream, &reference()[..2], &list(9, &[("b", "b2")]));
    assert_eq!(p, SubProblem::SplitEntry { index: 5 });
}

#[test]
fn wrong_or_inconsistent_changes_fail() {
    let stream = vec![snapshot(1, vec![]), changes(2, vec![upsert("a", "zz", 2)])];
    let p = problem(&stream, &reference(), &list(2, &[("a", "zz")]));
    assert!(
        matches!(p, SubProblem::WrongChange { index: 2, .. }),
        "{p:?}"
    );

    let stream = vec![snapshot(1, vec![]), changes(3, vec![removed("q")])];
    let p = problem(&stream, &[], &list(3, &[]));
    assert!(
        matches!(p, SubProblem::RemovedAbsent { index: 3, .. }),
        "{p:?}"
    );

    let stream = vec![snapshot(1, vec![]), changes(3, vec![upsert("q", "x", 2)])];
    let p = problem(&stream, &[], &list(3, &[("q", "x")]));
    assert!(
        matches!(p, SubProblem::BadModIndex { mod_index: 2, .. }),
        "{p:?}"
    );

    let stream = vec![snapshot(1, vec![member("q", "x", 1), member("q", "y", 1)])];
    let p = problem(&stream, &[], &list(1, &[("q", "x")]));
    assert!(matches!(p, SubProblem::RepeatedMember { .. }), "{p:?}");

    let stream = vec![changes(2, vec![upsert("a", "a1", 2)])];
    let p = problem(&stream, &reference(), &list(2, &[("a", "a1")]));
    assert_eq!(p, SubProblem::NoSnapshot { index: 2 });
}

#[test]
fn the_final_view_must_equal_the_list() {
    let stream = good_stream();
    let p = problem(&stream, &reference(), &list(9, &[("b", "b2"), ("a", "a2")]));
    let SubProblem::FinalView { index: 9, detail } = p else {
        panic!("expected FinalView, got {p:?}");
    };
    assert!(detail.contains("a: view absent"), "{detail}");

    let p = problem(&stream, &reference(), &list(12, &[("b", "b2")]));
    assert_eq!(
        p,
        SubProblem::NotCaughtUp {
            index: 12,
            reached: Some(9)
        }
    );

    // A resync snapshot jumped over the list's index.
    let stream = vec![
        snapshot(1, vec![]),
        changes(2, vec![upsert("a", "a1", 2)]),
        snapshot(6, vec![member("a", "a2", 5), member("b", "b2", 5)]),
    ];
    let p = problem(&stream, &reference(), &list(4, &[("a", "a1"), ("b", "b1")]));
    assert_eq!(
        p,
        SubProblem::FinalViewUnknown {
            index: 4,
            snapshot: 6
        }
    );
}
