//! The harness of Fuddle's system tests: real `fuddle-node` processes with
//! temporary data dirs, driven through `fuddle-cli` and the SDK.
//!
//! Everything here is bounded: a node that does not come up, a command that
//! does not end and a condition that does not come true all fail the test
//! with a message, and never hang it. A node's stderr goes to a log file in
//! its temporary directory; a test that panics prints the tail of every
//! log of its nodes (and keeps their directories) so the failure can be
//! understood from the test output alone.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use fuddle_client::{Member, NodeInfo};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

/// How long a node may take to print its ready line.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long one `fuddle-cli` command may take before it is killed.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// The usual deadline for a condition to come true.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two polls of [`eventually`].
const POLL: Duration = Duration::from_millis(100);
/// How many lines of a node's log a failed test prints.
const LOG_TAIL_LINES: usize = 150;

/// Short timings so that elections, gossip and session expiry happen in a
/// test's lifetime. Every node the harness starts gets them.
pub const FAST_TIMINGS: &[&str] = &[
    "--raft-heartbeat-interval",
    "100ms",
    "--gossip-interval",
    "100ms",
    "--membership-check-interval",
    "200ms",
    "--session-tick",
    "50ms",
    "--min-heartbeat-timeout",
    "200ms",
    "--min-reconnect-timeout",
    "200ms",
];

// ---------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------

/// The directory the workspace's binaries are built into: the test
/// executable lives in `target/<profile>/deps/`, the binaries one up.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut dir = exe
        .parent()
        .expect("the test executable's directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: the system tests run the built binaries. Build them first \
         with `cargo build --workspace`, or run the tests with `cargo test --workspace`.",
        path.display()
    );
    path
}

/// The `fuddle-node` binary.
pub fn node_bin() -> PathBuf {
    binary("fuddle-node")
}

