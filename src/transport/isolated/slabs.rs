//! The slab area: the part of a worker's shared mapping that carries large
//! payloads (bodies, chunks, the middleware payload) by offset instead of
//! inside ring frames.
//!
//! The area has two halves of [`HALF`] bytes: the host's (the host writes,
//! the worker reads) and the worker's (the other way round). Each side
//! leases slabs of its own half from a [`Slabs`] pool (lock-free; classes in
//! [`CLASSES`]), copies a payload in once, and sends its offset and length
//! in the frame ([`proto::Blob`]). The reader validates the range against
//! the half before use (`proto::Reader::blob`) and reads the bytes in place.
//!
//! # Who gives a slab back, and when
//!
//! - A host slab lent with a phase start or a read reply belongs to that
//!   phase: the host releases it when the worker's phase end for it arrives
//!   (late ends of cancelled phases included), or forgets it when the worker
//!   dies (the next incarnation has a new mapping and a new pool). The worker
//!   reads it only while the phase runs.
//! - A worker slab sent with a phase end stays the host's to read until the
//!   host's next frame for the session (the next phase start, or `CLOSE`):
//!   the host applies a phase end's commands before it sends anything else
//!   for that session. A phase end the host will drop (its phase was
//!   cancelled) gives its slabs back at once.
//!
//! A payload below [`SLAB_MIN`] bytes, or one for which no slab is free (or
//! large enough), travels in the frame as before.

use std::fmt;

use crate::pool::{Slab, Slabs};
use crate::ring::{MmapRegion, Region};

use super::proto;

/// Payloads from this size on go in a slab when one is free.
pub(super) const SLAB_MIN: usize = 4096;
/// Each half's slab classes: (size, count).
pub(super) const CLASSES: &[(usize, usize)] = &[(64 << 10, 32), (512 << 10, 4), (4 << 20, 1)];
/// Bytes of each half (the classes' total).
pub(super) const HALF: usize = 8 << 20;

/// One side's view of a worker incarnation's slab area.
pub(super) struct SlabArea {
    region: MmapRegion,
    /// Where this side's half starts (0 for the host, [`HALF`] for the
    /// worker); the peer's is the other.
    own: usize,
    pool: Slabs,
    /// False: [`SlabArea::put`] always says no (every payload in frames).
    enabled: bool,
}

impl fmt::Debug for SlabArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlabArea")
            .field("own", &self.own)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl SlabArea {
    /// The area as the host (`host`) or the worker sees it; `region` maps
    /// both halves. With `enabled` false this side sends nothing in slabs
    /// (it still reads the peer's).
    pub(super) fn new(region: MmapRegion, host: bool, enabled: bool) -> Result<Self, String> {
        let pool = Slabs::new(CLASSES);
        debug_assert_eq!(pool.len(), HALF);
        if region.len() < 2 * HALF {
            return Err(format!(
                "slab area of {} bytes, {} needed",
                region.len(),
                2 * HALF
            ));
        }
        Ok(Self {
            region,
            own: if host { 0 } else { HALF },
            pool,
            enabled,
        })
    }

    /// Copies `bytes` into a slab of this side's half, when they are large
    /// enough to be worth it and a slab is free.
    pub(super) fn put(&self, bytes: &[u8]) -> Option<Slab> {
        if bytes.len() < SLAB_MIN || !self.enabled {
            return None;
        }
        let slab = self.pool.try_lease(bytes.len()).ok()?;
        let at = self.own + slab.offset() as usize;
        assert!(
            bytes.len() <= slab.capacity() as usize && at + bytes.len() <= self.own + HALF,
            "a slab lies inside its half"
        );
        // SAFETY: `at..at + len` lies inside this side's half of the region
        // (checked above; the region is at least `2 * HALF` bytes, checked in
        // `new`), valid for writes while `self` lives; no other lease of ours
        // overlaps it (the pool hands each slab to one holder), and we never
        // form a reference to our own half. `bytes` is our own memory, not
        // the mapping, so the ranges do not overlap. A peer that writes into
        // our half too only changes what it reads itself.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.region.as_ptr().add(at),
                bytes.len(),
            );
        }
        Some(slab)
    }

    /// Gives back a slab [`SlabArea::put`] returned.
    pub(super) fn release(&self, slab: Slab) {
        self.pool.release(slab);
    }

    /// The peer's half, where the blobs it sends point.
    ///
    /// The peer may write these bytes at any time (the worker is untrusted):
    /// what we read through this slice may then hold any value, but the
    /// slice's bounds are ours, so a blob range validated against
    /// `peer().len()` cannot reach outside the mapping. The host copies what
    /// it reads (into the request context) and validates nothing after
    /// reading it; this is the ring's argument for frame payloads.
    pub(super) fn peer(&self) -> &[u8] {
        let at = HALF - self.own;
        // SAFETY: `at..at + HALF` lies inside the region (at least
        // `2 * HALF` bytes, checked in `new`), which stays mapped while
        // `self` lives (the slice borrows `self`); every bit pattern is a
        // valid `u8`.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().add(at), HALF) }
    }

    /// The bytes of a blob the peer sent in `frame`.
    pub(super) fn get<'a>(&'a self, frame: &'a [u8], blob: proto::Blob) -> &'a [u8] {
        blob.get(frame, self.peer())
    }
}
