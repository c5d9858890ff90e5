//! Sessions: one per client process; every member belongs to one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::CommandResult;

/// Whether a session is heartbeating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionStatus {
    /// Heartbeats arrive within the heartbeat timeout.
    Up,
    /// The leader saw no heartbeat for longer than the heartbeat timeout.
    Down {
        /// Leader-stamped time (Unix ms) of the entry that marked it down.
        since_ms: u64,
    },
}

/// A client session as replicated in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session's id, chosen by the client or the node; shared with the
    /// members the session registers ([`crate::Member::client_id`]).
    pub client_id: Arc<str>,
    /// Silence longer than this marks the session's members down.
    pub heartbeat_timeout_ms: u64,
    /// Being down longer than this removes the session and its members.
    pub reconnect_timeout_ms: u64,
    /// Up or down.
    pub status: SessionStatus,
    /// The log index that opened the session.
    pub create_index: u64,
    /// Ids of the members this session owns, so that closing or expiring
    /// the session touches only them. Not stored: it is an index of the
    /// members' `client_id`, rebuilt on load (see
    /// [`crate::RegistryState::rebuild_session_members`]), so that a write
    /// to one member of a session that owns thousands does not rewrite
    /// them all.
    #[serde(skip)]
    pub members: BTreeSet<String>,
    /// Answers to recent writes by sequence number, so that a retried write
    /// is applied once and answered the same way (Raft thesis §6.3). Entries
    /// below the client's `ack_below` are dropped.
    pub answers: BTreeMap<u64, CommandResult>,
    /// Every write below this seq has been answered and acknowledged (or
    /// its answer evicted): a late duplicate of one is refused, never
    /// applied again. It only grows.
    pub acked_below: u64,
}

impl Session {
    /// True while the session heartbeats.
    pub fn is_up(&self) -> bool {
        matches!(self.status, SessionStatus::Up)
    }
}
