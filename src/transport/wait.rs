//! How a driver waits for a plugin that did not end its phase inline.
//!
//! A phase that ends inside the host's call into the plugin is never waited
//! for: this module is not entered, no clock is read and no shared counter is
//! touched. A phase that goes pending (a Go plugin finishing on a goroutine, a
//! v2 plugin completing a detached call, a read in deferred mode) is waited
//! for in three steps, under the [`WaitPolicy::Adaptive`] default:
//!
//! 1. **Spin**, at most [`SPIN`], and only while most recent waits of this
//!    transport ended within that window (plus one wait in eight, to notice a
//!    plugin that became fast again). A plugin whose thread is running on
//!    another core answers in a microsecond or two: catching that answer
//!    keeps both threads hot, where a park would cost two wake-ups.
//! 2. **Yield** the CPU (`sched_yield`), at most [`YIELDS`] times and until
//!    twice the average latency has passed, and only while that average is
//!    under [`YIELD_WINDOW`]: on a busy core this runs another thread, often
//!    the plugin's own.
//! 3. **Park** (the session's condvar, or the thread's park) until the
//!    plugin's completion wakes it or the deadline passes. A park is never cut
//!    short by a timer: a lost wake-up shows as a missed deadline, not as a
//!    slow phase.
//!
//! The estimates are exponentially weighted (weight 1/8), kept per transport
//! with `Relaxed` atomics, and updated only by waits that went pending: the
//! average latency, and the share of waits that ended within the spin
//! window. A latency runs from the moment the driver starts waiting to the
//! moment the plugin signals; the plugin's side stamps that moment, so the
//! driver's own wake-up is not counted. When the plugin's threads need the
//! CPU (more runnable threads than cores, replies that must wake a blocked
//! plugin thread) its answers take longer than the spin window, the driver
//! stops spinning, and it soon stops yielding too.
//!
//! [`WaitPolicy::Spin`] keeps the earlier fixed spin, for comparison.
//!
//! The waiting itself is [`run_to_end`], the synchronous form of every
//! transport's phase future: it polls the future once with a no-op waker (a
//! phase that ends inside the call is done then, at no cost), and only when
//! that poll is pending polls again with this thread's waker and waits for
//! it to fire, as above. The waker stamps the moment the plugin's side woke
//! it, which is the end of the latency sample.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::PhaseOutcome;

/// The longest spin (taken only while recent waits mostly ended within it;
/// with a plugin thread running on another core a wait lasts 1-2 µs).
pub const SPIN: Duration = Duration::from_micros(8);
/// Above this average latency the driver does not yield: it parks at once.
pub const YIELD_WINDOW: Duration = Duration::from_micros(60);
/// The most yields in one wait.
pub const YIELDS: u32 = 64;
/// One wait in this many spins whatever the estimate.
const PROBE: u64 = 8;
/// 1.0 in the fixed-point share of hits.
const ONE: i64 = 1 << 16;

/// How a driver waits for a pending phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaitPolicy {
    /// Spin briefly, yield, park, from the observed latency (module docs).
    #[default]
    Adaptive,
    /// Spin for this long, whatever the plugin's latency, then park (the
    /// policy before the adaptive one, kept to compare against).
    Spin(Duration),
    /// A crossbeam channel's own receive: a spin of about a microsecond and
    /// [`BACKOFF_YIELDS`] yields, then park. The baseline's, which reproduces
    /// a host that blocks in its channel's receive.
    Backoff,
}

/// The yields of [`WaitPolicy::Backoff`] (crossbeam's `Backoff` yields four
/// times before it reports completion and the receiver blocks).
pub const BACKOFF_YIELDS: u32 = 4;

/// Nanoseconds since a process-wide epoch, never 0: a timestamp that fits
/// an atomic, with 0 left to mean "none".
pub(crate) fn now_ns() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    (EPOCH.elapsed().as_nanos() as u64).max(1)
}

/// The recent latency of pending phases, for one transport.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Average latency, ns (saturating).
    mean_ns: AtomicU32,
    /// Share of waits that ended within [`SPIN`], in 1/65536.
    hits: AtomicU32,
}

impl Latency {
    /// The average latency.
    pub(crate) fn estimate(&self) -> Duration {
        Duration::from_nanos(u64::from(self.mean_ns.load(Ordering::Relaxed)))
    }

    /// Whether most recent waits ended within the spin window.
    pub(crate) fn spin_pays(&self) -> bool {
        i64::from(self.hits.load(Ordering::Relaxed)) >= ONE / 2
    }

    /// Adds one observed latency. Concurrent updates may lose one another's
    /// sample, which an average tolerates.
    pub(crate) fn record(&self, sample_ns: u64) {
        let ewma = |a: &AtomicU32, x: i64| {
            let old = i64::from(a.load(Ordering::Relaxed));
            a.store((old + (x - old) / 8) as u32, Ordering::Relaxed);
        };
        ewma(&self.mean_ns, sample_ns.min(u64::from(u32::MAX)) as i64);
        let hit = sample_ns <= SPIN.as_nanos() as u64;
        ewma(&self.hits, if hit { ONE } else { 0 });
    }
}

