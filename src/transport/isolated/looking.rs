//! Whether a thread that ran out of frames keeps looking for the next one.
//!
//! The worker's main thread and the host's dispatcher, once the ring is
//! empty, spin and yield for a window before they sleep on their doorbell: a
//! frame that comes within the window is read at once, without the futex
//! wake-up that a sleeper costs its sender (tens of µs on a VM whose idle vCPU
//! halted). That pays while frames come close together, as in back-to-back
//! phases. It does not pay on a proxy under moderate load, whose frames for
//! one worker come a hundred µs apart or more: nearly every look then ends
//! in the sleep anyway, after burning its whole window of CPU (twice per
//! phase: the worker's look and the dispatcher's).
//!
//! So a thread looks for the whole window only while most recent gaps between
//! running out of frames and the next frame ended within the window
//! (exponentially weighted, weight 1/8), and on one gap in [`PROBE`], to see
//! them come closer again; otherwise it sleeps after its short spin. A gap is
//! measured whether the thread looked or slept (a sleeper's includes its
//! wake-up), so the estimate follows the traffic either way.
//!
//! A look whose yields were slow (another thread kept the CPU for
//! [`CONTENDED`] or more) counts as a hit whatever its gap: on a saturated
//! machine the yields hand the CPU to the busy threads, so the look costs
//! them little, while frames come late because their senders wait for the
//! CPU too, and a sleeping reader would add a futex wake-up to every frame.
//!
//! Measured (`docs/isolation.md`, Limits): at 1,000 requests/s the proxy and
//! its workers spent less CPU per isolated v2 request than with the looks
//! always taken, and the saturating load test's req/s stayed where it was.

use std::time::{Duration, Instant};

/// One gap in this many is looked through whatever the estimate.
pub(super) const PROBE: u32 = 8;
/// A yield that kept the thread off its CPU this long ran another thread.
pub(super) const CONTENDED: Duration = Duration::from_micros(20);
/// 1.0 in the fixed-point share of hits.
const ONE: u32 = 1 << 16;

/// The share of recent gaps that ended within the window, for one thread.
#[derive(Debug)]
pub(super) struct Looking {
    /// In 1/65536.
    hits: u32,
    /// Gaps planned, for the probes.
    gaps: u32,
    /// A yield of the current look was slow (see [`Looking::yield_now`]).
    contended: bool,
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
        Self {
            hits: ONE,
            gaps: 0,
            contended: false,
        }
    }

    /// Whether to look through the window this time.
    pub(super) fn pays(&mut self) -> bool {
        self.gaps = self.gaps.wrapping_add(1);
        self.hits >= ONE / 2 || self.gaps.is_multiple_of(PROBE)
    }

    /// Yields the CPU once, as a look does between its looks, noting
    /// whether another thread kept it for [`CONTENDED`] or more.
    pub(super) fn yield_now(&mut self) {
        let t = Instant::now();
        std::thread::yield_now();
        if t.elapsed() >= CONTENDED {
            self.contended = true;
        }
    }

    /// Records one gap: a hit when it ended within `window`, or when a yield
    /// of its look was slow. Such a look cost little: other threads wanted
    /// the CPU (a saturated machine) and got it at each yield, and the
    /// frames come late because their senders wait for the CPU too, not
    /// because the traffic is sparse; sleeping instead would add a futex
    /// wake-up per frame to the busy senders.
    pub(super) fn record(&mut self, gap: Duration, window: Duration) {
        let contended = std::mem::take(&mut self.contended);
        let x = if gap <= window || contended { ONE } else { 0 };
        // x and hits are at most ONE, so the weighted sum fits.
        self.hits = (self.hits * 7 + x) / 8;
    }

    /// Records a gap that ended within the short spin (no clock was read).
    pub(super) fn hit(&mut self) {
        self.contended = false;
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
    fn long_gaps_whose_looks_were_crowded_out_keep_the_looks() {
        let mut l = Looking::new();
        for _ in 0..32 {
            l.contended = true;
            l.record(Duration::from_micros(200), W);
        }
        assert!((0..16).all(|_| l.pays()));
        // The mark lasts one gap.
        for _ in 0..32 {
            l.record(Duration::from_micros(200), W);
        }
        assert_eq!((0..64).filter(|_| l.pays()).count(), 64 / PROBE as usize);
    }

    #[test]
    fn a_single_long_gap_does_not_stop_them() {
        let mut l = Looking::new();
        l.record(Duration::from_secs(1), W);
        assert!((0..16).all(|_| l.pays()));
    }
}
