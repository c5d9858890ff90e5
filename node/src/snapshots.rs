//! Asking openraft for a snapshot when many commands were applied since the
//! last one.
//!
//! The state machine lives in memory, so a restart re-applies the log after
//! the last snapshot. openraft's policy counts entries, but one entry holds
//! anywhere from one command to a whole group commit (up to `max_batch`),
//! so that count alone does not bound a restart's work. This task bounds it
//! by commands.

use std::time::Duration;

use fuddle_storage::{StateMachineStore, TypeConfig};
use openraft::Raft;
use tokio_util::sync::CancellationToken;

use crate::ticker::Ticker;

/// How often the count is checked: a snapshot comes at most this late
/// after the limit is passed.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Triggers a snapshot whenever `limit` commands or more were applied since
/// the last one, until shutdown.
pub async fn run_trigger(
    raft: Raft<TypeConfig>,
    sm: StateMachineStore,
    limit: u64,
    shutdown: CancellationToken,
) {
    let mut ticker = Ticker::new(CHECK_INTERVAL, shutdown);
    while ticker.tick().await {
        let pending = sm.commands_since_snapshot();
        if pending >= limit {
            tracing::debug!(pending, "asking for a snapshot");
            // Building resets the count; openraft ignores the trigger while a
            // build is already running, and the next tick asks again.
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::debug!(error = %e, "snapshot trigger refused");
            }
        }
    }
}
