//! The clients of a scenario: writers, readers, subscribers and a status
//! monitor, each a task that records everything it does.
//!
//! Every client makes a single attempt per call (`retry_deadline` zero) and
//! moves on to the next node after a failure, so the error a call returns
//! is the one attempt's and can be classified exactly (see
//! [`super::history::classify`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuddle_client::{
    Client, ClientOptions, Consistency, Filter, MemberSpec, Session, SessionOptions,
};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::history::{Clock, Outcome, Recorder, Request, StatusSample, classify};

/// The metadata key that carries a write's unique value.
pub const VALUE_KEY: &str = "v";
/// Every member the load writes has an id starting with this.
pub const LOAD_PREFIX: &str = "w";

/// How much load to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Writer clients, each with its own session and keys.
    pub writers: usize,
    /// Member ids per writer: few, so that ids are written again and
    /// removed, and reads race with writes of the same id.
    pub keys_per_writer: usize,
    /// Reader clients (linearizable gets and lists, stale lists).
    pub readers: usize,
    /// Pause between two requests of one client.
    pub pause: Duration,
    /// A subscriber per node (starting on that node).
    pub subscribers: bool,
    /// Per-attempt timeout of the load's calls.
    pub request_timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            writers: 3,
            keys_per_writer: 4,
            readers: 2,
            pause: Duration::from_millis(10),
            subscribers: true,
            request_timeout: Duration::from_secs(8),
        }
    }
}

/// The options of every scenario client: one attempt per call.
pub fn single_attempt(request_timeout: Duration) -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout,
        retry_deadline: Duration::ZERO,
        unreachable_rounds: 1,
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        progress_interval: Duration::from_millis(500),
    }
}

/// `addrs` rotated to start at `first`, so that clients spread over nodes.
pub fn rotated(addrs: &[String], first: usize) -> Vec<String> {
    let n = addrs.len();
    (0..n).map(|k| addrs[(first + k) % n].clone()).collect()
}

/// A small deterministic generator (xorshift), one per client.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// The member id of writer `w`'s key `k`.
pub fn key(w: usize, k: usize) -> String {
    format!("{LOAD_PREFIX}{w}-k{k}")
}

