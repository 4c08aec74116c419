//! A single-producer single-consumer ring of frames over a shared byte region.
//!
//! The same algorithm runs in one process over heap memory ([`HeapRegion`],
//! which Miri can check) and between processes over a shared mapping
//! ([`MmapRegion`]: anonymous, a file, or a memfd).
//!
//! # Memory layout
//!
//! ```text
//! 0        8        12       16         24                64       128      192      256
//! +--------+--------+--------+----------+-----------------+--------+--------+--------+---------
//! | magic  |version |layout  | capacity |    reserved     | tail   | head   | waits  | data...
//! | u64    | u32    | u32    | u64      |                 | (pad)  | (pad)  | (pad)  | capacity
//! +--------+--------+--------+----------+-----------------+--------+--------+--------+---------
//! ```
//!
//! `tail` (written by the producer) and `head` (written by the consumer) are
//! byte positions that only grow, each on its own cache line. A frame is a
//! 16-byte [`FrameHeader`] (length, session, method, flags) and its payload,
//! padded to 16 bytes. A frame never wraps: when it does not fit before the
//! end, the producer writes a padding frame and starts again at offset 0.
//!
//! # Trust
//!
//! The peer is untrusted. Each side keeps its own copy of its own index and
//! of the capacity, and validates everything it reads from the region: the
//! other side's index (no further than one capacity away), every frame header
//! (length within the data area and within what was published) and the
//! padding frames. A violation is [`RingError::Corrupt`]; nothing is read out
//! of bounds. Header fields are read once, with volatile loads, before they
//! are checked.
//!
//! # Waiting
//!
//! A side that finds the ring empty (or full) spins briefly, then sleeps on a
//! futex word in the region, so an idle ring costs no CPU; the other side
//! wakes it only when the sleeping flag is set (no system call otherwise).

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod heap;
mod mmap;

pub use heap::HeapRegion;
pub use mmap::MmapRegion;

/// Identifies a nylon ring region ("NYLNRING").
pub const MAGIC: u64 = u64::from_le_bytes(*b"NYLNRING");
/// The ring layout version.
pub const VERSION: u32 = 1;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 16;
/// Frame flag: a padding frame (skip to the start of the data area).
pub const FLAG_PAD: u32 = 1 << 31;

/// Memory a ring can live in.
///
/// # Safety
///
/// - `as_ptr()` is aligned to 64 bytes, valid for reads and writes of
///   `len()` bytes, and stays so (same address) for the region's lifetime.
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

#[repr(C, align(64))]
struct Line<T>(T);

/// The region header. See the module's memory layout.
#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: u32,
    layout: u32,
    capacity: u64,
    _reserved: [u8; 40],
    tail: Line<AtomicU64>,
    head: Line<AtomicU64>,
    consumer_sleeping: Line<AtomicU32>,
    producer_sleeping: Line<AtomicU32>,
}

// SAFETY: repr(C), only integers and atomics, offsets only.
unsafe impl ShmSafe for Header {}

/// The header of one frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Session id.
    pub session: u32,
    /// Method id.
    pub method: u32,
    /// Flags ([`FLAG_PAD`] is reserved).
    pub flags: u32,
}

// SAFETY: repr(C), four u32, any bit pattern valid.
unsafe impl ShmSafe for FrameHeader {}

const HEADER: usize = std::mem::size_of::<Header>();
const _: () = {
    assert!(HEADER == 320);
    assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER);
    assert!(std::mem::offset_of!(Header, tail) == 64);
    assert!(std::mem::offset_of!(Header, head) == 128);
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
    /// The capacity is not a power of two of at least 64, or does not fit.
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
pub struct Ring<R: Region> {
    region: Arc<R>,
    capacity: u64,
}

impl<R: Region> fmt::Debug for Ring<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn check_region<R: Region>(region: &R) -> Result<(), RingError> {
    if region.len() < HEADER + 64 || !(region.as_ptr() as usize).is_multiple_of(64) {
        return Err(RingError::BadRegion);
    }
    Ok(())
}

