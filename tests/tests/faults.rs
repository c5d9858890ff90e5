//! The reliability suite's fault scenarios: real `fuddle-node` processes
//! behind fault-injecting proxies, under recorded client load, with
//! SIGKILL, SIGSTOP, partitions, one-way loss and delay; every scenario
//! ends with the history, subscription, durability and split-brain checks
//! of `tests/faults/check.rs`. See `docs/reliability.md`.
//!
//! `FUDDLE_SOAK=1` runs the `soak_*` versions: the same scenarios with
//! longer load and repeated faults (`FUDDLE_SOAK_ROUNDS`, default 10).
//! Without it they return at once with a note.

// The harness is a vocabulary for scenarios (every fault, every target);
// not every scenario of this file uses every word of it.
#[allow(dead_code)]
#[path = "../faults/mod.rs"]
mod faults;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure};
use faults::history::{Outcome, Record};
use faults::load::{LoadSpec, connect, open_session, single_attempt};
use faults::proxy::{Proxy, ProxyRuntime};
use faults::scenario::{Cond, Ctx, Scenario, Step, Target};
use fuddle_client::{
    Client, Consistency, Filter, Member, MemberSpec, MemberStatus, Session, SessionOptions,
};

/// Scenarios run one at a time: each is a cluster of three nodes under
/// load, and two of them at once on a two-core machine would mostly test
/// the scheduler.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

const WAIT: Duration = Duration::from_secs(30);

