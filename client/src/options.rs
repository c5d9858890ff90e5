//! Timeouts and retry budgets of a [`crate::Client`].

use std::time::Duration;

/// How patient a [`crate::Client`] is. The defaults suit both a command-line
/// tool (an unreachable cluster is reported within a second) and a service
/// (a leader election is waited out).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for a connection to one node before trying the next.
    pub connect_timeout: Duration,
    /// How long one attempt of a unary call may take on one node.
    pub request_timeout: Duration,
    /// The total time a call may spend retrying, across all nodes and
    /// backoff pauses, before it reports the last error. A session write
    /// may first wait up to `request_timeout` for its answer on the
    /// session stream, before its calls start.
    pub retry_deadline: Duration,
    /// A call gives up early after this many rounds in which no node could
    /// even be connected to: a cluster that refuses connections is down,
    /// and saying so at once beats waiting out the whole deadline.
    pub unreachable_rounds: u32,
    /// The first pause between two rounds over the node list; it doubles up
    /// to `max_backoff`.
    pub min_backoff: Duration,
    /// The longest pause between two rounds.
    pub max_backoff: Duration,
    /// How often a node should send Progress on an idle subscription. A
    /// subscription that hears nothing for four of these reconnects.
    pub progress_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(15),
            unreachable_rounds: 3,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            progress_interval: Duration::from_secs(5),
        }
    }
}

impl ClientOptions {
    /// Growing, jittered pauses between `min_backoff` and `max_backoff`,
    /// without end: every retry loop of the SDK waits by these.
    pub(crate) fn backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::new()
            .with_min_delay(self.min_backoff)
            .with_max_delay(self.max_backoff)
            .with_jitter()
            .without_max_times()
    }

    /// How long a subscription may stay silent before it is presumed dead.
    pub(crate) fn stream_idle_timeout(&self) -> Duration {
        self.progress_interval * 4
    }
}
