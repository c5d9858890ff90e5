//! Flushing sled without its thread pool.
//!
//! sled 0.34's `flush_async` hands the flush to sled's thread pool, whose
//! queue wakes every idle pool thread (seven or more) for each job with
//! `notify_all`: a leader flushing once per write made about 50 futex calls
//! per write (counted with `strace -c` under a single writer). Flushing on
//! the calling thread, with tokio told that the thread blocks, costs none of
//! that. On a current-thread runtime (some tests), where blocking in place
//! is not allowed, sled's pool is used as before.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Writes every dirty buffer of `db` and syncs it to disk.
pub async fn flush(db: &sled::Db) -> sled::Result<usize> {
    let flavor = Handle::try_current().map(|h| h.runtime_flavor());
    if let Ok(RuntimeFlavor::MultiThread) = flavor {
        tokio::task::block_in_place(|| db.flush())
    } else {
        db.flush_async().await
    }
}
