//! Ownership of background tasks.

use tokio::task::JoinHandle;

/// A background task that stops when its owner is dropped, so a dropped
/// session stops heartbeating and a dropped subscription stops reading.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Spawns `future` on the current tokio runtime.
    pub(crate) fn spawn(future: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(future))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
