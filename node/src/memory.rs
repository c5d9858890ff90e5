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
//! glibc's allocator is also tuned here, by the environment it reads when
//! the process starts: see [`exec_with_allocator_tunables`].
//!
//! This is the one place with `unsafe` in the workspace: glibc's entry point
//! has no safe wrapper in a maintained crate (the `libc` crate declares it,
//! as `unsafe` like every foreign function).

use std::ffi::OsStr;
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

/// The environment variable glibc reads its tunables from, once, when the
/// process starts.
pub const TUNABLES_VAR: &str = "GLIBC_TUNABLES";

/// The tunables the node runs with: 1 024 freed blocks of each small size
/// kept per thread (glibc's default is 7) before they go back to the shared
/// heap. A node frees a write's many small allocations (the decoded command,
/// the member made from it, the change broadcast for it) in bursts, an
/// entry's worth at a time, and glibc's heap then sorts and merges them
/// (`malloc_consolidate`, `unlink_chunk`): with the default, allocating and
/// freeing were a quarter of the leader's Raft thread under 256 writers.
/// With this, 256 writers on three nodes did 4% more on average, with 3%
/// less of the nodes' CPU per registration (13 interleaved pairs,
/// docs/benchmarks.md), for about 24 MB more resident memory on a node
/// holding 100 000 members (143 MB against 119 MB).
pub const ALLOCATOR_TUNABLES: &str = "glibc.malloc.tcache_count=1024";

/// The tunables to start the node with, given what the environment already
/// holds: none if it names any (an operator's own choice, or this process
/// after its re-execution), [`ALLOCATOR_TUNABLES`] otherwise.
pub fn tunables_to_set(current: Option<&OsStr>) -> Option<&'static str> {
    match current {
        Some(_) => None,
        None => Some(ALLOCATOR_TUNABLES),
    }
}

/// Runs this program again, in this process, with [`ALLOCATOR_TUNABLES`] in
/// its environment, unless [`TUNABLES_VAR`] is already set: glibc reads its
/// tunables only when a process starts, and there is no call to change the
/// per-thread cache's size later. Call it first thing in `main`, before any
/// thread starts. Returns only when it did not re-execute: `None` when there
/// was nothing to do, the error when the exec failed (the node then runs on
/// glibc's defaults, slower but correct).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn exec_with_allocator_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;

    let tunables = tunables_to_set(std::env::var_os(TUNABLES_VAR).as_deref())?;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // `exec` returns only on failure; on success this process is replaced,
    // keeping its pid, so a supervisor or a test sees no difference.
    Some(command.args(args).env(TUNABLES_VAR, tunables).exec())
}

/// Other C libraries have no such tunables.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn exec_with_allocator_tunables() -> Option<std::io::Error> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tunables_are_set_only_when_the_environment_names_none() {
        assert_eq!(tunables_to_set(None), Some(ALLOCATOR_TUNABLES));
        // An operator's own value wins, and so does an empty one (a way to
        // run on glibc's defaults); after the re-execution ours is there.
        for current in ["glibc.malloc.tcache_count=7", "", ALLOCATOR_TUNABLES] {
            assert_eq!(tunables_to_set(Some(OsStr::new(current))), None);
        }
    }
}
