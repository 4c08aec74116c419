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
//!   is [`ARMED`], swaps it to [`RUNG`] and, if it was still armed, wakes
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
//! While a synchronous reader reads, the dispatcher sleeps on the word
//! expecting it [`QUIET`]. The last reader to leave may arm the word and the
//! worker ring it before that sleep begins: the wake-up then finds nobody
//! asleep. That is why a ring leaves the word [`RUNG`], not quiet: a sleep
//! that expects it quiet does not start, and the dispatcher looks again.
//! Before such a sleep the dispatcher turns a rung word quiet again
//! ([`Doorbell::settle`]) and looks once more, so an old ring does not keep
//! it from sleeping. (Before `RUNG`, the word went back to quiet and the
//! dispatcher slept until its one-second timeout with an answer waiting;
//! the loom model below found it.)
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

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::futex;
use crate::ring::{MmapRegion, Region};

/// The dispatcher wants a wake-up.
pub(super) const ARMED: u32 = 1;
/// Somebody is reading the ring, or the dispatcher is awake.
pub(super) const QUIET: u32 = 0;
/// Was armed, and a sender rang it (and woke the sleeper) since: unlike
/// [`QUIET`], a sleep that expects the word quiet does not start on it.
pub(super) const RUNG: u32 = 2;
/// Bytes of the doorbells' mapping (one page).
pub(super) const LEN: usize = 4096;
/// Where the worker's word is in the page.
const WORKER_OFFSET: usize = 64;

/// A doorbell word: `std`'s atomic in the shared mapping, or loom's in the
/// models below, so that they check the steps that ship.
pub(super) trait Word {
    fn load(&self, order: Ordering) -> u32;
    fn store(&self, v: u32, order: Ordering);
    fn swap(&self, v: u32, order: Ordering) -> u32;
    /// Replaces `old` by `new`; whether it did.
    fn replace(&self, old: u32, new: u32) -> bool;
    /// The fence of this word's kind of atomics.
    fn fence(order: Ordering);
}

impl Word for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }
    fn store(&self, v: u32, order: Ordering) {
        AtomicU32::store(self, v, order);
    }
    fn swap(&self, v: u32, order: Ordering) -> u32 {
        AtomicU32::swap(self, v, order)
    }
    fn replace(&self, old: u32, new: u32) -> bool {
        AtomicU32::compare_exchange(self, old, new, Ordering::SeqCst, Ordering::Relaxed).is_ok()
    }
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order);
    }
}

#[cfg(loom)]
impl Word for loom::sync::atomic::AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::load(self, order)
    }
    fn store(&self, v: u32, order: Ordering) {
        loom::sync::atomic::AtomicU32::store(self, v, order);
    }
    fn swap(&self, v: u32, order: Ordering) -> u32 {
        loom::sync::atomic::AtomicU32::swap(self, v, order)
    }
    fn replace(&self, old: u32, new: u32) -> bool {
        loom::sync::atomic::AtomicU32::compare_exchange(
            self,
            old,
            new,
            Ordering::SeqCst,
            Ordering::Relaxed,
        )
        .is_ok()
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order);
    }
}

/// The reader's arm ([`Doorbell::arm`]).
fn arm<W: Word>(word: &W) {
    word.swap(ARMED, Ordering::SeqCst);
    // SYNC POINT: orders the arm before the caller's next look at the ring;
    // pairs with the fence in `ring`.
    W::fence(Ordering::SeqCst);
}

/// A reader's disarm ([`Doorbell::disarm`]).
fn disarm<W: Word>(word: &W) {
    if word.load(Ordering::Relaxed) != QUIET {
        word.store(QUIET, Ordering::SeqCst);
    }
}

/// The sender's ring ([`Doorbell::ring`]): `true` when the sleeper must be
/// woken.
fn ring<W: Word>(word: &W) -> bool {
    // SYNC POINT: orders the frames' publication before the load below;
    // pairs with the fence in `arm`.
    W::fence(Ordering::SeqCst);
    word.load(Ordering::Relaxed) == ARMED && word.swap(RUNG, Ordering::AcqRel) == ARMED
}

