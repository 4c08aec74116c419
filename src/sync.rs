//! The atomics and thread hints the ring's protocol and the isolated
//! transport's doorbell protocol use: `std`'s, or `loom`'s under
//! `--cfg loom`, so the loom models in `ring` and in
//! `transport::isolated::doorbell` check the same code that ships.
#![forbid(unsafe_code)]

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// A hint inside a spin loop (under loom, a scheduling point).
#[inline]
pub(crate) fn spin_loop() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::hint::spin_loop();
}

/// Gives the CPU to another runnable thread.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(not(loom))]
    std::thread::yield_now();
    #[cfg(loom)]
    loom::thread::yield_now();
}
