//! A single-producer single-consumer ring of frames over a shared byte region.
//!
//! The same algorithm runs in one process over heap memory ([`HeapRegion`],
//! which Miri can check) and between processes over a shared mapping
//! ([`MmapRegion`]: anonymous, a file, or a memfd).
//!
//! # Memory layout
//!
//! ```text
//! 0       8        12       16         24            128          256
//! +-------+--------+--------+----------+-------------+------------+---------------
//! | magic |version |layout  | capacity |  reserved   | head (pad) | data: capacity
//! | u64   | u32    | u32    | u64      |             | u32        | bytes of frames
//! +-------+--------+--------+----------+-------------+------------+---------------
//! ```
//!
//! The region and its data area are 128-byte aligned; `head` has a 128-byte
//! line to itself (two cache lines: adjacent-line prefetch cannot pair it with
//! the header or the data). The capacity is a power of two, so a position
//! becomes an offset with a mask.
//!
//! # Frames and publication
//!
//! A frame is a 16-byte header and its payload, padded to 16 bytes. The
//! header's first `u32` is the frame's **word**: `0` (empty), `1` (the
//! consumer sleeps here), or `PUBLISHED | len`, or `PUBLISHED | PAD | len`
//! for a padding frame that fills the data area up to its end (a frame never
//! wraps). Then come session, method and flags.
//!
//! The producer writes a frame's payload and header, then its word, last,
//! with Release; the consumer loads the word at its position with Acquire.
//! So the consumer reads one cache line per small frame and never a shared
//! index. A batch of frames is published with one Release: every word but the
//! first is stored first, the first one last. Before that Release the producer
//! also clears the word just past the last frame, so the consumer never takes
//! a stale word from an earlier lap for a new frame.
//!
//! `head` is the consumer's position (31 bits, wrapping), stored when it hands
//! bytes back; the producer reads it only when its cached copy says the ring
//! is full. The producer keeps its own position to itself.
//!
//! # Trust
//!
//! The peer is untrusted. Each side keeps its own copy of its own position and
//! of the capacity, and validates everything it reads from the region: every
//! frame word (a known state, a length that stays inside the data area, a
//! padding frame that reaches exactly its end) and the consumer's `head` (it
//! only moves forward, never past what was published). A violation is
//! [`RingError::Corrupt`]; nothing is read out of bounds.
//!
//! # Waiting
//!
//! A side that finds the ring empty (or full) spins a little, then yields,
//! then sleeps on a futex; the clock is read only right before sleeping, and
//! a sleeping side costs no CPU. The sleeper marks the very word the other
//! side will change next, with a compare-and-swap: the consumer sets the
//! empty frame word to `SLEEP`, the producer sets the `SLEEPING` bit in
//! `head`. The other side changes that word with a swap and wakes the sleeper
//! when the old value carried the mark. Both are read-modify-writes of one
//! word, so one of them sees the other: no wake-up is lost, without a SeqCst
//! fence on the hot path. The loom models at the bottom of this file check it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(not(loom))]
use crate::futex;
use crate::sync::{spin_loop, yield_now, AtomicU32, Ordering};

mod heap;
mod mmap;

pub use heap::HeapRegion;
pub use mmap::MmapRegion;

/// Identifies a nylon ring region ("NYLNRING").
pub const MAGIC: u64 = u64::from_le_bytes(*b"NYLNRING");
/// The ring layout version.
pub const VERSION: u32 = 2;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 16;
/// The largest capacity (positions in `head` are 31 bits).
pub const MAX_CAPACITY: usize = 1 << 30;
/// The alignment a region needs.
pub const REGION_ALIGN: usize = 128;

/// Frame word: nothing published here yet.
const EMPTY: u32 = 0;
/// Frame word: nothing published, and the consumer sleeps on this word.
const SLEEP: u32 = 1;
/// Frame word: a published frame (the low bits are its payload length).
const PUBLISHED: u32 = 1 << 31;
/// Frame word: with `PUBLISHED`, a padding frame up to the end of the data.
const PAD: u32 = 1 << 30;
/// Frame word: the payload length.
const LEN_MASK: u32 = PAD - 1;
/// `head`: the consumer's position, modulo 2^31.
const POS_MASK: u32 = (1 << 31) - 1;
/// `head`: the producer sleeps, waiting for room.
const SLEEPING: u32 = 1 << 31;

/// Spin rounds before yielding: each side adapts its budget between these
/// bounds. A round is a load and a `PAUSE` (about 30-50 ns on the project's
/// AMD EPYC VM). Then a few yields, then sleep. Under loom, none: the models
/// go straight to the sleep handshake.
const SPIN_MAX: u32 = if cfg!(loom) { 0 } else { 128 };
const SPIN_MIN: u32 = if cfg!(loom) { 0 } else { 4 };
const YIELDS: u32 = if cfg!(loom) { 0 } else { 8 };

/// The next spin budget after a wait that ended after `rounds` failed
/// checks. A wait that ended while yielding means the peer needed this core
/// (it shares it): spin less. One that ended while spinning, or had to
/// sleep (the peer was away, and a longer spin lets both sides stay awake
/// instead of waking each other every message): spin more.
fn adapt(budget: u32, rounds: u32) -> u32 {
    if rounds == 0 {
        budget
    } else if rounds > budget && rounds <= budget + YIELDS {
        (budget / 2).max(SPIN_MIN)
    } else {
        (budget * 2).clamp(SPIN_MIN, SPIN_MAX)
    }
}

