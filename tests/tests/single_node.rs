//! One node, driven through `fuddle-cli`: the register → list → get →
//! update → watch → kill → restart tour, failure detection of a killed
//! registering process, refused input, and the read-only HTTP endpoints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use fuddle_client::{Member, MemberStatus};
use fuddle_tests::{
    CliProcess, DEADLINE, NodeProcess, code_of, eventually, http_get, replay_watch,
    run_node_expecting_exit, stderr_of, stdout_of,
};
use nix::sys::signal::Signal;
use serde_json::Value;

/// Reads watch lines into `events` until `done` holds for the replayed
/// state; panics after the deadline. Checks the order rules on every line.
fn watch_until(
    watcher: &CliProcess,
    events: &mut Vec<Value>,
    what: &str,
    done: impl Fn(&BTreeMap<String, Member>, &[u64]) -> bool,
) -> BTreeMap<String, Member> {
    let started = Instant::now();
    loop {
        let (state, indexes) = replay_watch(events)
            .unwrap_or_else(|e| panic!("the watcher broke the order rules: {e:#}\n{events:#?}"));
        if done(&state, &indexes) {
            return state;
        }
        let left = DEADLINE.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "the watcher did not see {what} within {DEADLINE:?}; it printed {events:#?}"
        );
        events.push(watcher.next_json(left));
    }
}

#[test]
fn cli_tour_survives_a_node_kill_and_a_graceful_unregister() {
    let mut node = NodeProcess::start("tour", &[], &[]);
    let addr = node.addr().to_owned();

    // A watcher first, so that it sees every change from the start.
    let mut watcher = CliProcess::spawn(&addr, &["-o", "json", "members", "watch"]);
    let mut events = vec![watcher.next_json(DEADLINE)];
    assert_eq!(events[0]["type"], "snapshot", "{events:?}");
    assert_eq!(events[0]["members"], Value::Array(Vec::new()));

    let mut register = CliProcess::spawn(
        &addr,
        &[
            "-o",
            "json",
            "members",
            "register",
            "--id",
            "web-1",
            "--service",
            "web",
            "--locality",
            "eu.west.1a",
            "--revision",
            "v1.2.3",
            "--metadata",
            "k=v",
            "--metadata",
            "port=8080",
            "--heartbeat-timeout",
            "1s",
            "--reconnect-timeout",
            "3s",
        ],
    );
    let registered: Member = serde_json::from_value(register.next_json(DEADLINE)).unwrap();
    assert_eq!(registered.id, "web-1");
    assert_eq!(registered.service, "web");
    assert_eq!(registered.locality, "eu.west.1a");
    assert_eq!(registered.revision, "v1.2.3");
    assert_eq!(
        registered.metadata,
        BTreeMap::from([("k".into(), "v".into()), ("port".into(), "8080".into())])
    );
    assert_eq!(registered.status, MemberStatus::Up);
    assert!(!registered.client_id.is_empty());
    assert_eq!(registered.create_index, registered.mod_index);

    let list = node.list("linearizable").unwrap();
    assert_eq!(list.members, vec![registered.clone()]);
    assert!(list.index >= registered.mod_index, "{list:?}");

    let got: Member = node.cli_json(&["members", "get", "web-1"]).unwrap();
    assert_eq!(got, registered);

    let updated: Member = node
        .cli_json(&[
            "members",
            "update",
            "web-1",
            "--metadata",
            "a=b",
            "--remove",
            "k",
        ])
        .unwrap();
    assert_eq!(
        updated.metadata,
        BTreeMap::from([("a".into(), "b".into()), ("port".into(), "8080".into())])
    );
    assert_eq!(updated.create_index, registered.create_index);
    assert!(updated.mod_index > registered.mod_index, "{updated:?}");
    let got: Member = node.cli_json(&["members", "get", "web-1"]).unwrap();
    assert_eq!(got, updated);

    // The watcher saw the registration and the update, each at its index.
    let state = watch_until(&watcher, &mut events, "the update", |_, indexes| {
        indexes.last().is_some_and(|&i| i >= updated.mod_index)
    });
    let (_, indexes) = replay_watch(&events).unwrap();
    assert_eq!(
        indexes,
        vec![registered.mod_index, updated.mod_index],
        "{events:#?}"
    );
    assert_eq!(
        state,
        BTreeMap::from([("web-1".to_owned(), updated.clone())])
    );

    // SIGKILL and restart on the same data dir: the same state and index.
    let before = node.list("linearizable").unwrap();
    node.kill();
    node.restart();
    assert_eq!(
        node.addr(),
        addr,
        "the restarted node could not get its port back; the register and watch processes \
         cannot follow it"
    );
    let restored = node.list("stale").unwrap();
    assert!(
        restored.index >= before.index,
        "the index went back from {} to {} across the restart",
        before.index,
        restored.index
    );
    assert_eq!(
        restored.members, before.members,
        "the state changed across the restart"
    );
    let after = node.list("linearizable").unwrap();
    assert!(after.index >= before.index, "{after:?}");
    assert_eq!(
        after
            .get("web-1")
            .map(|m| (&m.metadata, m.create_index, &m.client_id)),
        Some((&updated.metadata, updated.create_index, &updated.client_id)),
        "{after:?}"
    );
    // The register process heartbeats to the restarted node again.
    eventually("web-1 is up after the restart", DEADLINE, || {
        let list = node.list("linearizable")?;
        let member = list.get("web-1");
        ensure!(
            member.is_some_and(|m| m.status == MemberStatus::Up),
            "{list:?}"
        );
        Ok(())
    });

    // SIGTERM to the register process: it unregisters and exits 0.
    register.signal(Signal::SIGTERM);
    let status = register.wait(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "register exited with {status}; stderr: {}",
        register.stderr()
    );
    let list = node.list("linearizable").unwrap();
    assert!(list.get("web-1").is_none(), "still listed: {list:?}");

    // The watcher followed across the restart with no gap and no
    // duplicate, and ends with the node's state.
    let state = watch_until(&watcher, &mut events, "the removal", |state, _| {
        !state.contains_key("web-1")
    });
    assert!(state.is_empty(), "{state:?}");
    watcher.signal(Signal::SIGINT);
    let status = watcher.wait(DEADLINE);
    assert_eq!(
        status.code(),
        Some(0),
        "watch exited with {status}; stderr: {}",
        watcher.stderr()
    );
}

