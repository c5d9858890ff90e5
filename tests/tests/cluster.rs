//! Clusters of real `fuddle-node` processes: bootstrap by `--join`,
//! growth to five voters, a leader killed under load, a follower caught up
//! by snapshot, subscriptions on followers, liveness across a failover and
//! node status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use fuddle_client::{
    Change, Client, Consistency, Event, Filter, Member, MemberSpec, MemberStatus, SessionOptions,
};
use fuddle_tests::{
    ClusterJson, DEADLINE, NodeProcess, by_id, code_of, eventually, eventually_async,
    start_cluster, stderr_of, wait_for_membership,
};
use serde_json::Value;
use tokio::task::JoinHandle;

/// The leader as `node` sees it, once there is one.
fn leader_seen_by(node: &NodeProcess) -> ClusterJson {
    eventually(
        &format!("node {} knows a leader", node.name()),
        DEADLINE,
        || {
            let status = node.cluster_status()?;
            ensure!(status.leader != 0, "no leader: {status:?}");
            Ok(status)
        },
    )
}

/// Waits until a node other than `old` leads, as every running node of
/// `nodes` sees it; returns the new leader's id.
fn new_leader(nodes: &mut [NodeProcess], old: u64) -> u64 {
    let mut agreed = None;
    for node in nodes.iter_mut().filter(|n| n.id() != old) {
        let leader = eventually(
            &format!("node {} sees a new leader", node.name()),
            DEADLINE,
            || {
                let status = node.cluster_status()?;
                ensure!(
                    status.leader != 0 && status.leader != old,
                    "leader {}: {status:?}",
                    status.leader
                );
                Ok(status.leader)
            },
        );
        match agreed {
            None => agreed = Some(leader),
            Some(other) => assert_eq!(other, leader, "the survivors disagree on the leader"),
        }
    }
    agreed.expect("a surviving node")
}

fn u64_field(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {value}"))
}