/// Memory a ring can live in.
///
/// # Safety
///
/// - `as_ptr()` is aligned to [`REGION_ALIGN`] (128) bytes, valid for reads
///   and writes of `len()` bytes, and stays so (same address) for the
///   region's lifetime.
/// - The bytes are initialised (zeroed on creation is fine).
pub unsafe trait Region: Send + Sync {
    /// The first byte.
    fn as_ptr(&self) -> *mut u8;
    /// The size in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Types that may be placed in shared memory: `#[repr(C)]`, no pointers, no
/// drop glue, valid for any bit pattern a peer may write.
///
/// # Safety
///
/// - The type is `#[repr(C)]` with a fixed layout and no padding that matters.
/// - Every bit pattern is a valid value.
/// - It holds offsets, never pointers.
pub unsafe trait ShmSafe: Sized {}

#[repr(C, align(128))]
struct Line<T>(T);

/// The region header. See the module's memory layout. Its fields are reached
/// by offset (atomically where shared); the struct fixes the layout.
#[repr(C, align(128))]
struct Header {
    magic: u64,
    version: u32,
    layout: u32,
    capacity: u64,
    _reserved: [u8; 104],
    head: Line<u32>,
}

// SAFETY: repr(C), only integers, offsets only.
unsafe impl ShmSafe for Header {}

/// The header of one frame, as the consumer validated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Session id.
    pub session: u32,
    /// Method id.
    pub method: u32,
    /// Flags (the ring does not interpret them).
    pub flags: u32,
}

/// One frame to push with [`Producer::try_push_many`].
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    /// Session id.
    pub session: u32,
    /// Method id.
    pub method: u32,
    /// Flags.
    pub flags: u32,
    /// The payload.
    pub payload: &'a [u8],
}

const HEADER: usize = std::mem::size_of::<Header>();
const HEAD_OFFSET: usize = std::mem::offset_of!(Header, head);
const _: () = {
    assert!(HEADER == 256);
    assert!(HEAD_OFFSET == 128);
    assert!(std::mem::offset_of!(Header, capacity) == 16);
    assert!(HEADER.is_multiple_of(REGION_ALIGN));
};

/// Bytes a region needs for a ring of `capacity` data bytes.
pub const fn region_size(capacity: usize) -> usize {
    HEADER + capacity
}

/// What went wrong with a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The region does not start with the ring magic.
    BadMagic,
    /// Another layout version.
    VersionMismatch {
        /// Found in the region.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The header size differs from this build's.
    LayoutMismatch {
        /// Found in the region.
        found: u32,
        /// This build's.
        expected: u32,
    },
    /// The capacity is not a power of two from 64 to [`MAX_CAPACITY`], or
    /// does not fit the region.
    BadCapacity(u64),
    /// The region is too small or misaligned.
    BadRegion,
    /// The ring has no room for the frame now.
    Full,
    /// The frame can never fit (more than half the capacity).
    TooLarge(usize),
    /// The peer wrote something that breaks the protocol.
    Corrupt(&'static str),
    /// The deadline passed while waiting.
    Timeout,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("not a ring region (bad magic)"),
            Self::VersionMismatch { found, expected } => {
                write!(f, "ring version {found}, expected {expected}")
            }
            Self::LayoutMismatch { found, expected } => {
                write!(f, "ring header is {found} bytes, expected {expected}")
            }
            Self::BadCapacity(c) => write!(f, "invalid ring capacity {c}"),
            Self::BadRegion => f.write_str("region too small or misaligned for a ring"),
            Self::Full => f.write_str("full ring"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes can never fit"),
            Self::Corrupt(what) => write!(f, "corrupt ring: {what}"),
            Self::Timeout => f.write_str("timed out waiting on the ring"),
        }
    }
}

impl std::error::Error for RingError {}

/// A ring region, created or opened and checked, not yet split into roles.
///
/// Each role is taken once per ring: the producer and the consumer start
/// from the position in `head`.
pub struct Ring<R: Region> {
    shared: Shared<R>,
}

impl<R: Region> fmt::Debug for Ring<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.shared.cap)
            .finish()
    }
}

fn check_region<R: Region>(region: &R) -> Result<(), RingError> {
    if region.len() < HEADER + 64 || !(region.as_ptr() as usize).is_multiple_of(REGION_ALIGN) {
        return Err(RingError::BadRegion);
    }
    Ok(())
}

fn valid_capacity(capacity: u64, region_len: usize) -> bool {
    capacity >= 64
        && capacity.is_power_of_two()
        && capacity <= MAX_CAPACITY as u64
        && capacity <= (region_len - HEADER) as u64
}

/// The magic, as an atomic (it is written last by `create`).
fn magic<R: Region>(region: &R) -> &std::sync::atomic::AtomicU64 {
    // SAFETY: offset 0 is 128-aligned and 8 bytes fit (check_region ran);
    // the region outlives the borrow. The magic is only accessed atomically
    // once a ring is created (test doors excepted, which run alone).
    unsafe { std::sync::atomic::AtomicU64::from_ptr(region.as_ptr().cast()) }
}

impl<R: Region> Ring<R> {
    /// Lays out a new ring of `capacity` data bytes in `region`.
    ///
    /// # Errors
    ///
    /// [`RingError::BadRegion`] or [`RingError::BadCapacity`].
    pub fn create(region: R, capacity: usize) -> Result<Self, RingError> {
        check_region(&region)?;
        if !valid_capacity(capacity as u64, region.len()) {
            return Err(RingError::BadCapacity(capacity as u64));
        }
        let base = region.as_ptr();
        // SAFETY: the region is valid, aligned and holds the header (checked
        // above); nobody else uses it before `create` returns.
        unsafe {
            base.add(std::mem::offset_of!(Header, version))
                .cast::<u32>()
                .write_volatile(VERSION);
            base.add(std::mem::offset_of!(Header, layout))
                .cast::<u32>()
                .write_volatile(HEADER as u32);
            base.add(std::mem::offset_of!(Header, capacity))
                .cast::<u64>()
                .write_volatile(capacity as u64);
        }
        let shared = Shared::new(Arc::new(region), capacity as u64);
        shared.head_word().store(0, Ordering::Relaxed);
        shared.commit_word(0).store(EMPTY, Ordering::Relaxed);
        // SYNC POINT: the magic is written last; an opener that acquires it
        // sees the whole header (Ring::open).
        magic(&*shared.region).store(MAGIC, std::sync::atomic::Ordering::Release);
        Ok(Self { shared })
    }

