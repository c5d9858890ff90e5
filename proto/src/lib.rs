//! Fuddle's gRPC protocol: generated code, and the one hand-written
//! message type for pre-encoded Subscribe messages (the generated server's
//! form; the node sends its shared frames through a route of its own).
//!
//! `registry` is the public API (package `fuddle.v1`); `raft` is the internal
//! node-to-node service (package `fuddle.raft.v1`); `shared_server` is the
//! public service's server whose Subscribe stream takes
//! [`encoded::EncodedSubscribeResponse`].

pub mod encoded;

/// The public Registry service and its messages.
#[allow(clippy::all, missing_docs)]
pub mod registry {
    tonic::include_proto!("fuddle.v1");
}

/// The public Registry service's server, with pre-encoded Subscribe
/// messages (same wire format as [`registry::SubscribeResponse`]).
#[allow(clippy::all, missing_docs)]
pub mod shared_server {
    include!(concat!(env!("OUT_DIR"), "/shared_server/fuddle.v1.rs"));
}

/// The internal Raft and forwarding service.
#[allow(clippy::all, missing_docs)]
pub mod raft {
    tonic::include_proto!("fuddle.raft.v1");
}
