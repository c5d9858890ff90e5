//! Failure detection: the leader's clock of every session.
//!
//! Heartbeats are not log entries. The leader keeps, in memory, when it last
//! heard from each session; on a short tick it proposes `SessionsDown` for
//! sessions silent longer than their heartbeat timeout, `SessionsUp` for
//! down sessions that heartbeat again, and `SessionsExpired` for sessions
//! down longer than their reconnect timeout. A node that becomes leader
//! starts every session's clock afresh, so a leader change never marks a
//! live client down.
//!
//! [`SessionClock`] is the pure core (time is passed in); [`run_ticker`] is
//! the thin async loop around it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuddle_storage::{Command, Registry, SessionStatus, TypeConfig};
use openraft::Raft;
use tokio_util::sync::CancellationToken;

use fuddle_proto::raft::RaftMessage;
use fuddle_storage::codec::encode;

use crate::config::SessionConfig;
use crate::error::NodeError;
use crate::forward::HeartbeatBatch;
use crate::peers::{Peers, current_leader, peer_error};
use crate::proposer::{Proposer, now_ms};
use crate::ticker::Ticker;

/// What the clock needs to know of a session from the replicated state.
#[derive(Debug, Clone, Copy)]
pub struct SessionView<'a> {
    /// The session id.
    pub id: &'a str,
    /// Whether the state has it up.
    pub up: bool,
    /// Its heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// Its reconnect timeout.
    pub reconnect_timeout: Duration,
    /// When the log says it went down (leader-stamped Unix ms; 0 if up).
    pub down_since_ms: u64,
}

/// The most member changes one session-transition entry should carry (see
/// [`Transitions::into_commands`]).
pub const MAX_MEMBER_CHANGES_PER_ENTRY: usize = 5_000;

/// Builds one kind of transition command from its client ids.
type MakeCommand = fn(Vec<String>) -> Command;

/// Sessions whose status should change, as found by one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Silent past their heartbeat timeout.
    pub down: Vec<String>,
    /// Down, but heard from since.
    pub up: Vec<String>,
    /// Down past their reconnect timeout.
    pub expired: Vec<String>,
}

impl Transitions {
    /// True when nothing is to be proposed.
    pub fn is_empty(&self) -> bool {
        self.down.is_empty() && self.up.is_empty() && self.expired.is_empty()
    }

    /// The log commands for these transitions, each changing at most
    /// `max_member_changes` members (but always at least one session), as
    /// counted by `members_of`. A session going down changes every member
    /// it owns: 64 sessions owning 100 000 members between them made one
    /// entry of 100 000 changes, and the node that applied it stayed at
    /// 574 MB resident. Several smaller entries, proposed one after the
    /// other, bound what one entry costs.
    pub fn into_commands(
        self,
        members_of: impl Fn(&str) -> usize,
        max_member_changes: usize,
    ) -> Vec<Command> {
        let mut commands = Vec::new();
        let parts: [(Vec<String>, MakeCommand); 3] = [
            (self.up, |client_ids| Command::SessionsUp { client_ids }),
            (self.down, |client_ids| Command::SessionsDown { client_ids }),
            (self.expired, |client_ids| Command::SessionsExpired {
                client_ids,
            }),
        ];
        for (ids, command) in parts {
            let mut chunk: Vec<String> = Vec::new();
            let mut changes = 0;
            for id in ids {
                let members = members_of(&id);
                if !chunk.is_empty() && changes + members > max_member_changes {
                    commands.push(command(std::mem::take(&mut chunk)));
                    changes = 0;
                }
                changes += members;
                chunk.push(id);
            }
            if !chunk.is_empty() {
                commands.push(command(chunk));
            }
        }
        commands
    }
}

/// The leader's in-memory clock of sessions.
#[derive(Debug)]
pub struct SessionClock {
    /// The last heartbeat heard from each session.
    last_seen: HashMap<String, Instant>,
    /// When this leader first found each down session down: its reconnect
    /// timeout counts from here.
    down_since: HashMap<String, Instant>,
    /// When this node's leadership began: no session's clock starts earlier.
    epoch: Instant,
}

impl SessionClock {
    /// A clock whose sessions all start fresh at `now`.
    pub fn new(now: Instant) -> SessionClock {
        SessionClock {
            last_seen: HashMap::new(),
            down_since: HashMap::new(),
            epoch: now,
        }
    }

    /// Starts every session's clock afresh (this node just became leader).
    pub fn reset(&mut self, now: Instant) {
        self.last_seen.clear();
        self.down_since.clear();
        self.epoch = now;
    }

    /// Records a heartbeat.
    pub fn heartbeat(&mut self, id: &str, now: Instant) {
        match self.last_seen.get_mut(id) {
            Some(t) => *t = now.max(*t),
            None => {
                self.last_seen.insert(id.to_string(), now);
            }
        }
    }