    /// Opens a ring another party created, checking magic, version, layout
    /// size and capacity.
    ///
    /// # Errors
    ///
    /// [`RingError::BadMagic`], [`RingError::VersionMismatch`],
    /// [`RingError::LayoutMismatch`], [`RingError::BadCapacity`] or
    /// [`RingError::BadRegion`].
    pub fn open(region: R) -> Result<Self, RingError> {
        check_region(&region)?;
        // SYNC POINT: acquires the header `create` released with the magic.
        let found = magic(&region).load(std::sync::atomic::Ordering::Acquire);
        let base = region.as_ptr();
        // SAFETY: valid, aligned, large enough (checked); each field is read
        // once.
        let (version, layout, capacity) = unsafe {
            (
                base.add(std::mem::offset_of!(Header, version))
                    .cast::<u32>()
                    .read_volatile(),
                base.add(std::mem::offset_of!(Header, layout))
                    .cast::<u32>()
                    .read_volatile(),
                base.add(std::mem::offset_of!(Header, capacity))
                    .cast::<u64>()
                    .read_volatile(),
            )
        };
        if found != MAGIC {
            return Err(RingError::BadMagic);
        }
        if version != VERSION {
            return Err(RingError::VersionMismatch {
                found: version,
                expected: VERSION,
            });
        }
        if layout != HEADER as u32 {
            return Err(RingError::LayoutMismatch {
                found: layout,
                expected: HEADER as u32,
            });
        }
        if !valid_capacity(capacity, region.len()) {
            return Err(RingError::BadCapacity(capacity));
        }
        Ok(Self {
            shared: Shared::new(Arc::new(region), capacity),
        })
    }

    /// The capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.shared.cap as usize
    }

    /// Splits the ring into its two roles (both in this process).
    #[must_use]
    pub fn split(self) -> (Producer<R>, Consumer<R>) {
        let p = Producer::new(self.shared.clone());
        let c = Consumer::new(self.shared);
        (p, c)
    }

    /// Takes the producer role (the consumer lives in another process).
    #[must_use]
    pub fn into_producer(self) -> Producer<R> {
        Producer::new(self.shared)
    }

    /// Takes the consumer role (the producer lives in another process).
    #[must_use]
    pub fn into_consumer(self) -> Consumer<R> {
        Consumer::new(self.shared)
    }
}

/// The region as both roles see it: the shared words and the data area.
struct Shared<R: Region> {
    region: Arc<R>,
    cap: u64,
    mask: u64,
    /// Under loom the shared words are loom atomics kept here, not in the
    /// region; the payload bytes stay in the region.
    #[cfg(loom)]
    model: Arc<loom_model::Model>,
}

impl<R: Region> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Self {
            region: Arc::clone(&self.region),
            cap: self.cap,
            mask: self.mask,
            #[cfg(loom)]
            model: Arc::clone(&self.model),
        }
    }
}

impl<R: Region> Shared<R> {
    fn new(region: Arc<R>, cap: u64) -> Self {
        Self {
            region,
            cap,
            mask: cap - 1,
            #[cfg(loom)]
            model: Arc::new(loom_model::Model::new(cap)),
        }
    }

    /// The first byte of the data area.
    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER < len (checked at create/open).
        unsafe { self.region.as_ptr().add(HEADER) }
    }

    /// `head`: the consumer's position and the producer's sleeping bit.
    #[cfg(not(loom))]
    fn head_word(&self) -> &AtomicU32 {
        // SAFETY: HEAD_OFFSET + 4 <= HEADER <= len, 128-aligned; the region
        // outlives the borrow; while the ring is in use these bytes are only
        // accessed atomically (the test doors run alone).
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(HEAD_OFFSET).cast()) }
    }

    #[cfg(loom)]
    fn head_word(&self) -> &AtomicU32 {
        &self.model.head
    }

    /// The word of the frame at data position `pos` (16-aligned, below the
    /// capacity).
    #[cfg(not(loom))]
    fn commit_word(&self, pos: u64) -> &AtomicU32 {
        debug_assert!(pos.is_multiple_of(16) && pos < self.cap);
        // SAFETY: pos < cap, so the 4 bytes are inside the data area, and
        // 4-aligned (the data area is 128-aligned, pos 16-aligned). The same
        // bytes may hold payload in another lap; those plain accesses are
        // ordered with the atomic ones by the protocol (a position is reused
        // only after the consumer handed it back through `head`).
        unsafe { AtomicU32::from_ptr(self.data().add(pos as usize).cast()) }
    }

    #[cfg(loom)]
    fn commit_word(&self, pos: u64) -> &AtomicU32 {
        &self.model.words[(pos / 16) as usize]
    }

    #[cfg(not(loom))]
    fn wait(&self, word: &AtomicU32, expected: u32, deadline: Instant) {
        futex::wait(word, expected, deadline);
    }

    #[cfg(loom)]
    fn wait(&self, word: &AtomicU32, expected: u32, _deadline: Instant) {
        // No timeout: a lost wake-up deadlocks the model, which loom reports.
        self.model.wait(word, expected);
    }

    #[cfg(not(loom))]
    fn wake(&self, word: &AtomicU32) {
        futex::wake(word);
    }

    #[cfg(loom)]
    fn wake(&self, word: &AtomicU32) {
        self.model.wake(word);
    }
}

