//! A leader's empty AppendEntries to a follower that just answered: kept
//! back when the next write's entries will carry them anyway.
//!
//! openraft 0.9 tells followers of every commit with an AppendEntries of
//! its own, without entries, right after the commit. With one writer that
//! is a second request per write and follower, which the follower must
//! take, handle and answer, and which holds that follower's replication
//! (one request at a time) when the next write's entries are ready. The
//! next write's entries carry the commit anyway. So when a follower has
//! just answered this leader, and writes come at most [`DEFER`] apart,
//! such a request is answered here, for the follower, and kept back for
//! [`DEFER`]: if entries go to the follower in that time they carry the
//! commit and the request is dropped; if not, it is sent then, so a
//! follower learns of a commit at most that much later. Writes further
//! apart gain nothing from it and their commits are sent at once. A
//! regular heartbeat with nothing new for a follower that answered within
//! [`FRESH`] (less under short Raft timings: [`fresh_for`]) is answered
//! here too.
//!
//! What an answer given here claims is only what the follower already
//! answered:
//! - It is given only for a request with no entries whose `prev_log_id` is
//!   the log id this follower confirmed last, under the same vote. A probe
//!   for where the follower's log matches (whose answer decides what is
//!   replicated and committed) never has that, and is always sent.
//! - openraft takes any answer as the follower's word that this leader is
//!   still its leader, at the time the request was made (its leader
//!   clock). The follower said so at most [`FRESH`] earlier, which is what
//!   this can overstate that clock by. In openraft 0.9 the clock feeds
//!   only the `millis_since_quorum_ack` metric, which the node compares
//!   with the election timeout (seconds) for `/health` and to refuse
//!   writes without a quorum. Raft's safety does not rest on it, and
//!   linearizable reads do not use it (openraft sends them a round of
//!   their own, on a connection of its own, which never defers: see
//!   `network.rs`).
//!
//! Measured (`docs/benchmarks.md`, "What each change bought"): one writer
//! on three nodes, a request fewer per write on each follower.
//!
//! [`FollowerState`] is the decision, pure and unit-tested; [`Deferral`]
//! holds it for one connection and owns the task that sends what is due.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fuddle_storage::{NodeId, TypeConfig};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{LogId, Vote};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::counters::CommitCounters;

/// How long a commit-only request is kept back for entries to carry it.
/// Long enough that the next write of a single writer (about a
/// millisecond apart here) comes first, short enough that a follower's
/// subscribers see the last write of a burst soon after the leader's.
pub const DEFER: Duration = Duration::from_millis(5);

/// How recent the follower's last answer must be for a request to be
/// answered here. Bounds how far openraft's leader clock can run ahead of
/// what the follower said; far below the election timeout, so a follower
/// never goes long without a request from a live leader.
pub const FRESH: Duration = Duration::from_millis(50);

/// What a follower answered last, under which vote.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    /// The leader's vote in the request.
    pub vote: Vote<NodeId>,
    /// The last log id the follower confirmed it holds.
    pub matched: Option<LogId<NodeId>>,
    /// The commit the request told it.
    pub commit: Option<LogId<NodeId>>,
    /// When the request was made.
    pub sent_at: Instant,
}

impl Ack {
    /// What a `Success` to `rpc`, made at `sent_at`, confirms.
    pub fn of(rpc: &AppendEntriesRequest<TypeConfig>, sent_at: Instant) -> Ack {
        Ack {
            vote: rpc.vote,
            matched: rpc.entries.last().map(|e| e.log_id).or(rpc.prev_log_id),
            commit: rpc.leader_commit,
            sent_at,
        }
    }

    /// What `response` to the request this was made for confirms, if it is
    /// a success.
    pub fn confirmed(mut self, response: &AppendEntriesResponse<NodeId>) -> Option<Ack> {
        match response {
            AppendEntriesResponse::Success => Some(self),
            AppendEntriesResponse::PartialSuccess(matched) => {
                self.matched = *matched;
                Some(self)
            }
            AppendEntriesResponse::Conflict | AppendEntriesResponse::HigherVote(_) => None,
        }
    }
}

