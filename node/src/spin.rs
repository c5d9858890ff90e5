//! A runtime worker that keeps its core for a moment after work, while
//! writes come one at a time, so that the next step of a write finds it
//! awake.
//!
//! Why: a single writer's registration passes from thread to thread (the
//! client's stream, Raft, the log's sync, each follower and back), and
//! tokio parks a worker as soon as it has nothing to do. On the benchmark
//! VM an idle vCPU halts in the hypervisor, so waking a thread parked on it
//! costs about 40 µs, several times per registration (docs/benchmarks.md,
//! "Where the time of a write goes"). Go's scheduler, under etcd, looks
//! for work a while before it parks; this does the same for a tokio
//! runtime with one worker: after the worker wakes, a task goes round
//! until no other work has come for the window. Each round lets the tasks
//! queued on the worker run, then yields to the scheduler, which polls the
//! runtime's I/O and timers and takes the tasks woken from other threads
//! before it runs the spinner again (tokio defers a yielded task until
//! after its driver's poll; with one worker that poll is never skipped for
//! a sibling holding the driver). So what arrives meanwhile is taken
//! without a wake-up. This relies on tokio's scheduling order, which its
//! documentation does not promise: if it changed, the spinner would only
//! spin in vain.
//!
//! It spins only while it helps (see [`Regime`] and [`Spell`]):
//! - only while writes come one at a time (at most two commands per log
//!   entry): with many writers, entries carry many commands, the workers
//!   have work queued anyway, and spinning took CPU from them;
//! - only while the node does not fan its entries out widely (at most
//!   [`MAX_SUBSCRIPTIONS_PER_ENTRY`] subscriptions each): its own fan-out
//!   then outweighs the wake-ups spinning saves;
//! - not when idle: a spell starts only when the worker wakes and a new
//!   entry was seen within [`RECENT`], and ends when none has been for
//!   that long, however busy its rounds look;
//! - not against other threads: a round in which nothing else ran first
//!   offers the core to any thread waiting for it, and a spell that spent
//!   more than half of its time off the CPU ends and the spinner rests
//!   for [`REST`];
//! - only on a runtime with one worker: with more, each round of the
//!   spinner would wake a sleeping sibling to look for work.
//!
//! While it would not spin, only one wake-up of the worker in
//! [`DISARMED_EVERY`] tells it, so a busy node pays next to nothing.
//!
//! Hand-written: tokio has no setting to spin before parking.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use fuddle_storage::AppliedCounts;
use nix::sys::resource::{UsageWho, getrusage};
use nix::time::{ClockId, clock_gettime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The window the node binary uses unless told otherwise (`--spin`).
pub const DEFAULT_WINDOW: Duration = Duration::from_micros(500);

/// [`DEFAULT_WINDOW`] as the command line spells it.
pub const DEFAULT_WINDOW_ARG: &str = "500us";

/// Spells start only if a new entry was seen this recently: a worker woken
/// by a timer on an idle node goes back to sleep at once.
pub const RECENT: Duration = Duration::from_millis(10);

/// How long the spinner rests after a spell found the core wanted by
/// other threads.
pub const REST: Duration = Duration::from_millis(10);

/// CPU a round may take on its own (two yields, a poll of the driver, the
/// clocks); more means some other task ran in it.
const ROUND_CPU: Duration = Duration::from_micros(8);

/// After this long, a spell that spent more than half of its time off
/// the CPU while nothing else ran on this worker ends.
const CONTENDED_AFTER: Duration = Duration::from_micros(40);

/// Entries looked at before the regime is judged again.
const SAMPLE_ENTRIES: u64 = 16;

/// Most commands per entry, on average, for writes to count as coming one
/// at a time.
const SERIAL_COMMANDS_PER_ENTRY: u64 = 2;

/// Most subscriptions an entry is offered to on this node, on average, for
/// spinning. Fanning an entry out costs the node about 1 µs a
/// subscription, so past about a hundred the node's own fan-out takes
/// longer than the wake-ups spinning saves (about 40 µs each, a few per
/// write), and spinning only took CPU from it: with 3 300 subscriptions
/// per node, a single writer's writes took several times as long.
pub const MAX_SUBSCRIPTIONS_PER_ENTRY: u64 = 100;

/// Told when the worker of a runtime wakes (its `on_thread_unpark`); made
/// only by [`Trigger::install`], so that a spinner always has a runtime
/// that tells it.
#[derive(Debug, Clone)]
pub struct Trigger(Arc<TriggerState>);

#[derive(Debug, Default)]
struct TriggerState {
    /// Wakes the spinner.
    notify: Notify,
    /// Whether the spinner's last look found writes coming one at a time:
    /// if not, only one wake-up in [`DISARMED_EVERY`] tells it, so that a
    /// busy node (many writers, a wide fan-out) pays next to nothing for a
    /// spinner that would not spin, yet looks again now and then.
    armed: AtomicBool,
    /// Wake-ups while disarmed.
    skipped: AtomicU64,
}

/// While disarmed, one wake-up of the worker in this many tells the
/// spinner to look again.
pub const DISARMED_EVERY: u64 = 64;

impl Trigger {
    /// The worker woke: tells the spinner, or while it is disarmed, only
    /// one time in [`DISARMED_EVERY`].
    fn unparked(&self) {
        let state = &self.0;
        if state.armed.load(Ordering::Relaxed)
            || state
                .skipped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(DISARMED_EVERY)
        {
            state.notify.notify_one();
        }
    }

    fn arm(&self, armed: bool) {
        self.0.armed.store(armed, Ordering::Relaxed);
    }

    /// The trigger of a runtime about to be built with `workers` workers,
    /// registered on its builder, for a spinner with `window`; none (and
    /// nothing registered) if `window` is zero or `workers` is not one:
    /// see the module's documentation.
    pub fn install(
        builder: &mut tokio::runtime::Builder,
        workers: usize,
        window: Duration,
    ) -> Option<Trigger> {
        if window.is_zero() || workers != 1 {
            return None;
        }
        let trigger = Trigger(Arc::default());
        let told = trigger.clone();
        // Runs on the worker thread as it wakes: a permit for the spinner,
        // or, if it waits, a wake-up queued for the worker.
        builder.on_thread_unpark(move || told.unparked());
        Some(trigger)
    }
}

/// What the node's spinners did, for `/metrics` (operators see the CPU
/// that spinning costs) and for tests (that it spins, and stops).
#[derive(Debug, Default)]
pub struct SpinStats {
    /// Spells begun.
    spells: AtomicU64,
    /// Rounds gone.
    rounds: AtomicU64,
    /// Wall time spent in spells, in microseconds.
    micros: AtomicU64,
}

impl SpinStats {
    /// Spells begun, rounds gone and the wall time spent in spells.
    pub fn get(&self) -> (u64, u64, Duration) {
        (
            self.spells.load(Ordering::Relaxed),
            self.rounds.load(Ordering::Relaxed),
            Duration::from_micros(self.micros.load(Ordering::Relaxed)),
        )
    }
}

/// What was applied between `earlier` and `later`.
fn since(later: AppliedCounts, earlier: AppliedCounts) -> AppliedCounts {
    AppliedCounts {
        entries: later.entries.saturating_sub(earlier.entries),
        commands: later.commands.saturating_sub(earlier.commands),
        offers: later.offers.saturating_sub(earlier.offers),
    }
}

/// Whether these entries look like writes coming one at a time to a node
/// not busy fanning them out.
fn one_at_a_time(applied: AppliedCounts) -> bool {
    applied.commands <= applied.entries.saturating_mul(SERIAL_COMMANDS_PER_ENTRY)
        && applied.offers <= applied.entries.saturating_mul(MAX_SUBSCRIPTIONS_PER_ENTRY)
}

/// Whether writes have been coming one at a time to a node not busy
/// fanning them out, judged from what was applied
/// (`fuddle_storage::Registry::applied_counts`).
#[derive(Debug)]
pub struct Regime {
    /// The counts when the current sample began.
    sample_start: AppliedCounts,
    /// The counts last seen, and when a new entry was first seen.
    last_seen: AppliedCounts,
    last_entry_at: Option<Instant>,
    /// The last sample's verdict.
    serial: bool,
    /// No spell before this: the last one found the core wanted by other
    /// threads.
    resting_until: Option<Instant>,
}

impl Regime {
    /// A regime that has seen `counts` so far, taken as serial until a
    /// sample says otherwise (a fresh node's first writes are few).
    pub fn new(counts: AppliedCounts) -> Regime {
        Regime {
            sample_start: counts,
            last_seen: counts,
            last_entry_at: None,
            serial: true,
            resting_until: None,
        }
    }

    /// Takes the current counts at `now`; whether a spell should start.
    ///
    /// Quick to stop, slow to start: entries that carry many commands or
    /// fan out widely end spinning as soon as they are seen, and only a
    /// whole sample of single writes starts it again.
    pub fn observe(&mut self, counts: AppliedCounts, now: Instant) -> bool {
        let new = since(counts, self.last_seen);
        self.last_seen = counts;
        if new.entries > 0 {
            self.last_entry_at = Some(now);
            if !one_at_a_time(new) {
                self.serial = false;
                self.sample_start = counts;
            }
        }
        let sample = since(counts, self.sample_start);
        if sample.entries >= SAMPLE_ENTRIES {
            self.serial = one_at_a_time(sample);
            self.sample_start = counts;
        }
        self.serial
            && self.resting_until.is_none_or(|until| now >= until)
            && self
                .last_entry_at
                .is_some_and(|at| now.saturating_duration_since(at) < RECENT)
    }

    /// No spell for [`REST`] from `now`: a spell found the core wanted by
    /// other threads (the node fanning out to many subscribers, say, on a
    /// machine it shares with them). Spells started afresh at each wake-up
    /// would each take the core from them again before giving up.
    pub fn rest(&mut self, now: Instant) {
        self.resting_until = Some(now + REST);
    }
}

/// One reading of the spinning thread.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// Which thread: CPU clocks of two threads do not compare.
    pub thread: ThreadId,
    /// The thread's CPU time.
    pub cpu: Duration,
    /// The thread's voluntary context switches: it blocked, in a task that
    /// ran (a log sync on the worker, say), which is work, not contention.
    pub blocked: i64,
    /// The wall clock.
    pub at: Instant,
}

