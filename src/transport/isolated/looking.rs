//! Whether a thread that ran out of frames keeps looking for the next one.
//!
//! The worker's main thread and the host's dispatcher, once the ring is
//! empty, spin and yield for a window before they sleep on their doorbell: a
//! frame that comes within the window is read at once, without the futex
//! wake-up that a sleeper costs its sender (tens of µs on a VM whose idle vCPU
//! halted). That pays while frames come close together, as in back-to-back
//! phases. It does not pay on a loaded proxy whose frames for one worker come
//! a hundred µs apart: nearly every look then ends in the sleep anyway, and
//! the looking thread, always runnable, takes its share of CPU from the
//! threads doing the work (measured: a quarter of both cores under the load
//! test's 64 connections, spent in the looks of two workers and two
//! dispatchers).
//!
//! So a thread looks for the whole window only while most recent gaps between
//! running out of frames and the next frame ended within the window
//! (exponentially weighted, weight 1/8), and on one gap in [`PROBE`], to see
//! them come closer again; otherwise it sleeps after its short spin. A gap is
//! measured whether the thread looked or slept (a sleeper's includes its
//! wake-up), so the estimate follows the traffic either way.

use std::time::Duration;

/// One gap in this many is looked through whatever the estimate.
pub(super) const PROBE: u32 = 8;
/// 1.0 in the fixed-point share of hits.
const ONE: u32 = 1 << 16;

/// The share of recent gaps that ended within the window, for one thread.
#[derive(Debug)]
pub(super) struct Looking {
    /// In 1/65536.
    hits: u32,
    /// Gaps planned, for the probes.
    gaps: u32,
}

impl Default for Looking {
    fn default() -> Self {
        Self::new()
    }
}

impl Looking {
    /// Starts out looking (a fresh worker's first phases come back to back
    /// as often as not).
    pub(super) const fn new() -> Self {
        Self { hits: ONE, gaps: 0 }
    }

    /// Whether to look through the window this time.
    pub(super) fn pays(&mut self) -> bool {
        self.gaps = self.gaps.wrapping_add(1);
        self.hits >= ONE / 2 || self.gaps.is_multiple_of(PROBE)
    }

    /// Records one gap: a hit when it ended within `window`.
    pub(super) fn record(&mut self, gap: Duration, window: Duration) {
        let x = if gap <= window { ONE } else { 0 };
        // x and hits are at most ONE, so the weighted sum fits.
        self.hits = (self.hits * 7 + x) / 8;
    }

    /// Records a gap that ended within the short spin (no clock was read).
    pub(super) fn hit(&mut self) {
        self.hits = (self.hits * 7 + ONE) / 8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_micros(50);

    #[test]
    fn long_gaps_stop_the_looks_but_for_probes() {
        let mut l = Looking::new();
        for _ in 0..32 {
            assert!(l.pays() || l.hits < ONE / 2);
            l.record(Duration::from_micros(200), W);
        }
        let looked = (0..64).filter(|_| l.pays()).count();
        assert_eq!(looked, 64 / PROBE as usize);
    }

    #[test]
    fn short_gaps_bring_the_looks_back() {
        let mut l = Looking::new();
        for _ in 0..32 {
            l.record(Duration::from_micros(200), W);
        }
        for _ in 0..8 {
            l.record(Duration::from_micros(3), W);
        }
        l.hit();
        assert!((0..16).all(|_| l.pays()));
    }

    #[test]
    fn a_single_long_gap_does_not_stop_them() {
        let mut l = Looking::new();
        l.record(Duration::from_secs(1), W);
        assert!((0..16).all(|_| l.pays()));
    }
}