fn valid_capacity(capacity: u64, region_len: usize) -> bool {
    capacity >= 64
        && capacity.is_power_of_two()
        && capacity <= (region_len - HEADER) as u64
        && capacity <= u64::from(u32::MAX)
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
        let h = region.as_ptr().cast::<Header>();
        // SAFETY: the region is valid, aligned and large enough for a Header
        // (checked above); nobody else uses it before `create` returns.
        unsafe {
            std::ptr::addr_of_mut!((*h).version).write_volatile(VERSION);
            std::ptr::addr_of_mut!((*h).layout).write_volatile(HEADER as u32);
            std::ptr::addr_of_mut!((*h).capacity).write_volatile(capacity as u64);
            (*h).tail.0.store(0, Ordering::Relaxed);
            (*h).head.0.store(0, Ordering::Relaxed);
            (*h).consumer_sleeping.0.store(0, Ordering::Relaxed);
            (*h).producer_sleeping.0.store(0, Ordering::Relaxed);
            // SYNC POINT: the magic is written last; an opener that sees it
            // sees the whole header.
            (*h).magic.store(MAGIC, Ordering::Release);
        }
        Ok(Self {
            region: Arc::new(region),
            capacity: capacity as u64,
        })
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
        let h = region.as_ptr().cast::<Header>();
        // SAFETY: valid, aligned, large enough (checked); fields read once.
        let (magic, version, layout, capacity) = unsafe {
            (
                (*h).magic.load(Ordering::Acquire),
                std::ptr::addr_of!((*h).version).read_volatile(),
                std::ptr::addr_of!((*h).layout).read_volatile(),
                std::ptr::addr_of!((*h).capacity).read_volatile(),
            )
        };
        if magic != MAGIC {
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
            region: Arc::new(region),
            capacity,
        })
    }

    /// Splits the ring into its two roles (both in this process).
    #[must_use]
    pub fn split(self) -> (Producer<R>, Consumer<R>) {
        let p = Producer::new(Arc::clone(&self.region), self.capacity);
        let c = Consumer::new(self.region, self.capacity);
        (p, c)
    }

    /// Takes the producer role (the consumer lives in another process).
    #[must_use]
    pub fn into_producer(self) -> Producer<R> {
        Producer::new(self.region, self.capacity)
    }

    /// Takes the consumer role (the producer lives in another process).
    #[must_use]
    pub fn into_consumer(self) -> Consumer<R> {
        Consumer::new(self.region, self.capacity)
    }
}

struct Shared<R: Region> {
    region: Arc<R>,
    capacity: u64,
}

impl<R: Region> Shared<R> {
    fn header(&self) -> &Header {
        // SAFETY: the region holds a checked Header at offset 0 for its life;
        // every field we touch through `&` is atomic.
        unsafe { &*self.region.as_ptr().cast::<Header>() }
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: HEADER < len (checked at create/open).
        unsafe { self.region.as_ptr().add(HEADER) }
    }
}

fn frame_size(len: usize) -> usize {
    FRAME_HEADER + len.div_ceil(16) * 16
}

/// The producing half. `Send`, not `Sync`: one producer at a time.
pub struct Producer<R: Region> {
    shared: Shared<R>,
    tail: u64,
    head_cache: u64,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl<R: Region> fmt::Debug for Producer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .finish()
    }
}

impl<R: Region> Producer<R> {
    fn new(region: Arc<R>, capacity: u64) -> Self {
        let shared = Shared { region, capacity };
        let tail = shared.header().tail.0.load(Ordering::Acquire);
        let head_cache = shared.header().head.0.load(Ordering::Acquire);
        Self {
            shared,
            tail,
            head_cache,
            _not_sync: PhantomData,
        }
    }