/// Whether the soak versions run, and how many rounds of faults.
fn soak() -> Option<usize> {
    if std::env::var("FUDDLE_SOAK").ok().as_deref() != Some("1") {
        eprintln!(
            "soak test skipped: set FUDDLE_SOAK=1 to run it (FUDDLE_SOAK_ROUNDS rounds of faults, default 10)"
        );
        return None;
    }
    Some(
        std::env::var("FUDDLE_SOAK_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(10),
    )
}

fn load() -> LoadSpec {
    LoadSpec::default()
}

// ---------------------------------------------------------------------------
// The proxy itself
// ---------------------------------------------------------------------------

/// An echo server on `ip`, for the proxy's own tests.
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 1024];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buffer[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Connects from `ip` to `addr`.
fn connect_from(ip: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = runtime.block_on(socket.connect(addr))?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Sends `message` and reads the echo, within `timeout`.
fn echo(stream: &mut TcpStream, message: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(message)?;
    let mut got = vec![0u8; message.len()];
    stream.read_exact(&mut got)?;
    Ok(got)
}

#[test]
fn proxy_forwards_partitions_loses_and_delays_per_source_ip() {
    let runtime = ProxyRuntime::new();
    let proxy = Proxy::start(&runtime.handle(), echo_server());
    let a = IpAddr::V4(Ipv4Addr::new(127, 0, 200, 11));
    let b = IpAddr::V4(Ipv4Addr::new(127, 0, 200, 12));
    let short = Duration::from_millis(300);

    // Plain forwarding.
    let mut from_a = connect_from(a, proxy.addr()).unwrap();
    assert_eq!(echo(&mut from_a, b"hello", short).unwrap(), b"hello");

    // A partition of `a` cuts its connection and refuses new ones, and
    // leaves `b` alone.
    let mut from_b = connect_from(b, proxy.addr()).unwrap();
    proxy.update(a, |r| r.blocked = true);
    assert!(
        echo(&mut from_a, b"cut?", short).is_err(),
        "a's connection survived"
    );
    if let Ok(mut again) = connect_from(a, proxy.addr()) {
        assert!(echo(&mut again, b"new", short).is_err(), "a reconnected");
    }
    assert_eq!(echo(&mut from_b, b"b", short).unwrap(), b"b");
    assert!(proxy.stats().cut.load(Ordering::Relaxed) >= 1);
    proxy.heal();
    let mut from_a = connect_from(a, proxy.addr()).unwrap();
    assert_eq!(echo(&mut from_a, b"back", short).unwrap(), b"back");

    // One-way loss: the request reaches the server, the answer is lost;
    // once the loss ends the connection, no longer whole, is cut.
    proxy.update(a, |r| r.drop_from_target = true);
    assert!(echo(&mut from_a, b"lost", short).is_err());
    assert!(proxy.stats().dropped_bytes.load(Ordering::Relaxed) >= 4);
    proxy.heal();
    assert!(
        echo(&mut from_a, b"after", short).is_err(),
        "a torn stream survived"
    );
    let mut from_a = connect_from(a, proxy.addr()).unwrap();
    assert_eq!(echo(&mut from_a, b"whole", short).unwrap(), b"whole");

    // Delay.
    proxy.update(a, |r| r.delay = Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(
        echo(&mut from_a, b"slow", Duration::from_secs(3)).unwrap(),
        b"slow"
    );
    // Both ways: at least twice the delay.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    proxy.heal();
    let started = Instant::now();
    assert_eq!(echo(&mut from_a, b"fast", short).unwrap(), b"fast");
    assert!(started.elapsed() < Duration::from_millis(200));
}

// ---------------------------------------------------------------------------
// 1. Leader SIGKILL under load
// ---------------------------------------------------------------------------

fn leader_kill(rounds: usize, spec: LoadSpec) -> Scenario {
    let mut scenario = Scenario::new("leader-kill", 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(40), WAIT));
    for _ in 0..rounds {
        scenario = scenario.steps([
            Step::Mark("old", Target::Leader),
            Step::Kill(Target::Mark("old")),
            Step::WaitFor(Cond::LeaderOtherThan(Target::Mark("old")), WAIT),
            Step::WaitFor(Cond::Progress(60), WAIT),
            Step::Restart(Target::Mark("old")),
            Step::WaitFor(Cond::CaughtUp, WAIT),
            Step::WaitFor(Cond::Progress(20), WAIT),
        ]);
    }
    scenario.step(Step::Check)
}

#[test]
fn leader_sigkill_under_load() {
    let _one = serial();
    leader_kill(2, load()).run();
}

#[test]
fn soak_leader_sigkill_under_load() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    leader_kill(rounds, load()).run();
}

// ---------------------------------------------------------------------------
// 2. Follower SIGKILL, log purged past it, restart and catch up
// ---------------------------------------------------------------------------

fn follower_purge(rounds: usize, spec: LoadSpec) -> Scenario {
    let mut scenario = Scenario::new(
        "follower-purge",
        3,
        &["--snapshot-every", "50", "--keep-behind-snapshot", "10"],
    )
    .step(Step::Load(spec))
    .step(Step::WaitFor(Cond::Progress(20), WAIT));
    for _ in 0..rounds {
        scenario = scenario.steps([
            Step::Mark("follower", Target::Follower),
            Step::Run(
                "remember the follower's last log index",
                Box::new(|ctx: &mut Ctx| {
                    let f = ctx.marks["follower"];
                    let last = ctx.node_status(f)?.node.last_log_index;
                    ctx.values.insert("follower_last", last);
                    Ok(())
                }),
            ),
            Step::Kill(Target::Mark("follower")),
            Step::WaitFor(
                Cond::Custom(
                    "the leader purges its log past the follower's last index",
                    Box::new(|ctx: &mut Ctx| {
                        let last = ctx.values["follower_last"];
                        let leader = ctx.agreed_leader(ctx.marks.get("follower").copied())?;
                        let snapshot = ctx.node_status(leader)?.snapshot_index;
                        // The log is kept 10 entries behind the snapshot.
                        ensure!(
                            snapshot > last + 10 + 20,
                            "snapshot at {snapshot}, the follower ended at {last}"
                        );
                        ctx.values.insert("leader_snapshot", snapshot);
                        Ok(())
                    }),
                ),
                WAIT,
            ),
            Step::Restart(Target::Mark("follower")),
            Step::WaitFor(Cond::CaughtUp, WAIT),
            Step::Run(
                "the follower holds a snapshot past its old log",
                Box::new(|ctx: &mut Ctx| {
                    let f = ctx.marks["follower"];
                    let status = ctx.node_status(f)?;
                    let last = ctx.values["follower_last"];
                    ensure!(
                        status.snapshot_index > last,
                        "the follower's snapshot is at {}, its log ended at {last}: it did not catch up by snapshot",
                        status.snapshot_index
                    );
                    Ok(())
                }),
            ),
            Step::WaitFor(Cond::Progress(20), WAIT),
        ]);
    }
    scenario.step(Step::Check)
}

#[test]
fn follower_sigkill_restart_after_log_purge() {
    let _one = serial();
    follower_purge(2, load()).run();
}

#[test]
fn soak_follower_sigkill_restart_after_log_purge() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    follower_purge(rounds, load()).run();
}

// ---------------------------------------------------------------------------
// 3. Leader isolated by a partition
// ---------------------------------------------------------------------------

