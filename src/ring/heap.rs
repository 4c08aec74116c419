//! The process-local backend: the ring algorithm over heap memory, so Miri
//! and stress tests can check it without a mapping.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::fmt;

use super::Region;

/// A zeroed, 128-byte-aligned heap region.
pub struct HeapRegion {
    ptr: *mut u8,
    layout: Layout,
}

impl fmt::Debug for HeapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeapRegion")
            .field("len", &self.layout.size())
            .finish()
    }
}

// SAFETY: the region is plain memory; the ring protocol synchronises access.
unsafe impl Send for HeapRegion {}
// SAFETY: as above.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocates `len` zeroed bytes (at least 1).
    ///
    /// # Panics
    ///
    /// If the allocation fails or `len` overflows a layout.
    #[must_use]
    pub fn new(len: usize) -> Self {
        let layout =
            Layout::from_size_align(len.max(1), super::REGION_ALIGN).expect("region layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "heap region allocation failed");
        Self { ptr, layout }
    }

    /// Overwrites bytes of the region (tests: a peer writing garbage).
    ///
    /// # Safety
    ///
    /// - No ring operation runs concurrently on this region.
    pub unsafe fn scribble(&self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.layout.size());
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(offset), bytes.len()) };
    }
}

// SAFETY: aligned to REGION_ALIGN, valid for layout.size() bytes, zero-initialised,
// and never moved until dropped.
unsafe impl Region for HeapRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn len(&self) -> usize {
        self.layout.size()
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `new`.
        unsafe { dealloc(self.ptr, self.layout) };
    }
}