/// A commit-only request answered here and not yet sent.
#[derive(Debug)]
pub struct Pending {
    /// The request, the latest of those kept back (each carries a commit at
    /// least that of the one before).
    pub request: AppendEntriesRequest<TypeConfig>,
    /// How long its sending may take: what openraft gave the request.
    pub ttl: Duration,
    /// When it is sent unless entries carried its commit first: [`DEFER`]
    /// after the first of those it stands for.
    pub due: Instant,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Offer {
    /// Send it: its answer is the follower's to give.
    Send(AppendEntriesRequest<TypeConfig>),
    /// Answer `Success` here: the follower was told all it carries.
    Answered,
    /// Answer `Success` here; the request is kept back. `first`: nothing
    /// was kept back before it (the sender may be asleep).
    Deferred { first: bool },
}

/// What a replication's leader knows of its follower: what it answered
/// last, what is kept back for it, and how often entries go to it. The
/// decision is pure (the caller gives the time), so that it is tested
/// without a clock or a network.
#[derive(Debug)]
pub struct FollowerState {
    /// How recent the follower's last success must be for a request to be
    /// answered here: [`FRESH`], or less under short Raft timings (see
    /// [`fresh_for`]).
    fresh: Duration,
    /// The follower's last success.
    last: Option<Ack>,
    /// A request kept back.
    pending: Option<Pending>,
    /// When the latest request to the follower that got no success was
    /// made (failed, refused, or dropped unanswered; on the connection or
    /// from the sender): nothing is answered here until a request made
    /// after it succeeds.
    failed_at: Option<Instant>,
    /// When the connection's request now out was made. Still set at the
    /// next offer if openraft dropped that request unanswered (at its own
    /// timeout), which then counts as a failure.
    in_flight: Option<Instant>,
    /// When the last request with entries was made.
    entries_at: Option<Instant>,
    /// The time between the last two requests with entries. A commit is
    /// kept back only if that is at most [`DEFER`] and the last was at most
    /// [`DEFER`] ago, so that the next entries are likely to carry it.
    /// Writes further apart would only make followers learn of each later;
    /// measured, that cost a fan-out with one writer (50 ms between writes)
    /// about a tenth of its deliveries.
    entries_gap: Option<Duration>,
}

/// How recent a follower's answer must be for a request to be answered
/// for it, under an election timeout of at least `election_timeout_min`
/// and heartbeats every `heartbeat_interval`: [`FRESH`], or less under
/// short timings, so that a follower, which may go that long and a
/// heartbeat interval more without a request, still hears from its leader
/// well before it would stand for election.
pub fn fresh_for(election_timeout_min: Duration, heartbeat_interval: Duration) -> Duration {
    FRESH
        .min(election_timeout_min / 4)
        .min(election_timeout_min.saturating_sub(heartbeat_interval) / 2)
}

impl FollowerState {
    /// Nothing known yet; `fresh` as [`fresh_for`] gives it.
    pub fn new(fresh: Duration) -> FollowerState {
        FollowerState {
            fresh,
            last: None,
            pending: None,
            failed_at: None,
            in_flight: None,
            entries_at: None,
            entries_gap: None,
        }
    }

    /// Decides what to do with `rpc`, made at `now` on the connection.
    pub fn offer(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
        now: Instant,
    ) -> Offer {
        if let Some(dropped) = self.in_flight.take() {
            self.failed(dropped);
        }
        let offer = self.decide(rpc, ttl, now);
        if matches!(offer, Offer::Send(_)) {
            self.in_flight = Some(now);
        }
        offer
    }

    /// `offer`'s decision.
    fn decide(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        ttl: Duration,
        now: Instant,
    ) -> Offer {
        if !rpc.entries.is_empty() {
            self.entries_gap = self.entries_at.map(|at| now.saturating_duration_since(at));
            self.entries_at = Some(now);
        }
        let answerable = rpc.entries.is_empty()
            && self.last.as_ref().is_some_and(|last| {
                last.vote == rpc.vote
                    && last.matched == rpc.prev_log_id
                    && now.saturating_duration_since(last.sent_at) <= self.fresh
                    && self.failed_at.is_none_or(|failed| last.sent_at > failed)
            });
        let told = self.last.as_ref().and_then(|last| last.commit);
        if !answerable {
            // What is sent carries the commit of anything kept back.
            if self
                .pending
                .as_ref()
                .is_some_and(|p| p.request.leader_commit <= rpc.leader_commit)
            {
                self.pending = None;
            }
            return Offer::Send(rpc);
        }
        if rpc.leader_commit <= told {
            return Offer::Answered;
        }
        let frequent = self.entries_gap.is_some_and(|gap| gap <= DEFER)
            && self
                .entries_at
                .is_some_and(|at| now.saturating_duration_since(at) <= DEFER);
        if !frequent && self.pending.is_none() {
            return Offer::Send(rpc);
        }
        match &mut self.pending {
            Some(pending) => {
                pending.request = rpc;
                pending.ttl = ttl;
                Offer::Deferred { first: false }
            }
            None => {
                self.pending = Some(Pending {
                    request: rpc,
                    ttl,
                    due: now + DEFER,
                });
                Offer::Deferred { first: true }
            }
        }
    }