    /// Finds the sessions whose status should change, at most `max` of each
    /// kind (the rest wait for the next tick).
    pub fn tick<'a>(
        &mut self,
        now: Instant,
        wall_now_ms: u64,
        sessions: impl Iterator<Item = SessionView<'a>>,
        max: usize,
    ) -> Transitions {
        let mut t = Transitions::default();
        let mut present: Vec<&str> = Vec::new();
        for s in sessions {
            present.push(s.id);
            if s.up {
                // A session this leader has not heard from yet (opened
                // through a follower whose batched heartbeats have not
                // arrived, or just after this leadership began) starts its
                // clock the first time a tick finds it, not at the start
                // of the leadership, which may be long past.
                let seen = match self.last_seen.get(s.id) {
                    Some(t) => (*t).max(self.epoch),
                    None => {
                        self.last_seen.insert(s.id.to_string(), now);
                        now
                    }
                };
                self.down_since.remove(s.id);
                if now.saturating_duration_since(seen) > s.heartbeat_timeout && t.down.len() < max {
                    t.down.push(s.id.to_string());
                }
            } else {
                // A session found down counts its reconnect timeout from when
                // the log says it went down (leader-stamped wall time), so a
                // leader change does not restart the countdown. This assumes
                // the nodes' clocks roughly agree (NTP); a live client is
                // never affected, as only down sessions expire.
                let since = *self.down_since.entry(s.id.to_string()).or_insert_with(|| {
                    let elapsed =
                        Duration::from_millis(wall_now_ms.saturating_sub(s.down_since_ms));
                    now.checked_sub(elapsed).unwrap_or(self.epoch)
                });
                // Only a real heartbeat (not the fresh start of a new
                // leadership) brings a down session back.
                let heard = self.last_seen.get(s.id).is_some_and(|h| *h > since);
                if heard {
                    if t.up.len() < max {
                        t.up.push(s.id.to_string());
                    }
                } else if now.saturating_duration_since(since) > s.reconnect_timeout
                    && t.expired.len() < max
                {
                    t.expired.push(s.id.to_string());
                }
            }
        }
        // Forget sessions the state no longer has (closed or expired), so
        // the maps do not grow without bound; only those, so that a live
        // session's clock is never lost.
        if self.last_seen.len() > present.len() * 2 + 64
            || self.down_since.len() > present.len() + 64
        {
            let present: HashSet<&str> = present.into_iter().collect();
            self.last_seen.retain(|id, _| present.contains(id.as_str()));
            self.down_since
                .retain(|id, _| present.contains(id.as_str()));
        }
        t
    }
}

/// Where heartbeats go on this node: the clock, while this node leads;
/// otherwise a set that [`run_heartbeat_forwarder`] sends to the leader in
/// batches.
#[derive(Clone)]
pub struct Heartbeats {
    /// This node.
    node_id: u64,
    /// The local Raft, to know who leads.
    raft: Raft<TypeConfig>,
    /// The leader's clock (only consulted while this node leads).
    clock: Arc<Mutex<SessionClock>>,
    /// Sessions heard from since the last batch sent to the leader.
    pending: Arc<Mutex<HashSet<String>>>,
}

impl Heartbeats {
    /// A heartbeat sink around a clock.
    pub fn new(
        node_id: u64,
        raft: Raft<TypeConfig>,
        clock: Arc<Mutex<SessionClock>>,
    ) -> Heartbeats {
        Heartbeats {
            node_id,
            raft,
            clock,
            pending: Arc::default(),
        }
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
    }

    /// Records heartbeats from these sessions.
    pub fn record<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        if self.is_leader() {
            self.record_at_leader(ids);
        } else {
            let mut pending = self.pending.lock().expect("heartbeats poisoned");
            for id in ids {
                if !pending.contains(id) {
                    pending.insert(id.to_string());
                }
            }
        }
    }

    /// Records heartbeats in the leader's clock (this node's own, or
    /// forwarded by a follower).
    pub fn record_at_leader<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let now = Instant::now();
        let mut clock = self.clock.lock().expect("session clock poisoned");
        for id in ids {
            clock.heartbeat(id, now);
        }
    }

    fn take_pending(&self) -> Vec<String> {
        let mut pending = self.pending.lock().expect("heartbeats poisoned");
        pending.drain().collect()
    }

    fn put_back(&self, ids: Vec<String>) {
        let mut pending = self.pending.lock().expect("heartbeats poisoned");
        pending.extend(ids);
    }
}

