//! Unit tests of the pure apply function, [`RegistryState::apply`]: no I/O.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::command::{ApplyError, Command, CommandResult, Origin, Outcome, Request};
use crate::member::{Member, MemberSpec, MemberStatus};
use crate::session::SessionStatus;
use crate::state::{ApplyOutput, MAX_KEPT_ANSWERS, RegistryState};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const NOW: u64 = 1_700_000_000_000;

fn request(commands: Vec<Command>) -> Request {
    Request {
        now_ms: NOW,
        commands: commands.into(),
    }
}

fn open(client_id: &str) -> Command {
    Command::OpenSession {
        client_id: client_id.into(),
        heartbeat_timeout_ms: 30_000,
        reconnect_timeout_ms: 600_000,
    }
}

/// An origin without retry protection (seq 0).
fn by(client_id: &str) -> Origin {
    Origin {
        client_id: client_id.into(),
        seq: 0,
        ack_below: 0,
    }
}

/// An origin with retry protection.
fn by_seq(client_id: &str, seq: u64, ack_below: u64) -> Origin {
    Origin {
        client_id: client_id.into(),
        seq,
        ack_below,
    }
}

/// An administrative origin: no session.
fn admin() -> Origin {
    Origin::default()
}

fn spec(id: &str) -> MemberSpec {
    MemberSpec {
        id: id.into(),
        service: "web".into(),
        locality: "aws.us-east-1.us-east-1b".into(),
        revision: "abc123".into(),
        created_ms: 42,
        metadata: crate::Metadata::from([("a".into(), "1".into()), ("b".into(), "2".into())]),
    }
}

fn register(origin: Origin, id: &str) -> Command {
    Command::Register {
        origin,
        spec: spec(id),
    }
}

fn update(origin: Origin, id: &str, set: &[(&str, &str)], remove: &[&str]) -> Command {
    Command::UpdateMetadata {
        origin,
        id: id.into(),
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        remove: remove.iter().map(|k| k.to_string()).collect(),
    }
}

fn unregister(origin: Origin, id: &str) -> Command {
    Command::Unregister {
        origin,
        id: id.into(),
    }
}

