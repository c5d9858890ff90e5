//! Bad input that does not come through the API: garbage on the gRPC
//! (TCP) and gossip (UDP) port, a damaged or foreign data dir, and a full
//! disk. Real `fuddle-node` processes throughout.
//!
//! - Garbage on the ports: the node keeps serving (a `members list` and a
//!   register round trip work) and does not exit.
//! - A bad data dir: the node refuses to start with a non-zero exit and one
//!   clear `error:` line naming the data dir (no panic), or it starts with
//!   every acknowledged write and its old id.
//! - A full disk (an 8 MiB tmpfs; skipped with a message where `mount` is
//!   not permitted): writes fail with an error within a bounded time, the
//!   node does not panic, and a copy of its data dir on a bigger disk holds
//!   every acknowledged write.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use fuddle_client::{Client, ClientOptions, MemberSpec, SessionOptions};
use fuddle_tests::{
    CliProcess, DEADLINE, NodeProcess, StartFailure, eventually, run_node_expecting_exit, stderr_of,
};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A small deterministic generator (xorshift64*), so that a failure can be
/// replayed: every test prints its seed.
struct Garbage(u64);

impl Garbage {
    fn new(seed: u64) -> Garbage {
        Garbage(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn seed() -> u64 {
    let seed = std::env::var("FUDDLE_BAD_INPUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("garbage seed: {seed} (replay with FUDDLE_BAD_INPUT_SEED={seed})");
    seed
}

/// A register round trip through the CLI: a `members register` process
/// prints the member, `members get` reads it back, SIGTERM unregisters it.
fn register_round_trip(node: &NodeProcess, id: &str) {
    let mut register = CliProcess::spawn(
        node.addr(),
        &[
            "-o",
            "json",
            "members",
            "register",
            "--id",
            id,
            "--service",
            "bad-input",
            "--metadata",
            "k=v",
        ],
    );
    let printed = register.next_json(DEADLINE);
    assert_eq!(printed["id"], id, "{printed}");
    let got: fuddle_client::Member = node
        .cli_json(&["members", "get", id])
        .unwrap_or_else(|e| panic!("members get {id}: {e:#}"));
    assert_eq!(got.id, id);
    register.signal(nix::sys::signal::Signal::SIGTERM);
    let status = register.wait(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {}", register.stderr());
}

/// The node runs, answers `members list`, and serves a register round trip.
fn assert_serving(node: &mut NodeProcess, after: &str) {
    assert!(node.is_running(), "the node exited after {after}");
    let list = node.list("linearizable");
    assert!(list.is_ok(), "members list after {after}: {list:?}");
    register_round_trip(node, &format!("after-{}", after.replace(' ', "-")));
    let log = node.log();
    assert!(
        !log.contains("panicked"),
        "the node panicked after {after}:\n{log}"
    );
}

/// Sends `payload` on a new connection, half-closes it and reads until the
/// node closes it. The node must close within `deadline`: a connection
/// that stays open forever on garbage is a resource leak.
fn send_tcp(addr: &str, payload: &[u8], deadline: Duration) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_read_timeout(Some(deadline))?;
    // The node may reset the connection before everything is written.
    let _ = stream.write_all(payload);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset is a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(answer),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the node kept the connection open for {:?} after garbage",
                    started.elapsed()
                )
            }
            Err(e) => return Err(e).context("read"),
        }
        if started.elapsed() > deadline {
            bail!("the node kept sending for {deadline:?} after garbage");
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame header: 24-bit length, type, flags, stream id.
fn frame(len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Copies a directory tree.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            files.extend(files_under(&entry.path()));
        } else {
            files.push(entry.path());
        }
    }
    files.sort();
    files
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn client_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(10),
        retry_deadline: Duration::from_secs(10),
        ..ClientOptions::default()
    }
}

/// Long session timeouts: the members stay up (and present) across the
/// restarts of these tests.
fn long_session() -> SessionOptions {
    SessionOptions {
        heartbeat_timeout: Some(Duration::from_secs(300)),
        reconnect_timeout: Some(Duration::from_secs(3600)),
    }
}

