//! A lock-free buffer pool with size classes and leases that return on drop.
//!
//! Every buffer is allocated once, when the pool is built. A lease takes a
//! buffer of the smallest class that fits from a lock-free queue
//! (`crossbeam_queue::ArrayQueue`) and puts it back when dropped, so the hot
//! path never calls `malloc`. An exhausted class is a typed error
//! ([`PoolError::Exhausted`]) or, with [`Pool::lease_timeout`], a wait with a
//! deadline; the pool never falls back to the heap.
//!
//! [`Slabs`] is the same idea over a region the pool does not own (shared
//! memory): it leases offsets.
//!
//! The pool holds no unsafe code: buffers move through the queue as
//! `Box<[u8]>` values, so ownership is the only invariant and the type system
//! enforces it.
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

mod slabs;
pub use slabs::{Slab, Slabs};

/// Why a lease failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolError {
    /// No class is large enough for the requested length.
    TooLarge(usize),
    /// Every buffer of the class is leased.
    Exhausted(usize),
    /// The deadline passed while the class stayed exhausted.
    Timeout(usize),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(f, "no buffer class holds {n} bytes"),
            Self::Exhausted(n) => write!(f, "every buffer of the {n}-byte class is leased"),
            Self::Timeout(n) => write!(f, "timed out waiting for a {n}-byte buffer"),
        }
    }
}

impl std::error::Error for PoolError {}

struct Class {
    size: usize,
    free: ArrayQueue<Box<[u8]>>,
}

/// See the [module docs](self).
pub struct Pool {
    classes: Vec<Class>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_map();
        for c in &self.classes {
            d.entry(&c.size, &(c.free.len(), c.free.capacity()));
        }
        d.finish()
    }
}

impl Pool {
    /// Builds a pool with `count` buffers of each `size`, all allocated now.
    ///
    /// Classes are sorted by size; a class with `count == 0` is skipped.
    ///
    /// # Examples
    ///
    /// ```
    /// use nylon_transport::pool::Pool;
    /// let pool = Pool::new(&[(256, 64), (4096, 16)]);
    /// let mut lease = pool.try_lease(100)?;
    /// lease.copy_from_slice(&[7; 100]);
    /// assert_eq!(lease.len(), 100);
    /// # Ok::<(), nylon_transport::pool::PoolError>(())
    /// ```
    #[must_use]
    pub fn new(classes: &[(usize, usize)]) -> Self {
        let mut classes: Vec<(usize, usize)> =
            classes.iter().copied().filter(|&(_, n)| n > 0).collect();
        classes.sort_unstable();
        let classes = classes
            .into_iter()
            .map(|(size, count)| {
                let free = ArrayQueue::new(count);
                for _ in 0..count {
                    // The queue was sized for exactly `count` buffers.
                    let _ = free.push(vec![0u8; size].into_boxed_slice());
                }
                Class { size, free }
            })
            .collect();
        Self { classes }
    }

    fn class_for(&self, len: usize) -> Result<&Class, PoolError> {
        self.classes
            .iter()
            .find(|c| c.size >= len)
            .ok_or(PoolError::TooLarge(len))
    }

