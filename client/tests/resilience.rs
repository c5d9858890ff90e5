//! The SDK's failover, exactly-once writes, session resume and
//! subscription resume, against a scripted fake node.

mod fake;

use std::time::{Duration, Instant};

use fake::{Fake, dead_addr, snapshot, snapshot_part, upsert};
use fuddle_client::{
    Change, Client, ClientOptions, Consistency, Error, Event, Filter, MemberSpec, SessionOptions,
};

fn quick() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_millis(300),
        retry_deadline: Duration::from_secs(5),
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..ClientOptions::default()
    }
}

/// Polls `check` until it holds, for up to five seconds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn calls_fail_over_to_a_reachable_node_and_stay_there() {
    let fake = Fake::default();
    let live = fake.serve().await.to_string();
    let client = Client::connect_with([dead_addr(), live.clone()], quick())
        .await
        .unwrap();
    assert_eq!(client.current_addr(), live);
    let (members, _) = client
        .list(Filter::all(), Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(client.current_addr(), live);
}

#[tokio::test]
async fn server_errors_keep_their_message() {
    let fake = Fake::default();
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
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
    // UNAVAILABLE is retried until the deadline, then reported.
    let options = ClientOptions {
        retry_deadline: Duration::from_millis(300),
        ..quick()
    };
    let client = Client::connect_with([fake.serve().await.to_string()], options)
        .await
        .unwrap();
    let err = client.node_status(None).await.unwrap_err();
    assert_eq!(err.to_string(), "unavailable: no leader");
}

#[tokio::test]
async fn admin_writes_carry_an_empty_origin() {
    let fake = Fake::default();
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    client.unregister("a").await.unwrap();
    let write = fake.state().writes[0].clone();
    assert_eq!(
        (write.client_id.as_str(), write.seq, write.ack_below),
        ("", 0, 0)
    );
}

#[tokio::test]
async fn a_session_write_retried_after_a_lost_answer_keeps_its_seq() {
    let fake = Fake::default();
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    let session = client
        .open_session(SessionOptions::default())
        .await
        .unwrap();
    fake.state().stall_registers = 1;
    let member = session
        .register(MemberSpec::new("m1", "svc"))
        .await
        .unwrap();
    assert_eq!(member.client_id, session.client_id());
    session.unregister("m1").await.unwrap();
    let writes: Vec<(&str, u64, u64)> = {
        let state = fake.state();
        state
            .writes
            .iter()
            .map(|w| (w.kind, w.seq, w.ack_below))
            .collect()
    };
    // The stalled first attempt and its retry share seq 1; the next write
    // is seq 2 and says every answer below it has been seen.
    assert_eq!(
        writes,
        [("register", 1, 1), ("register", 1, 1), ("unregister", 2, 2)]
    );
    assert!(fake.state().writes.iter().all(|w| w.client_id == "c1"));
}

#[tokio::test]
async fn a_session_heartbeats_and_closes() {
    let fake = Fake::default();
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    let options = SessionOptions {
        heartbeat_timeout: Some(Duration::from_millis(300)),
        reconnect_timeout: None,
    };
    let session = client.open_session(options).await.unwrap();
    assert_eq!(session.heartbeat_timeout(), Duration::from_millis(300));
    eventually("three heartbeats", || fake.state().heartbeats >= 3).await;
    session.close().await.unwrap();
    let last = fake.state().writes.last().cloned().unwrap();
    assert_eq!((last.kind, last.client_id.as_str()), ("close", "c1"));
}

#[tokio::test]
async fn a_lost_session_is_resumed_and_an_expired_one_re_registered() {
    let fake = Fake::default();
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    let options = SessionOptions {
        heartbeat_timeout: Some(Duration::from_millis(300)),
        reconnect_timeout: None,
    };
    let session = client.open_session(options).await.unwrap();
    session
        .register(MemberSpec::new("m1", "svc").metadata("k", "1"))
        .await
        .unwrap();
    session
        .register(MemberSpec::new("m2", "svc"))
        .await
        .unwrap();
    session
        .update_metadata("m1", [("k".to_owned(), "2".to_owned())].into(), Vec::new())
        .await
        .unwrap();
    session.unregister("m2").await.unwrap();

    // The stream breaks; the node still knows the session.
    fake.state().session_stream = None;
    eventually("a resumed session", || fake.state().opens == ["", "c1"]).await;
    let registers = || {
        fake.state()
            .writes
            .iter()
            .filter(|w| w.kind == "register")
            .count()
    };
    assert_eq!(registers(), 2);

    // The stream breaks again and the session has expired meanwhile: the
    // member still registered comes back, the unregistered one does not.
    {
        let mut state = fake.state();
        state.expire_on_reopen = true;
        state.session_stream = None;
    }
    eventually("a re-registration", || registers() == 3).await;
    let write = fake
        .state()
        .writes
        .iter()
        .rev()
        .find(|w| w.kind == "register")
        .cloned()
        .unwrap();
    assert_eq!((write.id.as_str(), write.client_id.as_str()), ("m1", "c1"));
    assert_eq!(fake.state().opens, ["", "c1", "c1"]);
    drop(session);
}

#[tokio::test]
async fn a_subscription_resumes_without_gaps_or_duplicates() {
    let fake = Fake::default();
    {
        let mut state = fake.state();
        state
            .scripts
            .push_back((vec![snapshot(5, &["a"]), upsert(6, "b")], true));
        // The second node replays 6 and goes on.
        state
            .scripts
            .push_back((vec![upsert(6, "b"), upsert(7, "c")], true));
        // The third answers with an old snapshot, then newer changes.
        state.scripts.push_back((
            vec![
                snapshot(4, &[]),
                upsert(5, "x"),
                upsert(7, "c"),
                upsert(8, "d"),
            ],
            false,
        ));
    }
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    let mut subscription = client.subscribe(Filter::all(), None).await.unwrap();
    let mut indexes = Vec::new();
    while indexes.last() != Some(&8) {
        let event = tokio::time::timeout(Duration::from_secs(5), subscription.next_event())
            .await
            .unwrap();
        let event = event.unwrap().unwrap();
        if let Event::Changes { changes, .. } = &event {
            assert!(matches!(&changes[0], Change::Upsert(m) if m.id != "x"));
        }
        indexes.push(event.index());
    }
    assert_eq!(indexes, [5, 6, 7, 8]);
    assert_eq!(fake.state().subscribes, [None, Some(6), Some(7)]);
}

#[tokio::test]
async fn a_view_follows_the_registry() {
    let fake = Fake::default();
    {
        let mut state = fake.state();
        state.scripts.push_back((
            vec![
                snapshot_part(3, &["a"], true),
                snapshot_part(3, &["b"], false),
            ],
            true,
        ));
        // A snapshot cut short by a broken stream never reaches the view.
        state
            .scripts
            .push_back((vec![snapshot_part(9, &["p"], true)], true));
        state.scripts.push_back((vec![upsert(4, "c")], false));
    }
    let client = Client::connect_with([fake.serve().await.to_string()], quick())
        .await
        .unwrap();
    let view = client.view(Filter::all()).await.unwrap();
    assert_eq!(view.index(), 3);
    assert_eq!(view.len(), 2);
    tokio::time::timeout(Duration::from_secs(5), view.wait_for_index(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.members().keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(fake.state().subscribes, [None, Some(3), Some(3)]);
}