/// No write, and no linearizable read, sent to the isolated leader while
/// it was cut off succeeded (in any round), and some were sent.
fn isolated_leader_acknowledged_nothing(ctx: &Ctx, record: &Record) -> anyhow::Result<()> {
    let marks = |name| ctx.all_marks.iter().filter(move |(n, _)| *n == name);
    let notes = |name| ctx.all_notes.iter().filter(move |(n, _)| *n == name);
    let rounds = marks("old").zip(notes("isolated")).zip(notes("healing"));
    let mut sent = 0;
    for (((_, old), (_, isolated)), (_, healed)) in rounds {
        let addr = ctx.cluster.nodes[*old].addr();
        for op in &record.ops {
            let during = op.invoked >= *isolated && op.completed.is_some_and(|c| c < *healed);
            if op.via != addr || !during {
                continue;
            }
            sent += 1;
            let acknowledged = matches!(
                op.outcome,
                Outcome::Registered(_) | Outcome::Unregistered(_) | Outcome::Found { .. }
            ) || (matches!(op.outcome, Outcome::Listed { .. })
                && op.request == faults::history::Request::ListLinearizable);
            ensure!(
                !acknowledged,
                "the isolated leader {} answered {:?} with {:?} while cut off",
                ctx.node_name(*old),
                op.request,
                op.outcome
            );
        }
    }
    ensure!(
        sent > 0,
        "no request went to an isolated leader: the scenario tested nothing"
    );
    eprintln!("{sent} requests went to an isolated leader while it was cut off; none succeeded");
    Ok(())
}

fn isolated_leader(rounds: usize, spec: LoadSpec) -> Scenario {
    let mut scenario = Scenario::new("isolated-leader", 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(30), WAIT));
    for _ in 0..rounds {
        scenario = scenario.steps([
            Step::Mark("old", Target::Leader),
            Step::Isolate(Target::Mark("old")),
            Step::Note("isolated"),
            Step::WaitFor(Cond::LeaderOtherThan(Target::Mark("old")), WAIT),
            Step::WaitFor(Cond::Progress(40), WAIT),
            // Long enough for requests to the isolated node to time out.
            Step::Sleep(Duration::from_secs(3)),
            Step::Note("healing"),
            Step::Heal,
            Step::WaitFor(Cond::Leader, WAIT),
            Step::WaitFor(Cond::CaughtUp, WAIT),
            Step::WaitFor(Cond::Progress(20), WAIT),
        ]);
    }
    scenario.step(Step::Check).verify(
        "the isolated leader acknowledged nothing",
        Box::new(|ctx, record, _| isolated_leader_acknowledged_nothing(ctx, record)),
    )
}

#[test]
fn isolated_leader_stops_acknowledging_and_no_split_brain() {
    let _one = serial();
    isolated_leader(2, load()).run();
}

#[test]
fn soak_isolated_leader_stops_acknowledging_and_no_split_brain() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    isolated_leader(rounds, load()).run();
}

// ---------------------------------------------------------------------------
// 4. A paused leader resumed after a new one was elected
// ---------------------------------------------------------------------------

/// Reports the requests that were in flight at the paused leader across
/// the pause (the history check judges them).
fn report_in_flight(ctx: &Ctx, record: &Record) -> anyhow::Result<()> {
    let old = ctx.marks["old"];
    let addr = ctx.cluster.nodes[old].addr();
    let (paused, resumed) = (ctx.notes["paused"], ctx.notes["resumed"]);
    let across: Vec<String> = record
        .ops
        .iter()
        .filter(|op| op.via == addr && op.invoked < resumed)
        .filter(|op| op.completed.is_none_or(|c| c > paused))
        .map(|op| format!("{:?} -> {:?}", op.request, op.outcome))
        .collect();
    eprintln!(
        "{} requests were in flight at the paused leader {}:\n  {}",
        across.len(),
        ctx.node_name(old),
        across.join("\n  ")
    );
    Ok(())
}

fn paused_leader(rounds: usize, spec: LoadSpec) -> Scenario {
    let mut scenario = Scenario::new("paused-leader", 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(30), WAIT));
    for _ in 0..rounds {
        scenario = scenario.steps([
            Step::Mark("old", Target::Leader),
            Step::Pause(Target::Mark("old")),
            Step::Note("paused"),
            Step::WaitFor(Cond::LeaderOtherThan(Target::Mark("old")), WAIT),
            Step::WaitFor(Cond::Progress(10), WAIT),
            // Resumed while requests sent to it before and during the
            // pause still wait for their answer (see the request timeout).
            Step::Resume(Target::Mark("old")),
            Step::Note("resumed"),
            Step::WaitFor(Cond::Leader, WAIT),
            Step::WaitFor(Cond::CaughtUp, WAIT),
            Step::WaitFor(Cond::Progress(20), WAIT),
        ]);
    }
    scenario.step(Step::Check).verify(
        "requests in flight at the paused leader",
        Box::new(|ctx, record, _| report_in_flight(ctx, record)),
    )
}