fn close(client_id: &str) -> Command {
    Command::CloseSession {
        client_id: client_id.into(),
    }
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn down(list: &[&str]) -> Command {
    Command::SessionsDown {
        client_ids: ids(list),
    }
}

fn up(list: &[&str]) -> Command {
    Command::SessionsUp {
        client_ids: ids(list),
    }
}

fn expired(list: &[&str]) -> Command {
    Command::SessionsExpired {
        client_ids: ids(list),
    }
}

/// Applies one command as a whole entry and returns its single result and
/// the entry's output.
fn apply1(state: &mut RegistryState, index: u64, command: Command) -> (CommandResult, ApplyOutput) {
    let out = state.apply(index, &request(vec![command]));
    assert_eq!(out.results.len(), 1);
    (out.results[0].clone(), out)
}

/// Applies one command and expects it to succeed.
fn ok(state: &mut RegistryState, index: u64, command: Command) -> (Outcome, ApplyOutput) {
    let (result, out) = apply1(state, index, command);
    (result.expect("command should succeed"), out)
}

fn member_of(outcome: Outcome) -> Member {
    match outcome {
        Outcome::Member(m) => Arc::unwrap_or_clone(m),
        other => panic!("expected a member, got {other:?}"),
    }
}

fn set_of(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A state with session `s1` (index 1) owning `m1` (index 2) and `m2`
/// (index 3), and session `s2` (index 4) owning `n1` (index 5).
fn populated() -> RegistryState {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    ok(&mut state, 2, register(by("s1"), "m1"));
    ok(&mut state, 3, register(by("s1"), "m2"));
    ok(&mut state, 4, open("s2"));
    ok(&mut state, 5, register(by("s2"), "n1"));
    state
}

/// Asserts that a refused command changed nothing at all.
fn assert_refused(state: &mut RegistryState, index: u64, command: Command, expected: ApplyError) {
    let before = state.clone();
    let (result, out) = apply1(state, index, command);
    assert_eq!(result, Err(expected));
    assert_eq!(
        *state, before,
        "a refused command must not change the state"
    );
    assert!(out.changes.is_empty(), "{:?}", out.changes);
}

// ---------------------------------------------------------------------------
// OpenSession
// ---------------------------------------------------------------------------

#[test]
fn open_session_creates_an_up_session() {
    let mut state = RegistryState::default();
    let (outcome, out) = ok(&mut state, 7, open("s1"));
    assert_eq!(
        outcome,
        Outcome::Session {
            client_id: "s1".into(),
            resumed: false,
            heartbeat_timeout_ms: 30_000,
            reconnect_timeout_ms: 600_000,
        }
    );
    let session = &state.sessions["s1"];
    assert_eq!(session.client_id.as_ref(), "s1");
    assert_eq!(session.status, SessionStatus::Up);
    assert_eq!(session.create_index, 7);
    assert_eq!(session.heartbeat_timeout_ms, 30_000);
    assert_eq!(session.reconnect_timeout_ms, 600_000);
    assert!(session.members.is_empty());
    assert!(session.answers.is_empty());
    assert!(out.changes.is_empty());
}

#[test]
fn open_session_again_resumes_and_takes_new_timeouts() {
    let mut state = populated();
    let (outcome, out) = ok(
        &mut state,
        6,
        Command::OpenSession {
            client_id: "s1".into(),
            heartbeat_timeout_ms: 5_000,
            reconnect_timeout_ms: 60_000,
        },
    );
    assert_eq!(
        outcome,
        Outcome::Session {
            client_id: "s1".into(),
            resumed: true,
            heartbeat_timeout_ms: 5_000,
            reconnect_timeout_ms: 60_000,
        }
    );
    let session = &state.sessions["s1"];
    assert_eq!(
        session.create_index, 1,
        "resuming keeps the session's create index"
    );
    assert_eq!(session.heartbeat_timeout_ms, 5_000);
    assert_eq!(session.reconnect_timeout_ms, 60_000);
    assert_eq!(session.members, set_of(&["m1", "m2"]));
    // An up session resumed: its members do not change.
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert_eq!(state.members["m1"].mod_index, 2);
}

#[test]
fn resuming_a_down_session_brings_it_and_its_members_up() {
    let mut state = populated();
    ok(&mut state, 6, down(&["s1"]));
    assert!(!state.sessions["s1"].is_up());
    assert_eq!(state.members["m1"].status, MemberStatus::Down);

    let (outcome, out) = ok(&mut state, 7, open("s1"));
    assert!(matches!(outcome, Outcome::Session { resumed: true, .. }));
    assert_eq!(state.sessions["s1"].status, SessionStatus::Up);
    for id in ["m1", "m2"] {
        let m = &state.members[id];
        assert_eq!(m.status, MemberStatus::Up, "{id}");
        assert_eq!(m.mod_index, 7, "{id}");
    }
    // The other session's member is untouched.
    assert_eq!(state.members["n1"].mod_index, 5);
    let changed: Vec<&str> = out.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(changed, ["m1", "m2"]);
    for change in &out.changes {
        assert_eq!(change.before.as_ref().unwrap().status, MemberStatus::Down);
        assert_eq!(change.before.as_ref().unwrap().mod_index, 6);
        assert_eq!(change.after.as_ref().unwrap().status, MemberStatus::Up);
        assert_eq!(change.after.as_ref().unwrap().mod_index, 7);
    }
}

// ---------------------------------------------------------------------------
// Register
// ---------------------------------------------------------------------------

#[test]
fn register_creates_a_member_owned_by_the_session() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    let (outcome, out) = ok(&mut state, 2, register(by("s1"), "m1"));
    let expected = Member {
        spec: spec("m1"),
        status: MemberStatus::Up,
        client_id: "s1".into(),
        create_index: 2,
        mod_index: 2,
    };
    assert_eq!(member_of(outcome), expected);
    assert_eq!(*state.members["m1"], expected);
    assert_eq!(state.sessions["s1"].members, set_of(&["m1"]));
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].id, "m1");
    assert_eq!(out.changes[0].before, None);
    assert_eq!(out.changes[0].after, Some(Arc::new(expected)));
}

#[test]
fn register_again_by_the_same_session_replaces_and_keeps_create_index() {
    let mut state = populated();
    let old = state.members["m1"].clone();
    let mut new_spec = spec("m1");
    new_spec.revision = "def456".into();
    new_spec.metadata = crate::Metadata::from([("z".into(), "9".into())]);
    let (outcome, out) = ok(
        &mut state,
        6,
        Command::Register {
            origin: by("s1"),
            spec: new_spec.clone(),
        },
    );
    let m = member_of(outcome);
    assert_eq!(m.spec, new_spec, "the spec is replaced whole");
    assert_eq!(m.create_index, 2);
    assert_eq!(m.mod_index, 6);
    assert_eq!(m.client_id.as_ref(), "s1");
    assert_eq!(*state.members["m1"], m);
    assert_eq!(state.sessions["s1"].members, set_of(&["m1", "m2"]));
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].before, Some(old));
    assert_eq!(out.changes[0].after, Some(Arc::new(m)));
}

#[test]
fn a_registered_member_shares_its_sessions_id_rather_than_copying_it() {
    let mut state = populated();
    let (outcome, _) = ok(&mut state, 6, register(by("s1"), "m9"));
    let m = member_of(outcome);
    assert!(Arc::ptr_eq(&m.client_id, &state.sessions["s1"].client_id));
}

#[test]
fn register_of_a_member_owned_by_another_session_is_refused() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        register(by("s2"), "m1"),
        ApplyError::OwnedByOther {
            id: "m1".into(),
            owner: "s1".into(),
        },
    );
    // A down owner still owns its members until its session expires.
    ok(&mut state, 6, down(&["s1"]));
    assert_refused(
        &mut state,
        7,
        register(by("s2"), "m1"),
        ApplyError::OwnedByOther {
            id: "m1".into(),
            owner: "s1".into(),
        },
    );
}

