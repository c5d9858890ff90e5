//! One real node in process (real sled in a temp dir, real tonic on
//! 127.0.0.1 port 0), driven through the generated gRPC client.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use fuddle_node::Node;
use fuddle_proto::registry as pb;
use fuddle_proto::registry::registry_client::RegistryClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// Generous: tests wait on conditions, never on speed.
const DEADLINE: Duration = Duration::from_secs(30);

use common::config;

async fn client(node: &Node) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{}", node.local_addr))
        .await
        .unwrap()
}

/// Waits until the node has a leader, so writes do not race the election.
async fn ready(c: &mut RegistryClient<Channel>) {
    common::wait_for_leader(c, DEADLINE).await;
}

/// An open session stream; dropping `heartbeats` stops it.
struct TestSession {
    client_id: String,
    heartbeats: mpsc::Sender<pb::SessionRequest>,
    _responses: tonic::Streaming<pb::SessionResponse>,
}

async fn open_session(
    c: &mut RegistryClient<Channel>,
    hb_ms: u64,
    reconnect_ms: u64,
) -> TestSession {
    let (tx, responses, opened) = common::open_raw_session(c, hb_ms, reconnect_ms).await;
    assert!(!opened.resumed);
    TestSession {
        client_id: opened.client_id,
        heartbeats: tx,
        _responses: responses,
    }
}

fn member(id: &str, service: &str) -> pb::Member {
    pb::Member {
        id: id.into(),
        service: service.into(),
        locality: "local.a".into(),
        revision: "r1".into(),
        created_ms: 1,
        metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
        ..Default::default()
    }
}

fn origin(session: &TestSession, seq: u64) -> Option<pb::WriteOrigin> {
    Some(pb::WriteOrigin {
        client_id: session.client_id.clone(),
        seq,
        ack_below: seq,
    })
}