#[test]
fn paused_leader_resumed_after_a_new_election_acknowledges_no_stale_write() {
    let _one = serial();
    paused_leader(1, paused_load()).run();
}

/// A request timeout well past the pause, so that the requests sent to the
/// paused leader are still waiting when it resumes.
/// Six writers, so that two of them (rotated over three nodes) start on
/// the leader and are caught by its pause.
fn paused_load() -> LoadSpec {
    LoadSpec {
        writers: 6,
        request_timeout: Duration::from_secs(20),
        ..load()
    }
}

#[test]
fn soak_paused_leader_resumed_after_a_new_election() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    paused_leader(rounds, paused_load()).run();
}

// ---------------------------------------------------------------------------
// 5. Full-cluster SIGKILL and restart
// ---------------------------------------------------------------------------

/// `reads_across`: whether readers keep reading while the cluster
/// restarts. They must not, for now: see
/// [`restored_leader_serves_no_linearizable_read_older_than_an_acknowledged_write`].
/// Without them, the readers pause from just before the kill until a write
/// is acknowledged after the restart (which moves the restored leader's
/// commit point past everything older).
fn full_restart(rounds: usize, spec: LoadSpec, reads_across: bool) -> Scenario {
    let name = if reads_across {
        "full-restart-reads"
    } else {
        "full-restart"
    };
    let mut scenario = Scenario::new(name, 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(50), WAIT));
    for _ in 0..rounds {
        if !reads_across {
            scenario = scenario.step(Step::PauseReads(true));
        }
        scenario = scenario.steps([
            Step::KillAll,
            Step::Sleep(Duration::from_millis(500)),
            Step::RestartAll,
            Step::WaitFor(Cond::Leader, WAIT),
            Step::WaitFor(Cond::Progress(5), WAIT),
        ]);
        if !reads_across {
            scenario = scenario.step(Step::PauseReads(false));
        }
        scenario = scenario.step(Step::WaitFor(Cond::Progress(40), WAIT));
    }
    scenario.step(Step::Check)
}

#[test]
fn full_cluster_sigkill_and_restart_keeps_every_acknowledged_write() {
    let _one = serial();
    full_restart(2, load(), false).run();
}

#[test]
fn soak_full_cluster_sigkill_and_restart() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    full_restart(rounds, load(), false).run();
}

/// The same with reads running across the restarts, eight rounds: fails
/// most runs on the bug below.
#[test]
fn full_cluster_sigkill_and_restart_with_reads_across_the_restart() {
    let _one = serial();
    full_restart(8, load(), true).run();
}

// ---------------------------------------------------------------------------
// 6. A client partitioned from the cluster
// ---------------------------------------------------------------------------

/// A client that reaches the nodes only through proxies of its own, and
/// the members it registered.
struct CutClient {
    proxies: Vec<Proxy>,
    client: Client,
    session: Session,
    registered: Vec<Member>,
}

const CUT_MEMBERS: usize = 3;

fn cut_member(k: usize) -> String {
    format!("p-{k}")
}

/// The cut client's members as a fresh linearizable list shows them.
fn cut_members(ctx: &mut Ctx) -> anyhow::Result<Vec<Option<Member>>> {
    let leader = ctx.agreed_leader(None)?;
    let addr = ctx.cluster.nodes[leader].addr().to_owned();
    let options = single_attempt(Duration::from_secs(3));
    let (members, _) = ctx.runtime.block_on(async {
        let client = Client::connect_with([addr], options).await?;
        client
            .list(Filter::all().service("cut"), Consistency::Linearizable)
            .await
    })?;
    Ok((0..CUT_MEMBERS)
        .map(|k| members.iter().find(|m| m.id == cut_member(k)).cloned())
        .collect())
}