/// Registers `n` members through one session; returns the ids of the
/// acknowledged ones. The session is dropped without closing it, so its
/// members stay.
fn write_members(addr: &str, prefix: &str, n: usize) -> Vec<String> {
    runtime().block_on(async {
        let client = Client::connect_with([addr], client_options())
            .await
            .unwrap();
        let session = client.open_session(long_session()).await.unwrap();
        let mut acked = Vec::new();
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            session
                .register(MemberSpec::new(&id, "svc").metadata("i", i.to_string()))
                .await
                .unwrap_or_else(|e| panic!("register {id}: {e}"));
            acked.push(id);
        }
        acked
    })
}

/// Checks that `node` holds every id of `acked` (linearizable list, retried
/// while the restarted node elects itself).
fn assert_has_all(node: &NodeProcess, acked: &[String]) -> anyhow::Result<()> {
    let list = node.list("linearizable")?;
    let present: BTreeSet<String> = list.members.iter().map(|m| m.id.clone()).collect();
    let missing: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    ensure!(
        missing.is_empty(),
        "{} of {} acknowledged members are missing: {missing:?} (present: {present:?})",
        missing.len(),
        acked.len()
    );
    Ok(())
}

/// A refusal to start is clear: a non-zero exit code (not a signal), one
/// `error:` line on stderr that names the data dir, and no panic.
fn assert_clear_refusal(what: &str, status: Option<std::process::ExitStatus>, stderr: &str) {
    let status = status.unwrap_or_else(|| panic!("{what}: no exit status; stderr:\n{stderr}"));
    let code = status.code();
    assert!(
        code.is_some_and(|c| c != 0),
        "{what}: the node exited with {status}, expected a non-zero exit code; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "{what}: the node panicked instead of refusing cleanly; stderr:\n{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{what}: expected one `error:` line; stderr:\n{stderr}"
    );
    assert!(
        errors[0].contains("data dir"),
        "{what}: the error does not name the data dir: {}",
        errors[0]
    );
}

// ---------------------------------------------------------------------------
// (a) Garbage on the ports
// ---------------------------------------------------------------------------

#[test]
fn garbage_on_the_grpc_and_gossip_ports_leaves_the_node_serving() {
    let mut g = Garbage::new(seed());
    let mut node = NodeProcess::start("garbage", &[], &[]);
    let addr = node.addr().to_owned();
    assert_serving(&mut node, "start");
    let close_deadline = Duration::from_secs(20);

    // TCP: things that are not gRPC.
    let mut settings_huge = PREFACE.to_vec();
    settings_huge.extend(frame(0xff_ffff, 0x4, 0, 0, &g.bytes(64)));
    let mut preface_then_garbage = PREFACE.to_vec();
    preface_then_garbage.extend(g.bytes(16 * 1024));
    // Well-framed nonsense: random frame types, flags and stream ids.
    let mut random_frames = PREFACE.to_vec();
    random_frames.extend(frame(0, 0x4, 0, 0, &[]));
    for _ in 0..64 {
        let len = g.below(64);
        let payload = g.bytes(len);
        let (kind, flags, stream) = (g.next() as u8 % 12, g.next() as u8, g.next() as u32);
        random_frames.extend(frame(len as u32, kind, flags, stream, &payload));
    }
    // A HEADERS frame whose HPACK block is garbage.
    let mut bad_headers = PREFACE.to_vec();
    bad_headers.extend(frame(0, 0x4, 0, 0, &[]));
    bad_headers.extend(frame(32, 0x1, 0x4 | 0x1, 1, &g.bytes(32)));
    let payloads: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", g.bytes(64 * 1024)),
        ("a truncated HTTP/2 preface", PREFACE[..10].to_vec()),
        ("the preface alone", PREFACE.to_vec()),
        (
            "an HTTP/1.1 request",
            b"GET / HTTP/1.1\r\nHost: fuddle\r\n\r\n".to_vec(),
        ),
        (
            "an HTTP/1.1 gRPC-looking POST",
            b"POST /fuddle.v1.Registry/ListMembers HTTP/1.1\r\nHost: fuddle\r\n\
              Content-Type: application/grpc\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0"
                .to_vec(),
        ),
        ("the preface and random bytes", preface_then_garbage),
        ("a SETTINGS frame announcing 16 MiB", settings_huge),
        ("random well-framed HTTP/2 frames", random_frames),
        ("HEADERS with a garbage HPACK block", bad_headers),
    ];
    for (what, payload) in &payloads {
        send_tcp(&addr, payload, close_deadline)
            .unwrap_or_else(|e| panic!("{what} to the gRPC port: {e:#}"));
        assert!(node.is_running(), "the node exited after {what}");
    }
    assert_serving(&mut node, "tcp garbage");

    // Many connections at once, each with garbage, and idle connections
    // held open while the node is used.
    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(&addr).expect("an idle connection"))
        .collect();
    let senders: Vec<_> = (0..32)
        .map(|i| {
            let addr = addr.clone();
            let payload = Garbage::new(g.next() ^ i).bytes(8 * 1024);
            std::thread::spawn(move || send_tcp(&addr, &payload, Duration::from_secs(30)))
        })
        .collect();
    for sender in senders {
        sender
            .join()
            .expect("a sender thread")
            .expect("concurrent garbage");
    }
    assert_serving(&mut node, "concurrent tcp garbage with idle connections");
    drop(idle);

    // UDP on the same port number: gossip.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..500 {
        let len = 1 + g.below(1400);
        let _ = udp.send_to(&g.bytes(len), &addr);
    }
    // chitchat's header (magic number 45139, a protocol version, a message
    // type) followed by garbage, so the message decoders run too.
    for version in 0..=3u8 {
        for kind in 0..=4u8 {
            for _ in 0..8 {
                let mut datagram = 45_139u16.to_le_bytes().to_vec();
                datagram.extend([version, kind]);
                let len = g.below(512);
                datagram.extend(g.bytes(len));
                let _ = udp.send_to(&datagram, &addr);
            }
        }
    }
    let _ = udp.send_to(&g.bytes(60 * 1024), &addr);
    // The largest datagram IPv4 carries.
    let _ = udp.send_to(&g.bytes(65_507), &addr);
    let _ = udp.send_to(&[], &addr);
    std::thread::sleep(Duration::from_millis(500));
    assert_serving(&mut node, "udp garbage");

    let warnings = node
        .log()
        .lines()
        .filter(|l| l.contains("invalid-chitchat-payload"))
        .count();
    eprintln!("gossip logged {warnings} warnings for the garbage datagrams");
}

