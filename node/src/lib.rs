//! A Fuddle registry node: configuration, Raft over tonic, the public and
//! internal gRPC services, sessions and subscriptions.
//!
//! [`Node::start`] is the one entry point; `main.rs` only turns the command
//! line into a [`Config`].

pub mod alone;
pub mod commit_deferral;
pub mod config;
pub mod connections;
pub mod convert;
pub mod core;
pub mod counters;
pub mod error;
pub mod forward;
pub mod forward_stream;
pub mod gossip;
pub mod held_commits;
pub mod http;
pub mod membership;
pub mod memory;
pub mod network;
pub mod peers;
pub mod proposer;
pub mod raft_service;
pub mod registry_service;
pub mod server;
pub mod sessions;
pub mod snapshots;
pub mod spin;
pub mod status;
pub mod subscribe;
pub mod subscribe_route;
pub mod ticker;
pub mod workers;

pub use config::Config;
pub use error::NodeError;
pub use server::{Node, StartError};