#[test]
fn register_takes_over_a_member_whose_owner_session_is_gone() {
    // Expiry normally removes a session's members with it; if a member is
    // left behind anyway it is taken over as new.
    let mut state = populated();
    state.sessions.remove("s1");
    let (outcome, out) = ok(&mut state, 6, register(by("s2"), "m1"));
    let m = member_of(outcome);
    assert_eq!(m.client_id.as_ref(), "s2");
    assert_eq!(m.create_index, 6, "taken over as a new member");
    assert_eq!(m.mod_index, 6);
    assert!(state.sessions["s2"].members.contains("m1"));
    assert_eq!(
        out.changes[0].before.as_ref().unwrap().client_id.as_ref(),
        "s1"
    );
}

#[test]
fn a_member_left_by_an_earlier_session_of_the_same_id_joins_the_new_ones_index() {
    // A member outlives its session (which expiry normally prevents), and
    // a new session opens with the same id: registering the member again
    // must put it in the new session's index, so that closing the session
    // removes it, as a node that rebuilt the index on a restart would.
    let mut state = populated();
    state.sessions.remove("s1");
    ok(&mut state, 6, open("s1"));
    assert!(state.sessions["s1"].members.is_empty());
    let (outcome, _) = ok(&mut state, 7, register(by("s1"), "m1"));
    assert_eq!(
        member_of(outcome).create_index,
        2,
        "the same owner's member"
    );
    assert!(state.sessions["s1"].members.contains("m1"));
    ok(&mut state, 8, close("s1"));
    assert!(!state.members.contains_key("m1"));
}

#[test]
fn register_without_a_session_is_refused() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        register(admin(), "x"),
        ApplyError::Invalid("a member must be registered by a session".into()),
    );
    assert_refused(
        &mut state,
        6,
        register(by("nobody"), "x"),
        ApplyError::SessionNotFound("nobody".into()),
    );
    assert_refused(
        &mut state,
        6,
        register(by_seq("nobody", 1, 1), "x"),
        ApplyError::SessionNotFound("nobody".into()),
    );
    // An admin origin carrying a seq is still not a session.
    assert_refused(
        &mut state,
        6,
        register(
            Origin {
                client_id: String::new(),
                seq: 3,
                ack_below: 1,
            },
            "x",
        ),
        ApplyError::Invalid("a member must be registered by a session".into()),
    );
}

#[test]
fn member_status_follows_the_session_status_at_register() {
    let mut state = populated();
    ok(&mut state, 6, down(&["s2"]));
    let (outcome, _) = ok(&mut state, 7, register(by("s2"), "n2"));
    assert_eq!(member_of(outcome).status, MemberStatus::Down);
    // Replacing a member of a down session keeps it down.
    let (outcome, _) = ok(&mut state, 8, register(by("s2"), "n1"));
    assert_eq!(member_of(outcome).status, MemberStatus::Down);
    // And once the session is back, both come up.
    ok(&mut state, 9, up(&["s2"]));
    assert_eq!(state.members["n1"].status, MemberStatus::Up);
    assert_eq!(state.members["n2"].status, MemberStatus::Up);
    let (outcome, _) = ok(&mut state, 10, register(by("s2"), "n3"));
    assert_eq!(member_of(outcome).status, MemberStatus::Up);
}

// ---------------------------------------------------------------------------
// UpdateMetadata
// ---------------------------------------------------------------------------

#[test]
fn update_metadata_sets_and_removes_keys() {
    let mut state = populated();
    let before = state.members["m1"].clone();
    let (outcome, out) = ok(
        &mut state,
        6,
        update(by("s1"), "m1", &[("b", "3"), ("c", "4")], &["a", "missing"]),
    );
    let m = member_of(outcome);
    assert_eq!(
        m.spec.metadata,
        crate::Metadata::from([("b".into(), "3".into()), ("c".into(), "4".into())])
    );
    assert_eq!(m.create_index, 2);
    assert_eq!(m.mod_index, 6);
    // Nothing but the metadata and mod_index changes.
    let mut expected = Member::clone(&before);
    expected.spec.metadata = m.spec.metadata.clone();
    expected.mod_index = 6;
    assert_eq!(m, expected);
    assert_eq!(*state.members["m1"], m);
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].before, Some(before));
    assert_eq!(out.changes[0].after, Some(Arc::new(m)));
}

#[test]
fn update_metadata_removes_after_setting() {
    let mut state = populated();
    let (outcome, _) = ok(&mut state, 6, update(by("s1"), "m1", &[("x", "1")], &["x"]));
    assert!(!member_of(outcome).spec.metadata.contains_key("x"));
}

#[test]
fn update_metadata_of_a_missing_member_is_refused() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        update(by("s1"), "nope", &[("a", "1")], &[]),
        ApplyError::MemberNotFound("nope".into()),
    );
    assert_refused(
        &mut state,
        6,
        update(admin(), "nope", &[("a", "1")], &[]),
        ApplyError::MemberNotFound("nope".into()),
    );
}

