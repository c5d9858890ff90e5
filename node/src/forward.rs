//! What followers send the leader over the internal service: batches of
//! client commands, batches of heartbeats, and read-index questions.

use std::borrow::Cow;

use fuddle_storage::Command;
use serde::{Deserialize, Serialize};

use crate::proposer::Proposed;

/// A follower's batch of commands for the leader to propose. The leader
/// stamps the time; a follower's clock never reaches the log.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardBatch<'a> {
    /// The commands, answered in order. Borrowed when a follower sends its
    /// whole batch, which it keeps to answer from; owned once decoded.
    pub commands: Cow<'a, [Command]>,
}

/// The leader's answers to a [`ForwardBatch`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardReply {
    /// One per command.
    pub results: Vec<Proposed>,
}

/// A message on a `ForwardStream`: a batch or its reply, with the id that
/// pairs them. Replies come back in the order the leader finishes the
/// batches, which need not be the order they were sent in.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Chosen by the follower, unique on its stream.
    pub id: u64,
    /// A [`ForwardBatch`] or a [`ForwardReply`].
    pub body: T,
}

/// Sessions heard from by a follower since its last batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct HeartbeatBatch {
    /// Session ids.
    pub client_ids: Vec<String>,
}

/// The leader's answer to a read-index question: once the asking node has
/// applied this index, a read from its state is linearizable.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadIndexReply {
    /// The index, or why there is none.
    pub index: Result<u64, crate::error::NodeError>,
}
