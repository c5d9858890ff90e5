//! One gate for every sled batch and flush in the process.
//!
//! sled 0.34 guards batches with a process-wide reader-writer lock:
//! `apply_batch` takes it exclusively, while a flush holds it shared *and
//! waits for sled's I/O threads, which need it shared too*. With a fair
//! lock, a batch waiting behind a running flush blocks those I/O threads,
//! and the flush never ends: a deadlock (seen with several nodes in one
//! test process, and possible in one node when the log flushes while the
//! state machine applies). Passing every batch and every flush through this
//! gate means a batch never waits on a flush in progress. sled's own
//! background flusher is turned off (see `DataDir::open`) for the same
//! reason: every flush is ours.

use tokio::sync::{Mutex, MutexGuard};

/// The gate; process-wide, like sled's lock.
static GATE: Mutex<()> = Mutex::const_new(());

/// Waits for the gate, from async code.
pub async fn enter() -> MutexGuard<'static, ()> {
    GATE.lock().await
}

/// Waits for the gate from synchronous code (opening a data dir). It polls
/// rather than using `blocking_lock`, which refuses to run on an async
/// worker; the waits are short and happen only at startup. The node calls
/// it on a blocking thread: a task of the same runtime may hold the gate.
pub fn enter_blocking() -> MutexGuard<'static, ()> {
    loop {
        if let Ok(guard) = GATE.try_lock() {
            return guard;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