#[test]
fn update_metadata_of_another_sessions_member_is_refused() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        update(by("s2"), "m1", &[("a", "x")], &[]),
        ApplyError::OwnedByOther {
            id: "m1".into(),
            owner: "s1".into(),
        },
    );
    // A writer whose session does not exist is told so.
    assert_refused(
        &mut state,
        6,
        update(by("ghost"), "m1", &[("a", "x")], &[]),
        ApplyError::SessionNotFound("ghost".into()),
    );
    assert_refused(
        &mut state,
        6,
        update(by_seq("ghost", 1, 1), "m1", &[("a", "x")], &[]),
        ApplyError::SessionNotFound("ghost".into()),
    );
}

#[test]
fn update_metadata_by_an_admin_is_allowed() {
    let mut state = populated();
    let (outcome, out) = ok(&mut state, 6, update(admin(), "m1", &[("k", "v")], &["a"]));
    let m = member_of(outcome);
    assert_eq!(
        m.client_id.as_ref(),
        "s1",
        "an admin write does not change the owner"
    );
    assert_eq!(m.spec.metadata.get("k").map(String::as_str), Some("v"));
    assert!(!m.spec.metadata.contains_key("a"));
    assert_eq!(m.mod_index, 6);
    assert_eq!(out.changes.len(), 1);
}

// ---------------------------------------------------------------------------
// Unregister
// ---------------------------------------------------------------------------

#[test]
fn unregister_removes_the_member_and_its_session_entry() {
    let mut state = populated();
    let before = state.members["m1"].clone();
    let (outcome, out) = ok(&mut state, 6, unregister(by("s1"), "m1"));
    assert_eq!(outcome, Outcome::Removed { index: 6 });
    assert!(!state.members.contains_key("m1"));
    assert_eq!(state.sessions["s1"].members, set_of(&["m2"]));
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].id, "m1");
    assert_eq!(out.changes[0].before, Some(before));
    assert_eq!(out.changes[0].after, None);
}

#[test]
fn unregister_of_a_missing_member_is_refused() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        unregister(by("s1"), "nope"),
        ApplyError::MemberNotFound("nope".into()),
    );
}

#[test]
fn unregister_of_another_sessions_member_is_refused_but_an_admin_may() {
    let mut state = populated();
    assert_refused(
        &mut state,
        6,
        unregister(by("s2"), "m1"),
        ApplyError::OwnedByOther {
            id: "m1".into(),
            owner: "s1".into(),
        },
    );
    let (outcome, _) = ok(&mut state, 6, unregister(admin(), "m1"));
    assert_eq!(outcome, Outcome::Removed { index: 6 });
    assert!(!state.members.contains_key("m1"));
    assert_eq!(state.sessions["s1"].members, set_of(&["m2"]));
}

// ---------------------------------------------------------------------------
// CloseSession
// ---------------------------------------------------------------------------

#[test]
fn close_session_removes_it_and_its_members() {
    let mut state = populated();
    let m1 = state.members["m1"].clone();
    let m2 = state.members["m2"].clone();
    let (outcome, out) = ok(&mut state, 6, close("s1"));
    assert_eq!(outcome, Outcome::Done);
    assert!(!state.sessions.contains_key("s1"));
    assert!(!state.members.contains_key("m1"));
    assert!(!state.members.contains_key("m2"));
    // The other session is untouched.
    assert!(state.sessions.contains_key("s2"));
    assert_eq!(state.members["n1"].mod_index, 5);
    assert_eq!(out.changes.len(), 2);
    assert_eq!(out.changes[0].id, "m1");
    assert_eq!(out.changes[0].before, Some(m1));
    assert_eq!(out.changes[0].after, None);
    assert_eq!(out.changes[1].id, "m2");
    assert_eq!(out.changes[1].before, Some(m2));
    assert_eq!(out.changes[1].after, None);
}

#[test]
fn closing_a_missing_session_is_done() {
    let mut state = populated();
    let before = state.clone();
    let (outcome, out) = ok(&mut state, 6, close("nobody"));
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(state, before);
    assert!(out.changes.is_empty());
    // Closing twice (a retry) is also fine.
    ok(&mut state, 7, close("s1"));
    let (outcome, out) = ok(&mut state, 8, close("s1"));
    assert_eq!(outcome, Outcome::Done);
    assert!(out.changes.is_empty());
}

// ---------------------------------------------------------------------------
// SessionsDown / SessionsUp / SessionsExpired
// ---------------------------------------------------------------------------

#[test]
fn sessions_down_marks_their_members_down() {
    let mut state = populated();
    let out = state.apply(
        6,
        &Request {
            now_ms: 1234,
            commands: vec![down(&["s1", "unknown"])].into(),
        },
    );
    assert_eq!(out.results, vec![Ok(Outcome::Done)]);
    assert_eq!(
        state.sessions["s1"].status,
        SessionStatus::Down { since_ms: 1234 },
        "the leader's stamped time is recorded"
    );
    for id in ["m1", "m2"] {
        assert_eq!(state.members[id].status, MemberStatus::Down);
        assert_eq!(state.members[id].mod_index, 6);
        assert_eq!(
            state.members[id].create_index,
            if id == "m1" { 2 } else { 3 }
        );
    }
    assert_eq!(state.members["n1"].status, MemberStatus::Up);
    assert_eq!(state.members["n1"].mod_index, 5);
    assert!(state.sessions["s2"].is_up());
    let changed: Vec<&str> = out.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(changed, ["m1", "m2"]);
    for change in &out.changes {
        assert_eq!(change.before.as_ref().unwrap().status, MemberStatus::Up);
        assert_eq!(change.after.as_ref().unwrap().status, MemberStatus::Down);
    }
}

