//! How many worker threads each of the node's two runtimes gets.
//!
//! The node runs client connections (the main runtime) and Raft (its own
//! runtime, so that a flood of clients cannot delay heartbeats). Given
//! each as many workers as the machine has cores, as tokio does by
//! default, they ran twice as many workers as cores, and an idle worker
//! woken to steal work it then does not find is a context switch, on a VM
//! an exit to the hypervisor. Sharing the cores instead (three nodes on
//! the 2-core benchmark machine, the main runtime with one worker instead
//! of two) cut the nodes' CPU per delivery of a fan-out by 7–25% and per
//! registration of one writer by 4–10% (interleaved pairs, see
//! docs/benchmarks.md).
//!
//! The Raft runtime gets one worker on two cores as well. With two, each
//! proposal arriving from the main runtime woke one Raft worker, which
//! woke the other to look for work it did not find, and so did the tasks
//! an append's sync wakes (`strace -f` of one node, one writer: two
//! needless wake-ups per registration). A follower's, or a lone leader's,
//! log sync runs on the worker even when it is the only one (see
//! `fuddle_storage`'s `sync_place`): one node's CPU per registration fell
//! by about a fifth.

/// How many tasks a main runtime worker runs between two looks at the
/// runtime's shared queue: one. What other threads wake goes there: a
/// write's handler answered by the Raft runtime, and also every task a
/// worker wakes beyond the 256 its own queue holds. In a fan-out to 10 000
/// subscribers a node's shared queue held up to 3 000–3 600 tasks (h2 wakes
/// every stream waiting for the connection's send window at once), and
/// with tokio's default, a look every 31 to 127 tasks, a write's answer
/// waited for that queue to drain between the worker's own tasks. Looked at
/// first, it drains first. Measured (docs/benchmarks.md, the row on it):
/// the one-writer fan-out after 256 writers 12% faster and without most of
/// its slow rounds, one writer on three nodes 5% faster, 256 writers
/// within the spread.
pub const MAIN_GLOBAL_QUEUE_INTERVAL: u32 = 1;

/// Worker threads per runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// The main runtime's: client connections, subscriptions, HTTP.
    pub main: usize,
    /// The Raft runtime's: openraft's tasks and the internal gRPC server.
    pub raft: usize,
}

impl Workers {
    /// The split for a machine with `cores` cores: half of them (at least
    /// one) for clients, the rest (at least one) for Raft.
    pub fn for_cores(cores: usize) -> Workers {
        let main = (cores / 2).max(1);
        Workers {
            main,
            raft: cores.saturating_sub(main).max(1),
        }
    }

    /// The split for this machine (the cores this process may use).
    pub fn here() -> Workers {
        Workers::for_cores(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// A builder for the main runtime: its workers, every driver, and the
    /// shared queue looked at before each task
    /// ([`MAIN_GLOBAL_QUEUE_INTERVAL`]).
    pub fn main_runtime(&self) -> tokio::runtime::Builder {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder
            .worker_threads(self.main)
            .enable_all()
            .global_queue_interval(MAIN_GLOBAL_QUEUE_INTERVAL);
        builder
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// Counts one poll and hands on to a successor, until `stop`: a worker
    /// that always has tasks of its own queued.
    fn chain(polls: Arc<AtomicUsize>, stop: Arc<AtomicBool>) {
        // Bounded even if the test is gone: at most this many polls.
        if stop.load(Ordering::SeqCst) || polls.fetch_add(1, Ordering::SeqCst) > 50_000_000 {
            return;
        }
        tokio::spawn(async move { chain(polls, stop) });
    }

    /// How many of the worker's own tasks ran between a task's wake from
    /// another thread and its run, on a one-worker runtime kept busy by
    /// 100 chains of tasks; one figure per wake, `wakes` of them.
    fn tasks_ahead_of_remote_wakes(
        mut builder: tokio::runtime::Builder,
        wakes: usize,
    ) -> Vec<usize> {
        let runtime = builder.build().unwrap();
        let polls = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..100 {
            let (polls, stop) = (polls.clone(), stop.clone());
            runtime.spawn(async move { chain(polls, stop) });
        }
        let mut ahead = Vec::new();
        for _ in 0..wakes {
            let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
            let woken = runtime.spawn({
                let polls = polls.clone();
                async move {
                    let sent_at = rx.await.unwrap();
                    polls.load(Ordering::SeqCst) - sent_at
                }
            });
            // Let the waiting task park and the chains run a while.
            let from = polls.load(Ordering::SeqCst);
            while polls.load(Ordering::SeqCst) < from + 10_000 {
                std::thread::yield_now();
            }
            tx.send(polls.load(Ordering::SeqCst)).unwrap();
            ahead.push(runtime.block_on(woken).unwrap());
        }
        stop.store(true, Ordering::SeqCst);
        ahead
    }

    #[test]
    fn the_main_runtime_runs_what_other_threads_wake_before_its_own_queue() {
        let ahead = tasks_ahead_of_remote_wakes(Workers { main: 1, raft: 1 }.main_runtime(), 5);
        // With tokio's default the shared queue is looked at every 31 to
        // 127 tasks, so a wake waits for tens of them in most trials.
        assert!(ahead.iter().all(|&n| n <= 16), "tasks run first: {ahead:?}");
    }

    #[test]
    fn the_runtimes_share_the_cores() {
        assert_eq!(Workers::for_cores(1), Workers { main: 1, raft: 1 });
        assert_eq!(Workers::for_cores(2), Workers { main: 1, raft: 1 });
        assert_eq!(Workers::for_cores(3), Workers { main: 1, raft: 2 });
        assert_eq!(Workers::for_cores(4), Workers { main: 2, raft: 2 });
        assert_eq!(Workers::for_cores(8), Workers { main: 4, raft: 4 });
        assert_eq!(Workers::for_cores(9), Workers { main: 4, raft: 5 });
    }
}