// ---------------------------------------------------------------------------
// (b) A damaged or foreign data dir
// ---------------------------------------------------------------------------

/// A node's data dir after `n` acknowledged registrations and a clean
/// stop, with the node's id and the acknowledged ids.
struct GoodDataDir {
    _node: NodeProcess,
    dir: PathBuf,
    id: u64,
    acked: Vec<String>,
}

fn good_data_dir(name: &str, n: usize) -> GoodDataDir {
    let mut node = NodeProcess::start(name, &[], &[]);
    let acked = write_members(node.addr(), "acked", n);
    assert_has_all(&node, &acked).unwrap();
    let status = node.terminate();
    assert!(status.success(), "{status}");
    GoodDataDir {
        dir: node.data_dir(),
        id: node.id(),
        acked,
        _node: node,
    }
}

/// Starts a node on a copy of `good` that `damage` has changed. Either it
/// refuses clearly, or it comes up with the same id and every acknowledged
/// member. Returns what happened, for the test's report.
fn start_on_damaged(
    good: &GoodDataDir,
    what: &str,
    damage: impl FnOnce(&Path),
) -> anyhow::Result<String> {
    let started = NodeProcess::try_start_prepared("damaged", &[], |dir| {
        copy_dir(&good.dir, dir);
        damage(dir);
    });
    match started {
        Err(StartFailure { status, log }) => {
            assert_clear_refusal(what, status, &log);
            let line = log.lines().find(|l| l.starts_with("error:")).unwrap_or("");
            Ok(format!("{what}: refused: {line}"))
        }
        Ok(mut node) => {
            ensure!(
                node.id() == good.id,
                "{what}: the node started under a new id {} (was {}): a silent reset",
                node.id(),
                good.id
            );
            // Once the node answers a linearizable list, it has elected
            // itself and applied its whole log: what is missing then is lost.
            let started = Instant::now();
            while node.list("linearizable").is_err() && started.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            let checked = assert_has_all(&node, &good.acked);
            let log = node.log();
            node.kill();
            checked.with_context(|| format!("{what}: the node started on the damaged data dir"))?;
            ensure!(
                !log.contains("panicked"),
                "{what}: the node panicked:\n{log}"
            );
            Ok(format!("{what}: recovered with every acknowledged write"))
        }
    }
}