#[test]
fn sessions_down_on_a_down_session_changes_nothing() {
    let mut state = populated();
    state.apply(
        6,
        &Request {
            now_ms: 1000,
            commands: vec![down(&["s1"])].into(),
        },
    );
    let before = state.clone();
    let out = state.apply(
        7,
        &Request {
            now_ms: 2000,
            commands: vec![down(&["s1"])].into(),
        },
    );
    assert_eq!(out.results, vec![Ok(Outcome::Done)]);
    assert_eq!(state, before, "since_ms and mod_index stay as they were");
    assert!(out.changes.is_empty());
}

#[test]
fn sessions_up_brings_members_back() {
    let mut state = populated();
    ok(&mut state, 6, down(&["s1", "s2"]));
    let (outcome, out) = ok(&mut state, 7, up(&["s1", "unknown"]));
    assert_eq!(outcome, Outcome::Done);
    assert!(state.sessions["s1"].is_up());
    assert!(!state.sessions["s2"].is_up());
    for id in ["m1", "m2"] {
        assert_eq!(state.members[id].status, MemberStatus::Up);
        assert_eq!(state.members[id].mod_index, 7);
    }
    assert_eq!(state.members["n1"].status, MemberStatus::Down);
    assert_eq!(state.members["n1"].mod_index, 6);
    assert_eq!(out.changes.len(), 2);

    // Up on an up session changes nothing.
    let before = state.clone();
    let (_, out) = ok(&mut state, 8, up(&["s1"]));
    assert_eq!(state, before);
    assert!(out.changes.is_empty());
}

#[test]
fn sessions_expired_removes_only_sessions_still_down() {
    let mut state = populated();
    ok(&mut state, 6, down(&["s1"]));
    let n1 = state.members["n1"].clone();
    let (outcome, out) = ok(&mut state, 7, expired(&["s1", "s2", "unknown"]));
    assert_eq!(outcome, Outcome::Done);
    assert!(!state.sessions.contains_key("s1"));
    assert!(!state.members.contains_key("m1"));
    assert!(!state.members.contains_key("m2"));
    // s2 is up: a heartbeat came between the proposal and this entry.
    assert!(state.sessions["s2"].is_up());
    assert_eq!(state.members["n1"], n1);
    let changed: Vec<&str> = out.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(changed, ["m1", "m2"]);
    assert!(out.changes.iter().all(|c| c.after.is_none()));
    assert_eq!(
        out.changes[0].before.as_ref().unwrap().status,
        MemberStatus::Down
    );
}

// ---------------------------------------------------------------------------
// Retries: (client_id, seq)
// ---------------------------------------------------------------------------

#[test]
fn a_retried_register_is_applied_once() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    let cmd = register(by_seq("s1", 1, 1), "m1");
    let (first, out1) = apply1(&mut state, 2, cmd.clone());
    assert!(first.is_ok());
    assert_eq!(out1.changes.len(), 1);
    assert_eq!(state.sessions["s1"].answers.get(&1), Some(&first));
    let after_first = state.clone();

    let (second, out2) = apply1(&mut state, 3, cmd);
    assert_eq!(second, first, "a retry gets the identical answer");
    assert_eq!(state, after_first, "a retry changes nothing");
    assert_eq!(state.members["m1"].create_index, 2);
    assert_eq!(state.members["m1"].mod_index, 2);
    assert!(out2.changes.is_empty());
}

#[test]
fn a_retried_refusal_gets_the_same_refusal() {
    let mut state = populated();
    let cmd = register(by_seq("s2", 1, 1), "m1");
    let (first, _) = apply1(&mut state, 6, cmd.clone());
    let refusal = Err(ApplyError::OwnedByOther {
        id: "m1".into(),
        owner: "s1".into(),
    });
    assert_eq!(first, refusal);
    // The owner leaves; the retry is still answered as before, not applied.
    ok(&mut state, 7, close("s1"));
    let (second, out) = apply1(&mut state, 8, cmd);
    assert_eq!(second, refusal);
    assert!(!state.members.contains_key("m1"));
    assert!(out.changes.is_empty());
}

#[test]
fn retries_of_update_and_unregister_are_applied_once() {
    let mut state = populated();
    let upd = update(by_seq("s1", 1, 1), "m1", &[("k", "v")], &[]);
    let (first, _) = apply1(&mut state, 6, upd.clone());
    let (again, out) = apply1(&mut state, 7, upd);
    assert_eq!(first, again);
    assert_eq!(state.members["m1"].mod_index, 6);
    assert!(out.changes.is_empty());

    let unreg = unregister(by_seq("s1", 2, 1), "m1");
    let (first, _) = apply1(&mut state, 8, unreg.clone());
    assert_eq!(first, Ok(Outcome::Removed { index: 8 }));
    // Without retry protection the second attempt would be MemberNotFound.
    // The replayed answer names the entry that removed the member, not
    // the retry's.
    let (again, out) = apply1(&mut state, 9, unreg);
    assert_eq!(again, Ok(Outcome::Removed { index: 8 }));
    assert!(out.changes.is_empty());
}