fn client_partition(rounds: usize, reconnect_timeout: Duration, expire: bool) -> Scenario {
    let name = if expire {
        "client-partition-expiry"
    } else {
        "client-partition"
    };
    let state: Rc<RefCell<Option<CutClient>>> = Rc::default();
    let spec = LoadSpec {
        writers: 2,
        readers: 1,
        ..load()
    };
    let heartbeat_timeout = Duration::from_secs(1);
    let mut scenario = Scenario::new(name, 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(20), WAIT));
    let open = state.clone();
    scenario = scenario.step(Step::Run(
        "a client behind its own proxies registers members",
        Box::new(move |ctx: &mut Ctx| {
            let handle = ctx.cluster.net.handle();
            let proxies: Vec<Proxy> = ctx
                .cluster
                .addrs()
                .iter()
                .map(|a| Proxy::start(&handle, a.parse().expect("a node address")))
                .collect();
            let addrs: Vec<String> = proxies.iter().map(|p| p.addr().to_string()).collect();
            let options = fuddle_client::ClientOptions {
                retry_deadline: Duration::from_secs(5),
                ..single_attempt(Duration::from_secs(3))
            };
            let (client, session, registered) = ctx.runtime.block_on(async {
                let client = connect(addrs, options, WAIT).await?;
                let session = open_session(
                    &client,
                    SessionOptions {
                        heartbeat_timeout: Some(heartbeat_timeout),
                        reconnect_timeout: Some(reconnect_timeout),
                    },
                    WAIT,
                )
                .await?;
                let mut registered = Vec::new();
                for k in 0..CUT_MEMBERS {
                    let spec = MemberSpec::new(cut_member(k), "cut").metadata("v", format!("p{k}"));
                    registered.push(session.register(spec).await?);
                }
                anyhow::Ok((client, session, registered))
            })?;
            ensure!(
                session.heartbeat_timeout() == heartbeat_timeout
                    && session.reconnect_timeout() == reconnect_timeout,
                "the node granted other timeouts"
            );
            *open.borrow_mut() = Some(CutClient {
                proxies,
                client,
                session,
                registered,
            });
            Ok(())
        }),
    ));
    for _ in 0..rounds {
        let (cut, heal, down, up) = (state.clone(), state.clone(), state.clone(), state.clone());
        scenario = scenario.steps([
            Step::WaitFor(
                Cond::Custom(
                    "the cut client's members are up",
                    Box::new(|ctx: &mut Ctx| {
                        let members = cut_members(ctx)?;
                        ensure!(
                            members
                                .iter()
                                .all(|m| m.as_ref().is_some_and(|m| m.status == MemberStatus::Up)),
                            "{members:?}"
                        );
                        Ok(())
                    }),
                ),
                WAIT,
            ),
            Step::Run(
                "cut the client off",
                Box::new(move |_ctx: &mut Ctx| {
                    let state = cut.borrow();
                    let cut = state.as_ref().ok_or_else(|| anyhow!("no cut client"))?;
                    for proxy in &cut.proxies {
                        proxy.update(IpAddr::V4(Ipv4Addr::LOCALHOST), |r| r.blocked = true);
                    }
                    Ok(())
                }),
            ),
            Step::Note("cut"),
            Step::WaitFor(
                Cond::Custom(
                    "the cut client's members go down",
                    Box::new(move |ctx: &mut Ctx| {
                        let members = cut_members(ctx)?;
                        let state = down.borrow();
                        let cut = state.as_ref().ok_or_else(|| anyhow!("no cut client"))?;
                        for (m, was) in members.iter().zip(&cut.registered) {
                            let m = m.as_ref().ok_or_else(|| anyhow!("{} is gone", was.id))?;
                            ensure!(m.status == MemberStatus::Down, "{} is {}", m.id, m.status);
                            ensure!(
                                m.create_index == was.create_index && m.client_id == was.client_id,
                                "{} was replaced: {m:?}",
                                m.id
                            );
                        }
                        Ok(())
                    }),
                ),
                WAIT,
            ),
        ]);
        if expire {
            scenario = scenario.step(Step::WaitFor(
                Cond::Custom(
                    "the cut client's members are removed after the reconnect timeout",
                    Box::new(|ctx: &mut Ctx| {
                        let members = cut_members(ctx)?;
                        ensure!(members.iter().all(Option::is_none), "{members:?}");
                        Ok(())
                    }),
                ),
                WAIT,
            ));
        } else {
            scenario = scenario.steps([
                // Down, and kept: well past the heartbeat timeout, within
                // the reconnect timeout.
                Step::Sleep(heartbeat_timeout * 2),
                Step::Run(
                    "the cut client's members are still there, down",
                    Box::new(move |ctx: &mut Ctx| {
                        let members = cut_members(ctx)?;
                        ensure!(
                            members.iter().all(|m| m
                                .as_ref()
                                .is_some_and(|m| m.status == MemberStatus::Down)),
                            "{members:?}"
                        );
                        Ok(())
                    }),
                ),
            ]);
        }
        scenario = scenario.steps([
            Step::Run(
                "heal the client",
                Box::new(move |_ctx: &mut Ctx| {
                    let state = heal.borrow();
                    let cut = state.as_ref().ok_or_else(|| anyhow!("no cut client"))?;
                    for proxy in &cut.proxies {
                        proxy.heal();
                    }
                    Ok(())
                }),
            ),
            Step::WaitFor(
                Cond::Custom(
                    "the cut client's members come back up",
                    Box::new(move |ctx: &mut Ctx| {
                        let members = cut_members(ctx)?;
                        let mut state = up.borrow_mut();
                        let cut = state.as_mut().ok_or_else(|| anyhow!("no cut client"))?;
                        for (m, was) in members.iter().zip(cut.registered.iter()) {
                            let m = m.as_ref().ok_or_else(|| anyhow!("{} is absent", was.id))?;
                            ensure!(m.status == MemberStatus::Up, "{} is {}", m.id, m.status);
                            ensure!(m.client_id == was.client_id, "{} changed owner", m.id);
                            if expire {
                                // Registered again by the SDK after the
                                // expiry: a new member.
                                ensure!(
                                    m.create_index > was.create_index,
                                    "{} was not registered again: {m:?}",
                                    m.id
                                );
                            } else {
                                ensure!(
                                    m.create_index == was.create_index,
                                    "{} was replaced: {m:?}",
                                    m.id
                                );
                            }
                        }
                        // The next round compares with the members as they
                        // are now.
                        cut.registered = members.into_iter().flatten().collect();
                        Ok(())
                    }),
                ),
                WAIT,
            ),
        ]);
    }
    let close = state.clone();
    scenario
        .step(Step::Run(
            "the cut client closes its session",
            Box::new(move |ctx: &mut Ctx| {
                let Some(cut) = close.borrow_mut().take() else {
                    return Ok(());
                };
                ctx.runtime.block_on(cut.session.close())?;
                drop(cut.client);
                Ok(())
            }),
        ))
        .step(Step::Check)
}