impl Reading {
    fn now() -> Reading {
        Reading {
            thread: std::thread::current().id(),
            // Neither call can fail for the calling thread; zeros would
            // only make rounds look idle, ending the spell by its window.
            cpu: clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID)
                .map(Duration::from)
                .unwrap_or_default(),
            blocked: getrusage(UsageWho::RUSAGE_THREAD)
                .map(|u| u.voluntary_context_switches())
                .unwrap_or_default(),
            at: Instant::now(),
        }
    }
}

/// One spell of spinning: decides after each round whether to go on.
#[derive(Debug)]
pub struct Spell {
    window: Duration,
    started: Instant,
    /// When the last round in which other work ran ended.
    quiet_since: Instant,
    /// Time spent off the CPU in rounds in which nothing else ran.
    off: Duration,
    last: Reading,
}

/// What a spell's round was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Other tasks ran in it: the worker has work, so the next round keeps
    /// the core (giving it away would delay that work behind other
    /// threads' time slices).
    Worked,
    /// Only the spinner ran: the next round first offers the core to any
    /// thread waiting for it.
    Idle,
    /// The spell is over: no other work came for the window.
    Stop,
    /// The spell is over: other threads wanted this core. The next spells
    /// wait (see [`Regime::rest`]).
    Contended,
}

