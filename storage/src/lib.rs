//! Fuddle's storage: the registry state and its pure apply function,
//! openraft's log store (segment files of its own), and its state machine (the registry in
//! memory, durable as snapshot files plus the log).
//!
//! This crate knows nothing about tonic, sockets or clocks: the node stamps
//! time into log entries and drives everything from outside.

pub mod change;
pub mod codec;
pub mod command;
pub mod data_dir;
pub mod durable_snapshot;
pub mod feed;
pub mod filter;
mod flush;
pub mod gate;
pub mod limits;
mod log_file;
pub mod log_store;
pub mod log_sync;
pub mod member;
pub mod members;
pub mod metadata;
mod recent;
pub mod registry;
pub mod session;
mod snapshot_files;
pub mod state;
mod state_copy;
pub mod state_machine;
mod sync_place;
pub mod types;

#[cfg(test)]
mod state_tests;
#[cfg(test)]
mod store_tests;

pub use change::Change;
pub use command::{ApplyError, Command, CommandResult, Origin, Outcome, Request, Response};
pub use data_dir::{DataDir, OpenError};
pub use feed::{AppliedEntry, EncodeCache, FeedConfig, FeedItem};
pub use filter::Filter;
pub use limits::{InvalidField, Limits};
pub use log_store::{Alone, LogStore};
pub use log_sync::LogSync;
pub use member::{Member, MemberSpec, MemberStatus};
pub use members::Members;
pub use metadata::Metadata;
pub use registry::{Applied, AppliedCounts, Registry};
pub use session::{Session, SessionStatus};
pub use state::{ApplyOutput, RegistryState};
pub use state_machine::{StateMachineStore, open_stores};
pub use types::{Entry, LogId, NodeAddr, NodeId, TypeConfig};
