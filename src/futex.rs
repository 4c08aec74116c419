//! Futex wait and wake on a 32-bit word, which may live in memory shared
//! with another process (so never `FUTEX_PRIVATE`): the ring's sleep and the
//! isolated transport's doorbell. Elsewhere than Linux, a yielding poll.

use std::sync::atomic::AtomicU32;
use std::time::Instant;

/// Sleeps while `*word == expected`, until woken or `deadline`.
#[cfg(target_os = "linux")]
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    let ts = libc::timespec {
        tv_sec: left.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(left.subsec_nanos() as i32),
    };
    // SAFETY: FUTEX_WAIT on a valid, aligned u32 in memory that outlives
    // the call, with a valid relative timeout. Not PRIVATE: the word may
    // be shared with another process.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

/// Wakes every sleeper on `word`.
#[cfg(target_os = "linux")]
pub(crate) fn wake(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned u32.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, deadline: Instant) {
    while word.load(std::sync::atomic::Ordering::Acquire) == expected && Instant::now() < deadline {
        std::thread::yield_now();
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn wake(_word: &AtomicU32) {}