    /// The follower answered a request with success.
    pub fn acked(&mut self, ack: Ack) {
        match &mut self.last {
            // Under one vote the follower's log only grows and the commit
            // only advances, so answers that cross merge.
            Some(last) if last.vote == ack.vote => {
                last.matched = last.matched.max(ack.matched);
                last.commit = last.commit.max(ack.commit);
                last.sent_at = last.sent_at.max(ack.sent_at);
            }
            _ => self.last = Some(ack),
        }
    }

    /// A request made at `at` got no success.
    pub fn failed(&mut self, at: Instant) {
        self.failed_at = self.failed_at.max(Some(at));
    }

    /// Records the follower's answer to a request the sender sent: `ack` is
    /// what a success would confirm, `answer` the follower's answer, if
    /// any.
    pub fn answered(&mut self, ack: Ack, answer: Option<&AppendEntriesResponse<NodeId>>) {
        let at = ack.sent_at;
        match answer.and_then(|answer| ack.confirmed(answer)) {
            Some(ack) => self.acked(ack),
            None => self.failed(at),
        }
    }

    /// Records the follower's answer to the connection's request now out
    /// (see [`FollowerState::answered`]).
    pub fn replied(&mut self, ack: Ack, answer: Option<&AppendEntriesResponse<NodeId>>) {
        self.in_flight = None;
        self.answered(ack, answer);
    }

    /// When the request kept back is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.due)
    }

    /// The request kept back, if it is due at `now`.
    pub fn take_due(&mut self, now: Instant) -> Option<Pending> {
        match &self.pending {
            Some(p) if p.due <= now => self.pending.take(),
            _ => None,
        }
    }
}

/// A [`FollowerState`] shared between a connection and the task that
/// sends what it kept back.
#[derive(Debug)]
pub struct Shared {
    /// The decision's state.
    state: Mutex<FollowerState>,
    /// Wakes the sender for a first request kept back, or to end.
    wake: Notify,
    /// Set when the connection is gone, so that the sender ends. What is
    /// kept back then is dropped: openraft drops a replication's connection
    /// when the replication ends (a new term, a membership change, a
    /// shutdown), and the next leader or replication tells followers of
    /// the commit in its own first messages.
    closed: AtomicBool,
}

