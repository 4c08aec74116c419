//! Doorbells: words in a page of the worker's shared mapping that say
//! whether a side wants a futex wake-up for the next frame sent to it. The
//! host's word (offset 0) is for its dispatcher; the worker's (offset 64, its
//! own cache line) is for the worker's main thread, which the plugin's own
//! threads also ring when a phase they complete needs polling.
//!
//! The dispatcher is only needed when nobody else is reading the
//! worker-to-host ring. A thread that runs a phase synchronously reads that
//! ring itself while it waits (see `host::Help`), so the worker's answer
//! reaches it without a hop through the dispatcher; while at least one such
//! thread is reading, the doorbell is quiet and the worker wakes nobody.
//!
//! # Protocol
//!
//! - The worker, after publishing frames: a `SeqCst` fence, then if the word
//!   is [`ARMED`], swaps it to [`QUIET`] and, if it was still armed, wakes
//!   the word's futex ([`Doorbell::ring`]).
//! - A reader about to stop reading (the dispatcher before it sleeps, the
//!   last synchronous reader when it leaves) arms the word, then a `SeqCst`
//!   fence, then reads the ring once more ([`Doorbell::arm`]).
//!
//! This is the store-buffering pattern with fences on both sides: for any
//! frame and any arm, either the reader's last look sees the frame or the
//! worker's load after publishing it sees the arm (or a later value). A later
//! value is either a worker's own swap (which woke the dispatcher) or a
//! synchronous reader's disarm, and that reader arms and looks again when it
//! leaves. So a frame is never left in the ring with nobody awake to read it.
//!
//! A synchronous reader that leaves when the worker owes nothing (no phase
//! start or entry check unanswered) skips the arm: no frame can come. It
//! marks the worker *unwatched* instead, and whoever sends the next request
//! while no reader is present arms and looks (`host::Worker::sent_request`).
//! The leaving reader (mark, then read the owed count) and the sender (count
//! its request, then read the mark) pair in a second store-buffering pattern
//! (`SeqCst` on both sides): at least one of them arms. So back-to-back
//! synchronous phases never write the doorbell word, and the worker's load
//! of it after each frame stays a cache hit.
//!
//! The word is shared with an untrusted worker: whatever it writes there
//! costs the host at most a spurious wake-up or a wake-up that comes only
//! with the dispatcher's one-second timeout, never a wrong read; the stall
//! watchdog still counts the worker's frames.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::futex;
use crate::ring::{MmapRegion, Region};

/// The dispatcher wants a wake-up.
pub(super) const ARMED: u32 = 1;
/// Somebody is reading the ring, or the dispatcher is awake.
pub(super) const QUIET: u32 = 0;
/// Bytes of the doorbells' mapping (one page).
pub(super) const LEN: usize = 4096;
/// Where the worker's word is in the page.
const WORKER_OFFSET: usize = 64;

/// One doorbell word of a worker incarnation's doorbell page.
#[derive(Debug)]
pub(super) struct Doorbell {
    region: Arc<MmapRegion>,
    offset: usize,
}

impl Doorbell {
    /// The host's and the worker's doorbells in `region` (a new page reads
    /// [`QUIET`] in both).
    pub(super) fn pair(region: MmapRegion) -> Result<(Self, Self), String> {
        if region.len() < WORKER_OFFSET + 4 {
            return Err("doorbell mapping too small".into());
        }
        let region = Arc::new(region);
        Ok((
            Self {
                region: Arc::clone(&region),
                offset: 0,
            },
            Self {
                region,
                offset: WORKER_OFFSET,
            },
        ))
    }

    fn word(&self) -> &AtomicU32 {
        // SAFETY: the mapping is page-aligned and holds the word (checked in
        // `pair`; the offsets are multiples of 4), lives as long as `self`,
        // and both processes access these bytes only atomically.
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(self.offset).cast()) }
    }

    /// Asks for a wake-up with the next frame. The caller must read the ring
    /// once more afterwards (a frame may have come before the arm was seen).
    pub(super) fn arm(&self) {
        self.word().swap(ARMED, Ordering::SeqCst);
        // SYNC POINT: orders the arm before the caller's next look at the
        // ring; pairs with the fence in `ring`.
        fence(Ordering::SeqCst);
    }

    /// Tells the worker not to wake the dispatcher (a synchronous reader is
    /// reading the ring). A word that is quiet already is not written (its
    /// cache line stays shared with the worker, which reads it after every
    /// frame).
    pub(super) fn disarm(&self) {
        let word = self.word();
        if word.load(Ordering::Relaxed) != QUIET {
            word.store(QUIET, Ordering::SeqCst);
        }
    }

    /// Sleeps while the word reads `expected`, until woken or `deadline`.
    pub(super) fn sleep(&self, expected: u32, deadline: Instant) {
        futex::wait(self.word(), expected, deadline);
    }

    /// The sender's side: after publishing frames (or, for the worker's
    /// word, marking a phase ready to poll), wakes the sleeper if it asked
    /// for it.
    pub(super) fn ring(&self) {
        // SYNC POINT: orders the frames' publication before the load below;
        // pairs with the fence in `arm`.
        fence(Ordering::SeqCst);
        let word = self.word();
        if word.load(Ordering::Relaxed) == ARMED && word.swap(QUIET, Ordering::AcqRel) == ARMED {
            futex::wake(word);
        }
    }

    /// The word's value (tests).
    #[cfg(test)]
    pub(super) fn value(&self) -> u32 {
        self.word().load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    fn bell() -> Doorbell {
        Doorbell::pair(MmapRegion::anonymous(LEN).expect("mmap"))
            .expect("a page")
            .1
    }

    #[test]
    fn the_two_words_are_apart() {
        let (host, worker) = Doorbell::pair(MmapRegion::anonymous(LEN).expect("mmap")).unwrap();
        host.arm();
        assert_eq!((host.value(), worker.value()), (ARMED, QUIET));
        worker.arm();
        host.ring();
        assert_eq!((host.value(), worker.value()), (QUIET, ARMED));
    }

    #[test]
    fn a_new_doorbell_is_quiet_and_ringing_it_changes_nothing() {
        let b = bell();
        assert_eq!(b.value(), QUIET);
        b.ring();
        assert_eq!(b.value(), QUIET);
        b.arm();
        b.disarm();
        b.ring();
        assert_eq!(b.value(), QUIET);
    }

    #[test]
    fn ringing_an_armed_doorbell_wakes_its_sleeper_and_quiets_it() {
        let b = Arc::new(bell());
        for _ in 0..20 {
            b.arm();
            let sleeper = {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let start = Instant::now();
                    // A lost wake-up shows as a sleep to the deadline (the
                    // ring's swap alone does not end a futex wait). A sleeper
                    // that starts after the ring finds it quiet at once.
                    let deadline = start + Duration::from_secs(60);
                    while b.value() == ARMED {
                        if Instant::now() >= deadline {
                            break;
                        }
                        b.sleep(ARMED, deadline);
                    }
                    start.elapsed()
                })
            };
            std::thread::sleep(Duration::from_millis(1));
            b.ring();
            assert_eq!(b.value(), QUIET);
            let slept = sleeper.join().expect("sleeper");
            assert!(
                slept < Duration::from_secs(60),
                "woken only after {slept:?}"
            );
        }
    }
}
