//! The commands of the Raft log and what applying them answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::member::{Member, MemberSpec};

/// Who sent a write, for exactly-once application of retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Origin {
    /// The session, or empty for an administrative write (an operator's
    /// `fuddle-cli members unregister`) that belongs to no session.
    pub client_id: String,
    /// The session's number for this write; 0 disables retry protection.
    pub seq: u64,
    /// The client has seen the answer of every write below this seq.
    pub ack_below: u64,
}

/// One change to the registry. A log entry carries a batch of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Create a session, or resume it if it exists.
    OpenSession {
        /// The session id.
        client_id: String,
        /// See [`crate::Session::heartbeat_timeout_ms`].
        heartbeat_timeout_ms: u64,
        /// See [`crate::Session::reconnect_timeout_ms`].
        reconnect_timeout_ms: u64,
    },
    /// Create or replace a member owned by the origin's session.
    Register {
        /// The writer; its session will own the member.
        origin: Origin,
        /// The member as the client describes it.
        spec: MemberSpec,
    },
    /// Set and remove metadata keys of an existing member.
    UpdateMetadata {
        /// The writer.
        origin: Origin,
        /// The member to change.
        id: String,
        /// Keys to set.
        set: BTreeMap<String, String>,
        /// Keys to remove (applied after `set`).
        remove: Vec<String>,
    },
    /// Remove a member.
    Unregister {
        /// The writer.
        origin: Origin,
        /// The member to remove.
        id: String,
    },
    /// Graceful exit: the session and its members are removed.
    CloseSession {
        /// The session to close.
        client_id: String,
    },
    /// Heartbeat timeout: these sessions' members become down.
    SessionsDown {
        /// The sessions that fell silent.
        client_ids: Vec<String>,
    },
    /// A down session heartbeats again: its members come back up.
    SessionsUp {
        /// The sessions that heartbeat again.
        client_ids: Vec<String>,
    },
    /// Reconnect timeout: these sessions and their members are removed.
    SessionsExpired {
        /// The sessions that stayed down too long.
        client_ids: Vec<String>,
    },
}

/// The application data of one log entry: a batch of commands and the time
/// the leader stamped on them, so that apply needs no clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The leader's wall clock (Unix ms) when it proposed the entry.
    pub now_ms: u64,
    /// The commands, applied in order. Shared, so that the copies of an
    /// entry openraft asks for (one per follower's AppendEntries, one for
    /// applying, one the proposer keeps to retry with) cost a reference
    /// count rather than a copy of every string. Serialized as a plain
    /// sequence, the same bytes a `Vec` gives.
    pub commands: Arc<[Command]>,
}

/// What applying one log entry answers: one result per command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Response {
    /// In the order of the entry's commands.
    pub results: Vec<CommandResult>,
}

/// The answer to one command.
pub type CommandResult = Result<Outcome, ApplyError>;

/// A successful command's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A session was opened (`resumed`: it existed already).
    Session {
        /// The session.
        client_id: String,
        /// Whether the session existed before this command.
        resumed: bool,
        /// The session's heartbeat timeout.
        heartbeat_timeout_ms: u64,
        /// The session's reconnect timeout.
        reconnect_timeout_ms: u64,
    },
    /// A member as it is after the command.
    Member(Arc<Member>),
    /// The command removed something or changed nothing a client can see.
    Done,
    /// The entry at `index` removed a member. The index is kept with the
    /// answer, so that a retry that replays it names the entry that removed
    /// the member rather than its own. (Last, so that the variants before
    /// it keep their encoding.)
    Removed {
        /// The index of the entry that removed the member.
        index: u64,
    },
}

/// Why a command was refused. Applying a refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// No member with this id.
    #[error("member {0:?} not found")]
    MemberNotFound(String),
    /// No session with this id.
    #[error("session {0:?} not found")]
    SessionNotFound(String),
    /// The member belongs to another session.
    #[error("member {id:?} is owned by another session ({owner})")]
    OwnedByOther {
        /// The member.
        id: String,
        /// The session that owns it.
        owner: String,
    },
    /// A retry of a write whose answer the client had already acknowledged.
    #[error("write {seq} of session {client_id:?} was already answered")]
    StaleRetry {
        /// The session.
        client_id: String,
        /// The write's sequence number.
        seq: u64,
    },
    /// A register without a session.
    #[error("{0}")]
    Invalid(String),
}
