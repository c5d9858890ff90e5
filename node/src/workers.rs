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
}

#[cfg(test)]
mod tests {
    use super::*;

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