    /// Room needed for a frame of `len` at the current tail, padding included.
    fn room(&self, len: usize) -> Result<(u64, u64), RingError> {
        let size = frame_size(len) as u64;
        if size > self.shared.capacity / 2 {
            return Err(RingError::TooLarge(len));
        }
        let pos = self.tail % self.shared.capacity;
        let contiguous = self.shared.capacity - pos;
        let pad = if contiguous < size { contiguous } else { 0 };
        Ok((size, pad))
    }

    fn has_room(&mut self, need: u64) -> Result<bool, RingError> {
        if self.tail - self.head_cache + need <= self.shared.capacity {
            return Ok(true);
        }
        // SYNC POINT: acquires the consumer's release of consumed bytes.
        let head = self.shared.header().head.0.load(Ordering::Acquire);
        let used = self.tail.wrapping_sub(head);
        if used > self.shared.capacity || head < self.head_cache {
            return Err(RingError::Corrupt("consumer index out of range"));
        }
        self.head_cache = head;
        Ok(used + need <= self.shared.capacity)
    }

    /// Writes a frame header at data offset `pos`.
    fn write_header(&self, pos: u64, h: FrameHeader) {
        debug_assert!(pos.is_multiple_of(16) && pos + FRAME_HEADER as u64 <= self.shared.capacity);
        // SAFETY: pos + 16 <= capacity (frames are 16-aligned and the
        // capacity a multiple of 16); the consumer does not read these bytes
        // until we publish the tail.
        unsafe {
            self.shared
                .data()
                .add(pos as usize)
                .cast::<FrameHeader>()
                .write_volatile(h)
        };
    }

    /// Reserves room for a `len`-byte payload; `None` when the ring is full.
    fn reserve(&mut self, len: usize) -> Result<Option<u64>, RingError> {
        let (size, pad) = self.room(len)?;
        if !self.has_room(size + pad)? {
            return Ok(None);
        }
        if pad > 0 {
            let pos = self.tail % self.shared.capacity;
            self.write_header(
                pos,
                FrameHeader {
                    len: (pad - FRAME_HEADER as u64) as u32,
                    session: 0,
                    method: 0,
                    flags: FLAG_PAD,
                },
            );
            self.tail += pad;
        }
        Ok(Some(self.tail % self.shared.capacity))
    }

    fn publish(&mut self, len: usize) {
        self.tail += frame_size(len) as u64;
        let h = self.shared.header();
        // SYNC POINT: the frame bytes become visible to the consumer, which
        // acquires `tail`. A SeqCst swap (one locked instruction) instead of a
        // store and a full fence: it orders the store before the load of
        // `consumer_sleeping` below, pairing with the consumer's fence after
        // it sets that flag, so a sleeping consumer is never missed.
        h.tail.0.swap(self.tail, Ordering::SeqCst);
        if h.consumer_sleeping.0.load(Ordering::SeqCst) != 0 {
            h.consumer_sleeping.0.store(0, Ordering::Relaxed);
            futex::wake(&h.consumer_sleeping.0);
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

    /// Appends one frame, waiting up to `timeout` for room (the clock is read
    /// only if the ring is full).
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
        match self.try_push(session, method, flags, payload) {
            Err(RingError::Full) => {
                self.push_deadline(session, method, flags, payload, Instant::now() + timeout)
            }
            other => other,
        }
    }

    /// Appends one frame, waiting (spin, then sleep) until `deadline` for room.
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
        let mut spins = 0u32;
        loop {
            match self.try_push(session, method, flags, payload) {
                Err(RingError::Full) => {}
                other => return other,
            }
            spins += 1;
            if spins.is_multiple_of(64) && Instant::now() >= deadline {
                return Err(RingError::Timeout);
            }
            if spins < 1024 {
                std::hint::spin_loop();
                continue;
            }
            if Instant::now() >= deadline {
                return Err(RingError::Timeout);
            }
            self.shared
                .header()
                .producer_sleeping
                .0
                .store(1, Ordering::Relaxed);
            // Pairs with the SeqCst swap of `head` in the consumer's
            // `advance`: either it sees this flag, or we see its new head.
            fence(Ordering::SeqCst);
            let (size, pad) = self.room(payload.len())?;
            if self.has_room(size + pad)? {
                self.shared
                    .header()
                    .producer_sleeping
                    .0
                    .store(0, Ordering::Relaxed);
                continue;
            }
            let h = self.shared.header();
            futex::wait(&h.producer_sleeping.0, 1, deadline);
            h.producer_sleeping.0.store(0, Ordering::Relaxed);
        }
    }