#[test]
fn a_new_seq_is_applied_again() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    ok(&mut state, 2, register(by_seq("s1", 1, 1), "m1"));
    let (outcome, out) = ok(&mut state, 3, register(by_seq("s1", 2, 1), "m1"));
    let m = member_of(outcome);
    assert_eq!(m.create_index, 2);
    assert_eq!(m.mod_index, 3);
    assert_eq!(out.changes.len(), 1);
    let kept: Vec<u64> = state.sessions["s1"].answers.keys().copied().collect();
    assert_eq!(kept, [1, 2]);
}

#[test]
fn seq_zero_disables_retry_protection() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    ok(&mut state, 2, register(by("s1"), "m1"));
    let (outcome, _) = ok(&mut state, 3, register(by("s1"), "m1"));
    assert_eq!(member_of(outcome).mod_index, 3, "applied again");
    assert!(state.sessions["s1"].answers.is_empty());
}

#[test]
fn ack_below_drops_kept_answers() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    ok(&mut state, 2, register(by_seq("s1", 1, 1), "m1"));
    ok(&mut state, 3, register(by_seq("s1", 2, 1), "m2"));
    ok(&mut state, 4, register(by_seq("s1", 3, 1), "m3"));
    let kept: Vec<u64> = state.sessions["s1"].answers.keys().copied().collect();
    assert_eq!(kept, [1, 2, 3]);

    ok(
        &mut state,
        5,
        update(by_seq("s1", 4, 3), "m1", &[("k", "v")], &[]),
    );
    let kept: Vec<u64> = state.sessions["s1"].answers.keys().copied().collect();
    assert_eq!(kept, [3, 4]);

    // A retry of a kept answer that also acknowledges more drops them too.
    let (result, out) = apply1(
        &mut state,
        6,
        update(by_seq("s1", 4, 4), "m1", &[("k", "v")], &[]),
    );
    assert!(result.is_ok());
    assert!(out.changes.is_empty(), "a retry applies nothing");
    let kept: Vec<u64> = state.sessions["s1"].answers.keys().copied().collect();
    assert_eq!(kept, [4]);
}

#[test]
fn a_retry_below_ack_below_that_is_not_kept_is_stale() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    ok(&mut state, 2, register(by_seq("s1", 1, 1), "m1"));
    ok(&mut state, 3, register(by_seq("s1", 2, 2), "m2"));
    assert!(!state.sessions["s1"].answers.contains_key(&1));
    let before = state.clone();
    let (result, out) = apply1(&mut state, 4, register(by_seq("s1", 1, 2), "m1"));
    assert_eq!(
        result,
        Err(ApplyError::StaleRetry {
            client_id: "s1".into(),
            seq: 1,
        })
    );
    assert_eq!(state, before);
    assert!(out.changes.is_empty());
}

#[test]
fn kept_answers_are_bounded() {
    let mut state = populated();
    let n = MAX_KEPT_ANSWERS as u64 + 10;
    for seq in 1..=n {
        // A client that never acknowledges anything.
        ok(
            &mut state,
            5 + seq,
            update(
                by_seq("s1", seq, 0),
                "m1",
                &[("seq", &seq.to_string())],
                &[],
            ),
        );
    }
    let answers = &state.sessions["s1"].answers;
    assert_eq!(answers.len(), MAX_KEPT_ANSWERS);
    assert_eq!(answers.keys().next(), Some(&11), "the oldest are dropped");
    assert_eq!(answers.keys().next_back(), Some(&n));
}

/// Regression: the Raft thesis (§6.3) rejects any request whose seq the
/// client has already acknowledged. The check once compared the seq with
/// the `ack_below` carried by the same request; a delayed duplicate carries
/// the old `ack_below` of its first attempt, so once a later write had
/// acknowledged it, the duplicate was applied a second time. Sessions now
/// keep a floor (`acked_below`) that only grows.
#[test]
fn a_delayed_duplicate_of_an_acknowledged_write_is_not_applied_again() {
    let mut state = RegistryState::default();
    ok(&mut state, 1, open("s1"));
    // seq 1: register m1. The client sees the answer (e.g. through a
    // retry via another node) while the first attempt is still in flight.
    let first_attempt = register(by_seq("s1", 1, 1), "m1");
    ok(&mut state, 2, first_attempt.clone());
    // seq 2 acknowledges seq 1 and removes the member.
    ok(&mut state, 3, unregister(by_seq("s1", 2, 2), "m1"));
    assert!(!state.sessions["s1"].answers.contains_key(&1));
    // The delayed first attempt of seq 1 arrives now.
    let (result, out) = apply1(&mut state, 4, first_attempt);
    assert_eq!(
        result,
        Err(ApplyError::StaleRetry {
            client_id: "s1".into(),
            seq: 1,
        })
    );
    assert!(
        !state.members.contains_key("m1"),
        "a member the client unregistered came back"
    );
    assert!(out.changes.is_empty());
}