/// When a wait gives up: a deadline, or a timeout whose deadline is taken
/// from the clock only when the wait is about to sleep (a wait that ends
/// while spinning never reads the clock).
#[derive(Clone, Copy, Debug)]
enum Until {
    At(Instant),
    After(Duration),
}

impl Until {
    fn deadline(&mut self) -> Instant {
        match *self {
            Self::At(t) => t,
            Self::After(d) => {
                let t = Instant::now() + d;
                *self = Self::At(t);
                t
            }
        }
    }
}

fn frame_size(len: u64) -> u64 {
    FRAME_HEADER as u64 + len.div_ceil(16) * 16
}

/// The producing half. `Send`, not `Sync`: one producer at a time.
pub struct Producer<R: Region> {
    shared: Shared<R>,
    /// End of the frames written so far.
    tail: u64,
    /// End of the frames published.
    published: u64,
    /// The consumer's position, as last read from `head`.
    head_cache: u64,
    /// The first written, unpublished frame: its position and word.
    pending: Option<(u64, u32)>,
    /// Spin rounds before yielding (adaptive).
    spin: u32,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl<R: Region> fmt::Debug for Producer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("head_cache", &self.head_cache)
            .finish()
    }
}

impl<R: Region> Producer<R> {
    fn new(shared: Shared<R>) -> Self {
        // SYNC POINT: acquires the consumer's last hand-back (Consumer::publish_head).
        let head = u64::from(shared.head_word().load(Ordering::Acquire) & POS_MASK);
        Self {
            shared,
            tail: head,
            published: head,
            head_cache: head,
            pending: None,
            spin: SPIN_MAX,
            _not_sync: PhantomData,
        }
    }

    /// Padding and frame size for a `len`-byte payload at the current tail.
    fn layout_for(&self, len: usize) -> Result<(u64, u64), RingError> {
        let cap = self.shared.cap;
        if len as u64 > cap / 2 || frame_size(len as u64) > cap / 2 {
            return Err(RingError::TooLarge(len));
        }
        let size = frame_size(len as u64);
        let contiguous = cap - (self.tail & self.shared.mask);
        let pad = if contiguous < size { contiguous } else { 0 };
        Ok((pad, size))
    }

    /// Whether `need` bytes past the tail are free, by the cached `head`.
    fn fits(&self, need: u64) -> bool {
        self.tail + need - self.head_cache <= self.shared.cap
    }

    /// Takes a `head` word read from the region, after checking it.
    fn absorb(&mut self, word: u32) -> Result<(), RingError> {
        let advanced = u64::from((word & POS_MASK).wrapping_sub(self.head_cache as u32) & POS_MASK);
        if advanced > self.published - self.head_cache {
            return Err(RingError::Corrupt("consumer index out of range"));
        }
        self.head_cache += advanced;
        Ok(())
    }

    fn has_room(&mut self, need: u64) -> Result<bool, RingError> {
        if self.fits(need) {
            return Ok(true);
        }
        // SYNC POINT: acquires the bytes the consumer handed back
        // (Consumer::publish_head's swap).
        let word = self.shared.head_word().load(Ordering::Acquire);
        self.absorb(word)?;
        Ok(self.fits(need))
    }

    /// Stages a frame word: the first one of a batch waits for `flush`,
    /// the others are stored now (the first one's Release publishes them).
    fn stage_word(&mut self, pos: u64, word: u32) {
        if self.pending.is_none() {
            debug_assert_eq!(pos, self.published & self.shared.mask);
            self.pending = Some((pos, word));
        } else {
            self.shared.commit_word(pos).store(word, Ordering::Relaxed);
        }
    }

    /// Reserves room for a `len`-byte frame (and the word after it), writing
    /// a padding frame first if the frame does not fit before the end.
    /// Returns the frame's position; `None` when the ring is full.
    fn reserve(&mut self, len: usize) -> Result<Option<u64>, RingError> {
        let (pad, size) = self.layout_for(len)?;
        if !self.has_room(pad + size + FRAME_HEADER as u64)? {
            return Ok(None);
        }
        if pad > 0 {
            let pos = self.tail & self.shared.mask;
            self.stage_word(pos, PUBLISHED | PAD | (pad - FRAME_HEADER as u64) as u32);
            self.tail += pad;
        }
        Ok(Some(self.tail & self.shared.mask))
    }

    /// Writes the rest of the header of the frame at `pos` and stages it.
    fn finish(&mut self, pos: u64, len: usize, session: u32, method: u32, flags: u32) {
        // SAFETY: reserve() made pos + frame_size(len) <= capacity; the
        // consumer does not read these bytes before the frame is published.
        unsafe {
            self.shared
                .data()
                .add(pos as usize + 4)
                .cast::<[u32; 3]>()
                .write_volatile([session, method, flags]);
        }
        self.stage_word(pos, PUBLISHED | len as u32);
        self.tail += frame_size(len as u64);
    }

    /// Publishes every frame written since the last flush.
    fn flush(&mut self) {
        let Some((pos, word)) = self.pending.take() else {
            return;
        };
        // The word after the last frame reads empty until the next flush
        // (room for it was reserved), so the consumer stops there.
        self.shared
            .commit_word(self.tail & self.shared.mask)
            .store(EMPTY, Ordering::Relaxed);
        let first = self.shared.commit_word(pos);
        // SYNC POINT: publishes the batch (payloads, headers, the later frames'
        // words and the cleared word after them) to the consumer's Acquire
        // load in Consumer::peek. A swap, not a store: the consumer may have
        // marked this empty word SLEEP (Consumer::wait's
        // compare-exchange); one of the two read-modify-writes sees the other.
        let old = first.swap(word, Ordering::Release);
        self.published = self.tail;
        if old == SLEEP {
            self.shared.wake(first);
        }
    }

