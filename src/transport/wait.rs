//! How a driver waits for a plugin that did not end its phase inline.
//!
//! A phase that ends inside the host's call into the plugin is never waited
//! for: this module is not entered, no clock is read and no shared counter is
//! touched. A phase that goes pending (a Go plugin finishing on a goroutine, a
//! v2 plugin completing a detached call, a read in deferred mode) is waited
//! for in three steps, under the [`WaitPolicy::Adaptive`] default:
//!
//! 1. **Spin** for at most [`SPIN`], and only when the recent latency of
//!    pending phases says the plugin is likely done by then.
//! 2. **Yield** the CPU (`sched_yield`) at most [`YIELDS`] times, while less
//!    than twice the estimate has passed, and only when the estimate is under
//!    [`YIELD_WINDOW`]. On an idle core a yield returns at once, so this
//!    catches a completion a few microseconds away without a wake-up; on a
//!    busy core it runs another thread, often the plugin's own.
//! 3. **Park** (the session's condvar, or the thread's park) until the
//!    plugin's completion wakes it or the deadline passes. A park is never cut
//!    short by a timer: a lost wake-up shows as a missed deadline, not as a
//!    slow phase.
//!
//! The estimate is an exponentially weighted average (weight 1/8) of how long
//! the plugin took, from the moment the driver started waiting to the moment
//! the plugin signalled, kept per transport with `Relaxed` atomics and updated
//! only by waits that went pending. When the driver was parked, the plugin's
//! side stamps the time it signalled, so the estimate does not include the
//! driver's own wake-up: it measures the plugin, and a driver that parks today
//! spins again as soon as the plugin answers fast again. Under load the
//! estimate grows past the windows and drivers park at once, leaving the CPU
//! to the plugin's threads.
//!
//! [`WaitPolicy::Spin`] keeps the earlier fixed spin, for comparison.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// The longest spin before yielding or parking.
pub const SPIN: Duration = Duration::from_micros(2);
/// Above this estimated latency the driver does not yield: it parks at once.
pub const YIELD_WINDOW: Duration = Duration::from_micros(60);
/// The most yields before parking.
pub const YIELDS: u32 = 64;

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

/// Nanoseconds since a process-wide epoch: a timestamp that fits an atomic.
pub(crate) fn now_ns() -> u64 {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    // Never 0, so that 0 can mean "no stamp".
    (EPOCH.elapsed().as_nanos() as u64).max(1)
}

/// The recent latency of pending phases, for one transport.
#[derive(Debug, Default)]
pub(crate) struct Latency {
    /// Exponentially weighted average, ns (saturating at `u32::MAX`).
    ewma_ns: AtomicU32,
}

impl Latency {
    /// The current estimate.
    pub(crate) fn estimate(&self) -> Duration {
        Duration::from_nanos(u64::from(self.ewma_ns.load(Ordering::Relaxed)))
    }

    /// Adds one observed latency. Concurrent updates may lose one another's
    /// sample, which an average tolerates.
    pub(crate) fn record(&self, sample_ns: u64) {
        let sample = sample_ns.min(u64::from(u32::MAX)) as i64;
        let old = i64::from(self.ewma_ns.load(Ordering::Relaxed));
        let new = old + (sample - old) / 8;
        self.ewma_ns.store(new as u32, Ordering::Relaxed);
    }
}

/// The busy part of one wait: what is left of its spin and yields.
#[derive(Debug)]
pub(crate) struct Settle {
    /// When this wait started (`now_ns`).
    pub(crate) start_ns: u64,
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
                let yields = if est <= YIELD_WINDOW { YIELDS } else { 0 };
                Self {
                    start_ns,
                    spin_until: (est <= SPIN).then(|| now + SPIN),
                    yields,
                    yield_until: now + (est * 2).clamp(SPIN, YIELD_WINDOW),
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

    /// Records this wait's latency: to `signalled_ns` when the plugin stamped
    /// it (the driver was parked), else to now.
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
    fn the_estimate_follows_the_samples() {
        let l = Latency::default();
        for _ in 0..64 {
            l.record(100_000);
        }
        assert!(l.estimate() > YIELD_WINDOW, "{:?}", l.estimate());
        let s = Settle::new(WaitPolicy::Adaptive, &l);
        assert!(s.spent(), "a slow plugin: park at once");
        for _ in 0..64 {
            l.record(500);
        }
        assert!(l.estimate() <= SPIN, "{:?}", l.estimate());
        let s = Settle::new(WaitPolicy::Adaptive, &l);
        assert!(!s.spent(), "a fast plugin again: spin and yield");
    }

    #[test]
    fn a_fixed_spin_never_yields() {
        let mut s = Settle::new(WaitPolicy::Spin(Duration::from_micros(1)), &Latency::default());
        assert!(!s.spent());
        assert!(!s.run(|| false));
        assert!(s.spent());
        let mut s = Settle::new(WaitPolicy::Spin(Duration::ZERO), &Latency::default());
        assert!(s.spent());
        assert!(s.run(|| true));
    }
}
