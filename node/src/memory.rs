//! Giving freed memory back to the operating system.
//!
//! glibc's allocator keeps what a burst freed: pages between live
//! allocations stay with the process, and threads' arenas shrink only from
//! the top. A node that registered 100 000 members and then served a full
//! list and a full snapshot held 365 MB resident, against 163 MB for the
//! same registry right after a restart (measured with `VmRSS`). The
//! transient part (encoded lists and snapshots, sled's work buffers) is
//! free but not returned. `malloc_trim(0)` returns free pages from every
//! arena (with `madvise`), so a background task calls it now and then.
//!
//! This is the one place with `unsafe` in the workspace: glibc's entry point
//! has no safe wrapper in a maintained crate (the `libc` crate declares it,
//! as `unsafe` like every foreign function).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ticker::Ticker;

/// How often the allocator is trimmed. A trim walks and locks each arena in
/// turn (milliseconds on a heap of hundreds of MB), so not often.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(20);

/// Trims the allocator every [`TRIM_INTERVAL`] until shutdown.
pub async fn run_trimmer(shutdown: CancellationToken) {
    let mut ticker = Ticker::after_one_period(TRIM_INTERVAL, shutdown);
    while ticker.tick().await {
        // On a blocking thread: the walk must not hold up a runtime worker.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

/// Returns free memory to the operating system; true if any was returned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and has no precondition; glibc
    // locks each arena itself while it walks it.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Other allocators (musl, macOS) return memory on their own terms, and
/// have no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}
