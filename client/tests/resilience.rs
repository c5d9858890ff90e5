//! The SDK's failover, exactly-once session writes, session resume and
//! re-registration, and subscription and view resume, against real nodes
//! in process (see `common`): nodes are really shut down, sessions really
//! expire on the leader's clock, and a lost answer is a real TCP connection
//! broken after the node carried out the request.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::relay::{Mode, Relay};
use common::{Cluster, eventually, get, list, options, within};
use fuddle_client::{
    Change, Client, ClientOptions, Consistency, Error, Event, Filter, Member, MemberSpec,
    MemberStatus, SessionOptions,
};
use fuddle_node::Node;
use tokio::sync::watch;

/// An address nothing listens on.
fn dead_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn session_options(heartbeat_ms: u64, reconnect_ms: u64) -> SessionOptions {
    SessionOptions {
        heartbeat_timeout: Some(Duration::from_millis(heartbeat_ms)),
        reconnect_timeout: Some(Duration::from_millis(reconnect_ms)),
    }
}

fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Checks `check` about every 100 ms for `period`: a condition that must
/// keep holding while time passes (a member staying up needs heartbeats to
/// keep arriving).
async fn throughout<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + period;
    while tokio::time::Instant::now() < until {
        assert!(check().await, "{what} stopped holding");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies a subscription's events to a map of members, checking that they
/// come strictly in index order: a snapshot first and only then, changes
/// at increasing indexes, progress never going back.
#[derive(Default)]
struct Follower {
    members: BTreeMap<String, Member>,
    last: Option<u64>,
    change_indexes: Vec<u64>,
}

impl Follower {
    fn apply(&mut self, event: Event) {
        let index = event.index();
        match (self.last, event) {
            (None, Event::Snapshot { members, .. }) => {
                self.members = members.into_iter().map(|m| (m.id.clone(), m)).collect();
            }
            (None, other) => panic!("the first event is not a snapshot: {other:?}"),
            (Some(last), Event::Snapshot { index, .. }) => {
                panic!("a second snapshot at {index} after {last}: the history was not resumed")
            }
            (Some(last), Event::Changes { changes, .. }) => {
                assert!(index > last, "changes at {index} after {last}");
                self.change_indexes.push(index);
                for change in changes {
                    match change {
                        Change::Upsert(m) => {
                            self.members.insert(m.id.clone(), m);
                        }
                        Change::Removed(id) => {
                            assert!(self.members.remove(&id).is_some(), "{id} removed twice");
                        }
                    }
                }
            }
            (Some(last), Event::Progress { .. }) => {
                assert!(index >= last, "progress at {index} after {last}");
            }
        }
        self.last = Some(index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_to_a_reachable_node_and_stay_there() {
    let cluster = Cluster::single().await;
    let live = cluster.addrs[0].clone();
    let client = Client::connect_with([dead_addr(), live.clone()], options())
        .await
        .unwrap();
    assert_eq!(client.current_addr(), live);
    let (members, index) = client
        .list(Filter::all(), Consistency::Stale)
        .await
        .unwrap();
    assert!(members.is_empty());
    assert!(index > 0);
    assert_eq!(client.current_addr(), live);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_keep_their_message() {
    let cluster = Cluster::single().await;
    let client = Client::connect_with([cluster.addrs[0].clone()], options())
        .await
        .unwrap();
    let err = client
        .get("missing", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotFound(m) if m == "member \"missing\" not found"),
        "{err:?}"
    );
    let err = client
        .open_session(session_options(10, 60_000))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("heartbeat_timeout")),
        "{err:?}"
    );
    let session = client
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    let err = session
        .register(MemberSpec::new("bad id", "svc"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("member.id")),
        "{err:?}"
    );
    session
        .register(MemberSpec::new("taken", "svc"))
        .await
        .unwrap();
    let other = client
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    let err = other
        .register(MemberSpec::new("taken", "svc"))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::AlreadyExists(_)), "{err:?}");
    assert!(!err.is_transient());

    // A node that waits to join a cluster nobody runs has no leader: its
    // UNAVAILABLE is retried until the deadline, then reported as such.
    let dir = tempfile::tempdir().unwrap();
    let lone = Node::start(common::config(dir.path(), vec![dead_addr()]))
        .await
        .unwrap();
    let impatient = ClientOptions {
        retry_deadline: Duration::from_secs(1),
        ..options()
    };
    let client = Client::connect_with([lone.local_addr.to_string()], impatient)
        .await
        .unwrap();
    let err = client
        .list(Filter::all(), Consistency::Linearizable)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.starts_with("no leader")),
        "{err:?}"
    );
    assert!(err.is_transient());
    lone.shutdown().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_act_on_any_member() {
    let cluster = Cluster::single().await;
    let client = Client::connect_with([cluster.addrs[0].clone()], options())
        .await
        .unwrap();
    let session = client
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    session
        .register(MemberSpec::new("m1", "svc").metadata("k", "1"))
        .await
        .unwrap();
    // Another client, with no session: an operator.
    let admin = Client::connect_with([cluster.addrs[0].clone()], options())
        .await
        .unwrap();
    let updated = admin
        .update_metadata("m1", metadata(&[("k", "2")]), Vec::new())
        .await
        .unwrap();
    assert_eq!(updated.client_id, session.client_id());
    assert_eq!(updated.metadata, metadata(&[("k", "2")]));
    let removed_at = admin.unregister("m1").await.unwrap();
    assert!(removed_at > updated.mod_index);
    assert!(get(&admin, "m1").await.is_none());
    let err = admin.unregister("m1").await.unwrap_err();
    assert!(matches!(&err, Error::NotFound(_)), "{err:?}");
    // The session's own writes go on, numbered as before.
    let m2 = session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    assert!(m2.create_index > removed_at);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_write_whose_answer_is_lost_is_applied_once() {
    let cluster = Cluster::single().await;
    let direct = cluster.addrs[0].clone();
    let relay = Relay::start(cluster.node(0).local_addr).await;
    // The client talks through the relay first, and knows the node's own
    // address as a second way in.
    let client = Client::connect_with([relay.addr.clone(), direct.clone()], options())
        .await
        .unwrap();
    assert_eq!(client.current_addr(), relay.addr);
    let observer = Client::connect_with([direct.clone()], options())
        .await
        .unwrap();
    let mut changes = observer.subscribe(Filter::all(), None).await.unwrap();
    let session = client
        .open_session(session_options(10_000, 60_000))
        .await
        .unwrap();

    // The register reaches the node and is applied; its answer is held
    // back, then the connection breaks. The SDK cannot know whether it was
    // applied and sends it again, on the other address, with the same seq.
    relay.set(Mode::HoldAnswers);
    let (registered, ()) = tokio::join!(session.register(MemberSpec::new("m1", "svc")), async {
        eventually("the register applied", || async {
            get(&observer, "m1").await.is_some()
        })
        .await;
        relay.set(Mode::Cut);
    });
    let m1 = registered.unwrap();
    assert_eq!(client.current_addr(), direct);
    // Sent on the session stream first, then as a call once the stream
    // broke. Applied once: a second application would have replaced the
    // member at a later index.
    assert_eq!(cluster.node(0).core.writes.get(), (1, 1));
    assert_eq!(m1.create_index, m1.mod_index);
    assert_eq!(get(&observer, "m1").await.unwrap(), m1);
    // The session's next write is a new seq, applied.
    let updated = session
        .update_metadata("m1", metadata(&[("k", "v")]), Vec::new())
        .await
        .unwrap();
    assert!(updated.mod_index > m1.mod_index);
    let mut upserts = Vec::new();
    while upserts.last() != Some(&updated.mod_index) {
        let event = within("the update's event", changes.next_event())
            .await
            .unwrap()
            .unwrap();
        if let Event::Changes { index, changes } = event {
            for change in changes {
                if matches!(&change, Change::Upsert(m) if m.id == "m1") {
                    upserts.push(index);
                }
            }
        }
    }
    assert_eq!(upserts, [m1.mod_index, updated.mod_index]);
    // Once the session's stream is open again (on the node's own address),
    // its writes go back to it.
    let node = cluster.node(0);
    let (_, on_stream) = node.core.writes.get();
    let (writer, mut round) = (&session, 0);
    eventually("a write on the reopened session stream", || {
        round += 1;
        let value = round.to_string();
        async move {
            writer
                .update_metadata("m1", metadata(&[("round", &value)]), Vec::new())
                .await
                .unwrap();
            node.core.writes.get().1 > on_stream
        }
    })
    .await;

    // An operator's write has no seq: after a lost answer it is reported,
    // not repeated, for a repeat could not be told apart from a new write.
    relay.set(Mode::Pass);
    let admin = Client::connect_with([relay.addr.clone(), direct.clone()], options())
        .await
        .unwrap();
    relay.set(Mode::HoldAnswers);
    let (unregistered, ()) = tokio::join!(admin.unregister("m1"), async {
        eventually("the unregister applied", || async {
            get(&observer, "m1").await.is_none()
        })
        .await;
        relay.set(Mode::Cut);
    });
    let err = unregistered.unwrap_err();
    assert!(
        matches!(&err, Error::Unreachable { addr, .. } if *addr == relay.addr),
        "{err:?}"
    );
    session.close().await.unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_heartbeats_and_closes() {
    let cluster = Cluster::single().await;
    let client = Client::connect_with([cluster.addrs[0].clone()], options())
        .await
        .unwrap();
    let session = client
        .open_session(session_options(1000, 60_000))
        .await
        .unwrap();
    assert_eq!(session.heartbeat_timeout(), Duration::from_millis(1000));
    assert_eq!(session.reconnect_timeout(), Duration::from_secs(60));
    let m1 = session
        .register(MemberSpec::new("m1", "svc"))
        .await
        .unwrap();
    assert_eq!(m1.status, MemberStatus::Up);
    // Session writes travel on the session's stream, not as calls of their
    // own.
    let m2 = session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    session
        .update_metadata("m2", metadata(&[("k", "v")]), Vec::new())
        .await
        .unwrap();
    session.unregister("m2").await.unwrap();
    assert!(m2.mod_index > m1.mod_index);
    assert_eq!(cluster.node(0).core.writes.get(), (0, 4));
    // Silent for one heartbeat timeout the member would go down.
    throughout("m1 up", Duration::from_secs(4), || async {
        get(&client, "m1").await == Some(m1.clone())
    })
    .await;
    assert_eq!(client.node_status(None).await.unwrap().sessions, 1);
    let closed_at = session.close().await.unwrap();
    assert!(closed_at > m1.mod_index);
    assert_eq!(
        cluster.node(0).core.writes.get(),
        (1, 4),
        "closing is a call"
    );
    assert!(get(&client, "m1").await.is_none());
    assert_eq!(client.node_status(None).await.unwrap().sessions, 0);
    cluster.shutdown().await;
}

/// The session's only way to the cluster is a relay, which the test cuts:
/// the node keeps running and its leader clock marks the silent session
/// down, then expires it and removes its members, exactly as for a client
/// behind a network partition. When the link comes back the SDK reopens
/// the session under its id, hears that it expired, and registers again
/// what it had registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_registers_its_members_again() {
    let cluster = Cluster::single().await;
    let relay = Relay::start(cluster.node(0).local_addr).await;
    let client = Client::connect_with([relay.addr.clone()], options())
        .await
        .unwrap();
    let observer = Client::connect_with([cluster.addrs[0].clone()], options())
        .await
        .unwrap();
    let session = client
        .open_session(session_options(1000, 1000))
        .await
        .unwrap();
    session
        .register(MemberSpec::new("m1", "svc").metadata("k", "1"))
        .await
        .unwrap();
    session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    session
        .update_metadata("m1", metadata(&[("k", "2")]), Vec::new())
        .await
        .unwrap();
    session.unregister("m2").await.unwrap();
    let before = get(&observer, "m1").await.unwrap();

    relay.set(Mode::Cut);
    // Down after the heartbeat timeout, removed after the reconnect
    // timeout.
    let statuses = std::sync::Mutex::new(vec![Some(MemberStatus::Up)]);
    eventually("the session to expire", || async {
        let status = get(&observer, "m1").await.map(|m| m.status);
        let mut seen = statuses.lock().unwrap();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        status.is_none()
    })
    .await;
    assert_eq!(
        statuses.into_inner().unwrap(),
        [Some(MemberStatus::Up), Some(MemberStatus::Down), None]
    );

    relay.set(Mode::Pass);
    eventually("m1 registered again", || async {
        get(&observer, "m1")
            .await
            .is_some_and(|m| m.status == MemberStatus::Up)
    })
    .await;
    let again = get(&observer, "m1").await.unwrap();
    assert_eq!(again.client_id, session.client_id());
    assert_eq!(again.client_id, before.client_id);
    assert_eq!(again.metadata, metadata(&[("k", "2")]));
    assert!(again.create_index > before.mod_index);
    // What the application had unregistered stays unregistered.
    assert!(get(&observer, "m2").await.is_none());
    // The session goes on as usual.
    session
        .register(MemberSpec::new("m3", "svc"))
        .await
        .unwrap();
    session.close().await.unwrap();
    assert!(list(&observer).await.0.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_session_writes_fail_over_when_the_leader_stops() {
    let mut cluster = Cluster::three().await;
    let leader = cluster.leader();
    let old_leader = cluster.node(leader).core.id;
    let client = Client::connect_with(cluster.addrs_from(leader), options())
        .await
        .unwrap();
    let session = client
        .open_session(session_options(3000, 60_000))
        .await
        .unwrap();
    let m1 = session
        .register(MemberSpec::new("m1", "svc"))
        .await
        .unwrap();
    assert_eq!(client.current_addr(), cluster.addrs[leader]);

    cluster.stop(leader).await;
    // A linearizable read needs the new leader.
    let (members, _) = list(&client).await;
    assert_eq!(members.keys().collect::<Vec<_>>(), ["m1"]);
    assert_ne!(client.current_addr(), cluster.addrs[leader]);
    let m2 = session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    assert!(m2.create_index > m1.mod_index);
    assert_eq!(m2.client_id, m1.client_id);
    let updated = session
        .update_metadata("m1", metadata(&[("k", "v")]), Vec::new())
        .await
        .unwrap();
    assert_eq!(updated.create_index, m1.create_index);
    assert_eq!(get(&client, "m1").await.unwrap(), updated);
    let status = client.cluster_status().await.unwrap();
    assert!(
        status.leader != 0 && status.leader != old_leader,
        "{status:?}"
    );
    session.close().await.unwrap();
    assert!(list(&client).await.0.is_empty());
    cluster.shutdown().await;
}

/// Several sessions write through a follower while the leader stops. A
/// write the follower had forwarded when the leader went away has an
/// unknown outcome (the node answers DEADLINE_EXCEEDED); a session write
/// is sent again with its seq, so none fails and none is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_writes_through_a_follower_survive_the_leader_stopping() {
    let mut cluster = Cluster::three().await;
    let leader = cluster.leader();
    let client = Client::connect_with(cluster.addrs_without(leader), options())
        .await
        .unwrap();
    let (stopped, stopped_rx) = watch::channel(false);
    let mut writers = Vec::new();
    for w in 0..6 {
        let client = client.clone();
        let mut stopped = stopped_rx.clone();
        writers.push(tokio::spawn(async move {
            let session = client
                .open_session(SessionOptions::default())
                .await
                .unwrap();
            let mut written = Vec::new();
            let mut after_stop = 0;
            while after_stop < 20 {
                let id = format!("w{w}-{}", written.len());
                let member = session.register(MemberSpec::new(id, "svc")).await;
                written.push(member.unwrap_or_else(|e| panic!("writer {w}: {e:?}")));
                if *stopped.borrow_and_update() {
                    after_stop += 1;
                }
            }
            (session, written)
        }));
    }
    // Writes are in full flow when the leader stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.stop(leader).await;
    stopped.send_replace(true);
    let mut sessions = Vec::new();
    let mut written = BTreeMap::new();
    for writer in writers {
        let (session, members) = within("a writer", writer).await.unwrap();
        sessions.push(session);
        for member in members {
            // Applied once: a second application would have replaced it.
            assert_eq!(member.create_index, member.mod_index, "{member:?}");
            written.insert(member.id.clone(), member);
        }
    }
    let (members, _) = list(&client).await;
    assert_eq!(members, written);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_another_node_when_its_node_stops() {
    let mut cluster = Cluster::three().await;
    // The session lives on a follower, which forwards its heartbeats to
    // the leader; when it stops, the session reopens on another node.
    let node = (cluster.leader() + 1) % 3;
    let client = Client::connect_with(cluster.addrs_from(node), options())
        .await
        .unwrap();
    let observer = Client::connect_with(cluster.addrs_without(node), options())
        .await
        .unwrap();
    let session = client
        .open_session(session_options(1500, 60_000))
        .await
        .unwrap();
    let m1 = session
        .register(MemberSpec::new("m1", "svc"))
        .await
        .unwrap();
    // Every call so far, the session's open included, went to `node`.
    assert_eq!(client.current_addr(), cluster.addrs[node]);

    cluster.stop(node).await;
    // Only the session's heartbeat task calls the cluster now: it moving
    // on is the session reopening elsewhere.
    eventually("the session to reopen on another node", || async {
        client.current_addr() != cluster.addrs[node]
    })
    .await;
    // Resumed, not recreated: over several heartbeat timeouts the member
    // is neither marked down (heartbeats arrive) nor registered again.
    throughout(
        "m1 unchanged and up",
        Duration::from_millis(4500),
        || async { get(&observer, "m1").await == Some(m1.clone()) },
    )
    .await;
    assert_eq!(observer.node_status(None).await.unwrap().sessions, 1);
    let m2 = session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    assert_eq!(m2.client_id, m1.client_id);
    cluster.shutdown().await;
}

/// A session opened through a follower accepts heartbeats on that
/// follower at once. The follower forwards the OpenSession to the leader
/// and answers once the leader has applied it; the follower's own state
/// may not hold the session yet, and a node once refused the first
/// heartbeat there as "expired" (the SDK coped by reopening elsewhere, so
/// this is checked on the raw stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_through_a_follower_takes_heartbeats_there_at_once() {
    use fuddle_proto::registry as pb;
    use pb::registry_client::RegistryClient;

    let cluster = Cluster::three().await;
    let follower = (cluster.leader() + 1) % 3;
    let mut rpc = RegistryClient::connect(format!("http://{}", cluster.addrs[follower]))
        .await
        .unwrap();
    let heartbeat = || pb::SessionRequest {
        kind: Some(pb::session_request::Kind::Heartbeat(pb::Heartbeat {})),
    };
    for attempt in 0..20 {
        let (requests, outgoing) = tokio::sync::mpsc::channel(4);
        requests
            .send(pb::SessionRequest {
                kind: Some(pb::session_request::Kind::Open(pb::OpenSession {
                    client_id: String::new(),
                    heartbeat_timeout_ms: 10_000,
                    reconnect_timeout_ms: 60_000,
                })),
            })
            .await
            .unwrap();
        let mut responses = rpc
            .session(tokio_stream::wrappers::ReceiverStream::new(outgoing))
            .await
            .unwrap()
            .into_inner();
        let opened = within("opened", responses.message()).await.unwrap();
        assert!(
            matches!(
                opened.and_then(|r| r.kind),
                Some(pb::session_response::Kind::Opened(_))
            ),
            "attempt {attempt}: not opened"
        );
        requests.send(heartbeat()).await.unwrap();
        let answer = within("the heartbeat's answer", responses.message()).await;
        assert!(
            matches!(
                &answer,
                Ok(Some(pb::SessionResponse {
                    kind: Some(pb::session_response::Kind::Ack(_))
                }))
            ),
            "attempt {attempt}: the first heartbeat was answered {answer:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_resumes_on_another_node_without_gaps_or_duplicates() {
    let mut cluster = Cluster::three().await;
    // The subscription is on the leader, so its loss also means an
    // election while the writes go on.
    let a = cluster.leader();
    let client = Client::connect_with(cluster.addrs_from(a), options())
        .await
        .unwrap();
    let mut subscription = client.subscribe(Filter::all(), None).await.unwrap();
    assert_eq!(client.current_addr(), cluster.addrs[a]);
    let mut follower = Follower::default();
    follower.apply(
        within("the snapshot", subscription.next_event())
            .await
            .unwrap()
            .unwrap(),
    );

    // A writer elsewhere registers, updates and unregisters members while
    // node A stops.
    let writer = Client::connect_with(cluster.addrs_without(a), options())
        .await
        .unwrap();
    let (done, mut written) = watch::channel(0usize);
    let writes = tokio::spawn({
        let writer = writer.clone();
        async move {
            let session = writer
                .open_session(SessionOptions::default())
                .await
                .unwrap();
            let mut acked = Vec::new();
            let mut removed = Vec::new();
            for i in 0..30 {
                let m = session
                    .register(MemberSpec::new(format!("w-{i}"), "svc"))
                    .await
                    .unwrap();
                acked.push(m.mod_index);
                if i % 5 == 4 {
                    let m = session
                        .update_metadata(&format!("w-{i}"), metadata(&[("i", "x")]), vec![])
                        .await
                        .unwrap();
                    acked.push(m.mod_index);
                }
                if i % 3 == 2 {
                    let id = format!("w-{}", i - 1);
                    session.unregister(&id).await.unwrap();
                    removed.push(id);
                }
                done.send_replace(i + 1);
            }
            (session, acked, removed)
        }
    });
    within("ten writes", written.wait_for(|n| *n >= 10))
        .await
        .unwrap();
    cluster.stop(a).await;
    let (session, acked, removed) = within("the writes", writes).await.unwrap();
    let (members, index) = list(&writer).await;
    assert_eq!(members.len(), 30 - removed.len());

    while follower.last < Some(index) {
        let event = within("the subscription to reach the list's index", async {
            subscription.next_event().await
        })
        .await
        .expect("the subscription ended")
        .unwrap();
        follower.apply(event);
    }
    assert_ne!(client.current_addr(), cluster.addrs[a]);
    // Every acknowledged change came through, once, and the result is
    // what a linearizable read says.
    for index in &acked {
        assert!(
            follower.change_indexes.contains(index),
            "the change at {index} is missing from {:?}",
            follower.change_indexes
        );
    }
    assert_eq!(follower.members, members);
    drop(session);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_follows_the_registry_across_a_reconnect() {
    let mut cluster = Cluster::three().await;
    let a = (cluster.leader() + 1) % 3;
    let client = Client::connect_with(cluster.addrs_from(a), options())
        .await
        .unwrap();
    let view = client.view(Filter::all().service("web")).await.unwrap();
    assert!(view.is_empty());
    let writer = Client::connect_with(cluster.addrs_without(a), options())
        .await
        .unwrap();
    let session = writer
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    for i in 0..10 {
        let service = if i % 2 == 0 { "web" } else { "db" };
        session
            .register(MemberSpec::new(format!("v-{i}"), service))
            .await
            .unwrap();
    }
    let web = Filter::all().service("web");
    let (members, index) = writer
        .list(web.clone(), Consistency::Linearizable)
        .await
        .unwrap();
    within("the view to catch up", view.wait_for_index(index))
        .await
        .unwrap();
    assert_eq!(view.members().into_values().collect::<Vec<_>>(), members);
    assert_eq!(view.len(), 5);

    cluster.stop(a).await;
    for i in 10..16 {
        session
            .register(MemberSpec::new(format!("v-{i}"), "web"))
            .await
            .unwrap();
    }
    session.unregister("v-0").await.unwrap();
    session
        .update_metadata("v-2", metadata(&[("k", "v")]), Vec::new())
        .await
        .unwrap();
    let (members, index) = writer.list(web, Consistency::Linearizable).await.unwrap();
    within(
        "the view to catch up after the reconnect",
        view.wait_for_index(index),
    )
    .await
    .unwrap();
    assert!(view.index() >= index);
    assert_eq!(view.members().into_values().collect::<Vec<_>>(), members);
    assert_eq!(view.len(), 10);
    assert_eq!(view.get("v-2").unwrap().metadata, metadata(&[("k", "v")]));
    assert_ne!(client.current_addr(), cluster.addrs[a]);
    cluster.shutdown().await;
}
