//! Checks recorded histories of a Fuddle cluster against a model of the
//! registry: the history checker and the subscription checker of the
//! reliability suite. A pure library: no I/O, no clock, no runtime; the
//! harness records, this crate judges.
//!
//! # The history and the model
//!
//! Clients record every request as an [`Event`]: the [`Op`], when it was
//! sent and answered, and its [`Outcome`]: answered ([`Outcome::Ok`]),
//! definitely without effect ([`Outcome::Failed`]: dropped from every
//! check), or unknown ([`Outcome::Unknown`]: a write may take effect at any
//! time after its call, or never; a read tells nothing).
//!
//! The model of one member is its *value*: absent, or present with an
//! opaque string the harness derives from the member (a metadata key that
//! `Register` and `UpdateMetadata` both set, say). `Register` sets it;
//! `UpdateMetadata` sets it if present and answers `NotFound` otherwise;
//! `Unregister` removes it if present and answers `NotFound` otherwise.
//! Sessions and ownership are left out of the model: a history must use
//! one session per member id, so `ALREADY_EXISTS` cannot happen except as a
//! definite failure, and sessions going down, up or expiring must not touch
//! the members under test while the history is recorded (the statuses they
//! change are not part of the value). Every member starts absent: use
//! fresh ids.
//!
//! # Checks
//!
//! - [`check_linearizable`]: writes and linearizable reads (`Get` and
//!   `List`) are linearizable. The check is P-compositional: operations on
//!   different members commute, so the history is split by member id (a
//!   list counts as one read of each id under its prefix) and each part is
//!   searched alone: Wing & Gong's search with the memo of explored
//!   configurations that Lowe and Porcupine use, plus exact prunings for
//!   this model (indexes fix the order of acknowledged writes; a read that
//!   fits now is taken now; lost requests with the same effect are
//!   interchangeable, are tried after answered ones, and a configuration
//!   that used more of them than one that failed is not explored). On
//!   failure it reports the smallest prefix of the member's history that
//!   fails and the answer that breaks it. A search that runs past
//!   [`Limits::max_steps`] reports [`Violation::Undecided`], never a pass.
//! - Indexes are checked with it, since a Raft registry orders its writes
//!   by log index: across the whole history, a write gets a larger index
//!   than anything acknowledged before it started and a linearizable read
//!   reports at least that index; within a member's linearization,
//!   acknowledged writes come in index order and a read at index `r` comes
//!   after the writes at or below `r` and before those above it.
//! - [`check_stale_reads`]: every read that reports an index, stale or not,
//!   shows the member as the acknowledged writes left it at that index.
//! - [`check_subscription`]: a subscription stream is ordered, without
//!   duplicates or gaps, one message per entry, and its view agrees with a
//!   final linearizable list.
//!
//! A list projected onto members is checked member by member; its atomicity
//! across members follows from its index, which each projection must
//! agree with.
//!
//! ```
//! use fuddle_checker::{Event, Op, Outcome, Ret, Consistency, check_linearizable};
//!
//! let history = [
//!     Event {
//!         client: 1,
//!         op: Op::Register { id: "a".into(), session: "s1".into(), value: "v1".into() },
//!         call: 0,
//!         ret: Some(10),
//!         outcome: Outcome::Ok(Ret::Written { index: 3 }),
//!     },
//!     Event {
//!         client: 2,
//!         op: Op::Get { id: "a".into(), consistency: Consistency::Linearizable },
//!         call: 20,
//!         ret: Some(30),
//!         outcome: Outcome::Ok(Ret::Read { value: Some("v1".into()), index: Some(3) }),
//!     },
//! ];
//! check_linearizable(&history).unwrap();
//! ```
//!
//! # Why not a crate
//!
//! No maintained crate fits: `stateright`'s `LinearizabilityTester` checks
//! histories built inside its own model checker (one in-flight operation
//! per thread, a thread whose operation is lost cannot go on, no memo, no
//! partitioning, no report beyond a boolean) and brings a web explorer's
//! dependencies; `lincheck` runs in-process data structures under `loom`.
//! Neither knows of log indexes, nor of lost requests that may take effect
//! late, which fault injection produces by the hundred and which a plain
//! Wing–Gong search cannot get through (every subset of them is a
//! configuration).

mod history;
mod linearizable;
mod project;
mod stale;
mod subscription;
mod violation;

pub use history::{Committed, Consistency, Event, Op, Outcome, Ret, committed_writes};
pub use linearizable::{Limits, check_linearizable, check_linearizable_within};
pub use stale::check_stale_reads;
pub use subscription::{ListView, SubChange, SubEvent, SubMember, check_subscription};
pub use violation::{SubProblem, Violation};

/// Runs [`check_linearizable`] and [`check_stale_reads`].
pub fn check_history(history: &[Event]) -> Result<(), Violation> {
    check_linearizable(history)?;
    check_stale_reads(history)
}
