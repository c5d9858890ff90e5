//! What the checks report when a history or a stream breaks a guarantee.

/// Why a history or a subscription stream fails a check. Event numbers are
/// positions in the history slice given to the check; stream positions are
/// positions in the stream slice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// The history itself is inconsistent (an answer of the wrong kind, an
    /// answered request without a return time, ...): a harness bug, not a
    /// server bug.
    #[error("malformed history: event #{event}: {reason}")]
    Malformed {
        /// The offending event.
        event: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Two requests ordered in real time carry indexes in the wrong order:
    /// a write must get a larger index than anything acknowledged before it
    /// started, and a linearizable read must report at least the index of
    /// anything acknowledged before it started.
    #[error("index order: {detail}")]
    IndexOrder {
        /// The request that completed first.
        earlier: usize,
        /// The request that started after it.
        later: usize,
        /// The two requests and their indexes.
        detail: String,
    },
    /// No order of the member's operations explains the answers.
    #[error(
        "member {id:?} is not linearizable: no order of its operations explains the answer of {}\n{detail}",
        fmt_events(culprits)
    )]
    NotLinearizable {
        /// The member.
        id: String,
        /// The requests whose answers first make the history unexplainable:
        /// the history up to their return is the smallest prefix that fails.
        culprits: Vec<usize>,
        /// Every request on the member in that prefix, by call time.
        events: Vec<usize>,
        /// Those requests, one per line.
        detail: String,
    },
    /// A read's value is not the member's value as of the index it reports.
    #[error("stale read: {detail}")]
    StaleRead {
        /// The read.
        event: usize,
        /// The member.
        id: String,
        /// The index the read reported.
        index: u64,
        /// What it read (`None`: absent).
        read: Option<String>,
        /// The values the member may have had at that index.
        allowed: Vec<Option<String>>,
        /// The read and the writes that decide the expected value.
        detail: String,
    },
    /// The search for a linearization of the member's operations gave up
    /// after `steps` steps. Not a proof of a bug: record a smaller or less
    /// concurrent workload (fewer clients per member, shorter timeouts).
    #[error("member {id:?}: gave up after {steps} search steps; shrink the workload")]
    Undecided {
        /// The member.
        id: String,
        /// The steps taken.
        steps: u64,
    },
    /// A subscription stream broke one of its guarantees.
    #[error("subscription, stream event #{position}: {problem}")]
    Subscription {
        /// The stream event where the problem shows.
        position: usize,
        /// What went wrong.
        problem: SubProblem,
    },
}

/// How a subscription stream broke its guarantees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubProblem {
    /// A fresh subscription must start with a snapshot.
    #[error("the stream starts with an event at index {index}, not a snapshot")]
    NoSnapshot {
        /// The first event's index.
        index: u64,
    },
    /// An event's index goes back behind what the stream already covered.
    #[error("an event at index {index} arrived after the stream was current up to {after}")]
    OutOfOrder {
        /// The event's index.
        index: u64,
        /// The index the stream had reached.
        after: u64,
    },
    /// The same entry's changes arrived again.
    #[error("the changes of entry {index} arrived twice")]
    Duplicate {
        /// The entry.
        index: u64,
    },
    /// One entry's changes arrived in more than one message.
    #[error("the changes of entry {index} arrived split over more than one message")]
    SplitEntry {
        /// The entry.
        index: u64,
    },
    /// A committed entry that changed a watched member never arrived,
    /// though the stream moved past it.
    #[error(
        "entry {missing} (which changed {id:?}) never arrived: the stream went from {from} to {to}"
    )]
    Gap {
        /// The entry that never arrived.
        missing: u64,
        /// A member it changed.
        id: String,
        /// The index the stream was at.
        from: u64,
        /// The index the stream jumped to.
        to: u64,
    },
    /// An entry's message lacks one of the entry's changes.
    #[error("the message of entry {index} lacks its change to {id:?}")]
    NotAtomic {
        /// The entry.
        index: u64,
        /// The member whose change is missing.
        id: String,
    },
    /// An entry's change to a member is not what the entry wrote.
    #[error("entry {index} changed {id:?} to {expected:?}, the stream says {got:?}")]
    WrongChange {
        /// The entry.
        index: u64,
        /// The member.
        id: String,
        /// What the committed writes of the entry allow (`None`: removed).
        expected: Vec<Option<String>>,
        /// What the stream delivered.
        got: Option<String>,
    },
    /// A member appears twice in one message.
    #[error("member {id:?} appears twice in the message at index {index}")]
    RepeatedMember {
        /// The message's index.
        index: u64,
        /// The member.
        id: String,
    },
    /// A removal of a member the subscriber's view does not hold: an earlier
    /// change was lost.
    #[error("entry {index} removes {id:?}, which the view does not hold")]
    RemovedAbsent {
        /// The entry.
        index: u64,
        /// The member.
        id: String,
    },
    /// A member's `mod_index` contradicts the message carrying it: a change
    /// carries the entry's index, a snapshot nothing newer than its own.
    #[error("member {id:?} has mod_index {mod_index} in the message at index {index}")]
    BadModIndex {
        /// The message's index.
        index: u64,
        /// The member.
        id: String,
        /// The member's `mod_index`.
        mod_index: u64,
    },
    /// The subscriber's view as of the final list's index differs from it.
    #[error("the view as of index {index} differs from the linearizable list: {detail}")]
    FinalView {
        /// The final list's index.
        index: u64,
        /// The differences.
        detail: String,
    },
    /// The stream ended before it covered the final list's index.
    #[error("the stream ended at index {reached:?}, before the final list's index {index}")]
    NotCaughtUp {
        /// The final list's index.
        index: u64,
        /// The index the stream reached (`None`: not even a snapshot).
        reached: Option<u64>,
    },
    /// A resync snapshot jumped over the final list's index, so the view as
    /// of that index never existed at the subscriber: compare with a list
    /// taken while no write is in flight, or after the snapshot.
    #[error("a snapshot at {snapshot} jumped over the final list's index {index}")]
    FinalViewUnknown {
        /// The final list's index.
        index: u64,
        /// The snapshot's index.
        snapshot: u64,
    },
}

fn fmt_events(events: &[usize]) -> String {
    events
        .iter()
        .map(|e| format!("#{e}"))
        .collect::<Vec<_>>()
        .join(", ")
}
