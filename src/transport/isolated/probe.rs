//! Cycle counters around the steps of an isolated phase, to see where its
//! time goes. Compiled in only with `RUSTFLAGS="--cfg nylon_probe"` on
//! x86-64 (elsewhere, and by default, every call is empty and optimized
//! away):
//!
//! ```sh
//! RUSTFLAGS="--cfg nylon_probe" cargo run --release --example profile_reads -- request_isolated fast 200000
//! ```
//!
//! Each process (the host, each worker) prints its averages to stderr every
//! 200,000 phases, in cycles of the time-stamp counter (its rate is the
//! CPU's base clock). The counters cost cycles themselves: compare their
//! shares, and time the request without them.

#[cfg(all(nylon_probe, target_arch = "x86_64"))]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};

    static SUMS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];
    static PHASES: AtomicU64 = AtomicU64::new(0);

    #[inline(always)]
    pub(crate) fn now() -> u64 {
        // SAFETY: `rdtsc` has no preconditions on x86-64.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    pub(crate) fn add(step: usize, from: u64, to: u64) {
        SUMS[step].fetch_add(to.saturating_sub(from), Ordering::Relaxed);
    }

    pub(crate) fn phase_done(who: &str, steps: &[&str]) {
        let n = PHASES.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(200_000) {
            return;
        }
        let avg: Vec<String> = steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s} {}", SUMS[i].load(Ordering::Relaxed) / n))
            .collect();
        eprintln!(
            "nylon probe {who} (cycles per phase, {n} phases): {}",
            avg.join(", ")
        );
    }
}

#[cfg(not(all(nylon_probe, target_arch = "x86_64")))]
mod imp {
    #[inline(always)]
    pub(crate) fn now() -> u64 {
        0
    }

    #[inline(always)]
    pub(crate) fn add(_step: usize, _from: u64, _to: u64) {}

    #[inline(always)]
    pub(crate) fn phase_done(_who: &str, _steps: &[&str]) {}
}

pub(crate) use imp::{add, now, phase_done};

/// The host's steps (`Isolated::run_phase`).
pub(crate) const HOST: &[&str] = &["start", "wait", "apply"];
/// The worker's steps (`worker::serve`).
pub(crate) const WORKER: &[&str] = &["take", "prepare", "task", "poll", "answer", "after"];
