//! What the clients of a scenario did and saw: every request with its
//! invocation and completion time and its outcome, every subscription
//! event, and every cluster status a monitor read.
//!
//! Times are nanoseconds since the scenario's start on a monotonic clock,
//! the same for every recorder of a scenario.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use fuddle_client::{Error, Event, Member};

/// The scenario's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Clock {
        Clock {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A request a client made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `Session::register` of member `id` with metadata `v = value`
    /// (values are unique in a scenario).
    Register {
        /// The member id.
        id: String,
        /// The unique value written.
        value: String,
    },
    /// `Session::unregister` of member `id`.
    Unregister {
        /// The member id.
        id: String,
    },
    /// A linearizable `Client::get`.
    Get {
        /// The member id.
        id: String,
    },
    /// A linearizable `Client::list` of every member.
    ListLinearizable,
    /// A stale `Client::list` of every member.
    ListStale,
}

impl Request {
    /// Whether the request changes the registry.
    pub fn is_write(&self) -> bool {
        matches!(self, Request::Register { .. } | Request::Unregister { .. })
    }
}

/// What a request gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A register succeeded: the member as written.
    Registered(Member),
    /// An unregister succeeded at this index.
    Unregistered(u64),
    /// A get found the member (as of `index`).
    Found {
        /// The member.
        member: Member,
        /// The index the answer reflects.
        index: u64,
    },
    /// A definitive "no such member": a get that found nothing, or an
    /// unregister of a member that was not there (it changed nothing).
    NotFound,
    /// A list: its members and the index they reflect.
    Listed {
        /// The members.
        members: Vec<Member>,
        /// The index.
        index: u64,
    },
    /// The request surely had no effect (refused before or instead of
    /// being carried out).
    Failed(String),
    /// The request may or may not have taken effect: a timeout, a broken
    /// connection mid-call, an unexpected error, or no answer at all by
    /// the end of the scenario.
    Unknown(String),
}

impl Outcome {
    /// Whether the request got an answer (found or not).
    pub fn is_ok(&self) -> bool {
        !matches!(self, Outcome::Failed(_) | Outcome::Unknown(_))
    }
}

/// How an SDK error reads for the history. The clients of the fault
/// scenarios make a single attempt per call (`retry_deadline` zero), so
/// the error is that of the one attempt. (A session write may make two:
/// on the session stream, then as a call. When the first left the outcome
/// open, the SDK reports a refused second one as a timeout, so the rules
/// below still hold.)
///
/// - `UNAVAILABLE` (no leader, no quorum, not the leader, shutting down,
///   behind), `INVALID_ARGUMENT`, `ALREADY_EXISTS`: a node refused the
///   request, which surely was not carried out;
/// - `NOT_FOUND`: a definitive answer (nothing to read or remove);
/// - `Unreachable` with the reason "connection refused": the connection
///   could not be made, so nothing was sent;
/// - `DEADLINE_EXCEEDED`, any other transport failure (`Unreachable`,
///   which may have broken the call mid-way), anything else: unknown.
pub fn classify(err: &Error) -> Outcome {
    match err {
        Error::NotFound(_) => Outcome::NotFound,
        Error::Unavailable(_) | Error::InvalidArgument(_) | Error::AlreadyExists(_) => {
            Outcome::Failed(err.to_string())
        }
        Error::Unreachable { reason, .. } if reason == "connection refused" => {
            Outcome::Failed(err.to_string())
        }
        _ => Outcome::Unknown(err.to_string()),
    }
}

/// One request, from invocation to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client (its position in the scenario's load).
    pub client: usize,
    /// The node the client tried first, for messages.
    pub via: String,
    /// The request.
    pub request: Request,
    /// When it was invoked.
    pub invoked: u64,
    /// When it completed; `None` if it had not by the end.
    pub completed: Option<u64>,
    /// What it gave.
    pub outcome: Outcome,
}

/// A subscription event with the time it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// When it arrived.
    pub at: u64,
    /// The event.
    pub event: Event,
}

/// Every event one subscription delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionLog {
    /// A name for messages ("on node n2").
    pub name: String,
    /// The events, in delivery order.
    pub events: Vec<Received>,
    /// Why it ended early, if it did (an SDK error).
    pub ended: Option<String>,
}

/// A cluster status one node gave the monitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSample {
    /// When it was read.
    pub at: u64,
    /// The node asked (its id).
    pub node: u64,
    /// Its term.
    pub term: u64,
    /// The leader it named (0: none).
    pub leader: u64,
}

/// The shared, growing record of a scenario.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Record>>,
}