    /// Appends one frame without waiting.
    ///
    /// # Errors
    ///
    /// [`RingError::Full`], [`RingError::TooLarge`], or
    /// [`RingError::Corrupt`] when the consumer's index is impossible.
    pub fn try_push(
        &mut self,
        session: u32,
        method: u32,
        flags: u32,
        payload: &[u8],
    ) -> Result<(), RingError> {
        let mut loan = self.try_loan(payload.len())?;
        loan.payload_mut().copy_from_slice(payload);
        loan.commit(session, method, flags);
        Ok(())
    }

    /// Appends as many of `frames` as fit, in order, and publishes them with
    /// one Release. Returns how many went in (0 when the ring is full).
    ///
    /// # Errors
    ///
    /// [`RingError::TooLarge`] when the first frame can never fit (a later
    /// one that can never fit ends the batch before it), or
    /// [`RingError::Corrupt`].
    pub fn try_push_many(&mut self, frames: &[Msg<'_>]) -> Result<usize, RingError> {
        let mut n = 0;
        for m in frames {
            let pos = match self.reserve(m.payload.len()) {
                Ok(Some(pos)) => pos,
                Ok(None) => break,
                Err(RingError::TooLarge(_)) if n > 0 => break,
                Err(e) => {
                    self.flush();
                    return Err(e);
                }
            };
            // SAFETY: reserve() made pos + 16 + len <= capacity; unpublished.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    m.payload.as_ptr(),
                    self.shared.data().add(pos as usize + FRAME_HEADER),
                    m.payload.len(),
                );
            }
            self.finish(pos, m.payload.len(), m.session, m.method, m.flags);
            n += 1;
        }
        self.flush();
        Ok(n)
    }

    /// As [`Producer::try_push_many`], waiting until `deadline` for room
    /// for at least the first frame.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_push_many`], and [`RingError::Timeout`].
    pub fn push_many_deadline(
        &mut self,
        frames: &[Msg<'_>],
        deadline: Instant,
    ) -> Result<usize, RingError> {
        self.push_many_until(frames, Until::At(deadline))
    }

    fn push_many_until(
        &mut self,
        frames: &[Msg<'_>],
        mut until: Until,
    ) -> Result<usize, RingError> {
        loop {
            let n = self.try_push_many(frames)?;
            if n > 0 || frames.is_empty() {
                return Ok(n);
            }
            until = self.wait_room(frames[0].payload.len(), until)?;
        }
    }

    /// As [`Producer::push_many_deadline`], with a timeout (the clock is read
    /// only if the ring stays full long enough to sleep).
    ///
    /// # Errors
    ///
    /// As [`Producer::push_many_deadline`].
    pub fn push_many_timeout(
        &mut self,
        frames: &[Msg<'_>],
        timeout: Duration,
    ) -> Result<usize, RingError> {
        self.push_many_until(frames, Until::After(timeout))
    }

    /// Appends one frame, waiting up to `timeout` for room (the clock is read
    /// only if the ring stays full long enough to sleep).
    ///
    /// # Errors
    ///
    /// As [`Producer::push_deadline`].
    pub fn push_timeout(
        &mut self,
        session: u32,
        method: u32,
        flags: u32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), RingError> {
        self.push_until(session, method, flags, payload, Until::After(timeout))
    }

    /// Appends one frame, waiting (spin, yield, then sleep) until `deadline`
    /// for room.
    ///
    /// # Errors
    ///
    /// As [`Producer::try_push`], with [`RingError::Timeout`] for `Full`.
    pub fn push_deadline(
        &mut self,
        session: u32,
        method: u32,
        flags: u32,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(), RingError> {
        self.push_until(session, method, flags, payload, Until::At(deadline))
    }

    fn push_until(
        &mut self,
        session: u32,
        method: u32,
        flags: u32,
        payload: &[u8],
        mut until: Until,
    ) -> Result<(), RingError> {
        loop {
            match self.try_push(session, method, flags, payload) {
                Err(RingError::Full) => until = self.wait_room(payload.len(), until)?,
                other => return other,
            }
        }
    }

    /// Waits until a `len`-byte frame fits: spin, yield, then sleep on
    /// `head` after setting its `SLEEPING` bit.
    /// Returns `until` with its deadline fixed if it slept.
    fn wait_room(&mut self, len: usize, mut until: Until) -> Result<Until, RingError> {
        self.flush();
        let mut round = 0u32;
        loop {
            let (pad, size) = self.layout_for(len)?;
            let need = pad + size + FRAME_HEADER as u64;
            if self.has_room(need)? {
                self.spin = adapt(self.spin, round);
                return Ok(until);
            }
            round += 1;
            if round <= self.spin {
                spin_loop();
                continue;
            }
            if round <= self.spin + YIELDS {
                yield_now();
                continue;
            }
            let deadline = until.deadline();
            if Instant::now() >= deadline {
                self.spin = adapt(self.spin, round);
                return Err(RingError::Timeout);
            }
            // SYNC POINT: as in has_room.
            let seen = self.shared.head_word().load(Ordering::Acquire);
            self.absorb(seen)?;
            if self.fits(need) {
                return Ok(until);
            }
            let word = self.shared.head_word();
            let asleep = seen | SLEEPING;
            // The mark goes into the word the consumer swaps when it hands
            // bytes back (Consumer::publish_head): if it swaps first, this
            // fails and we look again; if we mark first, its swap sees the
            // mark and wakes us.
            if seen & SLEEPING == 0
                && word
                    .compare_exchange(seen, asleep, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            self.shared.wait(word, asleep, deadline);
        }
    }

    /// Loans room for a `len`-byte payload to write in place (zero-copy).
    ///
    /// # Errors
    ///
    /// As [`Producer::try_push`].
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_, R>, RingError> {
        match self.reserve(len) {
            Ok(Some(pos)) => Ok(Loan {
                producer: self,
                pos,
                len,
            }),
            Ok(None) => {
                self.flush();
                Err(RingError::Full)
            }
            Err(e) => {
                self.flush();
                Err(e)
            }
        }
    }
}

/// Room in the ring being written; [`Loan::commit`] publishes it, dropping
/// it abandons it (nothing is published).
#[must_use = "a loan publishes nothing until committed"]
pub struct Loan<'p, R: Region> {
    producer: &'p mut Producer<R>,
    pos: u64,
    len: usize,
}

impl<R: Region> fmt::Debug for Loan<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan").field("len", &self.len).finish()
    }
}

impl<R: Region> Loan<'_, R> {
    /// The payload bytes to fill.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.pos as usize + FRAME_HEADER;
        debug_assert!(start + self.len <= self.producer.shared.cap as usize);
        // SAFETY: reserve() guaranteed start + len <= capacity, the consumer
        // does not read these bytes before they are published, and we hold
        // &mut producer.
        unsafe { std::slice::from_raw_parts_mut(self.producer.shared.data().add(start), self.len) }
    }

    /// Publishes the frame.
    pub fn commit(self, session: u32, method: u32, flags: u32) {
        self.producer
            .finish(self.pos, self.len, session, method, flags);
        self.producer.flush();
    }
}