    /// Loans room for a `len`-byte payload to write in place (zero-copy).
    ///
    /// # Errors
    ///
    /// As [`Producer::try_push`].
    pub fn try_loan(&mut self, len: usize) -> Result<Loan<'_, R>, RingError> {
        match self.reserve(len)? {
            Some(pos) => Ok(Loan {
                producer: self,
                pos,
                len,
            }),
            None => Err(RingError::Full),
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
        debug_assert!(start + self.len <= self.producer.shared.capacity as usize);
        // SAFETY: reserve() guaranteed start + len <= capacity, the consumer
        // does not read past the published tail, and we hold &mut producer.
        unsafe { std::slice::from_raw_parts_mut(self.producer.shared.data().add(start), self.len) }
    }

    /// Publishes the frame.
    pub fn commit(self, session: u32, method: u32, flags: u32) {
        let header = FrameHeader {
            len: self.len as u32,
            session,
            method,
            flags: flags & !FLAG_PAD,
        };
        self.producer.write_header(self.pos, header);
        self.producer.publish(self.len);
    }
}

/// The consuming half. `Send`, not `Sync`: one consumer at a time.
pub struct Consumer<R: Region> {
    shared: Shared<R>,
    head: u64,
    tail_cache: u64,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

impl<R: Region> fmt::Debug for Consumer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .finish()
    }
}

/// A frame read from the ring; its bytes are released when dropped.
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
        let start = self.pos as usize + FRAME_HEADER;
        debug_assert!(start + self.header.len as usize <= self.consumer.shared.capacity as usize);
        // SAFETY: validated in try_pop: start + len <= capacity and within the
        // published range, which the producer does not rewrite until we
        // release it.
        unsafe {
            std::slice::from_raw_parts(
                self.consumer.shared.data().add(start),
                self.header.len as usize,
            )
        }
    }
}

impl<R: Region> Drop for Frame<'_, R> {
    fn drop(&mut self) {
        self.consumer.advance(self.size);
    }
}

impl<R: Region> Consumer<R> {
    fn new(region: Arc<R>, capacity: u64) -> Self {
        let shared = Shared { region, capacity };
        let head = shared.header().head.0.load(Ordering::Acquire);
        Self {
            shared,
            head,
            tail_cache: head,
            _not_sync: PhantomData,
        }
    }

    fn advance(&mut self, size: u64) {
        self.head += size;
        let h = self.shared.header();
        // SYNC POINT: hands the consumed bytes back to the producer (SeqCst
        // swap: see `publish`).
        h.head.0.swap(self.head, Ordering::SeqCst);
        if h.producer_sleeping.0.load(Ordering::SeqCst) != 0 {
            h.producer_sleeping.0.store(0, Ordering::Relaxed);
            futex::wake(&h.producer_sleeping.0);
        }
    }

    fn refresh_tail(&mut self) -> Result<u64, RingError> {
        // SYNC POINT: acquires the producer's frames up to `tail`.
        let tail = self.shared.header().tail.0.load(Ordering::Acquire);
        let avail = tail.wrapping_sub(self.head);
        if avail > self.shared.capacity || tail < self.tail_cache {
            return Err(RingError::Corrupt("producer index out of range"));
        }
        self.tail_cache = tail;
        Ok(avail)
    }