#[test]
fn client_partitioned_past_heartbeat_timeout_goes_down_then_up() {
    let _one = serial();
    client_partition(1, Duration::from_secs(60), false).run();
}

#[test]
fn client_partitioned_past_reconnect_timeout_is_removed() {
    let _one = serial();
    client_partition(1, Duration::from_secs(3), true).run();
}

#[test]
fn soak_client_partitions() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    client_partition(rounds, Duration::from_secs(60), false).run();
    client_partition(rounds, Duration::from_secs(3), true).run();
}

// ---------------------------------------------------------------------------
// 7. One-way loss and delay between the leader and its followers
// ---------------------------------------------------------------------------

/// The proxy in front of the node marked `name` threw bytes away (so the
/// loss was in effect, not just configured).
fn dropped_at(ctx: &mut Ctx, name: &str) -> anyhow::Result<()> {
    let i = ctx.marks[name];
    let dropped = ctx
        .cluster
        .net
        .proxy(i)
        .stats()
        .dropped_bytes
        .load(Ordering::Relaxed);
    ensure!(
        dropped > 0,
        "the proxy of {} dropped nothing",
        ctx.node_name(i)
    );
    ctx.log(format!(
        "the proxy of {} dropped {dropped} bytes so far",
        ctx.node_name(i)
    ));
    Ok(())
}