/// The files under `dir` with their sizes, for messages.
fn describe_files(dir: &Path) -> String {
    files_under(dir)
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f.strip_prefix(dir).unwrap_or(f).display(),
                std::fs::metadata(f).map_or(0, |m| m.len())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Something done to a copy of a data dir.
type Damage = Box<dyn FnOnce(&Path)>;

/// The sled files of a data dir.
fn db_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("db"))
}

/// Data dirs that are not (or no longer) Fuddle's are refused with one
/// clear line; one that merely lost sled's `conf` recovers whole.
#[test]
fn a_foreign_or_unreadable_data_dir_is_refused_clearly() {
    let good = good_data_dir("foreign", 3);
    let mut report = Vec::new();

    // Another format version of ours.
    let versioned = tempfile::tempdir().unwrap();
    copy_dir(&good.dir, versioned.path());
    {
        let dir = fuddle_storage::DataDir::open(versioned.path(), 1 << 20).unwrap();
        let meta = dir.db.open_tree("meta").unwrap();
        meta.insert("format_version", &99u32.to_be_bytes()).unwrap();
        dir.db.flush().unwrap();
    }
    let output = run_node_expecting_exit(&["--data-dir", versioned.path().to_str().unwrap()]);
    assert_clear_refusal("format 99", Some(output.status), &stderr_of(&output));
    assert!(
        stderr_of(&output).contains("format 99"),
        "{}",
        stderr_of(&output)
    );
    report.push("format 99: refused".to_string());

    // A sled database that is not Fuddle's: data, no format version.
    let foreign = tempfile::tempdir().unwrap();
    {
        let dir = fuddle_storage::DataDir::open(foreign.path(), 1 << 20).unwrap();
        dir.db
            .open_tree("meta")
            .unwrap()
            .remove("format_version")
            .unwrap();
        dir.db.insert("someone-else", "data").unwrap();
        dir.db.open_tree("their-tree").unwrap();
        dir.db.flush().unwrap();
    }
    let output = run_node_expecting_exit(&["--data-dir", foreign.path().to_str().unwrap()]);
    assert_clear_refusal(
        "a foreign sled db",
        Some(output.status),
        &stderr_of(&output),
    );
    assert!(
        stderr_of(&output).contains("not a Fuddle data dir"),
        "{}",
        stderr_of(&output)
    );
    report.push("a foreign sled db: refused".to_string());

    // `db` is a file; `db` holds files that are not sled's; sled's `conf`
    // is garbled; the data dir is a file.
    let cases: Vec<(&str, Damage)> = vec![
        (
            "db is a file",
            Box::new(|dir: &Path| {
                std::fs::remove_dir_all(dir.join("db")).unwrap();
                std::fs::write(dir.join("db"), b"not a database").unwrap();
            }),
        ),
        (
            "db holds foreign files",
            Box::new(|dir: &Path| {
                std::fs::remove_dir_all(dir.join("db")).unwrap();
                std::fs::create_dir_all(dir.join("db")).unwrap();
                std::fs::write(dir.join("db/conf"), b"segment_size: 524288\n").unwrap();
                std::fs::write(dir.join("db/db"), Garbage::new(7).bytes(4096)).unwrap();
            }),
        ),
        (
            "sled's conf is garbled",
            Box::new(|dir: &Path| {
                let conf = dir.join("db/conf");
                let mut bytes = std::fs::read(&conf).unwrap();
                for b in bytes.iter_mut().take(16) {
                    *b ^= 0xa5;
                }
                std::fs::write(&conf, bytes).unwrap();
            }),
        ),
    ];
    for (what, damage) in cases {
        report.push(start_on_damaged(&good, what, damage).unwrap_or_else(|e| panic!("{e:#}")));
    }

    // The data dir is a file.
    let file = tempfile::NamedTempFile::new().unwrap();
    let output = run_node_expecting_exit(&["--data-dir", file.path().to_str().unwrap()]);
    assert_clear_refusal(
        "the data dir is a file",
        Some(output.status),
        &stderr_of(&output),
    );
    report.push("the data dir is a file: refused".to_string());

    // sled's `conf` is gone: sled writes a new one and nothing is lost.
    report.push(
        start_on_damaged(&good, "sled's conf is missing", |dir| {
            std::fs::remove_file(dir.join("db/conf")).unwrap();
        })
        .unwrap_or_else(|e| panic!("{e:#}")),
    );
    eprintln!("{}", report.join("\n"));
}