#[test]
fn a_killed_registering_process_goes_down_then_away() {
    let node = NodeProcess::start("expiry", &[], &[]);
    let mut register = CliProcess::spawn(
        node.addr(),
        &[
            "-o",
            "json",
            "members",
            "register",
            "--id",
            "doomed",
            "--service",
            "batch",
            "--heartbeat-timeout",
            "1s",
            "--reconnect-timeout",
            "3s",
        ],
    );
    let registered: Member = serde_json::from_value(register.next_json(DEADLINE)).unwrap();
    assert_eq!(registered.status, MemberStatus::Up);

    register.kill();
    let killed = Instant::now();

    let down = eventually("the member is down", DEADLINE, || {
        let list = node.list("linearizable")?;
        match list.get("doomed") {
            Some(m) if m.status == MemberStatus::Down => Ok(m.clone()),
            Some(m) => anyhow::bail!("still {}", m.status),
            None => panic!("removed without being seen down first: {list:?}"),
        }
    });
    let down_after = killed.elapsed();
    assert!(down.mod_index > registered.mod_index, "{down:?}");
    assert_eq!(down.client_id, registered.client_id);

    eventually("the member is removed", DEADLINE, || {
        let list = node.list("linearizable")?;
        ensure!(list.get("doomed").is_none(), "still listed: {list:?}");
        Ok(())
    });
    let gone_after = killed.elapsed();
    // Lower bounds only: the last heartbeat was at most a third of the
    // timeout before the kill, and removal needs the reconnect timeout on
    // top of the heartbeat timeout.
    assert!(
        down_after >= Duration::from_millis(500),
        "down {down_after:?} after the kill, before its heartbeat timeout"
    );
    assert!(
        gone_after >= Duration::from_secs(3),
        "removed {gone_after:?} after the kill, before its reconnect timeout"
    );
}