/// The dispatcher's check before it sleeps while a reader reads
/// ([`Doorbell::settle`]).
fn settle<W: Word>(word: &W) -> bool {
    word.replace(RUNG, QUIET)
}

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
        arm(self.word());
    }

    /// Tells the worker not to wake the dispatcher (a synchronous reader is
    /// reading the ring). A word that is quiet already is not written (its
    /// cache line stays shared with the worker, which reads it after every
    /// frame).
    pub(super) fn disarm(&self) {
        disarm(self.word());
    }

    /// Before a sleep that expects the word [`QUIET`]: `true` when it was
    /// [`RUNG`] (now quiet again): a frame may have come since the caller
    /// last looked, and its wake-up may have gone before the sleep began,
    /// so the caller looks again instead of sleeping. (A sleep on a rung
    /// word would not start either; without this the caller would spin.)
    pub(super) fn settle(&self) -> bool {
        settle(self.word())
    }

    /// Sleeps while the word reads `expected`, until woken or `deadline`.
    pub(super) fn sleep(&self, expected: u32, deadline: Instant) {
        futex::wait(self.word(), expected, deadline);
    }

    /// The sender's side: after publishing frames (or, for the worker's
    /// word, marking a phase ready to poll), wakes the sleeper if it asked
    /// for it.
    pub(super) fn ring(&self) {
        if ring(self.word()) {
            futex::wake(self.word());
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
        assert_eq!((host.value(), worker.value()), (RUNG, ARMED));
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
        // Rung, then settled: quiet; settling a quiet word changes nothing.
        b.arm();
        b.ring();
        assert_eq!(b.value(), RUNG);
        assert!(b.settle());
        assert_eq!(b.value(), QUIET);
        assert!(!b.settle());
        assert_eq!(b.value(), QUIET);
    }

    #[test]
    fn ringing_an_armed_doorbell_wakes_its_sleeper_and_marks_it_rung() {
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
            assert_eq!(b.value(), RUNG);
            let slept = sleeper.join().expect("sleeper");
            assert!(
                slept < Duration::from_secs(60),
                "woken only after {slept:?}"
            );
        }
    }
}

/// Loom models of the whole protocol, over the steps that ship ([`arm`],
/// [`disarm`], [`ring`], [`settle`]) and the counts that decide who arms
/// ([`Watch`](super::watch::Watch)): a synchronous reader (`host::Help`),
/// the worker, the dispatcher (`host::dispatcher`, without its spins and
/// timeouts). `RUSTFLAGS="--cfg loom" cargo test --release --lib doorbell`.
/// The futex stand-in never times out (the real sleeps do, after a
/// second), and the main thread sleeps until every answer was read: a lost
/// wake-up leaves it and the dispatcher asleep, which loom reports as a
/// deadlock. A ring that leaves the word quiet instead of [`RUNG`], a
/// reader that leaves owing answers without arming, or a sender that does
/// not arm after a synchronous phase each make a model deadlock.
#[cfg(all(test, loom))]
mod loom_models {
    use loom::sync::atomic::AtomicU32 as LoomU32;
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    use super::super::watch::Watch;
    use super::*;
    use crate::ring::loom_model::Model;

    /// One worker incarnation, as the host and the worker share it.
    struct World {
        watch: Watch,
        /// The dispatcher's doorbell word.
        bell: LoomU32,
        /// The futex stand-in, for every word here.
        futex: Model,
        /// Requests sent (the host-to-worker ring; the worker sleeps on it).
        sent: LoomU32,
        /// Answers published (the worker-to-host ring).
        answers: LoomU32,
        /// Answers read; changed under `rx` (the readers' lock,
        /// `Worker::rx`), slept on by those waiting for a read.
        read: LoomU32,
        rx: Mutex<()>,
        /// Bumped (and woken) whenever an answer is published or read.
        news: LoomU32,
        /// 1: the dispatcher must stop; 2: it did.
        stop: LoomU32,
    }

    impl World {
        fn new() -> Self {
            Self {
                watch: Watch::default(),
                bell: LoomU32::new(QUIET),
                futex: Model::new(16),
                sent: LoomU32::new(0),
                answers: LoomU32::new(0),
                read: LoomU32::new(0),
                rx: Mutex::new(()),
                news: LoomU32::new(0),
                stop: LoomU32::new(0),
            }
        }

        /// A look at the ring (`Worker::drain`): takes every answer there.
        fn drain(&self) -> u32 {
            let _rx = self.rx.lock().unwrap();
            let read = self.read.load(Ordering::Relaxed);
            let n = self.answers.load(Ordering::Acquire);
            for _ in read..n {
                self.watch.answered();
            }
            if n > read {
                self.read.store(n, Ordering::SeqCst);
                self.futex.wake(&self.read);
                self.news.fetch_add(1, Ordering::SeqCst);
                self.futex.wake(&self.news);
            }
            n - read
        }

