//! Fault scenarios as scripts: a list of [`Step`]s run in order by a small
//! interpreter, then the checks of [`super::check`].
//!
//! The interpreter runs on the test's thread and blocks; clients run on a
//! runtime of their own, proxies on another, so neither waits for it.
//! Every wait is bounded: a condition that does not come true fails the
//! scenario with the timeline of what happened.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use fuddle_client::{Client, ClusterStatus, Consistency, Filter, NodeStatus};
use tokio::runtime::Runtime;

use super::check::{self, Final};
use super::cluster::FaultCluster;
use super::history::{Clock, Outcome, Record, Recorder, Request};
use super::load::{Load, LoadSpec, single_attempt};

/// Names a node in a step; resolved when the step runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// Node `i` (0-based, in start order).
    Node(usize),
    /// The leader the running nodes agree on.
    Leader,
    /// A running follower of that leader.
    Follower,
    /// The node the previous step that named a node resolved to.
    Last,
    /// The node remembered under this name by [`Step::Mark`].
    Mark(&'static str),
}

/// A condition to wait for.
pub enum Cond {
    /// The running nodes agree on a leader.
    Leader,
    /// The running nodes other than the target agree on a leader that is
    /// not the target.
    LeaderOtherThan(Target),
    /// This many more writes are acknowledged than when the wait began.
    Progress(usize),
    /// Every running node has applied the leader's committed index.
    CaughtUp,
    /// A condition of the scenario's own.
    Custom(&'static str, Check),
}

/// A check or action of a scenario's own.
pub type Check = Box<dyn FnMut(&mut Ctx) -> anyhow::Result<()>>;
/// A check of the final record, run after the common checks.
pub type Verify = Box<dyn Fn(&Ctx, &Record, &Final) -> anyhow::Result<()>>;

/// One step of a scenario.
pub enum Step {
    /// Starts writers, readers, subscribers and the status monitor.
    Load(LoadSpec),
    /// SIGKILL.
    Kill(Target),
    /// Restart a killed node on its data dir and address.
    Restart(Target),
    /// SIGKILL every node.
    KillAll,
    /// Restart every killed node.
    RestartAll,
    /// SIGSTOP.
    Pause(Target),
    /// SIGCONT.
    Resume(Target),
    /// Split the nodes into groups (a node in no group is alone).
    Partition(Vec<Vec<Target>>),
    /// Cut a node off from all others.
    Isolate(Target),
    /// One-way loss on the connections `from` makes to `to`: the answers
    /// are lost (`requests: false`) or the requests are.
    Lose {
        /// The calling node.
        from: Target,
        /// The called node.
        to: Target,
        /// Lose the requests rather than the answers.
        requests: bool,
    },
    /// Delay on the connections `from` makes to `to`.
    Delay {
        /// The calling node.
        from: Target,
        /// The called node.
        to: Target,
        /// How long each chunk is held.
        delay: Duration,
    },
    /// Lift every network fault between nodes.
    Heal,
    /// Pause (`true`) or resume the load's readers.
    PauseReads(bool),
    /// Remember a node under a name.
    Mark(&'static str, Target),
    /// Remember the current time under a name.
    Note(&'static str),
    /// Let time pass.
    Sleep(Duration),
    /// Wait (at most the duration) for a condition.
    WaitFor(Cond, Duration),
    /// An action or check of the scenario's own.
    Run(&'static str, Check),
    /// The final checks: heal, resume, wait for the cluster to settle,
    /// stop the load, read the final state and check the whole record.
    Check,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Load(spec) => write!(f, "Load({spec:?})"),
            Step::Kill(t) => write!(f, "Kill({t:?})"),
            Step::Restart(t) => write!(f, "Restart({t:?})"),
            Step::KillAll => f.write_str("KillAll"),
            Step::RestartAll => f.write_str("RestartAll"),
            Step::Pause(t) => write!(f, "Pause({t:?})"),
            Step::Resume(t) => write!(f, "Resume({t:?})"),
            Step::Partition(groups) => write!(f, "Partition({groups:?})"),
            Step::Isolate(t) => write!(f, "Isolate({t:?})"),
            Step::Lose { from, to, requests } => {
                write!(f, "Lose({from:?} -> {to:?}, requests: {requests})")
            }
            Step::Delay { from, to, delay } => write!(f, "Delay({from:?} -> {to:?}, {delay:?})"),
            Step::Heal => f.write_str("Heal"),
            Step::PauseReads(paused) => write!(f, "PauseReads({paused})"),
            Step::Mark(name, t) => write!(f, "Mark({name}, {t:?})"),
            Step::Note(name) => write!(f, "Note({name})"),
            Step::Sleep(d) => write!(f, "Sleep({d:?})"),
            Step::WaitFor(cond, d) => write!(f, "WaitFor({cond:?}, {d:?})"),
            Step::Run(name, _) => write!(f, "Run({name})"),
            Step::Check => f.write_str("Check"),
        }
    }
}

impl fmt::Debug for Cond {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cond::Leader => f.write_str("Leader"),
            Cond::LeaderOtherThan(t) => write!(f, "LeaderOtherThan({t:?})"),
            Cond::Progress(n) => write!(f, "Progress({n})"),
            Cond::CaughtUp => f.write_str("CaughtUp"),
            Cond::Custom(name, _) => write!(f, "Custom({name})"),
        }
    }
}

