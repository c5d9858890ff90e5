//! Making data durable without holding up the async runtime: sled's flush
//! and the log's writes and syncs, run on the calling thread with tokio
//! told that it blocks.
//!
//! sled 0.34's `flush_async` hands the flush to sled's thread pool, whose
//! queue wakes every idle pool thread (seven or more) for each job with
//! `notify_all`: a leader flushing once per write made about 50 futex calls
//! per write (counted with `strace -c` under a single writer). Flushing on
//! the calling thread, with tokio told that the thread blocks, costs none of
//! that. On a current-thread runtime (some tests), where blocking in place
//! is not allowed, the work goes to a blocking thread.

use std::fs::File;
use std::sync::Arc;

use tokio::runtime::{Handle, RuntimeFlavor};

/// Whether the current runtime lets a task block in place: a multi-thread
/// one, of any number of workers. The log's quick syncs run on such a
/// worker without telling tokio, too (see `sync_place`). tokio cannot tell
/// whether the thread is a worker; a `block_on` or blocking-pool thread of
/// such a runtime passes as well, and blocking it holds nothing else.
pub(crate) fn can_block_in_place() -> bool {
    matches!(
        Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(RuntimeFlavor::MultiThread)
    )
}

/// Writes every dirty buffer of `db` and makes it durable: sled syncs its
/// writes with `sync_file_range`, which neither flushes the disk's write
/// cache nor records a grown file's size, so `file` (sled's data file,
/// `db/db`) is then `fsync`ed too.
pub async fn flush(db: &sled::Db, file: &Arc<File>) -> std::io::Result<()> {
    let (db, file) = (db.clone(), Arc::clone(file));
    blocking(move || flush_blocking(&db, &file)).await?
}

/// `flush` for synchronous code (opening a data dir).
pub fn flush_blocking(db: &sled::Db, file: &File) -> std::io::Result<()> {
    db.flush().map_err(std::io::Error::other)?;
    file.sync_all()
}

/// Runs blocking work (flushes, and the log's writes and syncs) from async
/// code.
pub async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<R> {
    if can_block_in_place() {
        Ok(tokio::task::block_in_place(work))
    } else {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_multi_thread_runtime_lets_a_worker_block() {
        assert!(!can_block_in_place(), "outside any runtime");
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!current.block_on(async { can_block_in_place() }));
        for workers in [1, 2] {
            let multi = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .unwrap();
            assert!(multi.block_on(async { can_block_in_place() }));
        }
    }
}