impl Spell {
    pub fn start(window: Duration, reading: Reading) -> Spell {
        Spell {
            window,
            started: reading.at,
            quiet_since: reading.at,
            off: Duration::ZERO,
            last: reading,
        }
    }

    /// Takes the reading after a round: what the round was, and whether
    /// to spin another.
    pub fn round(&mut self, now: Reading) -> Round {
        let wall = now.at.saturating_duration_since(self.last.at);
        let same_thread = now.thread == self.last.thread;
        let cpu = now.cpu.saturating_sub(self.last.cpu);
        let blocked = now.blocked != self.last.blocked;
        self.last = now;
        // On another thread the clocks do not compare; count the round as
        // work, which only lengthens the spell by one window.
        let worked = !same_thread || cpu > ROUND_CPU || blocked;
        if worked {
            self.quiet_since = now.at;
        } else {
            self.off += wall.saturating_sub(cpu);
        }
        let spun = now.at.saturating_duration_since(self.started);
        let contended = spun > CONTENDED_AFTER && self.off * 2 > spun;
        let quiet_for = now.at.saturating_duration_since(self.quiet_since);
        if contended {
            Round::Contended
        } else if quiet_for > self.window {
            Round::Stop
        } else if worked {
            Round::Worked
        } else {
            Round::Idle
        }
    }
}

