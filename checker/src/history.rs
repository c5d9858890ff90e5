//! The recorded history: what each client asked, when, and what it got.

use std::collections::BTreeMap;
use std::fmt;

/// How a read was asked to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// Read index through the leader: the read must see every write
    /// acknowledged before it started, so it takes part in the
    /// linearizability check.
    Linearizable,
    /// The answering node's local state: only checked against the index it
    /// reports (see [`crate::check_stale_reads`]).
    Stale,
}

/// One request a client made.
///
/// A member's state in the model is its id's *value*: absent, or present
/// with an opaque string the harness derives from the member (for example a
/// metadata key that both `Register` and `UpdateMetadata` set). Whatever the
/// harness chooses, reads must report the same derivation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    /// `Register`: create or replace the member `id`.
    Register {
        /// The member.
        id: String,
        /// The session that registers it; recorded for reports only, the
        /// model ignores ownership (see the crate docs).
        session: String,
        /// The member's value after the write.
        value: String,
    },
    /// `UpdateMetadata`: changes a present member's value; answers
    /// [`Ret::NotFound`] (and changes nothing) when the member is absent.
    Update {
        /// The member.
        id: String,
        /// The member's value after the write.
        value: String,
    },
    /// `Unregister`: removes a present member; answers [`Ret::NotFound`]
    /// when it is absent.
    Unregister {
        /// The member.
        id: String,
    },
    /// `GetMember`.
    Get {
        /// The member.
        id: String,
        /// How the read was served.
        consistency: Consistency,
    },
    /// `ListMembers` restricted to the ids that start with `prefix`: the
    /// answer says, for every such id, whether it is present and with which
    /// value. The harness filters the answer by `prefix` itself, so that
    /// members of other tests do not count as values never written.
    List {
        /// Only ids starting with this belong to the read ("" for all).
        prefix: String,
        /// How the read was served.
        consistency: Consistency,
    },
}

impl Op {
    /// The member a single-member operation is about; `None` for a list.
    pub fn id(&self) -> Option<&str> {
        match self {
            Op::Register { id, .. }
            | Op::Update { id, .. }
            | Op::Unregister { id }
            | Op::Get { id, .. } => Some(id),
            Op::List { .. } => None,
        }
    }

    /// Whether the operation may change the registry.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Register { .. } | Op::Update { .. } | Op::Unregister { .. }
        )
    }
}

/// What a successful request answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A write was applied by the log entry at `index`.
    Written {
        /// The log index that applied the write. For a register or an
        /// update, take the returned member's `mod_index`: a request the
        /// server answers from its retry table (the SDK resent it with the
        /// same sequence number) reports, as `WriteResponse.index`, the
        /// entry that carried the retry, later than the one that applied
        /// it. An unregister has no member to take it from: if it may have
        /// been resent, record it as [`Outcome::Unknown`] (true, and safe)
        /// rather than with a late index (a false alarm).
        index: u64,
    },
    /// An `Update` or `Unregister` found no such member and changed nothing.
    /// The server reports no index with it.
    NotFound,
    /// A `Get` answered. A `NOT_FOUND` answer is `value: None` with no
    /// index, since the server reports none with an error.
    Read {
        /// The member's value, or `None` if absent.
        value: Option<String>,
        /// The applied index the server answered at, when it said.
        index: Option<u64>,
    },
    /// A `List` answered, already restricted to the op's prefix.
    List {
        /// Every present member under the prefix, with its value.
        members: BTreeMap<String, String>,
        /// The applied index the server answered at.
        index: u64,
    },
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The server answered.
    Ok(Ret),
    /// The request definitely had no effect: refused by validation
    /// (`INVALID_ARGUMENT`, `ALREADY_EXISTS`) or never sent. It is left out
    /// of every check.
    Failed,
    /// Nobody knows whether it took effect (timeout, `DEADLINE_EXCEEDED`,
    /// connection lost, client crash): a write may take effect at any time
    /// after its call, or never; a read tells nothing.
    Unknown,
}

/// One request of the history, with its real-time interval.
///
/// Times may be nanoseconds or any logical clock shared by all clients;
/// two requests are ordered in real time only when one's `ret` is strictly
/// before the other's `call`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event {
    /// The client (process or task) that made the request; for reports.
    pub client: u64,
    /// The request.
    pub op: Op,
    /// When the request was sent.
    pub call: u64,
    /// When the answer arrived; `None` when it never did. Required for
    /// [`Outcome::Ok`], ignored otherwise.
    pub ret: Option<u64>,
    /// The answer.
    pub outcome: Outcome,
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        })
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Register { id, session, value } => {
                write!(f, "register {id}={value:?} (session {session})")
            }
            Op::Update { id, value } => write!(f, "update {id}={value:?}"),
            Op::Unregister { id } => write!(f, "unregister {id}"),
            Op::Get { id, consistency } => write!(f, "get {id} ({consistency})"),
            Op::List {
                prefix,
                consistency,
            } => write!(f, "list {prefix:?}* ({consistency})"),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Written { index } => write!(f, "written at {index}"),
            Ret::NotFound => f.write_str("not found"),
            Ret::Read { value, index } => {
                match value {
                    Some(v) => write!(f, "{v:?}")?,
                    None => f.write_str("absent")?,
                }
                match index {
                    Some(i) => write!(f, " at {i}"),
                    None => Ok(()),
                }
            }
            Ret::List { members, index } => {
                f.write_str("{")?;
                for (n, (id, value)) in members.iter().enumerate() {
                    if n > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{id}={value:?}")?;
                }
                write!(f, "}} at {index}")
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(ret) => ret.fmt(f),
            Outcome::Failed => f.write_str("failed"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [{}, ", self.client, self.call)?;
        match self.ret {
            Some(ret) => write!(f, "{ret}]")?,
            None => f.write_str("-]")?,
        }
        write!(f, " {} -> {}", self.op, self.outcome)
    }
}

/// A write known to be committed: an acknowledged write with its index.
/// The reference that [`crate::check_subscription`] compares a stream with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Committed {
    /// The log index that applied it.
    pub index: u64,
    /// The member it changed.
    pub id: String,
    /// The member's value after it, `None` for a removal.
    pub value: Option<String>,
}

/// Every acknowledged write of `history` with its index, in index order
/// (history order among writes of one index). Writes with an unknown
/// outcome are left out: their index is unknown.
pub fn committed_writes(history: &[Event]) -> Vec<Committed> {
    let mut out: Vec<Committed> = history
        .iter()
        .filter_map(|e| {
            let Outcome::Ok(Ret::Written { index }) = e.outcome else {
                return None;
            };
            let (id, value) = match &e.op {
                Op::Register { id, value, .. } | Op::Update { id, value } => {
                    (id.clone(), Some(value.clone()))
                }
                Op::Unregister { id } => (id.clone(), None),
                Op::Get { .. } | Op::List { .. } => return None,
            };
            Some(Committed { index, id, value })
        })
        .collect();
    // Stable: writes sharing an index keep their history order.
    out.sort_by_key(|c| c.index);
    out
}