fn lossy_links(rounds: usize, spec: LoadSpec) -> Scenario {
    let mut scenario = Scenario::new("lossy-links", 3, &[])
        .step(Step::Load(spec))
        .step(Step::WaitFor(Cond::Progress(30), WAIT));
    for _ in 0..rounds {
        scenario = scenario.steps([
            Step::Mark("leader", Target::Leader),
            Step::Mark("a", Target::Follower),
            Step::Run(
                "pick the other follower",
                Box::new(|ctx: &mut Ctx| {
                    let (leader, a) = (ctx.marks["leader"], ctx.marks["a"]);
                    let b = (0..ctx.cluster.len())
                        .find(|&i| i != leader && i != a)
                        .ok_or_else(|| anyhow!("no second follower"))?;
                    ctx.marks.insert("b", b);
                    Ok(())
                }),
            ),
            // The leader's calls to `a` arrive, their answers are lost; `a`
            // forwards through the leader with a delay.
            Step::Lose {
                from: Target::Mark("leader"),
                to: Target::Mark("a"),
                requests: false,
            },
            Step::Delay {
                from: Target::Mark("a"),
                to: Target::Mark("leader"),
                delay: Duration::from_millis(30),
            },
            Step::Delay {
                from: Target::Mark("leader"),
                to: Target::Mark("b"),
                delay: Duration::from_millis(20),
            },
            Step::WaitFor(Cond::Progress(40), WAIT),
            Step::Sleep(Duration::from_secs(2)),
            Step::Run(
                "the leader's answers from `a` were lost",
                Box::new(|ctx: &mut Ctx| dropped_at(ctx, "a")),
            ),
            // Then the other way round: `a`'s requests to the leader vanish.
            Step::Heal,
            Step::Lose {
                from: Target::Mark("a"),
                to: Target::Mark("leader"),
                requests: true,
            },
            Step::WaitFor(Cond::Progress(40), WAIT),
            Step::Sleep(Duration::from_secs(1)),
            Step::Run(
                "`a`'s requests to the leader were lost",
                Box::new(|ctx: &mut Ctx| dropped_at(ctx, "leader")),
            ),
            Step::Heal,
            Step::WaitFor(Cond::Leader, WAIT),
            Step::WaitFor(Cond::CaughtUp, WAIT),
        ]);
    }
    scenario.step(Step::Check)
}

#[test]
fn one_way_loss_and_delay_between_nodes_lose_nothing() {
    let _one = serial();
    lossy_links(1, load()).run();
}

#[test]
fn soak_one_way_loss_and_delay() {
    let Some(rounds) = soak() else { return };
    let _one = serial();
    lossy_links(rounds, load()).run();
}

// ---------------------------------------------------------------------------
// The checks themselves
// ---------------------------------------------------------------------------

/// The checks are not vacuous: a clean run's record passes them, and the
/// same record with one planted fault (a lost write, a read of a value
/// never written, an index out of order, a gap in a stream, two leaders in
/// one term) fails them with the right complaint.
#[test]
fn the_checks_catch_planted_faults() {
    use faults::check::check_all;
    use faults::history::{Request, StatusSample};
    use fuddle_client::Event;

    let _one = serial();
    let clean = Scenario::new("clean", 3, &[])
        .steps([
            Step::Load(load()),
            Step::WaitFor(Cond::Progress(80), WAIT),
            Step::Check,
        ])
        .run();
    assert!(check_all(&clean.record, &clean.last).is_empty());
    let complaint = |record: &Record, last: &faults::check::Final, what: &str, expect: &str| {
        let problems = check_all(record, last);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a complaint containing {expect:?}, got {problems:#?}"
        );
    };

    // A lost write: the final state lacks a member whose last write was
    // acknowledged.
    {
        let (record, mut last) = (clean.record.clone(), clean.last.clone());
        let settled = last
            .members
            .iter()
            .position(|m| m.id.starts_with('w'))
            .expect("a load member in the final state");
        last.members.remove(settled);
        complaint(&record, &last, "a lost write", "durability");
    }

    // A linearizable read of a value nobody wrote.
    {
        let mut record = clean.record.clone();
        let read = record
            .ops
            .iter_mut()
            .find(|op| matches!(op.outcome, Outcome::Found { .. }))
            .expect("a successful get");
        if let Outcome::Found { member, .. } = &mut read.outcome {
            member.metadata.insert("v".into(), "never-written".into());
        }
        complaint(&record, &clean.last, "a phantom read", "not linearizable");
    }

    // An acknowledged write with an index below one acknowledged before it
    // was sent.
    {
        let mut record = clean.record.clone();
        let late = record
            .ops
            .iter_mut()
            .rev()
            .find(|op| matches!(op.outcome, Outcome::Registered(_)))
            .expect("an acknowledged register");
        if let Outcome::Registered(member) = &mut late.outcome {
            member.mod_index = 1;
        }
        complaint(&record, &clean.last, "an index out of order", "index order");
    }

    // A gap: a committed entry missing from a subscription.
    {
        let mut record = clean.record.clone();
        let written: std::collections::BTreeSet<u64> = record
            .ops
            .iter()
            .filter_map(|op| match (&op.request, &op.outcome) {
                (Request::Register { .. }, Outcome::Registered(m)) => Some(m.mod_index),
                _ => None,
            })
            .collect();
        let stream = &mut record.subscriptions[clean.last.subscriptions[0]].events;
        let hole = stream
            .iter()
            .position(
                |r| matches!(&r.event, Event::Changes { index, .. } if written.contains(index)),
            )
            .expect("a change of an acknowledged write");
        stream.remove(hole);
        complaint(&record, &clean.last, "a gap", "never arrived");
    }

    // Two leaders in one term.
    {
        let mut record = clean.record.clone();
        let sample = record.statuses.last().cloned().expect("a status sample");
        record.statuses.push(StatusSample {
            leader: sample.leader + 1,
            ..sample
        });
        complaint(&record, &clean.last, "two leaders", "split brain");
    }
}