/// The consuming half. `Send`, not `Sync`: one consumer at a time.
pub struct Consumer<R: Region> {
    shared: Shared<R>,
    /// Position of the next frame.
    head: u64,
    /// The position last stored in `head`.
    published: u64,
    /// Spin rounds before yielding (adaptive).
    spin: u32,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl<R: Region> fmt::Debug for Consumer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish()
    }
}

/// A frame read from the ring; its bytes go back to the producer when it is
/// dropped.
pub struct Frame<'c, R: Region> {
    consumer: &'c mut Consumer<R>,
    header: FrameHeader,
    pos: u64,
    size: u64,
}

impl<R: Region> fmt::Debug for Frame<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("header", &self.header)
            .finish()
    }
}

impl<R: Region> Frame<'_, R> {
    /// The frame's header (validated).
    pub fn header(&self) -> FrameHeader {
        self.header
    }

    /// The payload, inside the region. A peer that breaks the protocol may
    /// change these bytes while they are read: copy before trusting contents.
    pub fn payload(&self) -> &[u8] {
        // SAFETY: validated in peek: pos + 16 + len <= capacity, and the
        // producer does not rewrite a published frame until it is handed back.
        unsafe { self.consumer.payload_at(self.pos, self.header.len) }
    }
}

impl<R: Region> Drop for Frame<'_, R> {
    fn drop(&mut self) {
        self.consumer.head += self.size;
        self.consumer.publish_head();
    }
}

impl<R: Region> Consumer<R> {
    fn new(shared: Shared<R>) -> Self {
        let head = u64::from(shared.head_word().load(Ordering::Acquire) & POS_MASK);
        Self {
            shared,
            head,
            published: head,
            spin: SPIN_MAX,
            _not_sync: PhantomData,
        }
    }

    /// The payload of a validated frame.
    ///
    /// # Safety
    ///
    /// - `pos + 16 + len <= capacity` (checked by `peek`).
    unsafe fn payload_at(&self, pos: u64, len: u32) -> &[u8] {
        let start = pos as usize + FRAME_HEADER;
        debug_assert!(start + len as usize <= self.shared.cap as usize);
        // SAFETY: in bounds by the caller's contract; a published frame is
        // not rewritten until the consumer hands it back.
        unsafe { std::slice::from_raw_parts(self.shared.data().add(start), len as usize) }
    }

    /// Hands the bytes up to `head` back to the producer.
    fn publish_head(&mut self) {
        let word = self.shared.head_word();
        // SYNC POINT: releases the consumed bytes to the producer's Acquire
        // loads of `head` (Producer::has_room, Producer::wait_room). A swap,
        // not a store, so a producer that set SLEEPING in this word is seen.
        let old = word.swap((self.head as u32) & POS_MASK, Ordering::Release);
        self.published = self.head;
        if old & SLEEPING != 0 {
            self.shared.wake(word);
        }
    }

