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

/// How many scheduler ticks a main runtime worker lets pass between two
/// looks at the runtime's shared queue: one, so it looks first at every
/// tick (a tick is a task, and up to three tasks that one woke straight
/// after it). What other threads wake goes to that queue, such as a
/// write's handler answered by the Raft runtime; so does half of a
/// worker's own queue (256 tasks) whenever it overflows. In a fan-out to
/// 10 000 subscribers a node's shared queue held up to 2 900–3 600 tasks
/// (h2 wakes every stream waiting for the connection's send window at
/// once), and with tokio's default, a look every 2 to 127 ticks as it
/// tunes itself (61 to start), a write's answer waited for that queue to
/// drain between runs of the worker's own tasks. Looked at first, it
/// drains first.
///
/// The price: the worker's own queue runs only while the shared queue is
/// empty. What the I/O driver and timers wake, a client's next request
/// among them, goes there, and waits out a deep shared queue instead of
/// sharing the worker with it.
///
/// Measured with one main worker, the benchmark machine's
/// (docs/benchmarks.md, the row on it): the one-writer fan-out after 256
/// writers 12% faster and without most of its slow rounds, one writer on
/// three nodes 5% faster, 256 writers within the spread. With more main
/// workers each takes from the shared queue's lock once per task while it
/// is deep; not measured.
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
    /// shared queue looked at first at every tick
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

    /// The chains' polls: all of them, and those made while the runtime's
    /// shared queue held something (the woken task, in the test).
    #[derive(Default)]
    struct Polls {
        all: AtomicUsize,
        while_queued: AtomicUsize,
    }

    /// Counts one poll and hands on to a successor, until `stop`: a worker
    /// that always has tasks of its own queued.
    fn chain(polls: Arc<Polls>, stop: Arc<AtomicBool>) {
        // Bounded even if the test is gone: at most this many polls.
        if stop.load(Ordering::SeqCst) || polls.all.fetch_add(1, Ordering::SeqCst) > 50_000_000 {
            return;
        }
        // Counted on the worker, so a test thread descheduled around its
        // wake cannot inflate the figure.
        if tokio::runtime::Handle::current()
            .metrics()
            .global_queue_depth()
            > 0
        {
            polls.while_queued.fetch_add(1, Ordering::SeqCst);
        }
        tokio::spawn(async move { chain(polls, stop) });
    }

    /// How many of the worker's own tasks ran while a task woken from
    /// another thread waited in the shared queue, on a one-worker runtime
    /// kept busy by 100 chains of tasks; one figure per wake, `wakes` of
    /// them.
    fn tasks_ahead_of_remote_wakes(
        mut builder: tokio::runtime::Builder,
        wakes: usize,
    ) -> Vec<usize> {
        let runtime = builder.build().unwrap();
        let polls = Arc::new(Polls::default());
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..100 {
            let (polls, stop) = (polls.clone(), stop.clone());
            runtime.spawn(async move { chain(polls, stop) });
        }
        let mut ahead = Vec::new();
        for _ in 0..wakes {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let woken = runtime.spawn({
                let polls = polls.clone();
                async move {
                    rx.await.unwrap();
                    polls.while_queued.load(Ordering::SeqCst)
                }
            });
            // Let the waiting task park and the chains run a while; a
            // deadline rather than a hang if they stop.
            let from = polls.all.load(Ordering::SeqCst);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while polls.all.load(Ordering::SeqCst) < from + 10_000 {
                assert!(std::time::Instant::now() < deadline, "the chains stopped");
                std::thread::yield_now();
            }
            polls.while_queued.store(0, Ordering::SeqCst);
            tx.send(()).unwrap();
            ahead.push(runtime.block_on(woken).unwrap());
        }
        stop.store(true, Ordering::SeqCst);
        ahead
    }

    #[test]
    fn the_main_runtime_runs_what_other_threads_wake_before_its_own_queue() {
        let ahead = tasks_ahead_of_remote_wakes(Workers { main: 1, raft: 1 }.main_runtime(), 5);
        // Looked at every tick, the shared queue waits for at most one
        // tick: a task and the up to three its successors run straight
        // after it. With tokio's default (every 2 to 127 ticks, tuned) a
        // wake waits for tens to hundreds of the worker's own tasks.
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
