//! Counters of what a node has received, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Writes received, by the way they came. Operators see from them whether
/// clients use the session stream (one HTTP/2 message per write) or unary
/// calls (a whole HTTP/2 request each), and tests check which path the SDK
/// takes.
#[derive(Debug, Default)]
pub struct WriteCounters {
    /// `Register`, `UpdateMetadata`, `Unregister` and `CloseSession` calls.
    unary: AtomicU64,
    /// `SessionWrite` messages on session streams.
    session_stream: AtomicU64,
}

impl WriteCounters {
    /// Counts a write received as a unary call.
    pub fn unary(&self) {
        self.unary.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a write received on a session stream.
    pub fn session_stream(&self) {
        self.session_stream.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far: unary, session stream.
    pub fn get(&self) -> (u64, u64) {
        (
            self.unary.load(Ordering::Relaxed),
            self.session_stream.load(Ordering::Relaxed),
        )
    }
}

/// A leader's commit-only AppendEntries that it answered itself and kept
/// back (`crate::commit_deferral`), and those of them it then sent because
/// no entries carried the commit in time. Operators see from them how
/// often followers are spared a request; tests check that a commit kept
/// back still reaches the followers.
#[derive(Debug, Default)]
pub struct CommitCounters {
    /// Commit-only requests kept back.
    kept_back: AtomicU64,
    /// Of those, sent late.
    sent_late: AtomicU64,
}

impl CommitCounters {
    /// Counts a request kept back.
    pub fn kept_back(&self) {
        self.kept_back.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request kept back and then sent.
    pub fn sent_late(&self) {
        self.sent_late.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far: kept back, sent late.
    pub fn get(&self) -> (u64, u64) {
        (
            self.kept_back.load(Ordering::Relaxed),
            self.sent_late.load(Ordering::Relaxed),
        )
    }
}