        /// Sleeps until `n` answers were read (by anyone).
        fn await_read(&self, n: u32) {
            loop {
                let r = self.read.load(Ordering::SeqCst);
                if r >= n {
                    return;
                }
                self.futex.wait(&self.read, r);
            }
        }

        /// `Worker::watch`.
        fn watch(&self) {
            if self.watch.take() {
                arm(&self.bell);
                self.drain();
            }
        }

        /// A request: counted, sent, then `Worker::sent_request`.
        fn send(&self) {
            self.watch.request();
            self.sent.fetch_add(1, Ordering::SeqCst);
            self.futex.wake(&self.sent);
            if self.watch.sent() {
                self.watch();
            }
        }

        /// A synchronous phase: `Help::begin`, the request, a look (the
        /// real reader looks for a while, then parks: it leaves before the
        /// answer) or a wait for its answer, `Help`'s drop.
        fn sync_phase(&self, until_answered: bool) {
            self.watch.enter();
            disarm(&self.bell);
            self.send();
            self.drain();
            // A reader reads the ring until its answer came: here it sleeps
            // until the worker publishes more, and looks.
            let mine = self.sent.load(Ordering::SeqCst);
            while until_answered {
                let news = self.news.load(Ordering::SeqCst);
                self.drain();
                if self.read.load(Ordering::SeqCst) >= mine {
                    break;
                }
                self.futex.wait(&self.news, news);
            }
            if self.watch.leave() {
                self.watch();
            }
        }
    }

    /// Answers `n` requests, ringing after each.
    fn worker(w: &World, n: u32) {
        for i in 1..=n {
            loop {
                let s = w.sent.load(Ordering::SeqCst);
                if s >= i {
                    break;
                }
                w.futex.wait(&w.sent, s);
            }
            // Stands for the frame word's Release store (and a reader's
            // spin seeing it).
            w.answers.store(i, Ordering::Release);
            w.news.fetch_add(1, Ordering::SeqCst);
            w.futex.wake(&w.news);
            if ring(&w.bell) {
                w.futex.wake(&w.bell);
            }
        }
    }

    fn dispatcher(w: &World) {
        loop {
            if w.stop.load(Ordering::SeqCst) == 1 {
                w.stop.store(2, Ordering::SeqCst);
                return;
            }
            // The real one spins and yields here.
            thread::yield_now();
            if w.drain() > 0 {
                continue;
            }
            if w.watch.read() {
                if !settle(&w.bell) {
                    w.futex.wait(&w.bell, QUIET);
                }
                continue;
            }
            arm(&w.bell);
            if w.drain() > 0 {
                continue;
            }
            w.futex.wait(&w.bell, ARMED);
        }
    }

    /// Runs `caller` against a worker answering `n` requests and a
    /// dispatcher; every answer must be read.
    fn model(n: u32, caller: fn(&World)) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(2);
        }
        b.check(move || {
            let w = Arc::new(World::new());
            let d = {
                let w = Arc::clone(&w);
                thread::spawn(move || dispatcher(&w))
            };
            let k = {
                let w = Arc::clone(&w);
                thread::spawn(move || worker(&w, n))
            };
            caller(&w);
            k.join().unwrap();
            // Nobody is left to read but the dispatcher.
            w.await_read(n);
            // Then stop it: it may be on its way to a sleep (and arm the
            // bell again), so wake it until it saw the stop.
            w.stop.store(1, Ordering::SeqCst);
            while w.stop.load(Ordering::SeqCst) != 2 {
                w.bell.store(RUNG + 1, Ordering::SeqCst);
                w.futex.wake(&w.bell);
                thread::yield_now();
            }
            d.join().unwrap();
        });
    }

    /// A synchronous reader that leaves before its answer came arms the
    /// doorbell, so the answer wakes the dispatcher.
    #[test]
    fn a_reader_that_leaves_early_hands_its_answer_to_the_dispatcher() {
        model(1, |w| w.sync_phase(false));
    }

    /// After a synchronous phase (the reader leaves owing nothing and does
    /// not arm), a request sent with nobody reading arms the doorbell.
    #[test]
    fn a_request_after_a_synchronous_phase_wakes_the_dispatcher() {
        model(2, |w| {
            w.sync_phase(true);
            w.send();
        });
    }
}