/// A scenario: a cluster, a script and extra final checks.
pub struct Scenario {
    name: String,
    nodes: usize,
    args: Vec<String>,
    per_node: Vec<Vec<String>>,
    steps: Vec<Step>,
    verifies: Vec<(&'static str, Verify)>,
}

impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("name", &self.name)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl Scenario {
    /// A scenario on `nodes` nodes started with `args` on top of the
    /// harness's timings and [`super::cluster::FAULT_ARGS`].
    pub fn new(name: &str, nodes: usize, args: &[&str]) -> Scenario {
        Scenario {
            name: name.to_owned(),
            nodes,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            per_node: Vec::new(),
            steps: Vec::new(),
            verifies: Vec::new(),
        }
    }

    /// Arguments for node `i` alone (after the common ones).
    pub fn node_args(mut self, i: usize, args: &[&str]) -> Scenario {
        if self.per_node.len() <= i {
            self.per_node.resize(i + 1, Vec::new());
        }
        self.per_node[i].extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    /// Appends a step.
    pub fn step(mut self, step: Step) -> Scenario {
        self.steps.push(step);
        self
    }

    /// Appends steps.
    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> Scenario {
        self.steps.extend(steps);
        self
    }

    /// Adds a check of the final record.
    pub fn verify(mut self, name: &'static str, verify: Verify) -> Scenario {
        self.verifies.push((name, verify));
        self
    }

    /// Runs the scenario; panics with the timeline and every violation if
    /// a step fails or a check finds a problem. Returns the record and the
    /// final state (for the harness's own tests).
    pub fn run(self) -> Report {
        let started = Instant::now();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let cluster = FaultCluster::start_with(self.nodes, &args, &self.per_node);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-clients")
            .enable_all()
            .build()
            .expect("a runtime for the clients");
        let mut ctx = Ctx {
            name: self.name.clone(),
            cluster,
            runtime,
            clock: Clock::new(),
            recorder: Recorder::default(),
            load: None,
            load_spec: None,
            last: None,
            marks: HashMap::new(),
            notes: HashMap::new(),
            all_marks: Vec::new(),
            all_notes: Vec::new(),
            values: HashMap::new(),
            timeline: Vec::new(),
        };
        ctx.log(format!(
            "cluster of {} nodes up in {:.1?}: {:?}",
            self.nodes,
            started.elapsed(),
            ctx.cluster.addrs()
        ));
        let mut final_state = None;
        for step in self.steps {
            let what = format!("{step:?}");
            let result = match step {
                Step::Check => ctx.final_check().map(|f| {
                    final_state = Some(f);
                }),
                step => ctx.run_step(step),
            };
            if let Err(err) = result {
                ctx.fail(&format!("step {what} failed: {err:#}"));
            }
        }
        let Some(final_state) = final_state else {
            ctx.fail("the scenario has no Check step");
        };
        let record = ctx.recorder.snapshot();
        let mut problems = check::check_all(&record, &final_state);
        for (name, verify) in &self.verifies {
            if let Err(err) = verify(&ctx, &record, &final_state) {
                problems.push(format!("{name}: {err:#}"));
            }
        }
        if !problems.is_empty() {
            ctx.fail(&format!(
                "{} problem(s):\n- {}",
                problems.len(),
                problems.join("\n- ")
            ));
        }
        ctx.log(format!(
            "passed in {:.1?}: {}",
            started.elapsed(),
            record.summary()
        ));
        eprintln!("{}", ctx.timeline_text());
        ctx.shutdown();
        Report {
            record,
            last: final_state,
        }
    }
}

/// What a scenario that passed recorded.
#[derive(Debug, Clone)]
pub struct Report {
    /// The clients' record.
    pub record: Record,
    /// The final state.
    pub last: Final,
}

/// The state of a running scenario, for steps and checks.
pub struct Ctx {
    /// The scenario's name.
    pub name: String,
    /// The cluster.
    pub cluster: FaultCluster,
    /// The runtime the clients run on.
    pub runtime: Runtime,
    /// The scenario's clock.
    pub clock: Clock,
    /// The record of the clients.
    pub recorder: Recorder,
    /// The running load.
    pub load: Option<Load>,
    /// The load's spec.
    pub load_spec: Option<LoadSpec>,
    /// The node the last step that named one resolved to.
    pub last: Option<usize>,
    /// Nodes remembered by name.
    pub marks: HashMap<&'static str, usize>,
    /// Times remembered by name.
    pub notes: HashMap<&'static str, u64>,
    /// Every `Mark` in order (a soak repeats them).
    pub all_marks: Vec<(&'static str, usize)>,
    /// Every `Note` in order.
    pub all_notes: Vec<(&'static str, u64)>,
    /// Numbers a scenario's own steps remember.
    pub values: HashMap<&'static str, u64>,
    /// What happened, with times.
    timeline: Vec<(u64, String)>,
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Polls `check` every 100 ms until it holds or `deadline` passes.
fn poll<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(err) if started.elapsed() >= deadline => {
                return Err(err.context(format!("not true after {deadline:?}: {what}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

impl Ctx {
    /// Adds a line to the timeline (and to the test's output).
    pub fn log(&mut self, line: String) {
        let at = self.clock.now();
        eprintln!("[{}] {:>8.3}s {line}", self.name, at as f64 / 1e9);
        self.timeline.push((at, line));
    }

    fn timeline_text(&self) -> String {
        let mut text = format!("===== timeline of {} =====\n", self.name);
        for (at, line) in &self.timeline {
            text.push_str(&format!("{:>8.3}s {line}\n", *at as f64 / 1e9));
        }
        text
    }

    /// Fails the scenario with `message`, the timeline and the record's
    /// summary (the nodes' logs follow, printed by the harness).
    pub fn fail(&mut self, message: &str) -> ! {
        let record = self.recorder.snapshot();
        eprintln!("{}", self.timeline_text());
        eprintln!("record: {}", record.summary());
        panic!("scenario {} failed: {message}", self.name);
    }

    fn shutdown(&mut self) {
        if let Some(mut load) = self.load.take() {
            load.finish();
        }
    }

    /// The node names of messages: `n2`.
    pub fn node_name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The nodes that run and are not paused.
    pub fn up_nodes(&mut self) -> Vec<usize> {
        (0..self.cluster.len())
            .filter(|&i| self.cluster.is_up(i))
            .collect()
    }

    /// A client for node `i` alone, with short timeouts.
    fn quick_client(&self, i: usize) -> anyhow::Result<Client> {
        let addr = self.cluster.nodes[i].addr().to_owned();
        let options = single_attempt(Duration::from_secs(2));
        self.runtime
            .block_on(Client::connect_with([addr], options))
            .map_err(|e| anyhow!("node {}: {e}", self.node_name(i)))
    }

    /// Node `i`'s cluster status.
    pub fn cluster_status(&self, i: usize) -> anyhow::Result<ClusterStatus> {
        let client = self.quick_client(i)?;
        self.runtime
            .block_on(client.cluster_status())
            .map_err(|e| anyhow!("cluster status of {}: {e}", self.node_name(i)))
    }

    /// Node `i`'s own status.
    pub fn node_status(&self, i: usize) -> anyhow::Result<NodeStatus> {
        let client = self.quick_client(i)?;
        self.runtime
            .block_on(client.node_status(None))
            .map_err(|e| anyhow!("node status of {}: {e}", self.node_name(i)))
    }

    /// The leader every running node other than `except` names, if they
    /// agree on one that is not `except` and it says so itself.
    pub fn agreed_leader(&mut self, except: Option<usize>) -> anyhow::Result<usize> {
        let asked: Vec<usize> = self
            .up_nodes()
            .into_iter()
            .filter(|&i| Some(i) != except)
            .collect();
        ensure!(!asked.is_empty(), "no running node to ask");
        let mut leader = None;
        for &i in &asked {
            // A node's own status names the leader it follows without
            // asking the others (which a paused node would slow down).
            let status = self.node_status(i)?;
            ensure!(status.leader != 0, "{} knows no leader", self.node_name(i));
            match leader {
                None => leader = Some(status.leader),
                Some(l) => ensure!(
                    l == status.leader,
                    "{} names leader {}, another node {l}",
                    self.node_name(i),
                    status.leader
                ),
            }
        }
        let id = leader.expect("asked at least one node");
        let position = self
            .cluster
            .position(id)
            .ok_or_else(|| anyhow!("the leader {id} is no node of the cluster"))?;
        ensure!(
            Some(position) != except,
            "the leader is still the excluded node"
        );
        ensure!(
            asked.contains(&position),
            "the leader {} is not among the running nodes asked",
            self.node_name(position)
        );
        Ok(position)
    }

    /// Every running node has applied the leader's committed index.
    pub fn caught_up(&mut self) -> anyhow::Result<u64> {
        let leader = self.agreed_leader(None)?;
        let committed = self.node_status(leader)?.committed_index;
        for i in self.up_nodes() {
            let applied = self.node_status(i)?.node.applied_index;
            ensure!(
                applied >= committed,
                "{} applied {applied} of {committed}",
                self.node_name(i)
            );
        }
        Ok(committed)
    }

    /// Logs every running node's own view: log, applied and committed
    /// index, term and leader.
    pub fn log_states(&mut self) {
        for i in self.up_nodes() {
            let line = match self.node_status(i) {
                Ok(s) => format!(
                    "{}: {} last {} applied {} committed {} term {} leader {}",
                    self.node_name(i),
                    s.node.role,
                    s.node.last_log_index,
                    s.node.applied_index,
                    s.committed_index,
                    s.term,
                    self.cluster
                        .position(s.leader)
                        .map_or_else(|| s.leader.to_string(), |l| self.node_name(l)),
                ),
                Err(err) => format!("{}: {err:#}", self.node_name(i)),
            };
            self.log(line);
        }
    }

    fn resolve(&mut self, target: &Target) -> anyhow::Result<usize> {
        let i = match target {
            Target::Node(i) => {
                ensure!(*i < self.cluster.len(), "no node {i}");
                *i
            }
            Target::Leader => poll("an agreed leader", Duration::from_secs(30), || {
                self.agreed_leader(None)
            })?,
            Target::Follower => {
                let leader = poll("an agreed leader", Duration::from_secs(30), || {
                    self.agreed_leader(None)
                })?;
                self.up_nodes()
                    .into_iter()
                    .find(|&i| i != leader)
                    .ok_or_else(|| anyhow!("no running follower"))?
            }
            Target::Last => self.last.ok_or_else(|| anyhow!("no node named before"))?,
            Target::Mark(name) => *self
                .marks
                .get(name)
                .ok_or_else(|| anyhow!("no node marked {name:?}"))?,
        };
        self.last = Some(i);
        Ok(i)
    }

    fn run_step(&mut self, step: Step) -> anyhow::Result<()> {
        match step {
            Step::Load(spec) => {
                let load = Load::start(
                    &self.runtime.handle().clone(),
                    self.clock,
                    self.recorder.clone(),
                    self.cluster.addrs(),
                    &spec,
                );
                self.log(format!("load started: {spec:?}"));
                self.load = Some(load);
                self.load_spec = Some(spec);
            }
            Step::Kill(target) => {
                let i = self.resolve(&target)?;
                self.cluster.kill(i);
                self.log(format!("SIGKILL {} ({target:?})", self.node_name(i)));
            }
            Step::Restart(target) => {
                let i = self.resolve(&target)?;
                let started = Instant::now();
                self.cluster.restart(i);
                self.log(format!(
                    "restarted {} ({target:?}) in {:.1?}",
                    self.node_name(i),
                    started.elapsed()
                ));
            }
            Step::KillAll => {
                for i in 0..self.cluster.len() {
                    self.cluster.kill(i);
                }
                self.log("SIGKILL every node".into());
            }
            Step::RestartAll => {
                for i in 0..self.cluster.len() {
                    if !self.cluster.nodes[i].is_running() {
                        self.cluster.restart(i);
                    }
                }
                self.log("restarted every killed node".into());
                self.log_states();
            }
            Step::Pause(target) => {
                let i = self.resolve(&target)?;
                self.cluster.pause(i);
                self.log(format!("SIGSTOP {} ({target:?})", self.node_name(i)));
            }
            Step::Resume(target) => {
                let i = self.resolve(&target)?;
                self.cluster.resume(i);
                self.log(format!("SIGCONT {} ({target:?})", self.node_name(i)));
            }
            Step::Partition(groups) => {
                let mut resolved = Vec::new();
                for group in &groups {
                    let mut g = Vec::new();
                    for t in group {
                        g.push(self.resolve(t)?);
                    }
                    resolved.push(g);
                }
                self.cluster.net.partition(&resolved);
                let names: Vec<Vec<String>> = resolved
                    .iter()
                    .map(|g| g.iter().map(|&i| self.node_name(i)).collect())
                    .collect();
                self.log(format!("partition {names:?}"));
            }
            Step::Isolate(target) => {
                let i = self.resolve(&target)?;
                self.cluster.net.isolate(i);
                self.log(format!("isolated {} ({target:?})", self.node_name(i)));
            }
            Step::Lose { from, to, requests } => {
                let (a, b) = (self.resolve(&from)?, self.resolve(&to)?);
                self.cluster.net.lose(a, b, requests);
                let what = if requests { "requests" } else { "answers" };
                self.log(format!(
                    "losing the {what} of {} -> {}",
                    self.node_name(a),
                    self.node_name(b)
                ));
            }
            Step::Delay { from, to, delay } => {
                let (a, b) = (self.resolve(&from)?, self.resolve(&to)?);
                self.cluster.net.delay(a, b, delay);
                self.log(format!(
                    "delaying {} -> {} by {delay:?}",
                    self.node_name(a),
                    self.node_name(b)
                ));
            }
            Step::Heal => {
                self.cluster.net.heal();
                self.log("healed the network".into());
            }
            Step::PauseReads(paused) => {
                let load = self
                    .load
                    .as_ref()
                    .ok_or_else(|| anyhow!("no load running"))?;
                load.pause_reads(paused);
                let what = if paused { "paused" } else { "resumed" };
                self.log(format!("readers {what}"));
            }
            Step::Mark(name, target) => {
                let i = self.resolve(&target)?;
                self.marks.insert(name, i);
                self.all_marks.push((name, i));
                self.log(format!("{name} = {} ({target:?})", self.node_name(i)));
            }
            Step::Note(name) => {
                let now = self.clock.now();
                self.notes.insert(name, now);
                self.all_notes.push((name, now));
                self.log(format!("note {name}"));
            }
            Step::Sleep(duration) => {
                std::thread::sleep(duration);
            }
            Step::WaitFor(cond, deadline) => {
                let started = Instant::now();
                let what = format!("{cond:?}");
                self.wait_for(cond, deadline)?;
                self.log(format!("{what} after {:.1?}", started.elapsed()));
            }
            Step::Run(name, mut action) => {
                action(self).with_context(|| name.to_owned())?;
                self.log(format!("ran {name}"));
            }
            Step::Check => bail!("Check is run by the scenario"),
        }
        Ok(())
    }

    fn wait_for(&mut self, cond: Cond, deadline: Duration) -> anyhow::Result<()> {
        match cond {
            Cond::Leader => {
                let i = poll("the running nodes agree on a leader", deadline, || {
                    self.agreed_leader(None)
                })?;
                self.log(format!("leader: {}", self.node_name(i)));
            }
            Cond::LeaderOtherThan(target) => {
                let old = self.resolve(&target)?;
                let i = poll("the other nodes agree on a new leader", deadline, || {
                    self.agreed_leader(Some(old))
                })?;
                self.log(format!(
                    "new leader: {} (not {})",
                    self.node_name(i),
                    self.node_name(old)
                ));
            }
            Cond::Progress(n) => {
                let from = self.recorder.acknowledged_writes();
                poll(&format!("{n} more writes acknowledged"), deadline, || {
                    let now = self.recorder.acknowledged_writes();
                    ensure!(now >= from + n, "{} of {n}", now - from);
                    Ok(())
                })?;
            }
            Cond::CaughtUp => {
                let index = poll("every running node catches up", deadline, || {
                    self.caught_up()
                })?;
                self.log(format!("every running node applied {index}"));
            }
            Cond::Custom(name, mut check) => {
                let started = Instant::now();
                loop {
                    match check(self) {
                        Ok(()) => break,
                        Err(err) if started.elapsed() >= deadline => {
                            return Err(err.context(format!("not true after {deadline:?}: {name}")));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            }
        }
        Ok(())
    }

    /// A linearizable or stale list of every member through node `i`,
    /// recorded in the history as a request of the checker (client
    /// `usize::MAX`).
    pub fn recorded_list(&self, i: usize, consistency: Consistency) -> anyhow::Result<Outcome> {
        let client = self.quick_client(i)?;
        let request = match consistency {
            Consistency::Linearizable => Request::ListLinearizable,
            Consistency::Stale => Request::ListStale,
        };
        let pending = self.recorder.invoke(
            self.clock,
            usize::MAX,
            self.cluster.nodes[i].addr(),
            request,
        );
        let result = self
            .runtime
            .block_on(client.list(Filter::all(), consistency));
        let outcome = match &result {
            Ok((members, index)) => Outcome::Listed {
                members: members.clone(),
                index: *index,
            },
            Err(err) => super::history::classify(err),
        };
        pending.complete(outcome.clone());
        result.map_err(|e| anyhow!("list on {}: {e}", self.node_name(i)))?;
        Ok(outcome)
    }

    /// The final checks' preparation: settle the cluster, stop the load,
    /// read the final state from every node.
    fn final_check(&mut self) -> anyhow::Result<Final> {
        self.cluster.net.heal();
        for i in 0..self.cluster.len() {
            if self.cluster.is_paused(i) {
                self.cluster.resume(i);
            }
            ensure!(
                self.cluster.nodes[i].is_running(),
                "{} is not running at the check: restart it in the script",
                self.node_name(i)
            );
        }
        self.log("check: healed, every node runs".into());
        let leader = poll("an agreed leader", Duration::from_secs(30), || {
            self.agreed_leader(None)
        })?;
        let timeout = self
            .load_spec
            .as_ref()
            .map_or(Duration::from_secs(5), |s| s.request_timeout)
            + Duration::from_secs(2);
        if let Some(mut load) = self.load.take() {
            self.runtime.block_on(load.stop_requests(timeout));
            self.load = Some(load);
        }
        self.log("check: writers and readers stopped".into());
        poll("every node catches up", Duration::from_secs(30), || {
            self.caught_up()
        })?;
        // The final linearizable list, part of the history.
        let (members, index) =
            poll(
                "a final linearizable list",
                Duration::from_secs(30),
                || match self.recorded_list(leader, Consistency::Linearizable)? {
                    Outcome::Listed { members, index } => Ok((members, index)),
                    other => bail!("{other:?}"),
                },
            )?;
        self.log(format!(
            "check: final list at index {index} with {} members",
            members.len()
        ));
        // Every node's own state, at one index, also part of the history.
        let mut per_node = Vec::new();
        for i in 0..self.cluster.len() {
            let listed = poll(
                &format!("{} applies {index}", self.node_name(i)),
                Duration::from_secs(30),
                || match self.recorded_list(i, Consistency::Stale)? {
                    Outcome::Listed {
                        members: m,
                        index: at,
                    } if at >= index => Ok((m, at)),
                    Outcome::Listed { index: at, .. } => bail!("at {at}"),
                    other => bail!("{other:?}"),
                },
            )?;
            per_node.push(listed);
        }
        // The subscribers reach the final index.
        let subscriptions = self
            .load
            .as_ref()
            .map(|l| l.subscriptions.clone())
            .unwrap_or_default();
        for &s in &subscriptions {
            let recorder = self.recorder.clone();
            let reached = poll(
                &format!("subscription {s} reaches {index}"),
                Duration::from_secs(30),
                || {
                    let at = recorder.subscription_index(s);
                    ensure!(at >= Some(index), "at {at:?}");
                    Ok(at)
                },
            );
            if let Err(err) = reached {
                // Reported by the subscription check with the stream.
                self.log(format!("check: {err:#}"));
            }
        }
        let statuses = (0..self.cluster.len())
            .map(|i| self.cluster_status(i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if let Some(load) = &mut self.load {
            load.finish();
        }
        self.log("check: final state read".into());
        Ok(Final {
            members,
            index,
            per_node,
            subscriptions,
            statuses,
        })
    }
}