    /// Takes the next frame without waiting; `Ok(None)` when empty.
    ///
    /// # Errors
    ///
    /// [`RingError::Corrupt`] when the producer broke the protocol; the ring
    /// is then unusable.
    pub fn try_pop(&mut self) -> Result<Option<Frame<'_, R>>, RingError> {
        loop {
            let mut avail = self.tail_cache - self.head;
            if avail == 0 {
                avail = self.refresh_tail()?;
                if avail == 0 {
                    return Ok(None);
                }
            }
            let cap = self.shared.capacity;
            let pos = self.head % cap;
            debug_assert!(pos.is_multiple_of(16) && pos + FRAME_HEADER as u64 <= cap);
            // SAFETY: pos is 16-aligned and below capacity, so the 16-byte
            // header is inside the data area; read once, then validated.
            let h = unsafe {
                self.shared
                    .data()
                    .add(pos as usize)
                    .cast::<FrameHeader>()
                    .read_volatile()
            };
            if h.flags & FLAG_PAD != 0 {
                let skip = cap - pos;
                if u64::from(h.len) + FRAME_HEADER as u64 != skip || skip > avail {
                    return Err(RingError::Corrupt("bad padding frame"));
                }
                self.advance(skip);
                continue;
            }
            let size = frame_size(h.len as usize) as u64;
            if size > cap - pos || size > avail {
                return Err(RingError::Corrupt("frame length beyond the published data"));
            }
            return Ok(Some(Frame {
                consumer: self,
                header: h,
                pos,
                size,
            }));
        }
    }

    /// Waits (spin, then sleep) until a frame is there or `deadline` passes.
    ///
    /// # Errors
    ///
    /// [`RingError::Timeout`], or [`RingError::Corrupt`].
    pub fn wait_deadline(&mut self, deadline: Instant) -> Result<(), RingError> {
        let mut spins = 0u32;
        loop {
            if self.tail_cache != self.head || self.refresh_tail()? > 0 {
                return Ok(());
            }
            spins += 1;
            // The clock costs more than a spin: read it every 64 spins.
            if spins.is_multiple_of(64) && Instant::now() >= deadline {
                return Err(RingError::Timeout);
            }
            if spins < 4096 {
                std::hint::spin_loop();
                continue;
            }
            if Instant::now() >= deadline {
                return Err(RingError::Timeout);
            }
            self.shared
                .header()
                .consumer_sleeping
                .0
                .store(1, Ordering::Relaxed);
            // Pairs with the SeqCst swap of `tail` in the producer's
            // `publish`: either it sees this flag, or we see its new tail.
            fence(Ordering::SeqCst);
            if self.refresh_tail()? > 0 {
                self.shared
                    .header()
                    .consumer_sleeping
                    .0
                    .store(0, Ordering::Relaxed);
                return Ok(());
            }
            let h = self.shared.header();
            futex::wait(&h.consumer_sleeping.0, 1, deadline);
            h.consumer_sleeping.0.store(0, Ordering::Relaxed);
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
        if self.tail_cache == self.head && self.refresh_tail()? == 0 {
            self.wait_deadline(Instant::now() + timeout)?;
        }
        match self.try_pop()? {
            Some(f) => Ok(f),
            // Only padding was published: treat as a spurious wake-up.
            None => Err(RingError::Timeout),
        }
    }
}

mod futex {
    use std::sync::atomic::AtomicU32;
    use std::time::Instant;

    /// Sleeps while `*word == expected`, until woken or `deadline`.
    #[cfg(all(target_os = "linux", not(miri)))]
    pub(super) fn wait(word: &AtomicU32, expected: u32, deadline: Instant) {
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
    #[cfg(all(target_os = "linux", not(miri)))]
    pub(super) fn wake(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE on a valid, aligned u32.
        unsafe {
            libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
        }
    }

    #[cfg(any(not(target_os = "linux"), miri))]
    pub(super) fn wait(word: &AtomicU32, expected: u32, deadline: Instant) {
        while word.load(std::sync::atomic::Ordering::Acquire) == expected
            && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
    }

    #[cfg(any(not(target_os = "linux"), miri))]
    pub(super) fn wake(_word: &AtomicU32) {}
}

#[cfg(test)]
mod tests;
