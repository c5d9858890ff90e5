//! Fuddle's gRPC protocol: generated code only, no logic.
//!
//! `registry` is the public API (package `fuddle.v1`); `raft` is the internal
//! node-to-node service (package `fuddle.raft.v1`).

#![allow(clippy::all, missing_docs)]

/// The public Registry service and its messages.
pub mod registry {
    tonic::include_proto!("fuddle.v1");
}

/// The internal Raft and forwarding service.
pub mod raft {
    tonic::include_proto!("fuddle.raft.v1");
}
