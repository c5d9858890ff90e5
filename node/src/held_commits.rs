//! Tells followers of a commit that was held back from them until it was
//! durable in the leader's log (see `fuddle_storage::log_sync`).

use fuddle_storage::{LogSync, TypeConfig};
use openraft::Raft;
use tokio_util::sync::CancellationToken;

/// Sends a heartbeat, which carries the leader's commit, each time a
/// commit held back is durable. Without it an idle follower would learn
/// the commit only with the next write or the next regular heartbeat.
pub async fn run(raft: Raft<TypeConfig>, sync: LogSync, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sync.held_back_durable() => {
                // A node that is no longer the leader refuses; the new
                // leader sends its own commit.
                let _ = raft.trigger().heartbeat().await;
            }
        }
    }
}