/// The busy part of one wait: what is left of its spin and yields.
#[derive(Debug)]
pub(crate) struct Settle {
    /// When this wait started (`now_ns`).
    start_ns: u64,
    spin_until: Option<Instant>,
    yields: u32,
    yield_until: Instant,
}

impl Settle {
    /// Plans one wait that starts now.
    pub(crate) fn new(policy: WaitPolicy, latency: &Latency) -> Self {
        let start_ns = now_ns();
        let now = Instant::now();
        match policy {
            WaitPolicy::Spin(d) => Self {
                start_ns,
                spin_until: (!d.is_zero()).then(|| now + d),
                yields: 0,
                yield_until: now,
            },
            WaitPolicy::Backoff => Self {
                start_ns,
                spin_until: Some(now + Duration::from_micros(1)),
                yields: BACKOFF_YIELDS,
                yield_until: now + YIELD_WINDOW,
            },
            WaitPolicy::Adaptive => {
                let est = latency.estimate();
                // The clock's low bits pick the probes: no shared counter.
                let spin = latency.spin_pays() || start_ns.is_multiple_of(PROBE);
                Self {
                    start_ns,
                    spin_until: spin.then(|| now + SPIN),
                    yields: if est <= YIELD_WINDOW { YIELDS } else { 0 },
                    yield_until: now + (est * 2).min(YIELD_WINDOW),
                }
            }
        }
    }

    /// Whether nothing is left but to park.
    pub(crate) fn spent(&self) -> bool {
        self.spin_until.is_none() && self.yields == 0
    }