    /// The next frame's header, position and size, skipping padding frames;
    /// `None` when empty (bytes consumed but not yet handed back are handed
    /// back then).
    fn peek(&mut self) -> Result<Option<(FrameHeader, u64, u64)>, RingError> {
        loop {
            let cap = self.shared.cap;
            let pos = self.head & self.shared.mask;
            // SYNC POINT: acquires the batch the producer published with this
            // word (Producer::flush's swap) or, for a later frame of that
            // batch, with the batch's first word, which was acquired before.
            let word = self.shared.commit_word(pos).load(Ordering::Acquire);
            if word & PUBLISHED == 0 {
                if word != EMPTY && word != SLEEP {
                    return Err(RingError::Corrupt("bad frame word"));
                }
                if self.head != self.published {
                    self.publish_head();
                }
                return Ok(None);
            }
            let len = word & LEN_MASK;
            let room = cap - pos;
            if word & PAD != 0 {
                // Padding runs exactly to the end of the data area, and never
                // starts at 0 (a producer pads only a frame that does not fit
                // before the end, and every frame fits from 0): so skipping
                // it lands on 0 and a second padding frame there is refused,
                // and this loop runs at most twice.
                if pos == 0 || u64::from(len) + FRAME_HEADER as u64 != room {
                    return Err(RingError::Corrupt("bad padding frame"));
                }
                self.head += room;
                continue;
            }
            let size = frame_size(u64::from(len));
            if size > room {
                return Err(RingError::Corrupt(
                    "frame runs past the end of the data area",
                ));
            }
            // SAFETY: pos + 16 <= capacity (pos is 16-aligned, below the
            // capacity, a multiple of 16), 4-aligned; read once.
            let [session, method, flags] = unsafe {
                self.shared
                    .data()
                    .add(pos as usize + 4)
                    .cast::<[u32; 3]>()
                    .read_volatile()
            };
            let header = FrameHeader {
                len,
                session,
                method,
                flags,
            };
            return Ok(Some((header, pos, size)));
        }
    }

    /// Whether a frame is there to take, without taking it.
    ///
    /// # Errors
    ///
    /// [`RingError::Corrupt`] when the producer broke the protocol.
    pub fn has_frame(&mut self) -> Result<bool, RingError> {
        Ok(self.peek()?.is_some())
    }

    /// Takes the next frame without waiting; `Ok(None)` when empty.
    ///
    /// # Errors
    ///
    /// [`RingError::Corrupt`] when the producer broke the protocol; the ring
    /// is then unusable.
    pub fn try_pop(&mut self) -> Result<Option<Frame<'_, R>>, RingError> {
        Ok(self.peek()?.map(|(header, pos, size)| Frame {
            consumer: self,
            header,
            pos,
            size,
        }))
    }

    /// Takes up to `max` frames without waiting, calling `f` with each, and
    /// hands their bytes back to the producer once, at the end. Returns how
    /// many were taken.
    ///
    /// # Errors
    ///
    /// As [`Consumer::try_pop`] (frames taken before the error stay taken).
    pub fn try_pop_many(
        &mut self,
        max: usize,
        mut f: impl FnMut(FrameHeader, &[u8]),
    ) -> Result<usize, RingError> {
        let mut n = 0;
        let result = loop {
            if n == max {
                break Ok(n);
            }
            match self.peek() {
                Ok(Some((header, pos, size))) => {
                    // SAFETY: validated by peek.
                    f(header, unsafe { self.payload_at(pos, header.len) });
                    self.head += size;
                    n += 1;
                }
                Ok(None) => break Ok(n),
                Err(e) => break Err(e),
            }
        };
        if self.head != self.published {
            self.publish_head();
        }
        result
    }

    /// As [`Consumer::try_pop_many`], waiting up to `timeout` for the first
    /// frame.
    ///
    /// # Errors
    ///
    /// As [`Consumer::wait_deadline`].
    pub fn pop_many_timeout(
        &mut self,
        max: usize,
        timeout: Duration,
        mut f: impl FnMut(FrameHeader, &[u8]),
    ) -> Result<usize, RingError> {
        let n = self.try_pop_many(max, &mut f)?;
        if n > 0 || max == 0 {
            return Ok(n);
        }
        self.wait(Until::After(timeout))?;
        self.try_pop_many(max, f)
    }

    /// Waits (spin, yield, then sleep) until a frame is there or `deadline`
    /// passes. The clock is read only before sleeping.
    ///
    /// # Errors
    ///
    /// [`RingError::Timeout`], or [`RingError::Corrupt`].
    pub fn wait_deadline(&mut self, deadline: Instant) -> Result<(), RingError> {
        self.wait(Until::At(deadline))
    }

    fn wait(&mut self, mut until: Until) -> Result<(), RingError> {
        let mut round = 0u32;
        loop {
            if self.peek()?.is_some() {
                self.spin = adapt(self.spin, round);
                return Ok(());
            }
            round += 1;
            if round <= self.spin {
                spin_loop();
                continue;
            }
            if round <= self.spin + YIELDS {
                yield_now();
                continue;
            }
            let deadline = until.deadline();
            let word = self.shared.commit_word(self.head & self.shared.mask);
            if Instant::now() >= deadline {
                self.spin = adapt(self.spin, round);
                // Leave no mark: the producer would make a futile wake call.
                let _ = word.compare_exchange(SLEEP, EMPTY, Ordering::Relaxed, Ordering::Relaxed);
                return Err(RingError::Timeout);
            }
            // The mark goes into the word the producer swaps when it publishes
            // here (Producer::flush): if it swaps first, this fails and we look
            // again; if we mark first, its swap sees SLEEP and wakes us.
            match word.compare_exchange(EMPTY, SLEEP, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) | Err(SLEEP) => self.shared.wait(word, SLEEP, deadline),
                Err(_) => {}
            }
        }
    }

    /// Overwrites bytes of the region, as a peer breaking the protocol would
    /// (the fuzz target's door into the region).
    ///
    /// # Safety
    ///
    /// - No ring operation (of this consumer or its producer) runs
    ///   concurrently on the region.
    #[doc(hidden)]
    pub unsafe fn scribble_for_fuzzing(&mut self, offset: usize, bytes: &[u8]) {
        let len = self.shared.region.len();
        if offset >= len {
            return;
        }
        let n = bytes.len().min(len - offset);
        // SAFETY: in bounds (checked above); nothing runs concurrently, by the
        // caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.shared.region.as_ptr().add(offset),
                n,
            )
        };
    }

    /// Waits up to `timeout` for a frame, then takes it.
    ///
    /// # Errors
    ///
    /// As [`Consumer::wait_deadline`].
    pub fn pop_timeout(&mut self, timeout: Duration) -> Result<Frame<'_, R>, RingError> {
        if self.peek()?.is_none() {
            self.wait(Until::After(timeout))?;
        }
        match self.try_pop()? {
            Some(f) => Ok(f),
            None => Err(RingError::Corrupt("published frame withdrawn")),
        }
    }
}