/// Sends heartbeats received by this follower to the leader, in batches,
/// every `interval`, until `shutdown`.
pub async fn run_heartbeat_forwarder(
    heartbeats: Heartbeats,
    peers: Arc<Peers>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(interval, shutdown);
    while ticker.tick().await {
        let ids = heartbeats.take_pending();
        if ids.is_empty() {
            continue;
        }
        match current_leader(&heartbeats.raft) {
            Some((leader, _)) if leader == heartbeats.node_id => {
                heartbeats.record_at_leader(ids.iter().map(String::as_str));
            }
            Some((leader, addr)) => {
                if let Err(e) = send_heartbeats(&peers, leader, &addr, &ids).await {
                    tracing::debug!("heartbeats not forwarded to node {leader}: {e}");
                    // A heartbeat is idempotent: keep it for the next batch.
                    heartbeats.put_back(ids);
                }
            }
            None => heartbeats.put_back(ids),
        }
    }
}

async fn send_heartbeats(
    peers: &Peers,
    leader: u64,
    addr: &str,
    ids: &[String],
) -> Result<(), NodeError> {
    let data = encode(&HeartbeatBatch {
        client_ids: ids.to_vec(),
    })
    .map_err(|e| NodeError::Internal(e.to_string()))?;
    let mut request = tonic::Request::new(RaftMessage { data });
    request.set_timeout(Duration::from_secs(2));
    peers
        .raft(leader, addr)?
        .forward_heartbeats(request)
        .await
        .map_err(|s| peer_error(leader, addr, s))?;
    Ok(())
}

