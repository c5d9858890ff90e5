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
async fn next_message(
    watch: &mut tonic::Streaming<pb::SubscribeResponse>,
) -> pb::SubscribeResponse {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a message in time")
        .expect("the stream goes on")
        .unwrap()
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
            origin: Some(pb::WriteOrigin {
                client_id: s.client_id.clone(),
                seq,
                ack_below: 0,
            }),
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