/// The loom stand-ins: the shared words as loom atomics, and a futex made of
/// a loom mutex and condition variable, keyed by word address, without
/// timeouts or spurious wake-ups.
#[cfg(loom)]
pub(crate) mod loom_model {
    use loom::sync::{Condvar, Mutex};

    use crate::sync::{AtomicU32, Ordering};

    pub(crate) struct Model {
        pub(super) head: AtomicU32,
        pub(super) words: Box<[AtomicU32]>,
        /// Per word address, how many wake calls it got.
        wakes: Mutex<Vec<(usize, u64)>>,
        cv: Condvar,
    }

    fn wakes_of(v: &[(usize, u64)], key: usize) -> u64 {
        v.iter().find(|(k, _)| *k == key).map_or(0, |(_, n)| *n)
    }

    impl Model {
        pub(crate) fn new(cap: u64) -> Self {
            Self {
                head: AtomicU32::new(0),
                words: (0..cap / 16).map(|_| AtomicU32::new(0)).collect(),
                wakes: Mutex::new(Vec::new()),
                cv: Condvar::new(),
            }
        }

        /// FUTEX_WAIT: the value check and the sleep are atomic with respect
        /// to `wake` (both under the mutex), as the kernel makes them.
        pub(crate) fn wait(&self, word: &AtomicU32, expected: u32) {
            let key = std::ptr::from_ref(word) as usize;
            let mut g = self.wakes.lock().unwrap();
            if word.load(Ordering::Relaxed) != expected {
                return;
            }
            let seen = wakes_of(&g, key);
            while wakes_of(&g, key) == seen {
                g = self.cv.wait(g).unwrap();
            }
        }

        /// FUTEX_WAKE: wakes every sleeper on this word only.
        pub(crate) fn wake(&self, word: &AtomicU32) {
            let key = std::ptr::from_ref(word) as usize;
            let mut g = self.wakes.lock().unwrap();
            match g.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => g.push((key, 1)),
            }
            self.cv.notify_all();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

/// Loom models of the publication and sleep handshakes, over the same code:
/// `RUSTFLAGS="--cfg loom" cargo test --release --lib ring`. The futex
/// stand-in has no timeout, so a lost wake-up deadlocks a model and fails it.
#[cfg(all(test, loom))]
mod loom_models {
    use super::*;

    const FAR: Duration = Duration::from_secs(3600);

    fn ring(capacity: usize) -> (Producer<HeapRegion>, Consumer<HeapRegion>) {
        Ring::create(HeapRegion::new(region_size(capacity)), capacity)
            .unwrap()
            .split()
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    /// The consumer finds the ring empty and sleeps (no spinning under
    /// loom); every frame still arrives, in order, with its content.
    #[test]
    fn a_sleeping_consumer_is_always_woken() {
        model(|| {
            let (mut p, mut c) = ring(256);
            let t = loom::thread::spawn(move || {
                for i in 0..2u32 {
                    p.push_timeout(i, 0, 0, &[i as u8 + 1; 3], FAR).unwrap();
                }
            });
            for i in 0..2u32 {
                let f = c.pop_timeout(FAR).unwrap();
                assert_eq!(f.header().session, i);
                assert_eq!(f.payload(), [i as u8 + 1; 3]);
            }
            t.join().unwrap();
        });
    }

    /// A ring with room for one frame: the producer waits for room (sleeps
    /// on `head`) before each later frame; it is always woken.
    #[test]
    fn a_sleeping_producer_is_always_woken() {
        model(|| {
            // 64 bytes: a 32-byte frame and the cleared word after it fit,
            // a second frame does not.
            let (mut p, mut c) = ring(64);
            let t = loom::thread::spawn(move || {
                for i in 0..3u32 {
                    p.push_timeout(i, 0, 0, &[i as u8; 16], FAR).unwrap();
                }
            });
            for i in 0..3u32 {
                let f = c.pop_timeout(FAR).unwrap();
                assert_eq!((f.header().session, f.payload()), (i, &[i as u8; 16][..]));
            }
            t.join().unwrap();
        });
    }

    /// Batches across the wrap-around (a padding frame inside a batch): one
    /// Release publishes them all, the consumer takes them with pop_many.
    #[test]
    fn batches_wrap_and_arrive_whole() {
        model(|| {
            let (mut p, mut c) = ring(128);
            let t = loom::thread::spawn(move || {
                let payloads = [[1u8; 8], [2; 8], [3; 8], [4; 8]];
                let mut sent = 0;
                while sent < payloads.len() {
                    let msgs: Vec<Msg<'_>> = payloads[sent..]
                        .iter()
                        .enumerate()
                        .map(|(k, b)| Msg {
                            session: (sent + k) as u32,
                            method: 0,
                            flags: 0,
                            payload: b,
                        })
                        .collect();
                    sent += p.push_many_deadline(&msgs, Instant::now() + FAR).unwrap();
                }
            });
            let mut got = Vec::new();
            while got.len() < 4 {
                c.pop_many_timeout(4, FAR, |h, b| got.push((h.session, b[0], b.len())))
                    .unwrap();
            }
            assert_eq!(got, [(0, 1, 8), (1, 2, 8), (2, 3, 8), (3, 4, 8)]);
            t.join().unwrap();
        });
    }
}
