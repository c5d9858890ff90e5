//! The clock of the node's periodic tasks (session checks, membership
//! checks, heartbeat forwarding, snapshot and allocator upkeep).

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

/// Ticks every period until shutdown. A tick that comes late (a busy
/// machine) delays the ones after it instead of bunching them up.
pub struct Ticker {
    /// The period's clock.
    interval: Interval,
    /// Ends the ticking.
    shutdown: CancellationToken,
}

impl Ticker {
    /// The first tick is at once.
    pub fn new(period: Duration, shutdown: CancellationToken) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// The first tick is one period from now.
    pub fn after_one_period(period: Duration, shutdown: CancellationToken) -> Ticker {
        let mut ticker = Ticker::new(period, shutdown);
        ticker.interval.reset();
        ticker
    }

    /// Waits for the next tick; false once the node shuts down.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_each_period_until_shutdown() {
        let shutdown = CancellationToken::new();
        let start = tokio::time::Instant::now();
        let mut ticker = Ticker::after_one_period(Duration::from_secs(5), shutdown.clone());
        assert!(ticker.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(ticker.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        shutdown.cancel();
        assert!(!ticker.tick().await);
        let mut at_once = Ticker::new(Duration::from_secs(5), CancellationToken::new());
        assert!(at_once.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