/// The Raft log and the sled database damaged: truncated, zeroed, bytes
/// flipped or overwritten. Until data dir format 6 the log was in sled,
/// which treats a damaged segment as the torn end of its log and silently
/// drops it and everything after it: the node started without
/// acknowledged writes. The log's own segments tell a damaged record from
/// one a crash cut short (`storage/src/log_file.rs`, `is_torn`) and
/// refuse to start on the first; sled now holds only what a damaged
/// database is refused for (the format, the node id) or rebuilt from (the
/// snapshot pointer, with the log).
#[test]
fn a_damaged_data_dir_is_refused_or_keeps_every_acknowledged_write() {
    let seed = seed();
    let good = good_data_dir("damaged", 8);
    let files = db_files(&good.dir);
    eprintln!(
        "sled files: {:?}",
        files
            .iter()
            .map(|f| (
                f.strip_prefix(&good.dir).unwrap().to_owned(),
                std::fs::metadata(f).unwrap().len()
            ))
            .collect::<Vec<_>>()
    );
    let db_file = |dir: &Path| dir.join("db/db");
    let mut cases: Vec<(String, Damage)> = vec![
        (
            "db/db truncated to half".into(),
            Box::new(move |dir: &Path| {
                let f = db_file(dir);
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
        ),
        (
            "db/db truncated to nothing".into(),
            Box::new(move |dir: &Path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(db_file(dir))
                    .unwrap()
                    .set_len(0)
                    .unwrap();
            }),
        ),
        (
            "db/db overwritten with garbage".into(),
            Box::new(move |dir: &Path| {
                let f = db_file(dir);
                let len = std::fs::metadata(&f).unwrap().len() as usize;
                std::fs::write(&f, Garbage::new(seed).bytes(len)).unwrap();
            }),
        ),
    ];
    for i in 0..6u64 {
        let mut g = Garbage::new(seed ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let flips = 1 + g.below(8);
        cases.push((
            format!("{flips} bytes of db/db changed (case {i})"),
            Box::new(move |dir: &Path| {
                let f = db_file(dir);
                let mut bytes = std::fs::read(&f).unwrap();
                for _ in 0..flips {
                    let at = g.below(bytes.len());
                    bytes[at] ^= 1 + g.below(255) as u8;
                }
                std::fs::write(&f, bytes).unwrap();
            }),
        ));
    }
    // The log's segment (one: the node started once), in its written part.
    let segment = |dir: &Path| {
        files_under(&dir.join("raft-log"))
            .pop()
            .expect("a log segment")
    };
    let written = {
        let bytes = std::fs::read(segment(&good.dir)).unwrap();
        bytes.iter().rposition(|b| *b != 0).unwrap() + 1
    };
    cases.push((
        "raft-log segment truncated to half".into(),
        Box::new(move |dir: &Path| {
            let f = segment(dir);
            let len = std::fs::metadata(&f).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
            file.set_len(len / 2).unwrap();
        }),
    ));
    cases.push((
        "raft-log removed".into(),
        Box::new(move |dir: &Path| std::fs::remove_dir_all(dir.join("raft-log")).unwrap()),
    ));
    for i in 0..6u64 {
        let mut g = Garbage::new(seed ^ (i + 11).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let flips = 1 + g.below(8);
        cases.push((
            format!(
                "{flips} bytes of the raft-log segment's {written} written bytes changed (case {i})"
            ),
            Box::new(move |dir: &Path| {
                let f = segment(dir);
                let mut bytes = std::fs::read(&f).unwrap();
                for _ in 0..flips {
                    let at = g.below(written);
                    bytes[at] ^= 1 + g.below(255) as u8;
                }
                std::fs::write(&f, bytes).unwrap();
            }),
        ));
    }
    let mut failures = Vec::new();
    for (what, damage) in cases {
        match start_on_damaged(&good, &what, damage) {
            Ok(line) => eprintln!("{line}"),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the damaged data dirs were neither refused nor whole:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// (c) A full disk
// ---------------------------------------------------------------------------

/// A tmpfs mounted for a test, lazily unmounted when dropped (also while
/// the node that uses it is still being killed).
struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (`8m`) at `dir`; `Err` with the reason when
    /// mounting is not permitted here.
    fn tmpfs(dir: &Path, size: &str) -> anyhow::Result<Mount> {
        std::fs::create_dir_all(dir)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount")?;
        ensure!(
            output.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes 16 KiB members (ids `<prefix>-N`) through one session until a
/// write fails; returns the acknowledged ids and the failure (which write,
/// what, how long it took). A write that takes longer than [`PER_WRITE`]
/// fails the test.
fn fill(addr: &str, prefix: &str) -> (Vec<String>, Option<(usize, String, Duration)>) {
    let value = "x".repeat(4000);
    runtime().block_on(async {
        let client = Client::connect_with([addr], client_options())
            .await
            .unwrap();
        let session = client.open_session(long_session()).await.unwrap();
        let mut acked = Vec::new();
        for i in 0..4000 {
            let id = format!("{prefix}-{i}");
            let spec = MemberSpec::new(&id, "svc")
                .metadata("a", value.clone())
                .metadata("b", value.clone())
                .metadata("c", value.clone())
                .metadata("d", value.clone());
            let started = Instant::now();
            match tokio::time::timeout(PER_WRITE, session.register(spec)).await {
                Ok(Ok(_)) => acked.push(id),
                Ok(Err(e)) => return (acked, Some((i, e.to_string(), started.elapsed()))),
                Err(_) => panic!(
                    "write {i} hung for {PER_WRITE:?} on a full disk ({} acknowledged before)",
                    acked.len()
                ),
            }
        }
        (acked, None)
    })
}

/// The longest a write may take on a full disk before the test calls it a
/// hang.
const PER_WRITE: Duration = Duration::from_secs(30);

/// One write through a new session, bounded by [`PER_WRITE`].
fn one_write(addr: &str, id: &str) -> (Result<(), String>, Duration) {
    runtime().block_on(async {
        let started = Instant::now();
        let attempt = async {
            let client = Client::connect_with([addr], client_options())
                .await
                .map_err(|e| e.to_string())?;
            let session = client
                .open_session(long_session())
                .await
                .map_err(|e| e.to_string())?;
            session
                .register(MemberSpec::new(id, "svc"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(PER_WRITE, attempt).await {
            Ok(result) => (result, started.elapsed()),
            Err(_) => panic!("a write ({id}) hung for {PER_WRITE:?}"),
        }
    })
}

fn count_panics(node: &NodeProcess) -> usize {
    node.log().matches("panicked").count()
}

/// A node on a full disk: an 8 MiB tmpfs as its data dir, 1 MiB of it
/// taken by a ballast file (deleted to free space), written full.
struct FullDisk {
    node: NodeProcess,
    acked: Vec<String>,
    /// The failed write: its message and how long it took.
    error: String,
    took: Duration,
    // Dropped last: unmounted once the node is gone.
    mount: Option<Mount>,
}

/// Fills a node's disk; `None` (with a message) where tmpfs cannot be
/// mounted.
fn full_disk(name: &str) -> Option<FullDisk> {
    let probe = tempfile::tempdir().unwrap();
    match Mount::tmpfs(probe.path(), "1m") {
        Ok(probe_mount) => drop(probe_mount),
        Err(e) => {
            eprintln!("skipped: a full disk needs a small tmpfs, and {e:#}");
            return None;
        }
    }
    let mut mount = None;
    let node = NodeProcess::try_start_prepared(name, &[], |dir| {
        mount = Some(Mount::tmpfs(dir, "8m").expect("mounting the tmpfs"));
        std::fs::write(dir.join("ballast"), vec![0u8; 1 << 20]).unwrap();
    })
    .unwrap_or_else(|f| panic!("the node did not start on the tmpfs: {f:?}"));
    let (acked, failure) = fill(node.addr(), "fill");
    let (at, error, took) = failure.expect("8 MiB filled up without a failed write");
    eprintln!(
        "{} writes acknowledged; write {at} failed after {took:?}: {error}",
        acked.len()
    );
    Some(FullDisk {
        node,
        acked,
        error,
        took,
        mount,
    })
}

/// Nothing acknowledged is lost when the disk fills: not after a restart
/// on the same disk once space is freed, not after a move to a bigger
/// disk. Writes fail within a bounded time, stale reads go on, and the node
/// never panics.
#[test]
fn a_full_disk_loses_no_acknowledged_write() {
    let Some(FullDisk {
        mut node,
        mut acked,
        took,
        mount,
        ..
    }) = full_disk("full-disk")
    else {
        return;
    };
    let data_dir = node.data_dir();
    assert!(!acked.is_empty(), "no write fitted at all");
    assert!(took < PER_WRITE);
    for i in 0..2 {
        let (result, took) = one_write(node.addr(), &format!("more-{i}"));
        eprintln!("a later write: {result:?} after {took:?}");
        assert!(result.is_err(), "a write on the full disk succeeded");
    }
    assert_eq!(count_panics(&node), 0, "the node panicked:\n{}", node.log());
    if node.is_running() {
        let stale = node.list("stale").map(|l| l.members.len());
        eprintln!("a stale list on the full node: {stale:?}");
        // Unless the node has meanwhile exited on its failed Raft.
        assert!(
            stale.is_ok() || !node.is_running(),
            "a stale read needs no disk: {stale:?}"
        );
        node.kill();
    } else {
        eprintln!("the node exited when the disk filled");
        // Reap the exited process, so that it can be restarted.
        node.kill();
    }

    // Space freed, restarted: everything is there and writes work again.
    std::fs::remove_file(data_dir.join("ballast")).unwrap();
    node.restart();
    eventually(
        "every acknowledged member is there after a restart on the freed disk",
        DEADLINE,
        || assert_has_all(&node, &acked),
    );
    let (more, failure) = fill(node.addr(), "refill");
    eprintln!(
        "{} more writes acknowledged before the disk was full again: {:?}",
        more.len(),
        failure.as_ref().map(|f| &f.1)
    );
    assert!(!more.is_empty(), "no write fitted after freeing 1 MiB");
    acked.extend(more);
    assert_eq!(count_panics(&node), 0, "the node panicked:\n{}", node.log());
    node.kill();

    // The data, moved to a disk with room: every acknowledged write is there.
    let mut moved = NodeProcess::try_start_prepared("full-disk-moved", &[], |dir| {
        copy_dir(&data_dir, dir);
    })
    .unwrap_or_else(|f| panic!("the node did not start on the copied data dir: {f:?}"));
    drop(node);
    drop(mount);
    eventually(
        "every acknowledged member is on the copied data dir",
        DEADLINE,
        || assert_has_all(&moved, &acked),
    );
    assert_serving(&mut moved, "moving to a bigger disk");
}

/// Once a write has failed for lack of space, every later write should
/// fail at once, saying so. About half of the runs instead see every write
/// hang for the proposer's 5 s timeout (10 s through the SDK's retry) and
/// end in DEADLINE_EXCEEDED "timed out waiting for the write to commit; it
/// may still be applied": when the disk fills during the state machine's
/// write, openraft stops its core but `client_write` never answers, and the
/// proposer does not look at Raft's fatal state.
#[test]
fn a_write_on_a_full_disk_fails_at_once_naming_the_cause() {
    for round in 0..3 {
        let Some(FullDisk {
            node, error, took, ..
        }) = full_disk(&format!("full-disk-errors-{round}"))
        else {
            return;
        };
        eprintln!("round {round}: the write that filled the disk: {error} after {took:?}");
        for i in 0..3 {
            let (result, took) = one_write(node.addr(), &format!("more-{i}"));
            let e = result.expect_err("a write on the full disk succeeded");
            // Either the node answers naming the cause, or it has exited
            // (its Raft stopped) and said why on stderr.
            let exited_naming_cause = e.contains("cannot reach")
                && node.log().contains("error: raft stopped")
                && node.log().contains("No space left on device");
            assert!(
                (e.contains("No space left on device") || exited_naming_cause)
                    && took < Duration::from_secs(2),
                "round {round}: a write on the full disk failed after {took:?} with: {e}"
            );
        }
    }
}

/// Once the disk has been full, openraft's storage error is fatal: Raft
/// stops for good while the process runs on, answering stale reads but
/// refusing every write and linearizable read with INTERNAL ("raft stopped:
/// ... No space left on device"), with role `shutdown`, even after space is
/// freed. Gossip still shows the node alive, so the leader of a cluster
/// never removes it. It should exit (non-zero, one clear line) so that a
/// supervisor restarts it, or recover once writes succeed again.
#[test]
fn after_a_full_disk_the_node_writes_again_or_exits() {
    let Some(FullDisk {
        mut node,
        mount: _mount,
        ..
    }) = full_disk("full-disk-recovery")
    else {
        return;
    };
    let data_dir = node.data_dir();
    std::fs::remove_file(data_dir.join("ballast")).unwrap();
    let started = Instant::now();
    loop {
        if !node.is_running() {
            let log = node.log();
            let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "exited without one clear line:\n{log}");
            assert!(!log.contains("panicked"), "{log}");
            return;
        }
        let (result, _) = one_write(node.addr(), "after-freeing-space");
        if result.is_ok() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "30 s after space was freed the node still runs and refuses writes: {result:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A supervisor restarting the node on the full disk: each attempt should
/// refuse cleanly (it does: "cannot be used: No space left on device") and
/// leave the data dir as it was. But sled writes its page-cache snapshot
/// while opening, and when that write fails for lack of space it leaves an
/// empty `db/snap.*` behind; once space is freed the node then refuses the
/// data dir as corrupt ("empty/corrupt snapshot file found", "Read
/// corrupted data"), with every acknowledged write inside it.
#[test]
fn restarts_on_a_full_disk_do_not_damage_the_data_dir() {
    // The damage depends on where sled runs out of space: a few rounds.
    for round in 0..3 {
        let Some(FullDisk {
            mut node,
            acked,
            mount: _mount,
            ..
        }) = full_disk(&format!("full-disk-restarts-{round}"))
        else {
            return;
        };
        let data_dir = node.data_dir();
        node.kill();
        for attempt in 0..5 {
            match node.try_restart() {
                Ok(()) => {
                    eprintln!("round {round}, attempt {attempt}: started on the full disk");
                    node.kill();
                }
                Err(StartFailure { status, log }) => {
                    assert_clear_refusal("a restart on the full disk", status, &log);
                    eprintln!(
                        "round {round}, attempt {attempt}: {}",
                        log.lines().find(|l| l.starts_with("error:")).unwrap_or("")
                    );
                }
            }
        }
        std::fs::remove_file(data_dir.join("ballast")).unwrap();
        if let Err(StartFailure { log, .. }) = node.try_restart() {
            let files = describe_files(&data_dir);
            // Diagnosis: is it only sled's empty snapshot file?
            for f in files_under(&data_dir.join("db")) {
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("snap.") && std::fs::metadata(&f).is_ok_and(|m| m.len() == 0) {
                    std::fs::remove_file(&f).unwrap();
                }
            }
            let without_empty_snapshots = match node.try_restart() {
                Ok(()) => {
                    let started = Instant::now();
                    while node.list("linearizable").is_err()
                        && started.elapsed() < Duration::from_secs(20)
                    {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    match assert_has_all(&node, &acked) {
                        Ok(()) => "starts with every acknowledged write".to_string(),
                        Err(e) => format!("starts, but {e:#}"),
                    }
                }
                Err(f) => format!("still refuses: {}", f.log),
            };
            panic!(
                "round {round}: after freeing space the node refuses its data dir:\n{log}\n\
                 files: {files}\nwithout its empty snap.* files the node {without_empty_snapshots}"
            );
        }
        eventually(
            "every acknowledged member is there after freeing space",
            DEADLINE,
            || assert_has_all(&node, &acked),
        );
    }
}
