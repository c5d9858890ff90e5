//! Where a follower's appends (and a lone leader's) are synced: on the
//! Raft worker that appends, or handed off.
//!
//! `block_in_place`, which the log's other blocking work uses, hands the
//! worker's scheduler to another thread for each call: that thread is
//! woken, takes over, and gives the scheduler back. With one writer on
//! three nodes that was about 7.5 context switches per registration (35
//! against 27.5, counted from `/proc`), and on the benchmark VM each
//! wake-up of a sleeping thread costs about 40 µs. Syncing on the worker
//! itself holds what waits for the sync anyway (openraft's core, which
//! awaits the append), and the tasks no other worker may take from it:
//! the one in its LIFO slot and those that yielded to it
//! (`block_in_place` wakes those first; this does not). Other workers, if
//! the runtime has any, go on with the rest; on a runtime of one worker
//! (a node's Raft runtime on a two-core machine)
//! the rest waits for the sync too (about 0.1–0.3 ms on the benchmark
//! VM, at most [`SLOW_SYNC`] while the disk is quick), where a hand-off
//! would cost two thread wake-ups per append.
//!
//! That holds while syncs are quick. So a sync slower than [`SLOW_SYNC`],
//! wherever it ran (every sync of an append, vote, truncation or purge
//! is timed, with the write before it when that ran on the worker; a new
//! segment's are not), or an unsynced write of the log run on the worker
//! that took as long, hands
//! the next ones off for [`HAND_OFF_FOR`]; a slow disk keeps them handed
//! off, and only one sync in each such period can hold a worker. On a
//! current-thread runtime (tests) they are always handed off, to a
//! blocking thread, as the log's other blocking work is there.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::log_store::lock;

/// A sync (with the write before it) that takes longer than this is slow:
/// the disk may be busy or failing, and the worker should not wait for the
/// next ones. Each sync on a worker holds that worker's tasks (on a
/// runtime of one worker, all of them) up to this long. On the benchmark
/// VM, 10 of 157 000 syncs of a `pwrite` + `fdatasync` loop took over
/// 5 ms and one over 10 ms (p99.9 0.83 ms), so a quick disk is rarely
/// taken for a slow one.
pub(crate) const SLOW_SYNC: Duration = Duration::from_millis(10);

/// How long syncs are handed off after a slow one, before one is tried on
/// the worker again.
pub(crate) const HAND_OFF_FOR: Duration = Duration::from_secs(10);

/// Whether syncs may run on the calling worker now (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct SyncPlace {
    /// Until when syncs are handed off, after a slow one.
    handed_off_until: Mutex<Option<Instant>>,
}

impl SyncPlace {
    /// Whether a sync at `now` may run on the calling thread, as far as
    /// the disk's speed goes.
    pub(crate) fn on_worker(&self, now: Instant) -> bool {
        lock(&self.handed_off_until).is_none_or(|until| now >= until)
    }

    /// Until when syncs are handed off, for tests.
    #[cfg(test)]
    pub(crate) fn handed_off_until(&self) -> Option<Instant> {
        *lock(&self.handed_off_until)
    }

    /// Forgets any slow sync, for tests: one that a loaded machine slowed
    /// during a test's setup must not decide where its checks run.
    #[cfg(test)]
    pub(crate) fn forget_slow_syncs(&self) {
        *lock(&self.handed_off_until) = None;
    }

    /// Records a sync the log store waited for, from `started` to `ended`,
    /// wherever it ran.
    pub(crate) fn took(&self, started: Instant, ended: Instant) {
        if ended.saturating_duration_since(started) > SLOW_SYNC {
            *lock(&self.handed_off_until) = Some(ended + HAND_OFF_FOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_syncs_stay_on_the_worker() {
        let place = SyncPlace::default();
        let t0 = Instant::now();
        assert!(place.on_worker(t0));
        place.took(t0, t0 + SLOW_SYNC);
        assert!(place.on_worker(t0 + SLOW_SYNC));
    }

    #[test]
    fn a_slow_sync_hands_the_next_ones_off_for_a_while() {
        let place = SyncPlace::default();
        let t0 = Instant::now();
        let ended = t0 + SLOW_SYNC + Duration::from_millis(1);
        place.took(t0, ended);
        assert!(!place.on_worker(ended));
        assert!(!place.on_worker(ended + HAND_OFF_FOR - Duration::from_millis(1)));
        assert!(place.on_worker(ended + HAND_OFF_FOR));
        // A quick sync after that does not shorten a later hand-off.
        place.took(ended + HAND_OFF_FOR, ended + HAND_OFF_FOR);
        assert!(place.on_worker(ended + HAND_OFF_FOR));
    }
}