#[test]
fn three_nodes_bootstrap_by_join_then_grow_to_five_voters() {
    let n1 = NodeProcess::start("n1", &[], &[]);
    let seed = n1.addr().to_owned();
    let mut nodes = vec![n1];
    for name in ["n2", "n3"] {
        nodes.push(NodeProcess::start(name, &[&seed], &[]));
    }
    let status = wait_for_membership(&nodes, 3, 0);
    let ids: BTreeSet<u64> = nodes.iter().map(NodeProcess::id).collect();
    let listed: BTreeSet<u64> = status.nodes.iter().map(|n| n.id).collect();
    assert_eq!(listed, ids, "{status:?}");
    for node in &nodes {
        let info = status.nodes.iter().find(|n| n.id == node.id()).unwrap();
        assert_eq!(info.addr, node.addr(), "{status:?}");
    }
    // Every node sees the others alive by gossip.
    for node in &nodes {
        eventually(
            &format!("node {} sees every other node alive", node.name()),
            DEADLINE,
            || {
                let status = node.cluster_status()?;
                for info in &status.nodes {
                    let expected = if info.id == node.id() {
                        "self"
                    } else {
                        "alive"
                    };
                    ensure!(info.liveness == expected, "{status:?}");
                }
                Ok(())
            },
        );
    }

    // A fourth node becomes a learner; an even count of voters is avoided.
    nodes.push(NodeProcess::start("n4", &[&seed], &[]));
    let n4 = nodes[3].id();
    wait_for_membership(&nodes, 3, 1);
    let caught_up = eventually("n4 catches up with the leader", DEADLINE, || {
        let status = nodes[0].cluster_status()?;
        status.check_shape(3, 1)?;
        let leader = status.nodes.iter().find(|n| n.id == status.leader).unwrap();
        let learner = status.nodes.iter().find(|n| n.id == n4).unwrap();
        ensure!(
            learner.applied_index >= leader.applied_index,
            "n4 at {} of {}",
            learner.applied_index,
            leader.applied_index
        );
        Ok(Instant::now())
    });
    // It stays a learner through many membership checks (200 ms each).
    while caught_up.elapsed() < Duration::from_secs(2) {
        let status = nodes[0].cluster_status().unwrap();
        status.check_shape(3, 1).unwrap();
        assert_eq!(status.learners(), vec![n4], "{status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A fifth makes five voters.
    nodes.push(NodeProcess::start("n5", &[&seed], &[]));
    let status = wait_for_membership(&nodes, 5, 0);
    let ids: BTreeSet<u64> = nodes.iter().map(NodeProcess::id).collect();
    let voters: BTreeSet<u64> = status.voters().into_iter().collect();
    assert_eq!(voters, ids, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut nodes = start_cluster(3, &[]);
    let old_leader = leader_seen_by(&nodes[0]).leader;
    let followers: Vec<String> = nodes
        .iter()
        .filter(|n| n.id() != old_leader)
        .map(|n| n.addr().to_owned())
        .collect();
    let client = Client::connect(followers).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<Member>>> = Arc::default();
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut writers: Vec<JoinHandle<()>> = Vec::new();
    for w in 0..3 {
        let session = client
            .open_session(SessionOptions::default())
            .await
            .unwrap();
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: a writer stops on the flag or after 100 000 writes.
            for i in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let spec =
                    MemberSpec::new(format!("w{w}-{i}"), "load").metadata("i", i.to_string());
                match session.register(spec).await {
                    Ok(member) => acked.lock().unwrap().push(member),
                    Err(err) => failed.lock().unwrap().push(format!("w{w}-{i}: {err}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let acked_count = || acked.lock().unwrap().len();

    eventually_async("writes flow", DEADLINE, || async {
        ensure!(acked_count() >= 30, "{} acknowledged", acked_count());
        Ok(())
    })
    .await;
    by_id(&mut nodes, old_leader).kill();
    let at_kill = acked_count();

    let leader = new_leader(&mut nodes, old_leader);
    assert_ne!(leader, old_leader);
    eventually_async("writes resume after the failover", DEADLINE, || async {
        ensure!(
            acked_count() >= at_kill + 60,
            "{} acknowledged, {at_kill} at the kill",
            acked_count()
        );
        Ok(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let failed = failed.lock().unwrap().clone();
    assert!(
        failed.iter().all(|e| !e.contains("already exists")),
        "writes were refused: {failed:?}"
    );
    let last = acked.iter().map(|m| m.mod_index).max().unwrap();
    for node in nodes.iter_mut().filter(|n| n.id() != old_leader) {
        let list = node.stale_list_at_least(last);
        let present = list.by_id();
        let missing: Vec<&str> = acked
            .iter()
            .filter(|m| present.get(&m.id).map(|p| p.create_index) != Some(m.create_index))
            .map(|m| m.id.as_str())
            .collect();
        assert!(
            missing.is_empty(),
            "node {} lacks {} of {} acknowledged writes: {missing:?}",
            node.name(),
            missing.len(),
            acked.len()
        );
    }
    eprintln!(
        "{} writes acknowledged ({at_kill} before the kill), {} failed",
        acked.len(),
        failed.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_back_after_log_purge_catches_up_by_snapshot() {
    let extra = ["--snapshot-every", "50", "--keep-behind-snapshot", "10"];
    let mut nodes = start_cluster(3, &extra);
    let leader_id = leader_seen_by(&nodes[0]).leader;
    let leader_addr = by_id(&mut nodes, leader_id).addr().to_owned();
    let client = Client::connect([leader_addr]).await.unwrap();
    let session = client
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    for i in 0..5 {
        session
            .register(MemberSpec::new(format!("early-{i}"), "snap"))
            .await
            .unwrap();
    }

    let follower_index = nodes.iter().position(|n| n.id() != leader_id).unwrap();
    let (follower_last, follower_applied) = {
        let follower = &nodes[follower_index];
        let list = follower.stale_list_at_least(0);
        let status = follower.node_status().unwrap();
        (u64_field(&status, "last_log_index"), list.index)
    };
    nodes[follower_index].kill();

    // Write until the leader's snapshot (and so its purge point) is well
    // past everything the follower holds; bounded by a write count.
    let leader = by_id(&mut nodes, leader_id);
    let mut snapshot_index = 0;
    for i in 0..3_000u32 {
        let id = format!("m-{i}");
        session
            .register(MemberSpec::new(&id, "snap").metadata("i", i.to_string()))
            .await
            .unwrap();
        if i % 3 == 1 {
            let set = BTreeMap::from([("updated".to_owned(), "yes".to_owned())]);
            session.update_metadata(&id, set, Vec::new()).await.unwrap();
        }
        if i % 5 == 4 {
            session.unregister(&format!("m-{}", i - 2)).await.unwrap();
        }
        if i % 20 == 19 {
            snapshot_index = u64_field(&leader.node_status().unwrap(), "snapshot_index");
            if snapshot_index > follower_last + 10 + 50 {
                break;
            }
        }
    }
    assert!(
        snapshot_index > follower_last + 60,
        "the leader never snapshotted past {follower_last}: at {snapshot_index}"
    );

    let expected = leader.list("linearizable").unwrap();
    let follower = &mut nodes[follower_index];
    follower.restart();
    let caught_up = follower.stale_list_at_least(expected.index);
    assert_eq!(
        caught_up.by_id(),
        expected.by_id(),
        "the follower's state differs from the leader's"
    );
    let status = follower.node_status().unwrap();
    assert!(
        u64_field(&status, "snapshot_index") > follower_applied,
        "the follower has no snapshot past its old state: {status}"
    );
    // It keeps following by log afterwards.
    let more = session
        .register(MemberSpec::new("after-restart", "snap"))
        .await
        .unwrap();
    let list = follower.stale_list_at_least(more.mod_index);
    assert_eq!(list.get("after-restart"), Some(&more));
}

/// Members by id.
type Members = BTreeMap<String, Member>;
/// Change events: (index, changes).
type ChangeLog = Vec<(u64, Vec<Change>)>;

/// Collects a subscription's events in a task until aborted.
fn collect(
    mut subscription: fuddle_client::Subscription,
) -> (Arc<Mutex<Vec<Event>>>, JoinHandle<()>) {
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = events.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = subscription.next_event().await {
            match event {
                Ok(event) => sink.lock().unwrap().push(event),
                Err(err) => panic!("the subscription failed: {err}"),
            }
        }
    });
    (events, task)
}

/// The state after a stream's events up to and including `index`, and the
/// change events after it. Checks that the stream starts with its only
/// snapshot and moves strictly forward.
fn split_stream(events: &[Event], index: u64) -> anyhow::Result<(Members, ChangeLog)> {
    let Some(Event::Snapshot { members, index: at }) = events.first() else {
        bail!("the stream does not start with a snapshot: {events:?}");
    };
    ensure!(*at <= index, "snapshot at {at}, after {index}");
    let mut state: BTreeMap<String, Member> =
        members.iter().map(|m| (m.id.clone(), m.clone())).collect();
    let mut last = *at;
    let mut after = Vec::new();
    for event in &events[1..] {
        match event {
            Event::Snapshot { index, .. } => bail!("a second snapshot at {index}: a resync"),
            Event::Progress { index } => {
                ensure!(*index >= last, "progress at {index} after {last}")
            }
            Event::Changes { index: i, changes } => {
                ensure!(*i > last, "changes at {i} after {last}");
                last = *i;
                if *i <= index {
                    for change in changes {
                        match change {
                            Change::Upsert(m) => {
                                state.insert(m.id.clone(), m.clone());
                            }
                            Change::Removed(id) => {
                                state.remove(id);
                            }
                        }
                    }
                } else {
                    after.push((*i, changes.clone()));
                }
            }
        }
    }
    Ok((state, after))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_a_follower_sees_the_leaders_sequence() {
    let mut nodes = start_cluster(3, &[]);
    let leader_id = leader_seen_by(&nodes[0]).leader;
    let leader_addr = by_id(&mut nodes, leader_id).addr().to_owned();
    let others: Vec<String> = nodes
        .iter()
        .filter(|n| n.id() != leader_id)
        .map(|n| n.addr().to_owned())
        .collect();
    let on_leader = Client::connect([leader_addr]).await.unwrap();
    let on_follower = Client::connect([others[0].clone()]).await.unwrap();
    let (leader_events, leader_task) =
        collect(on_leader.subscribe(Filter::all(), None).await.unwrap());
    let (follower_events, follower_task) =
        collect(on_follower.subscribe(Filter::all(), None).await.unwrap());

    // Writes through the other follower, some concurrent so that entries
    // carry several changes.
    let writer = Client::connect([others[1].clone()]).await.unwrap();
    let a = Arc::new(
        writer
            .open_session(SessionOptions::default())
            .await
            .unwrap(),
    );
    let b = writer
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..10 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.register(MemberSpec::new(format!("a-{i}"), "alpha").locality("eu.west"))
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for i in 0..5 {
        b.register(MemberSpec::new(format!("b-{i}"), "beta"))
            .await
            .unwrap();
    }
    for i in 1..4 {
        let set = BTreeMap::from([("v".to_owned(), i.to_string())]);
        a.update_metadata(&format!("a-{i}"), set, vec![])
            .await
            .unwrap();
    }
    a.unregister("a-4").await.unwrap();
    b.close().await.unwrap();
    let last = a
        .register(MemberSpec::new("last", "alpha"))
        .await
        .unwrap()
        .mod_index;

    let reached = |events: &Arc<Mutex<Vec<Event>>>| {
        events
            .lock()
            .unwrap()
            .last()
            .is_some_and(|e| e.index() >= last)
    };
    eventually_async(
        "both subscribers reach the last write",
        DEADLINE,
        || async {
            ensure!(reached(&leader_events), "the leader's subscriber is behind");
            ensure!(
                reached(&follower_events),
                "the follower's subscriber is behind"
            );
            Ok(())
        },
    )
    .await;
    leader_task.abort();
    follower_task.abort();

    let leader_events = leader_events.lock().unwrap().clone();
    let follower_events = follower_events.lock().unwrap().clone();
    let start = [&leader_events, &follower_events]
        .iter()
        .map(|e| e.first().map_or(0, Event::index))
        .max()
        .unwrap();
    let (leader_state, leader_after) = split_stream(&leader_events, start).unwrap();
    let (follower_state, follower_after) = split_stream(&follower_events, start).unwrap();
    assert_eq!(
        follower_state, leader_state,
        "the states differ at index {start}"
    );
    let upto = |after: &[(u64, Vec<Change>)]| -> Vec<(u64, Vec<Change>)> {
        after.iter().filter(|(i, _)| *i <= last).cloned().collect()
    };
    assert_eq!(
        upto(&follower_after),
        upto(&leader_after),
        "the follower's subscriber saw another sequence"
    );
    // And it holds every write.
    let (final_state, _) = split_stream(&follower_events, last).unwrap();
    let mut expected: BTreeSet<String> = (0..10).map(|i| format!("a-{i}")).collect();
    expected.remove("a-4");
    expected.insert("last".into());
    assert_eq!(
        final_state.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{final_state:?}"
    );
    for i in 1..4 {
        let v = final_state[&format!("a-{i}")].metadata.get("v").cloned();
        assert_eq!(v, Some(i.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_on_a_follower_stays_up_across_a_leader_kill() {
    let mut nodes = start_cluster(3, &[]);
    let old_leader = leader_seen_by(&nodes[0]).leader;
    let followers: Vec<String> = nodes
        .iter()
        .filter(|n| n.id() != old_leader)
        .map(|n| n.addr().to_owned())
        .collect();
    let (via, observer_addr) = (followers[0].clone(), followers[1].clone());

    let client = Client::connect([via]).await.unwrap();
    let session = client
        .open_session(SessionOptions {
            heartbeat_timeout: Some(Duration::from_millis(1500)),
            reconnect_timeout: Some(Duration::from_secs(30)),
        })
        .await
        .unwrap();
    assert_eq!(session.heartbeat_timeout(), Duration::from_millis(1500));
    let registered = session
        .register(MemberSpec::new("survivor", "steady"))
        .await
        .unwrap();

    // An observer on the other follower: a subscription (sees every
    // change) and a polled list.
    let observer = Client::connect([observer_addr]).await.unwrap();
    let (events, task) = collect(
        observer
            .subscribe(Filter::all().service("steady"), None)
            .await
            .unwrap(),
    );
    let poll = |what: &str| {
        let observer = observer.clone();
        let what = what.to_owned();
        async move {
            let (members, index) = observer.list(Filter::all(), Consistency::Stale).await?;
            let member = members.iter().find(|m| m.id == "survivor");
            match member {
                Some(m) if m.status == MemberStatus::Up => Ok::<u64, fuddle_client::Error>(index),
                other => panic!("{what}: the member is {other:?} at index {index}"),
            }
        }
    };
    // A stale read on the observer's node may come before that node has
    // applied the registration (it was acknowledged through the other
    // follower). One linearizable read makes the observer's node catch up;
    // from then on its stale reads include the member.
    observer
        .list(Filter::all(), Consistency::Linearizable)
        .await
        .unwrap();
    // Up for several heartbeat timeouts before the kill.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        poll("before the kill").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    by_id(&mut nodes, old_leader).kill();
    // During the failover. Bounded by the election deadline.
    let killed = Instant::now();
    let new = loop {
        poll("during the failover").await.ok();
        let status = observer.cluster_status().await;
        if let Ok(status) = status
            && status.leader != 0
            && status.leader != old_leader
        {
            break status.leader;
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "no new leader after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new, old_leader);
    // And for three heartbeat timeouts after it.
    let elected = Instant::now();
    while elected.elapsed() < Duration::from_millis(4500) {
        poll("after the failover").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The session still writes, and its member was never marked down.
    let set = BTreeMap::from([("after".to_owned(), "failover".to_owned())]);
    let updated = session
        .update_metadata("survivor", set, vec![])
        .await
        .unwrap();
    assert_eq!(updated.status, MemberStatus::Up);
    assert_eq!(updated.client_id, registered.client_id);
    eventually_async("the observer sees the update", DEADLINE, || async {
        let seen = events.lock().unwrap().last().map(Event::index);
        ensure!(seen >= Some(updated.mod_index), "at {seen:?}");
        Ok(())
    })
    .await;
    task.abort();
    let events = events.lock().unwrap().clone();
    for event in &events {
        match event {
            Event::Snapshot { members, .. } => {
                assert!(
                    members.iter().all(|m| m.status == MemberStatus::Up),
                    "{events:?}"
                )
            }
            Event::Changes { changes, .. } => {
                for change in changes {
                    match change {
                        Change::Upsert(m) => {
                            assert_eq!(m.status, MemberStatus::Up, "{events:?}")
                        }
                        Change::Removed(id) => panic!("{id} removed: {events:?}"),
                    }
                }
            }
            Event::Progress { .. } => {}
        }
    }
    session.close().await.unwrap();
}

#[test]
fn node_status_answers_for_itself_and_for_others() {
    let nodes = start_cluster(3, &[]);
    let cluster = leader_seen_by(&nodes[0]);
    let leader_id = cluster.leader;
    let ids: Vec<u64> = nodes.iter().map(NodeProcess::id).collect();

    let leader = nodes.iter().find(|n| n.id() == leader_id).unwrap();
    let own = leader.node_status().unwrap();
    assert_eq!(u64_field(&own, "id"), leader_id, "{own}");
    assert_eq!(own["role"], "leader", "{own}");
    assert_eq!(own["addr"], leader.addr(), "{own}");
    assert_eq!(u64_field(&own, "leader"), leader_id, "{own}");

    for id in ids.iter().copied().filter(|&id| id != leader_id) {
        // Asked of the leader about another node.
        let other: Value = leader
            .cli_json(&["node", "status", &id.to_string()])
            .unwrap();
        assert_eq!(u64_field(&other, "id"), id, "{other}");
        assert_eq!(other["role"], "follower", "{other}");
        // Asked of that node about itself, and about the leader.
        let node = nodes.iter().find(|n| n.id() == id).unwrap();
        assert_eq!(other["addr"], node.addr(), "{other}");
        let own = node.node_status().unwrap();
        assert_eq!(u64_field(&own, "id"), id, "{own}");
        assert_eq!(u64_field(&own, "leader"), leader_id, "{own}");
        let of_leader: Value = node
            .cli_json(&["node", "status", &leader_id.to_string()])
            .unwrap();
        assert_eq!(u64_field(&of_leader, "id"), leader_id, "{of_leader}");
        assert_eq!(of_leader["role"], "leader", "{of_leader}");
    }

    // An id that is no node.
    let output = nodes[0].cli(&["node", "status", "12345"]);
    assert_eq!(code_of(&output), 1, "{output:?}");
    assert!(stderr_of(&output).contains("not found"), "{output:?}");
}
