//! openraft's type configuration for Fuddle.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Request, Response};

/// A node's id: random on its first start, then kept in its data dir.
pub type NodeId = u64;

/// How to reach a node, as recorded in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAddr {
    /// The gRPC address (`host:port`) of the public and internal services.
    pub addr: String,
    /// The HTTP address (`host:port`) for health and metrics.
    pub http_addr: String,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}

openraft::declare_raft_types!(
    /// Fuddle's Raft types: entries carry [`Request`] batches and applying
    /// them answers [`Response`]s.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = NodeAddr,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry of Fuddle's log.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of Fuddle's log.
pub type LogId = openraft::LogId<NodeId>;
/// openraft's storage error, as Fuddle's stores return it.
pub type StorageError = openraft::StorageError<NodeId>;
/// The membership as stored with its log id.
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeAddr>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeAddr>;