/// Everything recorded.
#[derive(Debug, Clone, Default)]
pub struct Record {
    /// Requests, in invocation order per client.
    pub ops: Vec<Op>,
    /// Subscriptions by position.
    pub subscriptions: Vec<SubscriptionLog>,
    /// Cluster status samples.
    pub statuses: Vec<StatusSample>,
}

/// A request in flight: its slot in the record.
#[derive(Debug)]
pub struct Pending {
    slot: usize,
    recorder: Recorder,
    clock: Clock,
}

impl Recorder {
    /// Records the invocation of `request` by `client`; the caller must
    /// [`Pending::complete`] it (an op never completed stays unknown).
    pub fn invoke(&self, clock: Clock, client: usize, via: &str, request: Request) -> Pending {
        let mut record = self.inner.lock().expect("record lock");
        record.ops.push(Op {
            client,
            via: via.to_owned(),
            request,
            invoked: clock.now(),
            completed: None,
            outcome: Outcome::Unknown("no answer by the end of the scenario".into()),
        });
        Pending {
            slot: record.ops.len() - 1,
            recorder: self.clone(),
            clock,
        }
    }

    /// A new subscription log; returns its position.
    pub fn subscription(&self, name: &str) -> usize {
        let mut record = self.inner.lock().expect("record lock");
        record.subscriptions.push(SubscriptionLog {
            name: name.to_owned(),
            events: Vec::new(),
            ended: None,
        });
        record.subscriptions.len() - 1
    }

    /// Records an event of subscription `position`.
    pub fn event(&self, position: usize, at: u64, event: Event) {
        let mut record = self.inner.lock().expect("record lock");
        record.subscriptions[position]
            .events
            .push(Received { at, event });
    }

    /// Records why subscription `position` ended.
    pub fn ended(&self, position: usize, why: String) {
        let mut record = self.inner.lock().expect("record lock");
        record.subscriptions[position].ended = Some(why);
    }

    /// Records a status sample.
    pub fn status(&self, sample: StatusSample) {
        self.inner
            .lock()
            .expect("record lock")
            .statuses
            .push(sample);
    }

    /// A copy of everything so far.
    pub fn snapshot(&self) -> Record {
        self.inner.lock().expect("record lock").clone()
    }

    /// The last index of subscription `position`'s events, if any.
    pub fn subscription_index(&self, position: usize) -> Option<u64> {
        let record = self.inner.lock().expect("record lock");
        record.subscriptions[position]
            .events
            .last()
            .map(|r| r.event.index())
    }

    /// How many writes were acknowledged so far.
    pub fn acknowledged_writes(&self) -> usize {
        let record = self.inner.lock().expect("record lock");
        record
            .ops
            .iter()
            .filter(|op| {
                matches!(
                    op.outcome,
                    Outcome::Registered(_) | Outcome::Unregistered(_)
                )
            })
            .count()
    }
}

impl Pending {
    /// Records the completion.
    pub fn complete(self, outcome: Outcome) {
        let now = self.clock.now();
        let mut record = self.recorder.inner.lock().expect("record lock");
        let op = &mut record.ops[self.slot];
        op.completed = Some(now);
        op.outcome = outcome;
    }
}

impl Record {
    /// Counts of outcomes, for the scenario's summary line.
    pub fn summary(&self) -> String {
        let (mut ok, mut failed, mut unknown) = (0, 0, 0);
        let (mut writes, mut reads) = (0, 0);
        for op in &self.ops {
            if op.request.is_write() {
                writes += 1;
            } else {
                reads += 1;
            }
            match op.outcome {
                Outcome::Failed(_) => failed += 1,
                Outcome::Unknown(_) => unknown += 1,
                _ => ok += 1,
            }
        }
        let events: usize = self.subscriptions.iter().map(|s| s.events.len()).sum();
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for op in &self.ops {
            if let Outcome::Unknown(why) | Outcome::Failed(why) = &op.outcome {
                // The reason without the addresses and numbers that vary.
                let short: String = why
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .take(90)
                    .collect();
                *reasons.entry(short).or_default() += 1;
            }
        }
        let reasons: Vec<String> = reasons
            .into_iter()
            .map(|(why, n)| format!("{n} × {why}"))
            .collect();
        format!(
            "{} ops ({writes} writes, {reads} reads): {ok} ok, {failed} failed, {unknown} unknown; \
             {} subscriptions with {events} events; {} status samples{}",
            self.ops.len(),
            self.subscriptions.len(),
            self.statuses.len(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!("\n  not ok: {}", reasons.join("\n          "))
            }
        )
    }
}