#[test]
fn a_retry_of_a_write_whose_session_closed_is_session_not_found() {
    let mut state = populated();
    let cmd = update(by_seq("s1", 1, 1), "m1", &[("k", "v")], &[]);
    ok(&mut state, 6, cmd.clone());
    ok(&mut state, 7, close("s1"));
    let (result, _) = apply1(&mut state, 8, cmd);
    assert_eq!(result, Err(ApplyError::SessionNotFound("s1".into())));
}

// ---------------------------------------------------------------------------
// ApplyOutput: results and changes
// ---------------------------------------------------------------------------

#[test]
fn results_come_one_per_command_in_order() {
    let mut state = RegistryState::default();
    let out = state.apply(
        1,
        &request(vec![
            open("s1"),
            register(by("s1"), "m1"),
            unregister(by("s1"), "nope"),
            update(by("s1"), "m1", &[("k", "v")], &[]),
            close("gone"),
        ]),
    );
    assert_eq!(out.results.len(), 5);
    assert!(matches!(
        out.results[0],
        Ok(Outcome::Session { resumed: false, .. })
    ));
    assert!(matches!(&out.results[1], Ok(Outcome::Member(m)) if m.spec.metadata.len() == 2));
    assert_eq!(
        out.results[2],
        Err(ApplyError::MemberNotFound("nope".into()))
    );
    assert!(matches!(&out.results[3], Ok(Outcome::Member(m)) if m.spec.metadata.len() == 3));
    assert_eq!(out.results[4], Ok(Outcome::Done));
    // Everything in one entry carries the entry's index.
    assert_eq!(state.sessions["s1"].create_index, 1);
    assert_eq!(state.members["m1"].create_index, 1);
    assert_eq!(state.members["m1"].mod_index, 1);
}

#[test]
fn a_member_changed_twice_in_one_entry_appears_once() {
    let mut state = populated();
    let m1 = state.members["m1"].clone();
    let out = state.apply(
        6,
        &request(vec![
            update(by("s1"), "m1", &[("x", "1")], &[]),
            register(by("s1"), "new"),
            update(by("s1"), "m1", &[("y", "2")], &[]),
            update(by("s1"), "new", &[("z", "3")], &[]),
        ]),
    );
    assert!(out.results.iter().all(Result::is_ok));
    let changed: Vec<&str> = out.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(changed, ["m1", "new"], "in the order they first changed");
    assert_eq!(out.changes[0].before, Some(m1), "the first before");
    assert_eq!(
        out.changes[0].after.as_ref(),
        state.members.get("m1"),
        "the last after"
    );
    let after = out.changes[0].after.as_ref().unwrap();
    assert!(after.spec.metadata.contains_key("x") && after.spec.metadata.contains_key("y"));
    assert_eq!(out.changes[1].before, None);
    assert_eq!(out.changes[1].after.as_ref(), state.members.get("new"));
    assert!(
        out.changes[1]
            .after
            .as_ref()
            .unwrap()
            .spec
            .metadata
            .contains_key("z")
    );
}

#[test]
fn a_member_created_and_removed_in_one_entry_is_no_change() {
    let mut state = populated();
    let out = state.apply(
        6,
        &request(vec![
            register(by("s1"), "tmp"),
            unregister(by("s1"), "tmp"),
            open("s3"),
            register(by("s3"), "tmp3"),
            close("s3"),
        ]),
    );
    assert!(out.results.iter().all(Result::is_ok), "{:?}", out.results);
    assert!(out.changes.is_empty(), "{:?}", out.changes);
    assert!(!state.members.contains_key("tmp"));
    assert!(!state.members.contains_key("tmp3"));
    assert!(!state.sessions.contains_key("s3"));
    assert_eq!(state.sessions["s1"].members, set_of(&["m1", "m2"]));
}

#[test]
fn a_member_removed_and_recreated_in_one_entry_is_one_change() {
    let mut state = populated();
    let old = state.members["m1"].clone();
    let out = state.apply(
        6,
        &request(vec![unregister(by("s1"), "m1"), register(by("s1"), "m1")]),
    );
    assert_eq!(out.changes.len(), 1);
    assert_eq!(out.changes[0].before, Some(old));
    let new = out.changes[0].after.as_ref().unwrap();
    assert_eq!(new.create_index, 6, "recreated, not replaced");
    assert_eq!(state.sessions["s1"].members, set_of(&["m1", "m2"]));
}