/// Runs the leader's session checks until `shutdown`.
pub async fn run_ticker(
    node_id: u64,
    raft: Raft<TypeConfig>,
    registry: Arc<Registry>,
    proposer: Proposer,
    clock: Arc<Mutex<SessionClock>>,
    config: SessionConfig,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(config.tick, shutdown);
    let mut was_leader = false;
    while ticker.tick().await {
        let is_leader = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            m.current_leader == Some(node_id) && m.state.is_leader()
        };
        let now = Instant::now();
        if !is_leader {
            was_leader = false;
            continue;
        }
        if !was_leader {
            clock.lock().expect("session clock poisoned").reset(now);
            was_leader = true;
            continue;
        }
        let ((down, up, expired), commands) = {
            let applied = registry.read();
            let views = applied.state.sessions.values().map(|s| SessionView {
                id: &s.client_id,
                up: s.is_up(),
                heartbeat_timeout: Duration::from_millis(s.heartbeat_timeout_ms),
                reconnect_timeout: Duration::from_millis(s.reconnect_timeout_ms),
                down_since_ms: match s.status {
                    SessionStatus::Down { since_ms } => since_ms,
                    SessionStatus::Up => 0,
                },
            });
            let transitions = clock.lock().expect("session clock poisoned").tick(
                now,
                now_ms(),
                views,
                config.max_transitions_per_tick,
            );
            let sessions = &applied.state.sessions;
            let counts = (
                transitions.down.len(),
                transitions.up.len(),
                transitions.expired.len(),
            );
            let commands = transitions.into_commands(
                |id| sessions.get(id).map_or(0, |s| s.members.len()),
                MAX_MEMBER_CHANGES_PER_ENTRY,
            );
            (counts, commands)
        };
        if commands.is_empty() {
            continue;
        }
        tracing::info!(down, up, expired, "session transitions");
        // One at a time: the next tick sees the result, so nothing is
        // proposed twice while the first proposal is in flight; and no
        // two of these commands share an entry.
        for command in commands {
            if let Err(e) = proposer.propose(command).await {
                tracing::warn!("session transition not proposed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wall clock of the tests: the log says down sessions went down at
    /// this very moment, so only the monotonic clock matters.
    const WALL: u64 = 1_000_000;

    #[test]
    fn transitions_split_into_entries_of_bounded_member_changes() {
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let transitions = Transitions {
            up: ids(&["u1"]),
            down: ids(&["a", "b", "c", "d", "huge"]),
            expired: ids(&["e1", "e2"]),
        };
        // a, b, c own 2 members each, d 1, huge 10, the others none.
        let members = |id: &str| match id {
            "a" | "b" | "c" => 2,
            "d" => 1,
            "huge" => 10,
            _ => 0,
        };
        let commands = transitions.into_commands(members, 4);
        assert_eq!(
            commands,
            vec![
                Command::SessionsUp {
                    client_ids: ids(&["u1"])
                },
                Command::SessionsDown {
                    client_ids: ids(&["a", "b"])
                },
                Command::SessionsDown {
                    client_ids: ids(&["c", "d"])
                },
                // A session over the bound still goes, alone.
                Command::SessionsDown {
                    client_ids: ids(&["huge"])
                },
                Command::SessionsExpired {
                    client_ids: ids(&["e1", "e2"])
                },
            ]
        );
        assert!(Transitions::default().into_commands(members, 4).is_empty());
    }

    fn view(id: &str, up: bool) -> SessionView<'_> {
        SessionView {
            id,
            up,
            heartbeat_timeout: Duration::from_secs(1),
            reconnect_timeout: Duration::from_secs(3),
            down_since_ms: if up { 0 } else { WALL },
        }
    }

    #[test]
    fn silent_session_goes_down_then_expires() {
        let t0 = Instant::now();
        let mut clock = SessionClock::new(t0);
        clock.heartbeat("a", t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(
            clock
                .tick(at(900), WALL, [view("a", true)].into_iter(), 10)
                .is_empty()
        );
        let t = clock.tick(at(1100), WALL, [view("a", true)].into_iter(), 10);
        assert_eq!(t.down, vec!["a"]);
        // Now the state has it down: the reconnect clock starts when seen.
        assert!(
            clock
                .tick(at(1200), WALL, [view("a", false)].into_iter(), 10)
                .is_empty()
        );
        assert!(
            clock
                .tick(at(4100), WALL, [view("a", false)].into_iter(), 10)
                .is_empty()
        );
        let t = clock.tick(at(4300), WALL, [view("a", false)].into_iter(), 10);
        assert_eq!(t.expired, vec!["a"]);
    }

    #[test]
    fn heartbeat_keeps_up_and_brings_back() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = SessionClock::new(t0);
        for ms in (0..5000).step_by(300) {
            clock.heartbeat("a", at(ms));
            assert!(
                clock
                    .tick(at(ms + 10), WALL, [view("a", true)].into_iter(), 10)
                    .is_empty()
            );
        }
        let mut clock = SessionClock::new(t0);
        assert!(
            clock
                .tick(at(100), WALL, [view("b", false)].into_iter(), 10)
                .is_empty()
        );
        clock.heartbeat("b", at(200));
        let t = clock.tick(at(300), WALL, [view("b", false)].into_iter(), 10);
        assert_eq!(t.up, vec!["b"]);
    }

    #[test]
    fn new_leader_starts_clocks_afresh() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = SessionClock::new(t0);
        // Heard long ago (by another leader's standards): a reset forgives it.
        clock.heartbeat("a", t0);
        clock.reset(at(5000));
        // The leader's first tick comes right after it is elected.
        assert!(
            clock
                .tick(at(5000), WALL, [view("a", true)].into_iter(), 10)
                .is_empty()
        );
        assert!(
            clock
                .tick(at(5900), WALL, [view("a", true)].into_iter(), 10)
                .is_empty()
        );
        assert_eq!(
            clock
                .tick(at(6100), WALL, [view("a", true)].into_iter(), 10)
                .down,
            vec!["a"]
        );
    }

    #[test]
    fn a_new_leader_continues_the_reconnect_countdown() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = SessionClock::new(t0);
        // The log says it went down 2.5 s before this leadership began.
        let mut v = view("a", false);
        v.down_since_ms = WALL - 2500;
        assert!(clock.tick(at(0), WALL, [v].into_iter(), 10).is_empty());
        let t = clock.tick(at(600), WALL + 600, [v].into_iter(), 10);
        assert_eq!(t.expired, vec!["a"]);
    }

    #[test]
    fn forgetting_closed_sessions_keeps_live_clocks() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = SessionClock::new(t0);
        clock.heartbeat("live", at(900));
        for i in 0..200 {
            clock.heartbeat(&format!("gone-{i}"), at(900));
        }
        // Only "live" is left in the state: the clean-up must keep its clock.
        assert!(
            clock
                .tick(at(1500), WALL, [view("live", true)].into_iter(), 10)
                .is_empty()
        );
    }

    /// Regression: a session opened through a follower long after this
    /// leadership began was marked down at once, before the follower's
    /// batched heartbeats reached the leader.
    #[test]
    fn a_session_new_to_the_leader_gets_a_full_timeout() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut clock = SessionClock::new(t0);
        assert!(
            clock
                .tick(at(60_000), WALL, std::iter::empty(), 10)
                .is_empty()
        );
        // First seen at 60 s, never heard from directly.
        assert!(
            clock
                .tick(at(60_100), WALL, [view("new", true)].into_iter(), 10)
                .is_empty()
        );
        assert!(
            clock
                .tick(at(61_000), WALL, [view("new", true)].into_iter(), 10)
                .is_empty()
        );
        clock.heartbeat("new", at(61_050));
        assert!(
            clock
                .tick(at(62_000), WALL, [view("new", true)].into_iter(), 10)
                .is_empty()
        );
    }

    #[test]
    fn transitions_are_rate_limited() {
        let t0 = Instant::now();
        let mut clock = SessionClock::new(t0);
        let ids: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        // Found at t0, then silent past the timeout.
        clock.tick(t0, WALL, ids.iter().map(|id| view(id, true)), 4);
        let t = clock.tick(
            t0 + Duration::from_secs(2),
            WALL,
            ids.iter().map(|id| view(id, true)),
            4,
        );
        assert_eq!(t.down.len(), 4);
    }
}
