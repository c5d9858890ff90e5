//! The fault-injection harness of the reliability suite: proxies between
//! nodes ([`proxy`]), clusters behind them ([`cluster`]), clients that
//! record what they do ([`load`], [`history`]), scenarios as scripts
//! ([`scenario`]) and the checks every scenario ends with ([`check`]).
//!
//! Included by `tests/tests/faults.rs`; see `docs/reliability.md`.

pub mod check;
pub mod cluster;
pub mod history;
pub mod load;
pub mod proxy;
pub mod scenario;