#[test]
fn invalid_input_is_refused_and_the_node_keeps_serving() {
    let node = NodeProcess::start("invalid", &[], &[]);

    // Bad usage: exit 2, clap's message.
    let output = node.cli(&[
        "members",
        "register",
        "--id",
        "a",
        "--service",
        "s",
        "--metadata",
        "novalue",
    ]);
    assert_eq!(code_of(&output), 2, "{output:?}");
    assert!(stderr_of(&output).contains("KEY=VALUE"), "{output:?}");
    let output = node.cli(&["members", "update", "a"]);
    assert_eq!(code_of(&output), 2, "{output:?}");
    let output = node.cli(&["members", "list", "--status", "sideways"]);
    assert_eq!(code_of(&output), 2, "{output:?}");

    // Refused by the node: exit 1, one line naming the field.
    let long_service = "s".repeat(200);
    let long_key = format!("{}=v", "k".repeat(200));
    let cases: [(&[&str], &[&str]); 4] = [
        (&["--id", "bad id", "--service", "web"], &["id"]),
        (
            &["--id", "ok-1", "--service", &long_service],
            &["service", "128"],
        ),
        (
            &["--id", "ok-2", "--service", "web", "--metadata", &long_key],
            &["metadata", "128"],
        ),
        (
            &["--id", "ok-3", "--service", "web", "--locality", "a..b"],
            &["locality"],
        ),
    ];
    for (args, words) in cases {
        let mut all = vec!["members", "register"];
        all.extend_from_slice(args);
        let output = node.cli(&all);
        let stderr = stderr_of(&output);
        assert_eq!(code_of(&output), 1, "{all:?}: {output:?}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{all:?}: not one line: {stderr}"
        );
        for word in words {
            assert!(stderr.contains(word), "{all:?}: {word:?} not in {stderr:?}");
        }
    }
    let too_many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
    let mut all = vec!["members", "register", "--id", "ok-4", "--service", "web"];
    for pair in &too_many {
        all.extend(["--metadata", pair.as_str()]);
    }
    let output = node.cli(&all);
    assert_eq!(code_of(&output), 1, "{output:?}");
    assert!(stderr_of(&output).contains("metadata"), "{output:?}");
    assert!(stderr_of(&output).contains("64"), "{output:?}");

    // Not found: exit 1.
    for args in [
        &["members", "get", "nobody"][..],
        &["members", "update", "nobody", "--metadata", "a=b"],
        &["members", "unregister", "nobody"],
    ] {
        let output = node.cli(args);
        assert_eq!(code_of(&output), 1, "{args:?}: {output:?}");
        assert!(
            stderr_of(&output).contains("not found"),
            "{args:?}: {output:?}"
        );
        assert!(
            stderr_of(&output).contains("nobody"),
            "{args:?}: {output:?}"
        );
    }

    // An id owned by another live session is refused.
    let mut owner = CliProcess::spawn(
        node.addr(),
        &[
            "-o",
            "json",
            "members",
            "register",
            "--id",
            "taken",
            "--service",
            "web",
        ],
    );
    let taken: Member = serde_json::from_value(owner.next_json(DEADLINE)).unwrap();
    let output = node.cli(&["members", "register", "--id", "taken", "--service", "other"]);
    assert_eq!(code_of(&output), 1, "{output:?}");
    assert_eq!(stderr_of(&output).trim().lines().count(), 1, "{output:?}");

    // None of that left a trace, and the node still serves.
    let list = node.list("linearizable").unwrap();
    assert_eq!(list.members, vec![taken], "{list:?}");
    let updated: Member = node
        .cli_json(&["members", "update", "taken", "--metadata", "x=y"])
        .unwrap();
    assert_eq!(updated.metadata.get("x").map(String::as_str), Some("y"));
    // SIGINT ends a register process as SIGTERM does.
    owner.signal(Signal::SIGINT);
    let status = owner.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {}", owner.stderr());
    let list = node.list("linearizable").unwrap();
    assert!(list.members.is_empty(), "{list:?}");

    // Nothing listens on port 1.
    let output = fuddle_tests::cli("127.0.0.1:1", &["members", "list"]);
    let stderr = stderr_of(&output);
    assert_eq!(code_of(&output), 1, "{output:?}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains("cannot reach 127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stdout_of(&output).is_empty(), "{output:?}");

    // A second node on the same data dir is refused.
    let data_dir = node.data_dir();
    let output = run_node_expecting_exit(&["--data-dir", data_dir.to_str().unwrap()]);
    assert!(!output.status.success(), "{output:?}");
    assert!(
        stderr_of(&output).contains("in use"),
        "{}",
        stderr_of(&output)
    );
    let list = node.list("linearizable").unwrap();
    assert!(list.members.is_empty(), "{list:?}");
}

#[test]
fn http_serves_health_metrics_and_the_member_list() {
    let node = NodeProcess::start("http", &[], &[]);
    let status: Value = node.cli_json(&["cluster", "status"]).unwrap();
    let http = status["nodes"][0]["http_addr"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("no HTTP address in {status}"))
        .to_owned();

    let register = CliProcess::spawn(
        node.addr(),
        &[
            "-o",
            "json",
            "members",
            "register",
            "--id",
            "api-1",
            "--service",
            "api",
            "--locality",
            "eu.west.1a",
            "--metadata",
            "port=8080",
        ],
    );
    let registered: Member = serde_json::from_value(register.next_json(DEADLINE)).unwrap();

    // The list is this node's applied state (a stale read): wait for the
    // registration to be applied, then compare with what the CLI printed,
    // in the same JSON shape.
    let listed = eventually("the member in the HTTP list", DEADLINE, || {
        let (code, body) = http_get(&http, "/v1/members?service=api")?;
        ensure!(code == 200, "status {code}: {body}");
        let reply: Value = serde_json::from_str(&body)?;
        ensure!(
            reply["members"].as_array().is_some_and(|m| m.len() == 1),
            "{reply}"
        );
        Ok(reply)
    });
    let member: Member = serde_json::from_value(listed["members"][0].clone()).unwrap();
    assert_eq!(member, registered);
    assert!(
        listed["index"].as_u64().unwrap() >= registered.mod_index,
        "{listed}"
    );
    let (code, body) = http_get(&http, "/v1/members?service=other").unwrap();
    assert_eq!(code, 200, "{body}");
    let other: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(other["members"], Value::Array(Vec::new()), "{other}");

    let (code, body) = http_get(&http, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["role"], "leader", "{health}");
    assert_eq!(health["id"], health["leader"], "{health}");

    let (code, body) = http_get(&http, "/metrics").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.lines().any(|l| l == "fuddle_members 1"),
        "no `fuddle_members 1` line in:\n{body}"
    );
    // The registration (and the session it opened) were applied here.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{body}"))
    };
    assert!(value("fuddle_applied_entries_total") >= 1.0, "{body}");
    assert!(
        value("fuddle_applied_commands_total") >= value("fuddle_applied_entries_total"),
        "{body}"
    );
    // Present whether or not a spell ran.
    value("fuddle_spin_spells_total");
    value("fuddle_spin_seconds_total");
}