/// Lets the tasks already queued on this worker run before the caller
/// goes on: a task that wakes itself while polled is queued behind them
/// (where a yield's deferred wake-up is put ahead of the tasks the
/// driver's poll has just woken).
async fn behind_queued() {
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if woken {
            Poll::Ready(())
        } else {
            woken = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Spins on the current runtime, whose one worker `trigger` was installed
/// on, whenever that worker wakes while writes come one at a time, until
/// `shutdown`. `counts` gives what was applied so far; `stats` counts
/// what it did.
pub async fn run(
    trigger: Trigger,
    window: Duration,
    counts: impl Fn() -> AppliedCounts,
    stats: Arc<SpinStats>,
    shutdown: CancellationToken,
) {
    let mut regime = Regime::new(counts());
    loop {
        tokio::select! {
            _ = trigger.0.notify.notified() => {}
            _ = shutdown.cancelled() => return,
        }
        let spin = regime.observe(counts(), Instant::now());
        trigger.arm(spin);
        if !spin {
            continue;
        }
        let start = Reading::now();
        let mut spell = Spell::start(window, start);
        stats.spells.fetch_add(1, Ordering::Relaxed);
        while !shutdown.is_cancelled() {
            stats.rounds.fetch_add(1, Ordering::Relaxed);
            // The I/O, timers and tasks woken from other threads, then
            // whatever that woke.
            tokio::task::yield_now().await;
            behind_queued().await;
            let reading = Reading::now();
            // Checked every round: rounds that only look busy (slowed by
            // a tracer, say) must not keep a spell going on an idle node.
            if !regime.observe(counts(), reading.at) {
                break;
            }
            match spell.round(reading) {
                Round::Worked => {}
                // Another thread waiting for this core gets it first.
                Round::Idle => std::thread::yield_now(),
                Round::Stop => break,
                Round::Contended => {
                    regime.rest(reading.at);
                    break;
                }
            }
        }
        let spun = start.at.elapsed().as_micros();
        stats
            .micros
            .fetch_add(u64::try_from(spun).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: Instant, cpu_us: u64) -> Reading {
        Reading {
            thread: std::thread::current().id(),
            cpu: Duration::from_micros(cpu_us),
            blocked: 0,
            at,
        }
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Entries and commands applied, nobody subscribed.
    fn c(entries: u64, commands: u64) -> AppliedCounts {
        AppliedCounts {
            entries,
            commands,
            offers: 0,
        }
    }

    /// Idle rounds of 2 us (all of it on the CPU) from `from` until
    /// `until`, or until the spell ends; when it ended, if it did.
    fn idle_rounds(
        spell: &mut Spell,
        t0: Instant,
        from: u64,
        until: u64,
        cpu: &mut u64,
    ) -> Option<u64> {
        let mut at = from;
        while at < until {
            at += 2;
            *cpu += 2;
            match spell.round(reading(t0 + us(at), *cpu)) {
                Round::Idle => {}
                Round::Worked => panic!("an idle round counted as work"),
                Round::Stop | Round::Contended => return Some(at),
            }
        }
        None
    }

    #[test]
    fn a_spell_lasts_its_window_after_the_last_work() {
        let t0 = Instant::now();
        let mut cpu = 0;
        let mut spell = Spell::start(us(100), reading(t0, 0));
        assert_eq!(idle_rounds(&mut spell, t0, 0, 90, &mut cpu), None);
        // Other work ran in this round (30 us of CPU): the window starts
        // again from its end.
        cpu += 30;
        assert_eq!(spell.round(reading(t0 + us(120), cpu)), Round::Worked);
        assert_eq!(idle_rounds(&mut spell, t0, 120, 400, &mut cpu), Some(222));
    }

    #[test]
    fn a_spell_ends_when_other_threads_want_the_core() {
        let t0 = Instant::now();
        let mut spell = Spell::start(us(1000), reading(t0, 0));
        // Each round 2 us on the CPU and 20 us waiting for it.
        let mut ended_at = None;
        for round in 1..=100u64 {
            if spell.round(reading(t0 + us(22 * round), 2 * round)) == Round::Contended {
                ended_at = Some(round);
                break;
            }
        }
        // It ends once the spell is past CONTENDED_AFTER, long before its
        // window.
        assert_eq!(ended_at, Some(2));
    }

    #[test]
    fn a_spell_on_another_thread_counts_the_round_as_work() {
        let t0 = Instant::now();
        let mut spell = Spell::start(us(100), reading(t0, 0));
        let other = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let moved = Reading {
            thread: other,
            cpu: Duration::ZERO,
            blocked: 0,
            at: t0 + us(90),
        };
        assert_eq!(spell.round(moved), Round::Worked);
        // The window counts from the move, not from the start.
        let later = Reading {
            at: t0 + us(150),
            cpu: us(1),
            ..moved
        };
        assert_eq!(spell.round(later), Round::Idle);
    }

    #[test]
    fn a_round_that_blocked_is_work_not_contention() {
        let t0 = Instant::now();
        let mut spell = Spell::start(us(100), reading(t0, 0));
        // 200 us of wall time, 3 us on the CPU: a sync on the worker.
        let synced = Reading {
            blocked: 1,
            ..reading(t0 + us(200), 3)
        };
        assert_eq!(spell.round(synced), Round::Worked);
        assert_eq!(
            spell.round(Reading {
                at: t0 + us(202),
                cpu: us(5),
                ..synced
            }),
            Round::Idle
        );
    }

    /// The spinner on a real runtime of one worker: it spins while entries
    /// come one at a time, and stops, and stays stopped through wake-ups,
    /// once they stop.
    #[test]
    fn a_runtime_spins_while_writes_come_and_stops_when_they_stop() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(1).enable_all();
        let trigger = Trigger::install(&mut builder, 1, DEFAULT_WINDOW).unwrap();
        let rt = builder.build().unwrap();
        let entries = Arc::new(AtomicU64::new(0));
        let stats = Arc::new(SpinStats::default());
        let shutdown = CancellationToken::new();
        let counts = {
            let entries = entries.clone();
            move || {
                let n = entries.load(Ordering::Relaxed);
                c(n, n)
            }
        };
        let spinner = rt.spawn(run(
            trigger,
            DEFAULT_WINDOW,
            counts,
            stats.clone(),
            shutdown.clone(),
        ));
        let rounds = || stats.get().1;

        // An entry applied, then a task woken from outside the runtime, as
        // a proposal or an answer arrives from the other runtime.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rounds() == 0 {
            assert!(Instant::now() < deadline, "no spell while entries came");
            entries.fetch_add(1, Ordering::Relaxed);
            rt.spawn(async {});
            std::thread::sleep(Duration::from_millis(1));
        }

        // Entries stop: the rounds stop.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let before = rounds();
            std::thread::sleep(Duration::from_millis(50));
            if rounds() == before {
                break;
            }
            assert!(Instant::now() < deadline, "still spinning with no entries");
        }
        // Wake-ups without new entries start no spell.
        let idle = rounds();
        for _ in 0..20 {
            rt.spawn(async {});
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(rounds(), idle, "a spell began with no new entries");

        shutdown.cancel();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), spinner).await })
            .expect("the spinner ends on shutdown")
            .unwrap();
        assert!(stats.get().0 >= 1);
    }

    #[test]
    fn the_default_window_reads_the_same_on_the_command_line() {
        assert_eq!(
            humantime::parse_duration(DEFAULT_WINDOW_ARG).unwrap(),
            DEFAULT_WINDOW
        );
    }

    #[test]
    fn a_disarmed_trigger_tells_the_spinner_one_wake_up_in_so_many() {
        let trigger = Trigger(Arc::default());
        let told = |n: u64| {
            let mut count = 0;
            for _ in 0..n {
                trigger.unparked();
                // A stored permit is taken at once; none stored is pending.
                let notified = trigger.0.notify.notified();
                let mut notified = std::pin::pin!(notified);
                if notified.as_mut().enable() {
                    count += 1;
                }
            }
            count
        };
        assert_eq!(told(DISARMED_EVERY * 3), 3);
        trigger.arm(true);
        assert_eq!(told(10), 10);
    }

    #[test]
    fn a_trigger_is_installed_only_on_a_runtime_with_one_worker() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        assert!(Trigger::install(&mut builder, 2, DEFAULT_WINDOW).is_none());
        assert!(Trigger::install(&mut builder, 1, Duration::ZERO).is_none());
        assert!(Trigger::install(&mut builder, 1, DEFAULT_WINDOW).is_some());
    }

    #[test]
    fn the_regime_is_serial_for_single_command_entries_applied_recently() {
        let t0 = Instant::now();
        let mut regime = Regime::new(c(100, 100));
        // Nothing applied since it started: not recent.
        assert!(!regime.observe(c(100, 100), t0));
        assert!(regime.observe(c(101, 101), t0));
        assert!(regime.observe(c(101, 101), t0 + RECENT / 2));
        // Idle for longer than RECENT: no spell.
        assert!(!regime.observe(c(101, 101), t0 + RECENT * 2));
        assert!(regime.observe(c(120, 120), t0 + RECENT * 3));
    }

    #[test]
    fn the_regime_stops_at_the_first_wide_entry() {
        let t0 = Instant::now();
        let mut regime = Regime::new(c(0, 0));
        assert!(regime.observe(c(1, 1), t0));
        let wide = AppliedCounts {
            offers: 3_300,
            ..c(2, 2)
        };
        assert!(!regime.observe(wide, t0));
    }

    #[test]
    fn the_regime_is_not_serial_when_entries_fan_out_widely() {
        let t0 = Instant::now();
        let mut regime = Regime::new(c(0, 0));
        let wide = AppliedCounts {
            offers: 16 * 3_300,
            ..c(16, 16)
        };
        assert!(!regime.observe(wide, t0));
        let narrow = AppliedCounts {
            offers: wide.offers + 16 * 100,
            ..c(32, 32)
        };
        assert!(regime.observe(narrow, t0));
    }

    #[test]
    fn the_regime_rests_after_a_contended_spell() {
        let t0 = Instant::now();
        let mut regime = Regime::new(c(0, 0));
        assert!(regime.observe(c(1, 1), t0));
        regime.rest(t0);
        assert!(!regime.observe(c(2, 2), t0 + REST / 2));
        assert!(regime.observe(c(3, 3), t0 + REST));
    }

    #[test]
    fn the_regime_is_not_serial_when_entries_carry_many_commands() {
        let t0 = Instant::now();
        let mut regime = Regime::new(c(0, 0));
        // Ten entries of twenty commands: it stops at once, not after a
        // whole sample.
        assert!(!regime.observe(c(10, 200), t0));
        // Single commands again: only a whole sample of them (16 entries)
        // starts it.
        assert!(!regime.observe(c(20, 210), t0));
        assert!(!regime.observe(c(25, 215), t0));
        assert!(regime.observe(c(26, 216), t0));
    }
}