/// The `fuddle-cli` binary.
pub fn cli_bin() -> PathBuf {
    binary("fuddle-cli")
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `check` until it returns `Ok`, and returns that value. Panics
/// with `what` and the last error once `deadline` has passed.
pub fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> T {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(err) if started.elapsed() >= deadline => {
                panic!("not true after {deadline:?}: {what}; last: {err:#}")
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// [`eventually`] for asynchronous checks (SDK calls).
pub async fn eventually_async<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(err) if started.elapsed() >= deadline => {
                panic!("not true after {deadline:?}: {what}; last: {err:#}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Output of child processes
// ---------------------------------------------------------------------------

/// What waiting for a line gave.
enum Next {
    Line(String),
    Closed,
    TimedOut,
}

/// Lines read from a child's pipe by a background thread.
struct Lines {
    receiver: Receiver<String>,
}

impl Lines {
    fn spawn(pipe: impl Read + Send + 'static) -> Lines {
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    // Nobody listens any more; keep draining so that the
                    // child never blocks on a full pipe.
                    continue;
                }
            }
        });
        Lines { receiver }
    }

    /// The next line, waiting at most `timeout`.
    fn next_within(&self, timeout: Duration) -> Next {
        match self.receiver.recv_timeout(timeout) {
            Ok(line) => Next::Line(line),
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
            Err(RecvTimeoutError::Timeout) => Next::TimedOut,
        }
    }

    /// Every line already read, without waiting.
    fn drain(&self) -> Vec<String> {
        self.receiver.try_iter().collect()
    }
}

/// Collects a pipe's whole content in the background.
#[derive(Clone, Default)]
struct Collected(Arc<Mutex<String>>);

impl Collected {
    fn spawn(pipe: impl Read + Send + 'static) -> Collected {
        let collected = Collected::default();
        let sink = collected.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.0.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        collected
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Waits for a child to exit, at most `deadline`; kills it after that.
fn wait_bounded(child: &mut Child, deadline: Duration, what: &str) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child") {
            return status;
        }
        if started.elapsed() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {deadline:?}; killed it");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn send_signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    // The child may have exited already; that is for the caller to see.
    let _ = kill(pid, signal);
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

// ---------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------

/// A `fuddle-node` process with its own temporary directory (data dir and
/// logs). Killed when dropped.
pub struct NodeProcess {
    name: String,
    root: Option<TempDir>,
    root_path: PathBuf,
    child: Option<Child>,
    id: u64,
    addr: String,
    join: Vec<String>,
    extra: Vec<String>,
    logs: Vec<PathBuf>,
}

impl Debug for NodeProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeProcess")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why a node did not come up.
#[derive(Debug)]
pub struct StartFailure {
    /// The node's exit status, if it exited.
    pub status: Option<ExitStatus>,
    /// The node's stderr.
    pub log: String,
}

impl NodeProcess {
    /// Starts a node named `name` (for logs) with a new data dir, joining
    /// `join` (empty: bootstrap), with [`FAST_TIMINGS`] and `extra_args`.
    /// Returns once the node has printed its ready line.
    pub fn start(name: &str, join: &[&str], extra_args: &[&str]) -> NodeProcess {
        NodeProcess::start_bound(name, "127.0.0.1:0", join, extra_args)
    }

    /// [`NodeProcess::start`] with the node bound to `bind` (`IP:PORT`;
    /// port 0 picks one). The fault tests give each node its own loopback
    /// IP, and a port chosen in advance so that `--advertise` can name a
    /// proxy before the node starts.
    pub fn start_bound(name: &str, bind: &str, join: &[&str], extra_args: &[&str]) -> NodeProcess {
        let mut node = NodeProcess::unstarted(name, join, extra_args);
        if let Err(failure) = node.spawn(bind) {
            panic!(
                "node {name} did not start (exit status {:?}):\n{}",
                failure.status, failure.log
            );
        }
        node
    }

    /// Starts a node named `name` whose data dir `prepare` sets up first
    /// (copies a damaged data dir in, mounts a small file system on it...),
    /// with [`FAST_TIMINGS`] and `extra_args`. A node that exits (or is not
    /// ready within [`START_DEADLINE`]) is an `Err` with its exit status and
    /// log rather than a panic: some tests expect a node to refuse to start.
    pub fn try_start_prepared(
        name: &str,
        extra_args: &[&str],
        prepare: impl FnOnce(&std::path::Path),
    ) -> Result<NodeProcess, StartFailure> {
        let mut node = NodeProcess::unstarted(name, &[], extra_args);
        prepare(&node.data_dir());
        node.spawn("127.0.0.1:0")?;
        Ok(node)
    }

    /// A node with a fresh temporary root, not yet spawned.
    fn unstarted(name: &str, join: &[&str], extra_args: &[&str]) -> NodeProcess {
        let root = tempfile::Builder::new()
            .prefix(&format!("fuddle-test-{name}-"))
            .tempdir()
            .expect("a temporary directory");
        let root_path = root.path().to_path_buf();
        NodeProcess {
            name: name.to_owned(),
            root: Some(root),
            root_path,
            child: None,
            id: 0,
            addr: String::new(),
            join: join.iter().map(|s| (*s).to_owned()).collect(),
            extra: extra_args.iter().map(|s| (*s).to_owned()).collect(),
            logs: Vec::new(),
        }
    }

    /// The node's id, as it printed it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node's gRPC address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's name in the test.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.root_path.join("data")
    }

    /// Whether the process is running (neither killed nor exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("polling a node").is_none(),
            None => false,
        }
    }

    /// The node's current stderr log.
    pub fn log(&self) -> String {
        self.logs
            .last()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    fn spawn(&mut self, bind: &str) -> Result<(), StartFailure> {
        let log_path = self
            .root_path
            .join(format!("node-{}.log", self.logs.len() + 1));
        let log = File::create(&log_path).expect("a log file");
        self.logs.push(log_path.clone());
        let mut command = Command::new(node_bin());
        command
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--bind", bind, "--http-bind", "127.0.0.1:0"])
            .args(FAST_TIMINGS)
            .args(&self.extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if !self.join.is_empty() {
            command.arg("--join").arg(self.join.join(","));
        }
        let mut child = command.spawn().expect("spawning fuddle-node");
        let lines = Lines::spawn(child.stdout.take().expect("stdout"));
        let started = Instant::now();
        let ready = loop {
            let left = START_DEADLINE.saturating_sub(started.elapsed());
            match lines.next_within(left) {
                Next::Line(line) => {
                    if let Some(ready) = parse_ready(&line) {
                        break Some(ready);
                    }
                }
                Next::Closed => break None,
                Next::TimedOut => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        match ready {
            Some((id, addr)) => {
                self.id = id;
                self.addr = addr;
                self.child = Some(child);
                Ok(())
            }
            None => {
                let status = wait_bounded(&mut child, Duration::from_secs(10), "a failed node");
                Err(StartFailure {
                    status: Some(status),
                    log: std::fs::read_to_string(&log_path).unwrap_or_default(),
                })
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait (bounded) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("terminate a running node");
        send_signal(&child, Signal::SIGTERM);
        wait_bounded(&mut child, Duration::from_secs(30), "a terminated node")
    }

    /// Starts the stopped node again on its data dir, on the same port if
    /// it is free (else on a new one). Returns once it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a node that is stopped");
        let old = self.addr.clone();
        if port_is_free(&old) {
            match self.spawn(&old) {
                Ok(()) => return,
                Err(failure) if failure.log.contains("in use") => {
                    // The data dir, not the port: no point trying again.
                    panic!(
                        "node {} did not restart (exit status {:?}):\n{}",
                        self.name, failure.status, failure.log
                    );
                }
                Err(_) => {}
            }
        }
        if let Err(failure) = self.spawn("127.0.0.1:0") {
            panic!(
                "node {} did not restart (exit status {:?}):\n{}",
                self.name, failure.status, failure.log
            );
        }
    }

    /// Starts the stopped node again on its data dir and on exactly its
    /// old address (nodes advertised through a proxy must keep it), trying
    /// for a while if the port is not free yet. Returns once it is ready.
    pub fn restart_same_addr(&mut self) {
        assert!(self.child.is_none(), "restart a node that is stopped");
        let addr = self.addr.clone();
        let started = Instant::now();
        loop {
            let failure = match self.spawn(&addr) {
                Ok(()) => return,
                Err(failure) => failure,
            };
            // "cannot listen on ADDR: Address already in use" (gRPC), or
            // the gossip socket's equivalent; not the data dir's lock.
            let port_taken =
                failure.log.contains("already in use") && !failure.log.contains("another process");
            if !port_taken || started.elapsed() >= START_DEADLINE {
                panic!(
                    "node {} did not restart on {addr} (exit status {:?}):\n{}",
                    self.name, failure.status, failure.log
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `signal` to the running node (SIGSTOP, SIGCONT...).
    pub fn signal(&self, signal: Signal) {
        send_signal(self.child.as_ref().expect("signal a running node"), signal);
    }

    /// Starts the stopped node again on its data dir, on a new port. A
    /// node that exits instead of becoming ready is an `Err` with its exit
    /// status and log, not a panic (a data dir that must be refused).
    pub fn try_restart(&mut self) -> Result<(), StartFailure> {
        assert!(self.child.is_none(), "restart a node that is stopped");
        self.spawn("127.0.0.1:0")
    }

    /// Runs `fuddle-cli --addr <this node> args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.addr, args)
    }

    /// Runs `fuddle-cli --addr <this node> -o json args...`, asserts it
    /// succeeded and parses its output.
    pub fn cli_json<T: for<'de> Deserialize<'de>>(&self, args: &[&str]) -> anyhow::Result<T> {
        cli_json(&self.addr, args)
    }

    /// `members list -o json` with the given consistency.
    pub fn list(&self, consistency: &str) -> anyhow::Result<MemberList> {
        self.cli_json(&["members", "list", "--consistency", consistency])
    }

    /// `cluster status -o json` as this node answers it.
    pub fn cluster_status(&self) -> anyhow::Result<ClusterJson> {
        self.cli_json(&["cluster", "status"])
    }

    /// `node status -o json` of this node.
    pub fn node_status(&self) -> anyhow::Result<Value> {
        self.cli_json(&["node", "status"])
    }

    /// Waits until this node's stale state has applied at least `index`;
    /// returns its members at that point.
    pub fn stale_list_at_least(&self, index: u64) -> MemberList {
        eventually(
            &format!("node {} applies index {index}", self.name),
            DEADLINE,
            || {
                let list = self.list("stale")?;
                ensure!(list.index >= index, "at index {}", list.index);
                Ok(list)
            },
        )
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            for path in &self.logs {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!(
                    "===== node {} (id {}, {}) log {} (last {LOG_TAIL_LINES} lines) =====\n{}\n===== end of {} =====",
                    self.name,
                    self.id,
                    self.addr,
                    path.display(),
                    tail(&text, LOG_TAIL_LINES),
                    path.display(),
                );
            }
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!("kept node {}'s directory: {}", self.name, kept.display());
            }
        }
    }
}

/// Parses `fuddle-node <ID> listening on <ADDR>`.
fn parse_ready(line: &str) -> Option<(u64, String)> {
    let rest = line.strip_prefix("fuddle-node ")?;
    let (id, addr) = rest.split_once(" listening on ")?;
    Some((id.trim().parse().ok()?, addr.trim().to_owned()))
}

/// Whether both the TCP and the UDP port of `addr` can be bound now.
fn port_is_free(addr: &str) -> bool {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return false;
    };
    TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok()
}

/// Spawns `fuddle-node` with `args` (and the fast timings, no data dir of
/// its own) and waits for it to exit; for nodes that must refuse to start.
pub fn run_node_expecting_exit(args: &[&str]) -> Output {
    let child = Command::new(node_bin())
        .args(["--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"])
        .args(FAST_TIMINGS)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning fuddle-node");
    output_bounded(
        child,
        Duration::from_secs(30),
        "a fuddle-node that should refuse to start",
    )
}

/// Waits (bounded) for a child and collects its output.
fn output_bounded(mut child: Child, deadline: Duration, what: &str) -> Output {
    let stdout = read_all(child.stdout.take().expect("stdout"));
    let stderr = read_all(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, deadline, what);
    // The pipes close when the process exits, and the readers end.
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Starts a cluster of `n` nodes: the first bootstraps, the others join
/// it. Returns once every node is in the membership and the voters are
/// as many as the rule allows (odd, at most 5).
pub fn start_cluster(n: usize, extra_args: &[&str]) -> Vec<NodeProcess> {
    let first = NodeProcess::start("n1", &[], extra_args);
    let seed = first.addr().to_owned();
    let mut nodes = vec![first];
    for i in 2..=n {
        nodes.push(NodeProcess::start(&format!("n{i}"), &[&seed], extra_args));
    }
    let voters = match n.min(5) {
        v if v % 2 == 0 => v - 1,
        v => v,
    };
    wait_for_membership(&nodes, voters, n - voters);
    nodes
}

/// Waits until every running node of `nodes` reports a membership of
/// `voters` voters and `learners` learners with one leader.
pub fn wait_for_membership(nodes: &[NodeProcess], voters: usize, learners: usize) -> ClusterJson {
    let mut last = None;
    for node in nodes {
        last = Some(eventually(
            &format!(
                "node {} reports {voters} voters and {learners} learners with a leader",
                node.name()
            ),
            DEADLINE,
            || {
                let status = node.cluster_status()?;
                status.check_shape(voters, learners)?;
                Ok(status)
            },
        ));
    }
    last.expect("at least one node")
}

/// The node of `nodes` whose id is `id`.
pub fn by_id(nodes: &mut [NodeProcess], id: u64) -> &mut NodeProcess {
    nodes
        .iter_mut()
        .find(|n| n.id() == id)
        .unwrap_or_else(|| panic!("no node with id {id}"))
}

// ---------------------------------------------------------------------------
// fuddle-cli
// ---------------------------------------------------------------------------

/// Runs `fuddle-cli --addr <addr> args...` to its end (bounded).
pub fn cli(addr: &str, args: &[&str]) -> Output {
    let child = cli_command(addr, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning fuddle-cli");
    output_bounded(child, CLI_DEADLINE, &format!("fuddle-cli {args:?}"))
}

fn cli_command(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(cli_bin());
    command
        .env_remove("FUDDLE_ADDR")
        .env("NO_COLOR", "1")
        .args(["--addr", addr])
        .args(args);
    command
}

/// Runs `fuddle-cli --addr <addr> -o json args...`, requires success and
/// parses stdout.
pub fn cli_json<T: for<'de> Deserialize<'de>>(addr: &str, args: &[&str]) -> anyhow::Result<T> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let output = cli(addr, &all);
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "fuddle-cli {all:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("fuddle-cli {all:?} printed {stdout:?}"))
}

/// The JSON of `members list -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberList {
    /// The index the answer reflects.
    pub index: u64,
    /// The members.
    pub members: Vec<Member>,
}

impl MemberList {
    /// The members by id.
    pub fn by_id(&self) -> BTreeMap<String, Member> {
        self.members
            .iter()
            .map(|m| (m.id.clone(), m.clone()))
            .collect()
    }

    /// One member, if listed.
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// The JSON of `cluster status -o json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClusterJson {
    /// The leader's id; 0 for none.
    pub leader: u64,
    /// The Raft term.
    pub term: u64,
    /// Every node of the membership.
    pub nodes: Vec<NodeInfo>,
}

impl ClusterJson {
    /// The voters' ids.
    pub fn voters(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.voter)
            .map(|n| n.id)
            .collect()
    }

    /// The learners' ids.
    pub fn learners(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| !n.voter)
            .map(|n| n.id)
            .collect()
    }

    /// Checks: `voters` voters, `learners` learners, a leader that is one
    /// of the voters and the only node with the role `leader`, voters in
    /// role follower, learners in role learner.
    pub fn check_shape(&self, voters: usize, learners: usize) -> anyhow::Result<()> {
        ensure!(
            self.voters().len() == voters && self.learners().len() == learners,
            "{} voters and {} learners: {self:?}",
            self.voters().len(),
            self.learners().len()
        );
        ensure!(self.leader != 0, "no leader: {self:?}");
        ensure!(
            self.voters().contains(&self.leader),
            "the leader is not a voter: {self:?}"
        );
        for node in &self.nodes {
            let expected = match (node.id == self.leader, node.voter) {
                (true, _) => "leader",
                (false, true) => "follower",
                (false, false) => "learner",
            };
            ensure!(
                node.role == expected,
                "node {} has role {} where {expected} was expected: {self:?}",
                node.id,
                node.role
            );
        }
        Ok(())
    }
}

/// A long-running `fuddle-cli` process (`members register`, `members
/// watch`) whose stdout is read line by line. Killed when dropped.
pub struct CliProcess {
    child: Option<Child>,
    stdout: Lines,
    stderr: Collected,
    what: String,
}

impl Debug for CliProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliProcess")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

impl CliProcess {
    /// Spawns `fuddle-cli --addr <addr> args...`.
    pub fn spawn(addr: &str, args: &[&str]) -> CliProcess {
        let mut child = cli_command(addr, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning fuddle-cli");
        let stdout: ChildStdout = child.stdout.take().expect("stdout");
        let stderr = Collected::spawn(child.stderr.take().expect("stderr"));
        CliProcess {
            child: Some(child),
            stdout: Lines::spawn(stdout),
            stderr,
            what: format!("fuddle-cli {args:?}"),
        }
    }

    /// The next stdout line; panics if none comes within `deadline` or the
    /// process ended.
    pub fn next_line(&self, deadline: Duration) -> String {
        match self.stdout.next_within(deadline) {
            Next::Line(line) => line,
            Next::Closed => panic!(
                "{} ended its output; stderr: {}",
                self.what,
                self.stderr.text()
            ),
            Next::TimedOut => panic!(
                "{} printed nothing within {deadline:?}; stderr: {}",
                self.what,
                self.stderr.text()
            ),
        }
    }

    /// The next stdout line parsed as JSON.
    pub fn next_json(&self, deadline: Duration) -> Value {
        let line = self.next_line(deadline);
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{} printed {line:?}, not JSON: {e}", self.what))
    }

    /// Every stdout line printed so far and not yet read.
    pub fn drain_lines(&self) -> Vec<String> {
        self.stdout.drain()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: Signal) {
        send_signal(self.child.as_ref().expect("a running process"), signal);
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("a running process");
        wait_bounded(&mut child, deadline, &self.what)
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("===== {} stderr =====\n{}", self.what, self.stderr.text());
        }
    }
}

/// A process's stderr as text, for assertion messages.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A process's stdout as text.
pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The exit code of a finished process; panics on death by signal.
pub fn code_of(output: &Output) -> i32 {
    output
        .status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {output:?}"))
}

// ---------------------------------------------------------------------------
// Subscription events as printed by `members watch -o json`
// ---------------------------------------------------------------------------

/// Applies the events of a watch (JSON lines) to a model of the registry,
/// checking the order rules on the way: a snapshot first, then change
/// events strictly in index order (no duplicate, nothing older than the
/// state), progress never going back. Returns the model and the indexes
/// of the change events.
pub fn replay_watch(lines: &[Value]) -> anyhow::Result<(BTreeMap<String, Member>, Vec<u64>)> {
    let mut state = BTreeMap::new();
    let mut at: Option<u64> = None;
    let mut change_indexes = Vec::new();
    for line in lines {
        let index = line["index"]
            .as_u64()
            .ok_or_else(|| anyhow!("an event without index: {line}"))?;
        match line["type"].as_str() {
            Some("snapshot") => {
                if let Some(at) = at {
                    ensure!(index >= at, "snapshot at {index} after index {at}");
                }
                let members: Vec<Member> = serde_json::from_value(line["members"].clone())?;
                state = members.into_iter().map(|m| (m.id.clone(), m)).collect();
                at = Some(index);
            }
            Some("changes") => {
                let Some(previous) = at else {
                    bail!("changes before the first snapshot: {line}");
                };
                ensure!(
                    index > previous,
                    "changes at {index} after index {previous}: a duplicate or out of order"
                );
                let changes = line["changes"]
                    .as_array()
                    .ok_or_else(|| anyhow!("changes without a list: {line}"))?;
                ensure!(!changes.is_empty(), "an empty change event: {line}");
                for change in changes {
                    match change["type"].as_str() {
                        Some("upsert") => {
                            let member: Member = serde_json::from_value(change["member"].clone())?;
                            ensure!(
                                member.mod_index == index,
                                "an upsert at {index} of a member with mod_index {}",
                                member.mod_index
                            );
                            state.insert(member.id.clone(), member);
                        }
                        Some("removed") => {
                            let id = change["id"].as_str().unwrap_or_default();
                            ensure!(
                                state.remove(id).is_some(),
                                "removal at {index} of {id:?}, which the watcher did not have"
                            );
                        }
                        _ => bail!("an unknown change: {change}"),
                    }
                }
                change_indexes.push(index);
                at = Some(index);
            }
            Some("progress") => {
                if let Some(at) = at {
                    ensure!(index >= at, "progress at {index} after index {at}");
                }
                at = Some(at.map_or(index, |a| a.max(index)));
            }
            _ => bail!("an unknown event: {line}"),
        }
    }
    Ok((state, change_indexes))
}

/// One HTTP/1.1 GET of `path` from `addr` (a node's `--http-bind`
/// address): the status code and the body. A test helper written by hand
/// rather than a client crate: one request on a fresh connection, read to
/// its close, is all a test of the node's read-only HTTP needs.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers in {response:?}"))?;
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked answer, which this helper does not read: {head}"
    );
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}
