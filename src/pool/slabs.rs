//! Slabs: the pool's size classes over a region it does not own.
//!
//! [`Pool`](super::Pool) leases heap buffers. A region shared with another
//! process (the isolated transport's slab area) cannot hold `Box`es, so
//! [`Slabs`] hands out *offsets* instead: the region is cut into slabs of a
//! few classes, laid out one class after another from offset 0, and each
//! class's free offsets sit in a lock-free queue (`crossbeam_queue::ArrayQueue`,
//! filled once when the pool is built). A lease is a [`Slab`] (offset and
//! capacity) that goes back with [`Slabs::release`]: the owner of a slab is
//! decided by a protocol with the peer (a slab lent with a phase start comes
//! back when that phase ends), not by a Rust scope, so the return is
//! explicit. [`Slab`] is neither `Copy` nor `Clone`, so a slab is released
//! at most once by safe code.
//!
//! No unsafe code: the pool deals in numbers; the caller maps them.

use std::fmt;

use crossbeam_queue::ArrayQueue;

use super::PoolError;

struct SlabClass {
    size: u32,
    free: ArrayQueue<u32>,
}

/// A leased slab: where it is in the region and how large it is.
#[must_use = "a slab goes back with `Slabs::release`"]
#[derive(Debug, PartialEq, Eq)]
pub struct Slab {
    offset: u32,
    size: u32,
}

impl Slab {
    /// Its first byte's offset in the region.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// Its size in bytes (its class's).
    pub fn capacity(&self) -> u32 {
        self.size
    }
}

/// See the [module docs](self).
pub struct Slabs {
    classes: Vec<SlabClass>,
    len: usize,
}

impl fmt::Debug for Slabs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_map();
        for c in &self.classes {
            d.entry(&c.size, &(c.free.len(), c.free.capacity()));
        }
        d.finish()
    }
}

impl Slabs {
    /// Cuts a region into `count` slabs of each `size` (sorted by size, laid
    /// out in that order from offset 0; a class with `count == 0` is
    /// skipped). [`Slabs::len`] is the region size this needs.
    ///
    /// # Panics
    ///
    /// If the layout does not fit in `u32` offsets.
    ///
    /// # Examples
    ///
    /// ```
    /// use nylon_transport::pool::Slabs;
    /// let slabs = Slabs::new(&[(4096, 2), (65536, 1)]);
    /// assert_eq!(slabs.len(), 2 * 4096 + 65536);
    /// let s = slabs.try_lease(5000)?;
    /// assert_eq!((s.offset(), s.capacity()), (8192, 65536));
    /// slabs.release(s);
    /// # Ok::<(), nylon_transport::pool::PoolError>(())
    /// ```
    #[must_use]
    pub fn new(classes: &[(usize, usize)]) -> Self {
        let mut classes: Vec<(usize, usize)> =
            classes.iter().copied().filter(|&(_, n)| n > 0).collect();
        classes.sort_unstable();
        let mut at = 0usize;
        let classes = classes
            .into_iter()
            .map(|(size, count)| {
                let free = ArrayQueue::new(count);
                for _ in 0..count {
                    let offset = u32::try_from(at).expect("slab offsets fit in u32");
                    // The queue was sized for exactly `count` slabs.
                    let _ = free.push(offset);
                    at += size;
                }
                let size = u32::try_from(size).expect("slab sizes fit in u32");
                SlabClass { size, free }
            })
            .collect();
        assert!(u32::try_from(at).is_ok(), "slab region fits in u32 offsets");
        Self { classes, len: at }
    }

    /// The bytes of region the slabs cover.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no slabs.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Leases a slab of at least `len` bytes without waiting: from the
    /// smallest class that fits, or a larger one when that one is exhausted.
    ///
    /// # Errors
    ///
    /// [`PoolError::TooLarge`] or [`PoolError::Exhausted`] (with the smallest
    /// fitting class size).
    pub fn try_lease(&self, len: usize) -> Result<Slab, PoolError> {
        let mut fitting = self.classes.iter().filter(|c| c.size as usize >= len);
        let first = fitting.next().ok_or(PoolError::TooLarge(len))?;
        for class in std::iter::once(first).chain(fitting) {
            if let Some(offset) = class.free.pop() {
                return Ok(Slab {
                    offset,
                    size: class.size,
                });
            }
        }
        Err(PoolError::Exhausted(first.size as usize))
    }

    /// Gives a slab back.
    pub fn release(&self, slab: Slab) {
        if let Some(c) = self.classes.iter().find(|c| c.size == slab.size) {
            // Cannot fail for a slab of this pool: its queue has room.
            let _ = c.free.push(slab.offset);
        }
    }

    /// Slabs free in the smallest class that holds `len` bytes.
    pub fn available(&self, len: usize) -> usize {
        self.classes
            .iter()
            .find(|c| c.size as usize >= len)
            .map_or(0, |c| c.free.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slabs_tile_the_region_without_overlap() {
        let slabs = Slabs::new(&[(256, 3), (16, 4), (1024, 0)]);
        assert_eq!(slabs.len(), 4 * 16 + 3 * 256);
        let mut held = Vec::new();
        while let Ok(s) = slabs.try_lease(1) {
            held.push(s);
        }
        assert_eq!(held.len(), 7, "every slab once, the small ones first");
        let mut spans: Vec<(u32, u32)> = held
            .iter()
            .map(|s| (s.offset(), s.offset() + s.capacity()))
            .collect();
        spans.sort_unstable();
        assert_eq!(spans.first().unwrap().0, 0);
        for w in spans.windows(2) {
            assert_eq!(w[0].1, w[1].0, "adjacent, no gap and no overlap");
        }
        assert_eq!(spans.last().unwrap().1 as usize, slabs.len());
        for s in held {
            slabs.release(s);
        }
        assert_eq!(slabs.available(16), 4);
        assert_eq!(slabs.available(17), 3);
    }

    #[test]
    fn exhaustion_and_size_are_typed_errors() {
        let slabs = Slabs::new(&[(64, 1)]);
        let s = slabs.try_lease(64).unwrap();
        assert_eq!(slabs.try_lease(1).unwrap_err(), PoolError::Exhausted(64));
        assert_eq!(slabs.try_lease(65).unwrap_err(), PoolError::TooLarge(65));
        slabs.release(s);
        assert_eq!(slabs.try_lease(10).unwrap().capacity(), 64);
    }

    #[test]
    fn leases_cross_threads_and_all_come_back() {
        let slabs = Slabs::new(&[(32, 4), (64, 2)]);
        let owner: Vec<std::sync::atomic::AtomicU8> =
            (0..slabs.len()).map(|_| Default::default()).collect();
        let n = if cfg!(miri) { 20 } else { 10_000 };
        std::thread::scope(|sc| {
            for t in 1..=4u8 {
                let (slabs, owner) = (&slabs, &owner);
                sc.spawn(move || {
                    use std::sync::atomic::Ordering::SeqCst;
                    for _ in 0..n {
                        let Ok(s) = slabs.try_lease(20) else { continue };
                        let at = s.offset() as usize;
                        assert_eq!(owner[at].swap(t, SeqCst), 0, "a slab is exclusive");
                        assert_eq!(owner[at].swap(0, SeqCst), t);
                        slabs.release(s);
                    }
                });
            }
        });
        assert_eq!(slabs.available(1) + slabs.available(64), 6);
    }
}