impl Shared {
    /// Runs `f` on the state. The lock is never held across an await.
    pub fn with<R>(&self, f: impl FnOnce(&mut FollowerState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One connection's [`FollowerState`] and the task that sends what it
/// keeps back.
#[derive(Debug)]
pub struct Deferral {
    /// The state, shared with the sender.
    shared: Arc<Shared>,
    /// The sender, started at the first request kept back (connections
    /// that never keep one back have none), and started again if it ended
    /// (it ends only by a panic while the connection lives), so that
    /// nothing kept back waits for a task that is gone.
    sender: Option<JoinHandle<()>>,
    /// The node's counts of commits kept back and sent late.
    counters: Arc<CommitCounters>,
}

impl Deferral {
    /// A deferral for a new connection.
    pub fn new(fresh: Duration, counters: Arc<CommitCounters>) -> Deferral {
        Deferral {
            shared: Arc::new(Shared {
                state: Mutex::new(FollowerState::new(fresh)),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
            sender: None,
            counters,
        }
    }

    /// Decides what to do with `rpc`, made now. After `Deferred`, a sender
    /// must run (see [`Deferral::needs_sender`]).
    pub fn offer(&mut self, rpc: AppendEntriesRequest<TypeConfig>, ttl: Duration) -> Offer {
        let offer = self.shared.with(|s| s.offer(rpc, ttl, Instant::now()));
        if let Offer::Deferred { first } = offer {
            self.counters.kept_back();
            if first {
                self.shared.wake.notify_one();
            }
        }
        offer
    }

    /// Records the follower's answer to the request the connection sent
    /// (see [`FollowerState::replied`]).
    pub fn replied(&self, ack: Ack, answer: Option<&AppendEntriesResponse<NodeId>>) {
        self.shared.with(|s| s.replied(ack, answer));
    }

    /// Whether no sender runs.
    pub fn needs_sender(&self) -> bool {
        self.sender.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Starts the sender: [`send_when_due`] with `call`.
    pub fn start_sender<F, Fut>(&mut self, call: F)
    where
        F: FnMut(AppendEntriesRequest<TypeConfig>, Duration) -> Fut + Send + 'static,
        Fut: Future<Output = Option<AppendEntriesResponse<NodeId>>> + Send + 'static,
    {
        let task = send_when_due(self.shared.clone(), self.counters.clone(), call);
        self.sender = Some(tokio::spawn(task));
    }
}

impl Drop for Deferral {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// The sender: sends each request kept back when it is due, with `call`,
/// until the connection is gone. `call` gives the follower's answer, or
/// `None` if there was none.
pub async fn send_when_due<F, Fut>(shared: Arc<Shared>, counters: Arc<CommitCounters>, mut call: F)
where
    F: FnMut(AppendEntriesRequest<TypeConfig>, Duration) -> Fut,
    Fut: Future<Output = Option<AppendEntriesResponse<NodeId>>>,
{
    loop {
        if shared.is_closed() {
            return;
        }
        let Some(due) = shared.with(|s| s.due()) else {
            // A permit left by a `notify_one` while this task was busy
            // makes this return at once; the loop then looks again.
            shared.wake.notified().await;
            continue;
        };
        tokio::time::sleep_until(due).await;
        let Some(pending) = shared.with(|s| s.take_due(Instant::now())) else {
            // Entries carried it, or a later request replaced it.
            continue;
        };
        if shared.is_closed() {
            return;
        }
        counters.sent_late();
        let ack = Ack::of(&pending.request, Instant::now());
        let answer = call(pending.request, pending.ttl).await;
        shared.with(|s| s.answered(ack, answer.as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// An AppendEntries of leader 1 in term 2 after `prev`, with entries
    /// up to `last` (none if `last == prev`) and `commit`.
    fn request(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id(2, prev)),
            entries: (prev + 1..=last)
                .map(|i| Entry {
                    log_id: log_id(2, i),
                    payload: EntryPayload::Blank,
                })
                .collect(),
            leader_commit: Some(log_id(2, commit)),
        }
    }

    const TTL: Duration = Duration::from_secs(1);

    /// `told` after the follower took entries up to 4 at `t - gap` and
    /// entries up to 5 with commit 4 at `t`.
    fn answered_after(gap: Duration, t: Instant) -> FollowerState {
        let mut told = FollowerState::new(FRESH);
        for (prev, at) in [(3, t - gap), (4, t)] {
            let rpc = request(prev, prev + 1, 4);
            assert!(matches!(told.offer(rpc.clone(), TTL, at), Offer::Send(_)));
            succeeded(&mut told, &rpc, at);
        }
        told
    }

    /// The follower answered `rpc`, the connection's request made at `at`,
    /// with success.
    fn succeeded(told: &mut FollowerState, rpc: &AppendEntriesRequest<TypeConfig>, at: Instant) {
        told.replied(Ack::of(rpc, at), Some(&AppendEntriesResponse::Success));
    }

    /// `told` after writes a millisecond apart.
    fn answered_at(t: Instant) -> FollowerState {
        answered_after(Duration::from_millis(1), t)
    }

    #[test]
    fn a_commit_long_after_a_burst_is_sent_at_once() {
        let t = Instant::now();
        let mut told = answered_at(t);
        // The follower answered a heartbeat since, so it is fresh, but the
        // last entries went long ago: none are likely to come.
        let later = t + DEFER + Duration::from_millis(1);
        told.acked(Ack::of(&request(5, 5, 4), later));
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, later),
            Offer::Send(_)
        ));
    }

    #[test]
    fn fresh_is_shorter_under_short_election_timeouts() {
        let ms = Duration::from_millis;
        assert_eq!(fresh_for(ms(1500), ms(250)), FRESH);
        assert_eq!(fresh_for(ms(40), ms(5)), ms(10));
        // Heartbeats close to the election timeout leave less room.
        assert_eq!(fresh_for(ms(450), ms(400)), ms(25));
    }

    #[test]
    fn a_failure_on_the_connection_stops_answers_here() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut told = answered_at(t);
        // Entries sent at t + 1 ms fail.
        let sent = told.offer(request(5, 6, 4), TTL, t + ms(1));
        assert!(matches!(sent, Offer::Send(_)));
        told.replied(Ack::of(&request(5, 6, 4), t + ms(1)), None);
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, t + ms(2)),
            Offer::Send(_)
        ));
        // A refusal is no success either.
        told.replied(
            Ack::of(&request(5, 5, 4), t + ms(2)),
            Some(&AppendEntriesResponse::Conflict),
        );
        // The sender's request made before the refusal succeeding does not
        // undo that.
        told.answered(
            Ack::of(&request(5, 5, 4), t + ms(1)),
            Some(&AppendEntriesResponse::Success),
        );
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, t + ms(3)),
            Offer::Send(_)
        ));
        succeeded(&mut told, &request(5, 5, 4), t + ms(3));
        // A success of a later request does.
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, t + ms(4)),
            Offer::Answered
        ));
    }

    #[test]
    fn a_request_openraft_dropped_unanswered_counts_as_failed() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut told = answered_at(t);
        // Entries sent at t + 1 ms, and never answered: openraft gave up
        // on them at its own timeout.
        assert!(matches!(
            told.offer(request(5, 6, 4), TTL, t + ms(1)),
            Offer::Send(_)
        ));
        // A heartbeat the follower's answer at t would cover otherwise.
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, t + ms(2)),
            Offer::Send(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_sender_sends_what_is_due_and_ends_with_its_connection() {
        let counters = Arc::new(CommitCounters::default());
        let mut deferral = Deferral::new(FRESH, counters.clone());
        let t = Instant::now();
        deferral.shared.with(|s| *s = answered_at(t));
        assert!(matches!(
            deferral.offer(request(5, 5, 5), TTL),
            Offer::Deferred { .. }
        ));
        assert!(deferral.needs_sender());
        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel();
        deferral.start_sender(move |rpc, _ttl| {
            sent.send(rpc).unwrap();
            async { Some(AppendEntriesResponse::Success) }
        });
        assert!(!deferral.needs_sender());
        tokio::time::sleep(DEFER - Duration::from_millis(1)).await;
        assert!(received.try_recv().is_err(), "sent before it was due");
        let rpc = tokio::time::timeout(Duration::from_secs(1), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rpc.leader_commit, Some(log_id(2, 5)));
        assert_eq!(counters.get(), (1, 1));
        // The follower's answer is recorded: it was told commit 5.
        assert!(matches!(
            deferral.offer(request(5, 5, 5), TTL),
            Offer::Answered
        ));
        // A second commit kept back wakes the sender again.
        assert!(matches!(
            deferral.offer(request(5, 5, 6), TTL),
            Offer::Deferred { .. }
        ));
        let rpc = tokio::time::timeout(Duration::from_secs(1), received.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rpc.leader_commit, Some(log_id(2, 6)));
        // Dropping the connection ends the sender.
        let sender = deferral.sender.take().unwrap();
        drop(deferral);
        tokio::time::timeout(Duration::from_secs(1), sender)
            .await
            .expect("the sender ended")
            .unwrap();
    }

    #[test]
    fn a_commit_after_entries_far_apart_is_sent_at_once() {
        let t = Instant::now();
        let mut told = answered_after(DEFER + Duration::from_millis(1), t);
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, t),
            Offer::Send(_)
        ));
        succeeded(&mut told, &request(5, 5, 5), t);
        // A heartbeat with nothing new is still answered here.
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, t),
            Offer::Answered
        ));
    }

    #[test]
    fn a_commit_right_after_an_answer_is_kept_back_and_sent_when_due() {
        let t = Instant::now();
        let mut told = answered_at(t);
        let at = t + Duration::from_millis(1);
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, at),
            Offer::Deferred { first: true }
        ));
        assert_eq!(told.due(), Some(at + DEFER));
        assert!(
            told.take_due(at + DEFER - Duration::from_micros(1))
                .is_none()
        );
        let pending = told.take_due(at + DEFER).unwrap();
        assert_eq!(pending.request.leader_commit, Some(log_id(2, 5)));
        assert_eq!(told.due(), None);
    }

    #[test]
    fn entries_sent_in_time_carry_the_commit_kept_back() {
        let t = Instant::now();
        let mut told = answered_at(t);
        told.offer(request(5, 5, 5), TTL, t);
        // The next write's entries carry commit 5: nothing is left to send.
        assert!(matches!(
            told.offer(request(5, 6, 5), TTL, t),
            Offer::Send(_)
        ));
        assert_eq!(told.due(), None);
    }

    #[test]
    fn entries_with_an_older_commit_leave_the_one_kept_back() {
        let t = Instant::now();
        let mut told = answered_at(t);
        told.offer(request(5, 5, 5), TTL, t);
        assert!(matches!(
            told.offer(request(5, 6, 4), TTL, t),
            Offer::Send(_)
        ));
        assert_eq!(told.due(), Some(t + DEFER));
    }

    #[test]
    fn a_later_commit_replaces_the_one_kept_back_and_keeps_its_time() {
        let t = Instant::now();
        let mut told = answered_at(t);
        told.offer(request(5, 5, 5), TTL, t);
        // The follower answered entries 6 (sent with commit 4, older than
        // the one kept back), then commit 6 comes.
        told.acked(Ack::of(&request(5, 6, 4), t + Duration::from_millis(1)));
        let later = t + Duration::from_millis(2);
        assert!(matches!(
            told.offer(request(6, 6, 6), TTL, later),
            Offer::Deferred { first: false }
        ));
        let pending = told.take_due(t + DEFER).unwrap();
        assert_eq!(pending.request.leader_commit, Some(log_id(2, 6)));
    }

    #[test]
    fn a_heartbeat_with_nothing_new_for_a_fresh_follower_is_answered_here() {
        let t = Instant::now();
        let mut told = answered_at(t);
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, t + FRESH),
            Offer::Answered
        ));
        assert_eq!(told.due(), None);
    }

    #[test]
    fn a_follower_that_has_not_answered_lately_is_sent_everything() {
        let t = Instant::now();
        let mut told = answered_at(t);
        let late = t + FRESH + Duration::from_millis(1);
        assert!(matches!(
            told.offer(request(5, 5, 4), TTL, late),
            Offer::Send(_)
        ));
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, late),
            Offer::Send(_)
        ));
    }

    #[test]
    fn a_probe_or_another_vote_is_always_sent() {
        let t = Instant::now();
        let mut told = answered_at(t);
        // A prev_log_id the follower has not confirmed: a probe of where
        // its log matches, whose answer only it can give.
        for prev in [3, 6] {
            assert!(matches!(
                told.offer(request(prev, prev, 5), TTL, t),
                Offer::Send(_)
            ));
        }
        let mut other = request(5, 5, 5);
        other.vote = Vote::new_committed(3, 1);
        assert!(matches!(told.offer(other, TTL, t), Offer::Send(_)));
        // A follower that never answered.
        assert!(matches!(
            FollowerState::new(FRESH).offer(request(5, 5, 5), TTL, t),
            Offer::Send(_)
        ));
    }

    #[test]
    fn after_a_failed_send_nothing_is_answered_here_until_the_follower_answers() {
        let t = Instant::now();
        let later = t + DEFER + Duration::from_millis(1);
        let mut told = answered_at(t);
        told.offer(request(5, 5, 5), TTL, t);
        let pending = told.take_due(t + DEFER).unwrap();
        told.answered(Ack::of(&pending.request, t + DEFER), None);
        assert!(matches!(
            told.offer(pending.request, TTL, later),
            Offer::Send(_)
        ));
        succeeded(&mut told, &request(5, 5, 5), later);
        assert!(matches!(
            told.offer(request(5, 5, 5), TTL, later),
            Offer::Answered
        ));
    }

    #[test]
    fn a_partial_success_confirms_only_what_the_follower_took() {
        let t = Instant::now();
        let ack = Ack::of(&request(4, 9, 4), t)
            .confirmed(&AppendEntriesResponse::PartialSuccess(Some(log_id(2, 6))))
            .unwrap();
        assert_eq!(ack.matched, Some(log_id(2, 6)));
        assert!(
            Ack::of(&request(4, 9, 4), t)
                .confirmed(&AppendEntriesResponse::Conflict)
                .is_none()
        );
    }
}
