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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

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
}

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