#[test]
fn several_commands_in_one_entry_change_what_each_would_alone() {
    let mut state = populated();
    let s1_before = state.sessions["s1"].clone();
    // Several sessions in one entry.
    let out = state.apply(
        6,
        &request(vec![
            down(&["s2"]),
            update(by("s1"), "m1", &[("k", "v")], &[]), // seq 0: s1 unchanged
            up(&["s1"]),                                // already up
            close("nobody"),
        ]),
    );
    let changed: Vec<&str> = out.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(changed, ["n1", "m1"]);
    assert_eq!(state.sessions["s1"], s1_before);
    assert!(!state.sessions["s2"].is_up());

    // A retry-protected write stores its answer in the session.
    let out = state.apply(
        7,
        &request(vec![update(by_seq("s1", 1, 1), "m1", &[("k", "w")], &[])]),
    );
    assert!(out.results[0].is_ok());
    assert!(state.sessions["s1"].answers.contains_key(&1));

    // A refused retry-protected write stores its refusal too.
    let out = state.apply(8, &request(vec![unregister(by_seq("s1", 2, 1), "n1")]));
    assert!(out.results[0].is_err());
    assert!(state.sessions["s1"].answers.contains_key(&2));
}

// ---------------------------------------------------------------------------
// Determinism
// ---------------------------------------------------------------------------

fn script() -> Vec<(u64, Request)> {
    let mut entries = Vec::new();
    let mut index = 0;
    let mut push = |now_ms: u64, commands: Vec<Command>| {
        index += 1;
        entries.push((
            index,
            Request {
                now_ms,
                commands: commands.into(),
            },
        ));
    };
    push(100, vec![open("a"), open("b")]);
    push(
        200,
        vec![
            register(by_seq("a", 1, 1), "a1"),
            register(by_seq("a", 2, 1), "a2"),
            register(by_seq("b", 1, 1), "b1"),
        ],
    );
    push(
        300,
        vec![update(by_seq("a", 3, 3), "a1", &[("k", "v")], &["b"])],
    );
    push(400, vec![register(by_seq("b", 2, 2), "a1")]); // refused
    push(500, vec![down(&["a"])]);
    push(600, vec![register(by_seq("a", 3, 3), "a1")]); // retry of seq 3
    push(700, vec![open("c"), register(by("c"), "c1"), down(&["b"])]);
    push(800, vec![up(&["a"]), expired(&["b", "a"])]);
    push(900, vec![unregister(admin(), "a2"), close("c")]);
    push(1000, vec![register(by_seq("a", 4, 4), "b1")]); // b is gone: a new member
    entries
}

#[test]
fn the_same_entries_give_the_same_state() {
    let mut one = RegistryState::default();
    let mut two = RegistryState::default();
    for (index, request) in script() {
        let a = one.apply(index, &request);
        let b = two.apply(index, &request);
        assert_eq!(a.results, b.results, "results of entry {index}");
        assert_eq!(a.changes, b.changes, "changes of entry {index}");
    }
    assert_eq!(one, two);
    // Equal down to the bytes that would be stored.
    assert_eq!(
        crate::codec::encode(&one).unwrap(),
        crate::codec::encode(&two).unwrap()
    );
    // And the script went where it was meant to.
    assert_eq!(one.sessions.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(
        one.members.keys().collect::<BTreeSet<_>>(),
        BTreeSet::from([&"a1".to_string(), &"b1".to_string()])
    );
    assert_eq!(one.members["a1"].mod_index, 8);
    assert_eq!(
        one.members["a1"].spec.metadata.get("k").map(String::as_str),
        Some("v")
    );
    assert_eq!(one.members["b1"].client_id.as_ref(), "a");
    assert_eq!(one.members["b1"].create_index, 10);
}

#[test]
fn a_snapshots_copy_of_the_state_encodes_as_the_state_itself() {
    // Snapshots are encoded from a copy (`state_copy`) and decoded as a
    // `RegistryState`: the bytes must be the same, after every entry of a
    // script with sessions up and down, kept answers, and members changed
    // and removed.
    let mut state = populated();
    let copy = |state: &RegistryState| {
        let mut copy = crate::state_copy::StateCopy::of(state);
        let unsorted = crate::codec::encode(&copy).unwrap();
        copy.sort_members();
        let sorted = crate::codec::encode(&copy).unwrap();
        assert_eq!(sorted, unsorted, "the members sorted first or not");
        sorted
    };
    assert_eq!(copy(&state), crate::codec::encode(&state).unwrap());
    for (index, request) in script() {
        state.apply(index, &request);
        assert_eq!(
            copy(&state),
            crate::codec::encode(&state).unwrap(),
            "after entry {index}"
        );
    }
    assert!(!state.members.is_empty() && !state.sessions.is_empty());
    assert!(
        state.sessions.values().any(|s| !s.answers.is_empty()),
        "the script keeps answers"
    );
    assert_eq!(
        crate::codec::encode(&RegistryState::default()).unwrap(),
        copy(&RegistryState::default())
    );
}

#[test]
fn replaying_changes_reproduces_the_members() {
    // The changes of every entry, applied to a plain map, give the members:
    // what a subscriber relies on.
    let mut state = RegistryState::default();
    let mut view = crate::Members::default();
    for (index, request) in script() {
        let out = state.apply(index, &request);
        for change in out.changes {
            assert_eq!(
                view.get(&change.id),
                change.before.as_ref(),
                "entry {index}: {}",
                change.id
            );
            match change.after {
                Some(m) => view.insert(change.id, m),
                None => view.remove(&change.id),
            };
        }
        assert_eq!(view, state.members, "after entry {index}");
    }
}