async fn list(c: &mut RegistryClient<Channel>) -> pb::ListMembersResponse {
    c.list_members(pb::ListMembersRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn register_list_update_subscribe_restart() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;

    let mut watch = c
        .subscribe(pb::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();
    let snapshot = watch.next().await.unwrap().unwrap();
    let Some(pb::subscribe_response::Kind::Snapshot(snap)) = snapshot.kind else {
        panic!("expected a snapshot first");
    };
    assert!(snap.members.is_empty());

    let s = open_session(&mut c, 10_000, 60_000).await;
    for (seq, id) in [(1, "a-1"), (2, "a-2"), (3, "b-1")] {
        let service = if id.starts_with('a') { "alpha" } else { "beta" };
        let r = c
            .register(pb::RegisterRequest {
                origin: origin(&s, seq),
                member: Some(member(id, service)),
            })
            .await
            .unwrap()
            .into_inner();
        let m = r.member.unwrap();
        assert_eq!(m.client_id, s.client_id);
        assert_eq!(m.status, pb::MemberStatus::Up as i32);
        assert_eq!(m.create_index, r.index);
    }
    // A retry of seq 3 is answered the same and applied once.
    let again = c
        .register(pb::RegisterRequest {
            origin: origin(&s, 3),
            member: Some(member("b-1", "beta")),
        })
        .await
        .unwrap()
        .into_inner();
    let listed = list(&mut c).await;
    assert_eq!(listed.members.len(), 3);
    assert_eq!(again.member.unwrap().mod_index, listed.members[2].mod_index);

    let filtered = c
        .list_members(pb::ListMembersRequest {
            filter: Some(pb::Filter {
                service: "al*".into(),
                ..Default::default()
            }),
            consistency: pb::Consistency::Stale as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.members.len(), 2);

    let updated = c
        .update_metadata(pb::UpdateMetadataRequest {
            origin: None,
            id: "a-1".into(),
            set: BTreeMap::from([("zone".to_string(), "z1".to_string())]),
            remove: vec!["k".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        updated.member.unwrap().metadata,
        BTreeMap::from([("zone".to_string(), "z1".to_string())])
    );
    c.unregister(pb::UnregisterRequest {
        origin: None,
        id: "a-2".into(),
    })
    .await
    .unwrap();

    // The watcher sees every change, in index order, no duplicates.
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let msg = next_message(&mut watch).await;
        if let Some(pb::subscribe_response::Kind::Events(e)) = msg.kind {
            for change in e.changes {
                seen.push((e.index, change.kind.unwrap()));
            }
        }
    }
    let indexes: Vec<u64> = seen.iter().map(|(i, _)| *i).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    assert!(matches!(&seen[4].1, pb::change::Kind::Removed(id) if id == "a-2"));
    let last_index = indexes[4];

    // Resume from an index inside the history: no snapshot, the rest only.
    let mut resumed = c
        .subscribe(pb::SubscribeRequest {
            since_index: Some(indexes[2]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = resumed.next().await.unwrap().unwrap();
    let Some(pb::subscribe_response::Kind::Events(e)) = first.kind else {
        panic!("expected events, got {first:?}");
    };
    assert_eq!(e.index, indexes[3]);

    let before = list(&mut c).await;
    drop(watch);
    drop(resumed);
    drop(s);
    node.shutdown().await;

    // A restart on the same data dir restores every member and the index.
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let after = list(&mut c).await;
    assert_eq!(after.members, before.members);
    assert!(after.index >= last_index);
    node.shutdown().await;
}

#[tokio::test]
async fn silent_session_goes_down_then_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let s = open_session(&mut c, 300, 600).await;
    c.register(pb::RegisterRequest {
        origin: origin(&s, 1),
        member: Some(member("m-1", "svc")),
    })
    .await
    .unwrap();
    // Heartbeats keep it up for a while.
    for _ in 0..6 {
        s.heartbeats
            .send(pb::SessionRequest {
                kind: Some(pb::session_request::Kind::Heartbeat(pb::Heartbeat {})),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = list(&mut c).await.members.remove(0);
    assert_eq!(m.status, pb::MemberStatus::Up as i32);
    // Silence: down, then gone.
    drop(s);
    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let members = list(&mut c).await.members;
        let status = members.first().map(|m| m.status);
        if statuses.last() != Some(&status) {
            statuses.push(status);
        }
        if status.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        statuses,
        vec![
            Some(pb::MemberStatus::Up as i32),
            Some(pb::MemberStatus::Down as i32),
            None
        ]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_input_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let s = open_session(&mut c, 10_000, 60_000).await;
    let cases = [
        (member("bad id", "svc"), "member.id"),
        (member(&"x".repeat(300), "svc"), "member.id"),
        (member("ok", ""), "member.service"),
        (member("ok", &"s".repeat(129)), "member.service"),
    ];
    for (m, field) in cases {
        let err = c
            .register(pb::RegisterRequest {
                origin: origin(&s, 0),
                member: Some(m),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(field), "{}", err.message());
    }
    let mut big = member("ok", "svc");
    big.metadata.insert("v".into(), "x".repeat(5000));
    let err = c
        .register(pb::RegisterRequest {
            origin: origin(&s, 0),
            member: Some(big),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("4096"), "{}", err.message());
    // Without a session.
    let err = c
        .register(pb::RegisterRequest {
            origin: None,
            member: Some(member("ok", "svc")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Another session cannot take a member over.
    c.register(pb::RegisterRequest {
        origin: origin(&s, 1),
        member: Some(member("taken", "svc")),
    })
    .await
    .unwrap();
    let other = open_session(&mut c, 10_000, 60_000).await;
    let err = c
        .register(pb::RegisterRequest {
            origin: origin(&other, 1),
            member: Some(member("taken", "svc")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let err = c
        .get_member(pb::GetMemberRequest {
            id: "nope".into(),
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The node keeps serving.
    assert_eq!(list(&mut c).await.members.len(), 1);
    node.shutdown().await;
}

/// The state machine lives in memory: a node snapshots once enough
/// commands were applied (here every 20, entries alone would never
/// trigger one), and a restart loads that snapshot and re-applies the log
/// after it, ending with every member.
#[tokio::test]
async fn snapshots_follow_applied_commands_and_a_restart_replays_the_log_after_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.raft.snapshot_every = 1_000_000;
    cfg.raft.snapshot_every_commands = 20;
    let node = Node::start(cfg.clone()).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let s = open_session(&mut c, 30_000, 60_000).await;
    let mut seq = 0;
    let mut register = async |c: &mut RegistryClient<Channel>, n: usize, prefix: &str| {
        for i in 0..n {
            seq += 1;
            c.register(pb::RegisterRequest {
                origin: origin(&s, seq),
                member: Some(member(&format!("{prefix}-{i}"), "svc")),
            })
            .await
            .unwrap();
        }
    };
    register(&mut c, 60, "a").await;
    let snapshot_index = |c: &mut RegistryClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.node_status(pb::NodeStatusRequest { node_id: 0 })
                .await
                .unwrap()
                .into_inner()
                .snapshot_index
        }
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut snapshotted = snapshot_index(&mut c).await;
    while snapshotted == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot after 60 registrations with a limit of 20 commands"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        snapshotted = snapshot_index(&mut c).await;
    }
    // Written after the snapshot: only the log has these.
    register(&mut c, 5, "b").await;
    let before = list(&mut c).await;
    assert_eq!(before.members.len(), 65);
    assert!(before.index > snapshotted);
    drop(s);
    node.shutdown().await;

    let node = Node::start(cfg).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let after = list(&mut c).await;
    assert_eq!(after.members, before.members);
    assert!(after.index >= before.index);
    node.shutdown().await;
}

/// A snapshot larger than one message arrives in chunks of at most 1 000
/// members, all at the snapshot's index, in id order, with `more` on all
/// but the last; the first change after it follows the last chunk. (The
/// node makes each chunk only when the server takes the one before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_comes_in_ordered_chunks_then_the_changes_after_it() {
    const MEMBERS: usize = 2_100;
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let s = open_session(&mut c, 30_000, 60_000).await;

    register_many(&c, &s, MEMBERS as u64, "big").await;

    let mut watch = subscribe_to(&mut c, "big").await;
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    let mut index = None;
    loop {
        let message = next_message(&mut watch).await;
        let Some(pb::subscribe_response::Kind::Snapshot(part)) = message.kind else {
            panic!("expected only snapshot chunks until the last, got {message:?}");
        };
        assert_eq!(*index.get_or_insert(part.index), part.index);
        sizes.push(part.members.len());
        ids.extend(part.members.into_iter().map(|m| m.id));
        if !part.more {
            break;
        }
    }
    assert_eq!(sizes, [1000, 1000, 100]);
    let expected: Vec<String> = (1..=MEMBERS).map(|i| format!("m-{i:05}")).collect();
    assert_eq!(ids, expected);

    c.register(pb::RegisterRequest {
        origin: origin(&s, MEMBERS as u64 + 1),
        member: Some(member("m-late", "big")),
    })
    .await
    .unwrap();
    let next = loop {
        match next_message(&mut watch).await.kind {
            Some(pb::subscribe_response::Kind::Progress(_)) => continue,
            Some(pb::subscribe_response::Kind::Events(events)) => break events,
            other => panic!("expected the change, got {other:?}"),
        }
    };
    assert!(next.index > index.unwrap());
    let [
        pb::Change {
            kind: Some(pb::change::Kind::Upsert(late)),
        },
    ] = next.changes.as_slice()
    else {
        panic!("expected one upsert, got {next:?}");
    };
    assert_eq!(late.id, "m-late");

    // No match: one empty snapshot, complete at once.
    let mut empty = subscribe_to(&mut c, "nothing-here").await;
    let message = empty.next().await.unwrap().unwrap();
    let Some(pb::subscribe_response::Kind::Snapshot(part)) = message.kind else {
        panic!("expected a snapshot, got {message:?}");
    };
    assert!(part.members.is_empty() && !part.more);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_ends_with_a_goodbye_when_its_node_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let mut watch = subscribe_to(&mut c, "svc").await;
    let first = next_message(&mut watch).await;
    assert!(
        matches!(first.kind, Some(pb::subscribe_response::Kind::Snapshot(_))),
        "{first:?}"
    );

    // The stream is live and idle; shutting down must end it with the
    // status that sends the client elsewhere, not leave it open until the
    // node gives up waiting and drops the connection.
    let stopping = tokio::spawn(node.shutdown());
    // One deadline for the whole wait: progress messages keep coming on a
    // stream that is never ended.
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match watch.next().await {
                Some(Ok(pb::SubscribeResponse {
                    kind: Some(pb::subscribe_response::Kind::Progress(_)),
                })) => continue,
                Some(Ok(other)) => panic!("expected the end of the stream, got {other:?}"),
                Some(Err(status)) => break status,
                None => panic!("the stream ended without saying why"),
            }
        }
    });
    let status = end.await.expect("the stream ends in time");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    stopping.await.unwrap();
}

/// A subscription to the members of `service`.
async fn subscribe_to(
    c: &mut RegistryClient<Channel>,
    service: &str,
) -> tonic::Streaming<pb::SubscribeResponse> {
    c.subscribe(pb::SubscribeRequest {
        filter: Some(pb::Filter {
            service: service.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next message of a subscription, which must come within `DEADLINE`
/// and not end the stream.
/// The next message of a subscription or session stream.
async fn next_message<T>(stream: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .expect("the stream does not fail")
}

/// Registers members `m-00001` to `m-{count}` of `service`, 64 at a time,
/// with the session's seqs 1 to `count`.
async fn register_many(c: &RegistryClient<Channel>, s: &TestSession, count: u64, service: &str) {
    // Fully qualified: this file also imports tokio-stream's `StreamExt`.
    let requests = (1..=count).map(|seq| {
        let mut c = c.clone();
        // Not `origin()`: with 64 writes in flight, acknowledging below
        // `seq` would refuse a lower seq still on its way as a stale retry.
        let request = pb::RegisterRequest {
            origin: origin_of(&s.client_id, seq),
            member: Some(member(&format!("m-{seq:05}"), service)),
        };
        async move { c.register(request).await.map(|_| ()) }
    });
    let writes: Vec<_> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
        futures::stream::iter(requests),
        64,
    ))
    .await;
    assert!(
        writes.iter().all(Result::is_ok),
        "every registration succeeds"
    );
}

/// A session stream that also carries writes: requests go out through
/// `tx`, answers come back on `responses` (with room for a burst).
struct WriteStream {
    client_id: String,
    tx: mpsc::Sender<pb::SessionRequest>,
    responses: tonic::Streaming<pb::SessionResponse>,
}

impl WriteStream {
    async fn open(c: &mut RegistryClient<Channel>) -> WriteStream {
        // 0: the node's default timeouts.
        let (tx, responses, opened) = common::open_raw_session(c, 0, 0).await;
        assert!(opened.stream_writes, "this node takes writes on the stream");
        WriteStream {
            client_id: opened.client_id,
            tx,
            responses,
        }
    }

    async fn send(&self, id: u64, kind: Option<pb::session_write::Kind>) {
        let write = pb::SessionWrite { id, kind };
        self.tx
            .send(pb::SessionRequest {
                kind: Some(pb::session_request::Kind::Write(write)),
            })
            .await
            .unwrap();
    }

    /// The next write result (heartbeat acks are skipped).
    async fn result(&mut self) -> (u64, Result<pb::WriteResponse, tonic::Status>) {
        loop {
            let message = next_message(&mut self.responses).await;
            match message.kind {
                Some(pb::session_response::Kind::Written(pb::WriteResult { id, kind })) => {
                    let result = match kind.expect("a result says how the write went") {
                        pb::write_result::Kind::Ok(response) => Ok(response),
                        pb::write_result::Kind::Error(e) => {
                            Err(tonic::Status::new(tonic::Code::from(e.code), e.message))
                        }
                    };
                    return (id, result);
                }
                Some(pb::session_response::Kind::Ack(_)) => continue,
                other => panic!("unexpected session message {other:?}"),
            }
        }
    }

    /// Writes `write` as `id` and waits for its answer.
    async fn write(
        &mut self,
        id: u64,
        write: pb::session_write::Kind,
    ) -> Result<pb::WriteResponse, tonic::Status> {
        self.send(id, Some(write)).await;
        let (answered, result) = self.result().await;
        assert_eq!(answered, id);
        result
    }

    async fn heartbeat_is_acked(&mut self) {
        self.tx
            .send(pb::SessionRequest {
                kind: Some(pb::session_request::Kind::Heartbeat(pb::Heartbeat {})),
            })
            .await
            .unwrap();
        let message = next_message(&mut self.responses).await;
        assert!(
            matches!(message.kind, Some(pb::session_response::Kind::Ack(_))),
            "{message:?}"
        );
    }
}

/// Write `seq` of session `client_id`, acknowledging nothing (so that it
/// may be sent again).
fn origin_of(client_id: &str, seq: u64) -> Option<pb::WriteOrigin> {
    Some(pb::WriteOrigin {
        client_id: client_id.into(),
        seq,
        ack_below: 0,
    })
}

fn stream_origin(seq: u64) -> Option<pb::WriteOrigin> {
    // The stream's session is meant when the origin names none.
    origin_of("", seq)
}

fn register_write(seq: u64, m: pb::Member) -> pb::session_write::Kind {
    pb::session_write::Kind::Register(pb::RegisterRequest {
        origin: stream_origin(seq),
        member: Some(m),
    })
}

#[tokio::test]
async fn writes_on_the_session_stream_are_answered_by_id_and_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let mut s = WriteStream::open(&mut c).await;

    let registered = s.write(7, register_write(1, member("w-1", "svc"))).await;
    let m = registered.unwrap().member.unwrap();
    assert_eq!(m.client_id, s.client_id, "owned by the stream's session");
    let updated = s
        .write(
            8,
            pb::session_write::Kind::UpdateMetadata(pb::UpdateMetadataRequest {
                origin: stream_origin(2),
                id: "w-1".into(),
                set: BTreeMap::from([("zone".into(), "b".into())]),
                remove: vec!["k".into()],
            }),
        )
        .await
        .unwrap()
        .member
        .unwrap();
    assert_eq!(
        updated.metadata,
        BTreeMap::from([("zone".into(), "b".into())])
    );

    // The same seq sent again as a unary call gets the stored answer: a
    // write that went both ways is applied once.
    let again = c
        .update_metadata(pb::UpdateMetadataRequest {
            origin: origin_of(&s.client_id, 2),
            id: "w-1".into(),
            set: BTreeMap::from([("zone".into(), "c".into())]),
            remove: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.member.unwrap(), updated);

    // Many writes in flight at once: each answered once, under its id.
    for seq in 3..23 {
        s.send(
            seq * 10,
            Some(register_write(seq, member(&format!("p-{seq}"), "svc"))),
        )
        .await;
    }
    let mut answered = std::collections::BTreeSet::new();
    for _ in 3..23 {
        let (id, result) = s.result().await;
        // Each answer is its own write's: id seq * 10 registered p-{seq}.
        let member = result.unwrap().member.unwrap();
        assert_eq!(member.id, format!("p-{}", id / 10), "answer {id}");
        assert!(answered.insert(id), "write {id} answered twice");
    }
    assert_eq!(answered, (3..23).map(|seq| seq * 10).collect());

    let removed = s
        .write(
            9,
            pb::session_write::Kind::Unregister(pb::UnregisterRequest {
                origin: stream_origin(23),
                id: "w-1".into(),
            }),
        )
        .await
        .unwrap();
    assert!(removed.member.is_none());
    // Its retry as a call is answered with the index that removed the
    // member, not the retry's own.
    let replayed = c
        .unregister(pb::UnregisterRequest {
            origin: origin_of(&s.client_id, 23),
            id: "w-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.index, removed.index);
    let listed = list(&mut c).await;
    assert!(listed.index > removed.index, "the retry was an entry too");
    assert_eq!(listed.members.len(), 20);
    assert!(listed.members.iter().all(|m| m.id.starts_with("p-")));
    // 23 writes on the stream, two unary calls.
    assert_eq!(node.core.writes.get(), (2, 23));
    node.shutdown().await;
}

#[tokio::test]
async fn a_bad_write_on_the_session_stream_is_answered_with_an_error_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let mut s = WriteStream::open(&mut c).await;
    let other = open_session(&mut c, 10_000, 60_000).await;

    let bad = [
        (register_write(1, member("bad id", "svc")), "member.id"),
        (register_write(2, member("ok", "")), "member.service"),
        (
            pb::session_write::Kind::Register(pb::RegisterRequest {
                origin: stream_origin(3),
                member: None,
            }),
            "member: missing",
        ),
        (
            pb::session_write::Kind::Register(pb::RegisterRequest {
                origin: origin_of(&other.client_id, 4),
                member: Some(member("ok", "svc")),
            }),
            "origin.client_id",
        ),
        (
            pb::session_write::Kind::UpdateMetadata(pb::UpdateMetadataRequest {
                origin: stream_origin(5),
                id: "ok".into(),
                set: BTreeMap::from([("k".into(), "x".repeat(5000))]),
                remove: vec![],
            }),
            "set",
        ),
    ];
    for (id, (write, field)) in (1..).zip(bad) {
        let err = s.write(id, write).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}", err.message());
        // Still the session's stream: heartbeats go on being acknowledged.
        s.heartbeat_is_acked().await;
    }
    s.send(40, None).await;
    let (id, result) = s.result().await;
    assert_eq!(id, 40);
    let err = result.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("write.kind"), "{}", err.message());

    // Refusals from applying come back the same way.
    let err = s
        .write(
            41,
            pb::session_write::Kind::Unregister(pb::UnregisterRequest {
                origin: stream_origin(6),
                id: "nobody".into(),
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // A member another session owns stays its own.
    c.register(pb::RegisterRequest {
        origin: origin(&other, 1),
        member: Some(member("theirs", "svc")),
    })
    .await
    .unwrap();
    let err = s
        .write(42, register_write(7, member("theirs", "svc")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");
    s.write(43, register_write(8, member("mine", "svc")))
        .await
        .unwrap();
    let listed = list(&mut c).await;
    let ids: Vec<_> = listed.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["mine", "theirs"]);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_stream_limit_is_refused_write_by_write_never_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut c = client(&node).await;
    ready(&mut c).await;
    let mut s = WriteStream::open(&mut c).await;
    let burst = 4 * fuddle_node::registry_service::MAX_STREAM_WRITES as u64;
    for seq in 1..=burst {
        s.send(
            seq,
            Some(register_write(seq, member(&format!("b-{seq:03}"), "svc"))),
        )
        .await;
    }
    let (mut applied, mut refused) = (std::collections::BTreeSet::new(), 0);
    for _ in 0..burst {
        let (id, result) = s.result().await;
        match result {
            Ok(response) => {
                assert!(applied.insert(response.member.unwrap().id), "{id} twice");
            }
            Err(err) => {
                assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
                assert!(err.message().contains("in flight"), "{}", err.message());
                refused += 1;
            }
        }
    }
    assert_eq!(applied.len() + refused, burst as usize);
    // All were sent before the node read the first: a commit takes a disk
    // sync, far longer than reading a few hundred messages, so the limit
    // was reached and the rest refused rather than queued.
    assert!(refused > 0, "no write was refused");
    assert!(applied.len() >= fuddle_node::registry_service::MAX_STREAM_WRITES);
    // What was applied is exactly what was answered as applied.
    let listed = list(&mut c).await;
    let ids: std::collections::BTreeSet<_> = listed.members.into_iter().map(|m| m.id).collect();
    assert_eq!(ids, applied);
    // The stream still serves the session.
    s.heartbeat_is_acked().await;
    node.shutdown().await;
}