// ---------------------------------------------------------------------------
// Regression tests of the bugs the scenarios found
// ---------------------------------------------------------------------------

/// Bug found by `full_cluster_sigkill_and_restart_*`: after a full-cluster
/// SIGKILL under load, the old leader restarts *as leader*, without an
/// election (openraft 0.9 restores a node whose vote is committed for
/// itself, `Engine::startup`), and its read index is `max(first entry of
/// its term, committed)` (`LeaderHandler::get_read_log_id`), with
/// `committed` read back from the store, where it is saved without a flush
/// (storage/src/log_store.rs, `save_committed`: "openraft re-derives the
/// commit point if it is lost"). A follower may have applied, durably, an
/// entry whose commit marker the leader lost: until the restored leader's
/// replication re-establishes the commit point (its streams back off for
/// 500 ms after the refused connections of the restart), a linearizable
/// read through the leader answers from an older state than one a
/// linearizable read through that follower just returned, and older than
/// writes acknowledged before the crash.
///
/// Seen as: `get w1-k1 -> "w1-17" at 71` through n2, then `list -> w1-k1 =
/// "w1-16" at 70` through the leader n1, which had restarted with `applied
/// 70 committed 70` while n2 had `applied 71`.
///
/// The window is narrow: the kill must land after a follower made a commit
/// point durable and before the leader did (their flushes race), and the
/// reads must come before the leader's replication resumes. The scenario
/// hit it once in about fifteen runs; this test (kill under load, then
/// read every node, followers first, for 0.7 s; thirty rounds) did not
/// hit it in one thirty-round run, so it passes when it misses the window:
/// it is a reproduction aid, not a proof of the fix. A deterministic
/// reproduction needs a hook in the node (delaying the leader's flush).
#[test]
#[ignore = "slow probe (30 full-cluster restarts) for the fixed stale-read-after-restart bug (a restored leader now holds an election and reads wait for an applied entry of the leader's term: node/src/server.rs, node/src/core.rs); run with --ignored"]
fn restored_leader_serves_no_linearizable_read_older_than_an_acknowledged_write() {
    let _one = serial();
    let mut scenario = Scenario::new("restored-leader-read", 3, &[]).step(Step::Load(LoadSpec {
        readers: 0,
        subscribers: false,
        ..load()
    }));
    for _ in 0..RESTORED_LEADER_ROUNDS {
        scenario = scenario.steps([
            Step::WaitFor(Cond::Progress(20), WAIT),
            Step::KillAll,
            Step::RestartAll,
            Step::Run(
                "read every node, followers first, right after the restart",
                Box::new(|ctx: &mut Ctx| {
                    let leader = ctx.agreed_leader(None)?;
                    let mut order: Vec<usize> =
                        (0..ctx.cluster.len()).filter(|&i| i != leader).collect();
                    order.push(leader);
                    let started = Instant::now();
                    let mut reads = Vec::new();
                    while started.elapsed() < Duration::from_millis(700) {
                        for &i in &order {
                            if let Ok(Outcome::Listed { index, .. }) =
                                ctx.recorded_list(i, Consistency::Linearizable)
                            {
                                reads.push((ctx.node_name(i), index));
                            }
                        }
                    }
                    let first: Vec<_> = reads.iter().take(6).collect();
                    ctx.log(format!("{} reads, the first: {first:?}", reads.len()));
                    Ok(())
                }),
            ),
        ]);
    }
    scenario.step(Step::Check).run();
}

/// Rounds of [`restored_leader_serves_no_linearizable_read_older_than_an_acknowledged_write`]:
/// a round hits the bug only when the kill leaves a follower's applied
/// state ahead of the leader's saved commit point.
const RESTORED_LEADER_ROUNDS: usize = 30;