    /// Leases a buffer of `len` bytes without waiting: from the smallest class
    /// that fits, or a larger one when that class is exhausted.
    ///
    /// # Errors
    ///
    /// [`PoolError::TooLarge`] or [`PoolError::Exhausted`] (with the smallest
    /// fitting class size).
    pub fn try_lease(&self, len: usize) -> Result<Lease<'_>, PoolError> {
        let first = self.class_for(len)?;
        for class in self.classes.iter().filter(|c| c.size >= len) {
            if let Some(buf) = class.free.pop() {
                return Ok(Lease {
                    buf: Some(buf),
                    len,
                    class,
                });
            }
        }
        Err(PoolError::Exhausted(first.size))
    }

    /// Leases a buffer, waiting up to `timeout` for one to be returned.
    ///
    /// # Errors
    ///
    /// [`PoolError::TooLarge`] or [`PoolError::Timeout`].
    pub fn lease_timeout(&self, len: usize, timeout: Duration) -> Result<Lease<'_>, PoolError> {
        let deadline = Instant::now() + timeout;
        let mut spins = 0u32;
        loop {
            match self.try_lease(len) {
                Ok(lease) => return Ok(lease),
                Err(PoolError::Exhausted(size)) if Instant::now() >= deadline => {
                    return Err(PoolError::Timeout(size))
                }
                Err(PoolError::Exhausted(_)) => {}
                Err(e) => return Err(e),
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Buffers currently free in the smallest class that holds `len` bytes.
    pub fn available(&self, len: usize) -> usize {
        self.class_for(len).map_or(0, |c| c.free.len())
    }
}

/// A leased buffer of a fixed length; returns to its pool when dropped.
pub struct Lease<'p> {
    buf: Option<Box<[u8]>>,
    len: usize,
    class: &'p Class,
}

impl fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("len", &self.len)
            .field("class", &self.class.size)
            .finish()
    }
}

impl Lease<'_> {
    /// The capacity of the underlying buffer (its class size).
    pub fn capacity(&self) -> usize {
        self.class.size
    }

    /// Changes the visible length, up to the capacity.
    ///
    /// # Panics
    ///
    /// If `len` exceeds [`Lease::capacity`].
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.class.size, "lease length beyond its class");
        self.len = len;
    }
}

impl Deref for Lease<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.buf {
            Some(b) => &b[..self.len],
            None => &[],
        }
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(b) => &mut b[..self.len],
            None => &mut [],
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // Cannot fail: the buffer came from this queue, which has room.
            let _ = self.class.free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_pick_the_smallest_class_and_return_on_drop() {
        let pool = Pool::new(&[(4096, 1), (64, 2)]);
        let a = pool.try_lease(10).unwrap();
        assert_eq!((a.len(), a.capacity()), (10, 64));
        let b = pool.try_lease(64).unwrap();
        assert_eq!(
            pool.try_lease(1).unwrap().capacity(),
            4096,
            "next class when full"
        );
        assert_eq!(pool.available(64), 0);
        drop(a);
        drop(b);
        assert_eq!(pool.available(64), 2);
    }

    #[test]
    fn exhaustion_and_size_are_typed_errors_never_a_heap_fallback() {
        let pool = Pool::new(&[(8, 1)]);
        let held = pool.try_lease(8).unwrap();
        assert_eq!(pool.try_lease(8).unwrap_err(), PoolError::Exhausted(8));
        assert_eq!(pool.try_lease(9).unwrap_err(), PoolError::TooLarge(9));
        assert_eq!(
            pool.lease_timeout(1, Duration::from_millis(5)).unwrap_err(),
            PoolError::Timeout(8)
        );
        drop(held);
        assert!(pool.lease_timeout(1, Duration::from_millis(5)).is_ok());
    }

    #[test]
    fn zero_capacity_and_zero_length() {
        let empty = Pool::new(&[]);
        assert_eq!(empty.try_lease(0).unwrap_err(), PoolError::TooLarge(0));
        let pool = Pool::new(&[(16, 0), (32, 1)]);
        let z = pool.try_lease(0).unwrap();
        assert!(z.is_empty());
        assert_eq!(z.capacity(), 32);
    }

    #[test]
    fn leases_cross_threads_and_all_come_back() {
        let pool = Pool::new(&[(128, 8)]);
        let n = if cfg!(miri) { 20 } else { 10_000 };
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let pool = &pool;
                s.spawn(move || {
                    for _ in 0..n {
                        if let Ok(mut l) = pool.lease_timeout(100, Duration::from_secs(5)) {
                            l.fill(t);
                            assert!(l.iter().all(|&b| b == t), "a lease is exclusive");
                        }
                    }
                });
            }
        });
        assert_eq!(pool.available(1), 8);
    }
}