    /// Spins, then yields, until `ready` or the plan is spent; returns `ready()`.
    pub(crate) fn run(&mut self, ready: impl Fn() -> bool) -> bool {
        if let Some(until) = self.spin_until.take() {
            loop {
                for _ in 0..32 {
                    if ready() {
                        return true;
                    }
                    std::hint::spin_loop();
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
        while self.yields > 0 {
            if ready() {
                return true;
            }
            std::thread::yield_now();
            self.yields -= 1;
            if Instant::now() >= self.yield_until {
                self.yields = 0;
            }
        }
        ready()
    }

    /// Records this wait's latency: up to `signalled_ns` when the plugin
    /// stamped it, else up to now.
    pub(crate) fn record(&self, latency: &Latency, signalled_ns: u64) {
        let end = if signalled_ns != 0 {
            signalled_ns
        } else {
            now_ns()
        };
        latency.record(end.saturating_sub(self.start_ns));
    }
}

/// What the synchronous wrapper needs to know of a pending phase future.
pub(crate) trait PhaseProgress {
    /// `Some(traffic)` once the phase is in WebSocket mode, where `traffic`
    /// counts the messages that went either way: the phase then lasts as long
    /// as the connection, its timeout is an idle timeout re-armed by traffic,
    /// and its client is polled about every millisecond.
    fn websocket(&self) -> Option<u64>;
}

/// A waker that unparks one thread and stamps when it was woken.
#[derive(Debug)]
struct ThreadWaker {
    thread: Thread,
    /// `now_ns` of the last wake not yet seen by the waiting thread; 0 for none.
    woken_ns: AtomicU64,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only a pending phase gets here: an inline one reads no clock.
        // SYNC POINT: pairs with the Acquire loads of the waiting thread's
        // spin and park loop (a hint only: the phase's own state is
        // synchronized by its transport's lock or atomics).
        self.woken_ns.store(now_ns(), Ordering::Release);
        self.thread.unpark();
    }
}

thread_local! {
    /// This thread's waker, made once (registering the same waker again
    /// clones nothing).
    static THREAD_WAKER: (Arc<ThreadWaker>, Waker) = {
        let w = Arc::new(ThreadWaker {
            thread: std::thread::current(),
            woken_ns: AtomicU64::new(0),
        });
        (Arc::clone(&w), Waker::from(w))
    };
}

/// Runs a phase future to its end on this thread, or to `timeout` (then the
/// future is dropped, which cancels the phase, and the outcome is `Timeout`).
///
/// The first poll uses a no-op waker: a phase that ends inside the call
/// returns here without touching the thread's waker, a clock or a counter.
#[inline(always)]
pub(crate) fn run_to_end<F>(
    mut fut: F,
    policy: WaitPolicy,
    latency: &Latency,
    timeout: Duration,
) -> PhaseOutcome
where
    F: Future<Output = PhaseOutcome> + PhaseProgress + Unpin,
{
    match Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(o) => o,
        Poll::Pending => run_started(fut, policy, latency, timeout),
    }
}

/// The rest of [`run_to_end`], for a phase future whose first poll (or the
/// same work done by its transport directly) left it pending: polls it with
/// this thread's waker and waits as the module docs say.
#[cold]
#[inline(never)]
pub(crate) fn run_started<F>(
    fut: F,
    policy: WaitPolicy,
    latency: &Latency,
    timeout: Duration,
) -> PhaseOutcome
where
    F: Future<Output = PhaseOutcome> + PhaseProgress + Unpin,
{
    // Two reference counts taken on the pending path only; a new waker
    // during thread teardown (a phase run from a thread-local's destructor).
    let (tw, waker) = THREAD_WAKER
        .try_with(|(tw, waker)| (Arc::clone(tw), waker.clone()))
        .unwrap_or_else(|_| {
            let w = Arc::new(ThreadWaker {
                thread: std::thread::current(),
                woken_ns: AtomicU64::new(0),
            });
            (Arc::clone(&w), Waker::from(w))
        });
    wait_with(fut, &tw, &waker, policy, latency, timeout)
}

fn wait_with<F>(
    mut fut: F,
    tw: &ThreadWaker,
    waker: &Waker,
    policy: WaitPolicy,
    latency: &Latency,
    timeout: Duration,
) -> PhaseOutcome
where
    F: Future<Output = PhaseOutcome> + PhaseProgress + Unpin,
{
    let mut cx = Context::from_waker(waker);
    let mut deadline = Instant::now() + timeout;
    let mut traffic = None;
    let mut settle = Settle::new(policy, latency);
    // A stale wake from an earlier phase only costs one extra poll.
    tw.woken_ns.store(0, Ordering::Relaxed);
    // SYNC POINT: as in `ThreadWaker::wake_by_ref`.
    let woken = || tw.woken_ns.load(Ordering::Acquire) != 0;
    loop {
        // Taken before the poll, so that a wake during the poll is seen after it.
        let signalled = tw.woken_ns.swap(0, Ordering::Acquire);
        let ready = Pin::new(&mut fut).poll(&mut cx);
        let websocket = fut.websocket();
        if let Poll::Ready(o) = ready {
            // A WebSocket phase lasts as long as the connection: not a latency.
            if websocket.is_none() {
                settle.record(latency, signalled);
            }
            return o;
        }
        if let Some(t) = websocket {
            if traffic != Some(t) {
                // An idle timeout, re-armed by traffic in either direction.
                traffic = Some(t);
                deadline = Instant::now() + timeout;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(fut);
                return PhaseOutcome::Timeout;
            }
            // Nothing wakes us when the client sends: poll it every millisecond.
            std::thread::park_timeout(Duration::from_millis(1).min(deadline - now));
            continue;
        }
        if signalled != 0 {
            // Woken for something other than the end (a deferred read): the
            // plugin has to answer again, so a new wait starts.
            settle.record(latency, signalled);
            settle = Settle::new(policy, latency);
        }
        // Spin and yield (only while the recent latency says it pays).
        if !settle.spent() && settle.run(woken) {
            continue;
        }
        // Park until the waker fires or the deadline passes; never on a
        // shorter timer, so a lost wake-up shows as a missed deadline.
        loop {
            if woken() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(fut);
                return PhaseOutcome::Timeout;
            }
            std::thread::park_timeout(deadline - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimates_follow_the_samples() {
        let l = Latency::default();
        for _ in 0..64 {
            l.record(100_000);
        }
        assert!(l.estimate() > YIELD_WINDOW, "{:?}", l.estimate());
        assert!(!l.spin_pays());
        // A slow plugin: park at once, but for the one probe in eight.
        let plans: Vec<Settle> = (0..64)
            .map(|_| Settle::new(WaitPolicy::Adaptive, &l))
            .collect();
        assert!(plans.iter().all(|s| s.yields == 0));
        assert!(plans
            .iter()
            .all(|s| s.spent() || s.start_ns.is_multiple_of(PROBE)));
        for _ in 0..64 {
            l.record(500);
        }
        assert!(l.spin_pays());
        assert!(l.estimate() < SPIN, "{:?}", l.estimate());
        // A fast plugin again: spin, then yield.
        let s = Settle::new(WaitPolicy::Adaptive, &l);
        assert!(s.spin_until.is_some() && s.yields == YIELDS);
    }

    #[test]
    fn a_wait_ends_when_ready_or_when_spent() {
        let l = Latency::default();
        let mut s = Settle::new(WaitPolicy::Adaptive, &l);
        assert!(s.run(|| true));
        let mut s = Settle::new(WaitPolicy::Adaptive, &l);
        assert!(!s.run(|| false));
        assert!(s.spent());
        let mut s = Settle::new(WaitPolicy::Spin(Duration::from_micros(1)), &l);
        assert!(!s.spent());
        assert!(!s.run(|| false));
        assert!(s.spent());
        assert!(Settle::new(WaitPolicy::Spin(Duration::ZERO), &l).spent());
    }
}
