//! The node's errors and the one table that maps them to gRPC status codes.

use fuddle_storage::{ApplyError, InvalidField};
use tonic::{Code, Status};

/// Why a request failed. Serializable because a leader answers forwarded
/// writes with it.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum NodeError {
    /// A field of the request is invalid.
    #[error("{0}")]
    Invalid(#[from] InvalidField),
    /// A request is malformed in a way not tied to a member field.
    #[error("{0}")]
    BadRequest(String),
    /// Applying the command refused it.
    #[error("{0}")]
    Apply(#[from] ApplyError),
    /// No member with this id (reads).
    #[error("member {0:?} not found")]
    NotFound(String),
    /// This node is not the leader and could not hand the request on.
    #[error("this node is not the leader{}", leader.as_ref().map(|(id, addr)| format!(" (the leader is node {id} at {addr})")).unwrap_or_default())]
    NotLeader {
        /// The leader, if known.
        leader: Option<(u64, String)>,
    },
    /// There is no leader right now (an election, or no quorum).
    #[error("no leader: the cluster has no quorum right now; retry shortly")]
    NoLeader,
    /// This node leads but has not heard from a quorum for a while (it is
    /// partitioned from the majority): a write could not commit.
    #[error(
        "this node is the leader but has not heard from a quorum for {0} ms; the cluster has no usable leader right now, retry shortly"
    )]
    NoQuorum(u64),
    /// The operation did not finish in time.
    #[error("timed out {0}")]
    Timeout(String),
    /// A session stream already has this many writes waiting for answers.
    #[error(
        "write: this session stream already has {0} writes in flight; wait for their answers or use the unary calls"
    )]
    TooManyWrites(usize),
    /// This node is shutting down.
    #[error("the node is shutting down; reconnect to another node")]
    ShuttingDown,
    /// The node has not applied far enough to serve the request.
    #[error(
        "this node has applied up to index {applied}, behind the requested index {wanted}; try another node"
    )]
    Behind {
        /// This node's applied index.
        applied: u64,
        /// The index the request needs.
        wanted: u64,
    },
    /// No node with this id is known.
    #[error("node {0} is not a member of this cluster and not seen by gossip")]
    UnknownNode(u64),
    /// Another node could not be reached.
    #[error("cannot reach node {node} at {addr}: {reason}")]
    Unreachable {
        /// The node.
        node: u64,
        /// Its address.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// A subscription message too large for one gRPC message.
    #[error(
        "a subscription message would be 4 GiB or more, past what gRPC can frame (an entry changing very many large members at once); subscribe with a narrower filter"
    )]
    MessageTooLarge,
    /// A broken invariant or a storage failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// The gRPC code of this error: the single place where internal errors
    /// become status codes.
    pub fn code(&self) -> Code {
        match self {
            NodeError::Invalid(_) | NodeError::BadRequest(_) => Code::InvalidArgument,
            NodeError::Apply(e) => match e {
                ApplyError::MemberNotFound(_) | ApplyError::SessionNotFound(_) => Code::NotFound,
                ApplyError::OwnedByOther { .. } => Code::AlreadyExists,
                ApplyError::StaleRetry { .. } => Code::FailedPrecondition,
                ApplyError::Invalid(_) => Code::FailedPrecondition,
            },
            NodeError::NotFound(_) | NodeError::UnknownNode(_) => Code::NotFound,
            NodeError::NotLeader { .. }
            | NodeError::NoLeader
            | NodeError::ShuttingDown
            | NodeError::Behind { .. }
            | NodeError::NoQuorum(_)
            | NodeError::Unreachable { .. } => Code::Unavailable,
            // The write may still be applied: not UNAVAILABLE, which tells
            // a client the request surely was not carried out.
            NodeError::Timeout(_) => Code::DeadlineExceeded,
            NodeError::TooManyWrites(_) | NodeError::MessageTooLarge => Code::ResourceExhausted,
            NodeError::Internal(_) => Code::Internal,
        }
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let invalid = InvalidField {
            field: "member.id".into(),
            reason: "must not be empty".into(),
        };
        let s = Status::from(NodeError::from(invalid));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "member.id: must not be empty");
        let owned = ApplyError::OwnedByOther {
            id: "a".into(),
            owner: "b".into(),
        };
        assert_eq!(NodeError::from(owned).code(), Code::AlreadyExists);
        assert_eq!(NodeError::NoLeader.code(), Code::Unavailable);
        assert_eq!(NodeError::TooManyWrites(64).code(), Code::ResourceExhausted);
        assert_eq!(NodeError::MessageTooLarge.code(), Code::ResourceExhausted);
        let not_leader = NodeError::NotLeader {
            leader: Some((7, "10.0.0.1:8220".into())),
        };
        assert!(not_leader.to_string().contains("node 7 at 10.0.0.1:8220"));
    }
}