/// Connects with `options`, trying for at most `deadline`.
pub async fn connect(
    addrs: Vec<String>,
    options: ClientOptions,
    deadline: Duration,
) -> anyhow::Result<Client> {
    let started = tokio::time::Instant::now();
    loop {
        match Client::connect_with(addrs.clone(), options.clone()).await {
            Ok(client) => return Ok(client),
            Err(err) if started.elapsed() >= deadline => {
                anyhow::bail!("cannot connect to {addrs:?} within {deadline:?}: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Opens a session, trying for at most `deadline`.
pub async fn open_session(
    client: &Client,
    options: SessionOptions,
    deadline: Duration,
) -> anyhow::Result<Session> {
    let started = tokio::time::Instant::now();
    loop {
        match client.open_session(options.clone()).await {
            Ok(session) => return Ok(session),
            Err(err) if started.elapsed() >= deadline => {
                anyhow::bail!("cannot open a session within {deadline:?}: {err}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The running load: its tasks and the flag that stops them.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    /// While set, readers wait instead of reading.
    reads_paused: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    subscribers: Vec<JoinHandle<()>>,
    monitor: Option<JoinHandle<()>>,
    /// The subscriptions' positions in the record, by node.
    pub subscriptions: Vec<usize>,
    /// The sessions of the writers, kept open until the load is dropped so
    /// that their members stay up through the final checks.
    sessions: Arc<std::sync::Mutex<Vec<Session>>>,
}

/// Everything a client task needs.
#[derive(Debug, Clone)]
struct Env {
    clock: Clock,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    reads_paused: Arc<AtomicBool>,
    addrs: Vec<String>,
    spec: LoadSpec,
}

impl Load {
    /// Starts the load's tasks on `runtime` against the nodes at `addrs`.
    pub fn start(
        runtime: &Handle,
        clock: Clock,
        recorder: Recorder,
        addrs: Vec<String>,
        spec: &LoadSpec,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let reads_paused = Arc::new(AtomicBool::new(false));
        let env = Env {
            clock,
            recorder: recorder.clone(),
            stop: stop.clone(),
            reads_paused: reads_paused.clone(),
            addrs: addrs.clone(),
            spec: spec.clone(),
        };
        let sessions = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for w in 0..spec.writers {
            tasks.push(runtime.spawn(writer(env.clone(), w, sessions.clone())));
        }
        for r in 0..spec.readers {
            tasks.push(runtime.spawn(reader(env.clone(), spec.writers + r)));
        }
        let mut subscribers = Vec::new();
        let mut subscriptions = Vec::new();
        if spec.subscribers {
            for (i, addr) in addrs.iter().enumerate() {
                let position =
                    recorder.subscription(&format!("subscriber on node {} ({addr})", i + 1));
                subscriptions.push(position);
                subscribers.push(runtime.spawn(subscriber(env.clone(), i, position)));
            }
        }
        let monitor = Some(runtime.spawn(monitor(env)));
        Load {
            stop,
            reads_paused,
            tasks,
            subscribers,
            monitor,
            subscriptions,
            sessions,
        }
    }

    /// Pauses (or resumes) the readers: a paused reader sends nothing.
    pub fn pause_reads(&self, paused: bool) {
        self.reads_paused.store(paused, Ordering::SeqCst);
    }

    /// Stops the writers and readers and waits (at most `deadline`) for
    /// their requests in flight; requests still unanswered after that stay
    /// unknown. Subscribers and the monitor go on until [`Load::finish`].
    pub async fn stop_requests(&mut self, deadline: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let until = tokio::time::Instant::now() + deadline;
        for task in self.tasks.drain(..) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(until, task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Stops everything.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..).chain(self.subscribers.drain(..)) {
            task.abort();
        }
        if let Some(monitor) = self.monitor.take() {
            monitor.abort();
        }
        self.sessions.lock().expect("sessions lock").clear();
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}

/// After a failure, a client pauses as a real one would (and keeps the
/// history from filling up with failed attempts while the cluster has no
/// leader).
async fn back_off(failed: bool) {
    if failed {
        tokio::time::sleep(BACK_OFF).await;
    }
}

/// The pause after a failed request.
const BACK_OFF: Duration = Duration::from_millis(150);

async fn writer(env: Env, w: usize, sessions: Arc<std::sync::Mutex<Vec<Session>>>) {
    let options = single_attempt(env.spec.request_timeout);
    let addrs = rotated(&env.addrs, w);
    let client = connect(addrs, options, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("writer {w}: {e:#}"));
    // The defaults (30 s heartbeat timeout, 10 min reconnect timeout) keep
    // the session up through every fault of a scenario: an expiry would
    // make the SDK register its members again, writes the history lacks.
    let session = open_session(&client, SessionOptions::default(), Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("writer {w}: {e:#}"));
    let mut rng = Rng::new(w as u64 + 1);
    let mut seq = 0u64;
    while !env.stop.load(Ordering::SeqCst) {
        let id = key(w, rng.below(env.spec.keys_per_writer as u64) as usize);
        let via = client.current_addr().to_owned();
        if rng.below(10) < 7 {
            seq += 1;
            let value = format!("{LOAD_PREFIX}{w}-{seq}");
            let pending = env.recorder.invoke(
                env.clock,
                w,
                &via,
                Request::Register {
                    id: id.clone(),
                    value: value.clone(),
                },
            );
            let spec = MemberSpec::new(&id, "load").metadata(VALUE_KEY, &value);
            let outcome = match session.register(spec).await {
                Ok(member) => Outcome::Registered(member),
                Err(err) => classify(&err),
            };
            let failed = !outcome.is_ok();
            pending.complete(outcome);
            back_off(failed).await;
        } else {
            let pending =
                env.recorder
                    .invoke(env.clock, w, &via, Request::Unregister { id: id.clone() });
            let outcome = match session.unregister(&id).await {
                Ok(index) => Outcome::Unregistered(index),
                Err(err) => classify(&err),
            };
            let failed = !outcome.is_ok();
            pending.complete(outcome);
            back_off(failed).await;
        }
        tokio::time::sleep(env.spec.pause).await;
    }
    // Keep the session (and its heartbeats) until the load is finished.
    sessions.lock().expect("sessions lock").push(session);
}

async fn reader(env: Env, r: usize) {
    let options = single_attempt(env.spec.request_timeout);
    let addrs = rotated(&env.addrs, r);
    let client = connect(addrs, options, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("reader {r}: {e:#}"));
    let mut rng = Rng::new(1000 + r as u64);
    while !env.stop.load(Ordering::SeqCst) {
        if env.reads_paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let via = client.current_addr().to_owned();
        let dice = rng.below(20);
        if dice < 10 {
            let w = rng.below(env.spec.writers.max(1) as u64) as usize;
            let id = key(w, rng.below(env.spec.keys_per_writer as u64) as usize);
            let pending = env
                .recorder
                .invoke(env.clock, r, &via, Request::Get { id: id.clone() });
            let outcome = match client.get(&id, Consistency::Linearizable).await {
                Ok((member, index)) => Outcome::Found { member, index },
                Err(err) => classify(&err),
            };
            let failed = !outcome.is_ok();
            pending.complete(outcome);
            back_off(failed).await;
        } else {
            let (request, consistency) = if dice < 17 {
                (Request::ListStale, Consistency::Stale)
            } else {
                (Request::ListLinearizable, Consistency::Linearizable)
            };
            let pending = env.recorder.invoke(env.clock, r, &via, request);
            let outcome = match client.list(Filter::all(), consistency).await {
                Ok((members, index)) => Outcome::Listed { members, index },
                Err(err) => classify(&err),
            };
            let failed = !outcome.is_ok();
            pending.complete(outcome);
            back_off(failed).await;
        }
        tokio::time::sleep(env.spec.pause).await;
    }
}

async fn subscriber(env: Env, node: usize, position: usize) {
    // The subscription starts on its node and fails over to the others
    // (and back) by itself; it must resume without a gap or a duplicate.
    let options = ClientOptions {
        retry_deadline: Duration::from_secs(5),
        ..single_attempt(Duration::from_secs(5))
    };
    let addrs = rotated(&env.addrs, node);
    let client = match connect(addrs, options, Duration::from_secs(30)).await {
        Ok(client) => client,
        Err(err) => {
            env.recorder.ended(position, format!("{err:#}"));
            return;
        }
    };
    let mut subscription = loop {
        match client.subscribe(Filter::all(), None).await {
            Ok(subscription) => break subscription,
            Err(err) if err.is_transient() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => {
                env.recorder.ended(position, err.to_string());
                return;
            }
        }
    };
    while let Some(event) = subscription.next_event().await {
        match event {
            Ok(event) => env.recorder.event(position, env.clock.now(), event),
            Err(err) => {
                env.recorder.ended(position, err.to_string());
                return;
            }
        }
    }
    env.recorder
        .ended(position, "the subscription ended without an error".into());
}

/// Asks every node for its status every 100 ms and records the term and
/// the leader it names, for the split-brain check. One task per node, so
/// that a paused node does not hold up the others' samples.
async fn monitor(env: Env) {
    let options = ClientOptions {
        connect_timeout: Duration::from_millis(500),
        ..single_attempt(Duration::from_millis(800))
    };
    let mut tasks = tokio::task::JoinSet::new();
    for addr in env.addrs.clone() {
        let (env, options) = (env.clone(), options.clone());
        tasks.spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                if client.is_none() {
                    client = Client::connect_with([addr.clone()], options.clone())
                        .await
                        .ok();
                }
                // Its own status: the term and the leader it follows,
                // without the cluster status's questions to the others.
                if let Some(c) = &client
                    && let Ok(status) = c.node_status(None).await
                {
                    env.recorder.status(StatusSample {
                        at: env.clock.now(),
                        node: status.node.id,
                        term: status.term,
                        leader: status.leader,
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    // Aborting this task drops the set, which aborts the per-node tasks.
    while tasks.join_next().await.is_some() {}
}
