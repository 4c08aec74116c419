//! The shared-memory backend: the one door to `memmap2`.

use std::fmt;
use std::fs::File;
use std::io;

use memmap2::{MmapMut, MmapOptions};

use super::Region;

/// A shared mapping: anonymous (one process, or inherited across `fork`),
/// a file, or a memfd (passed to another process by descriptor).
pub struct MmapRegion {
    map: MmapMut,
}

impl fmt::Debug for MmapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmapRegion")
            .field("len", &self.map.len())
            .finish()
    }
}

impl MmapRegion {
    /// An anonymous shared mapping of `len` bytes.
    ///
    /// # Errors
    ///
    /// The `mmap` error.
    pub fn anonymous(len: usize) -> io::Result<Self> {
        Ok(Self {
            map: MmapOptions::new().len(len).map_anon()?,
        })
    }

    /// Maps `len` bytes of `file` shared (the file is grown to `len` if shorter).
    ///
    /// # Errors
    ///
    /// The `ftruncate` or `mmap` error.
    pub fn file(file: &File, len: usize) -> io::Result<Self> {
        if file.metadata()?.len() < len as u64 {
            file.set_len(len as u64)?;
        }
        // SAFETY: a shared mapping of a file; the ring treats every byte as
        // untrusted and validates it, so concurrent changes by another
        // process cannot make it read out of bounds.
        let map = unsafe { MmapOptions::new().len(len).map_mut(file)? };
        Ok(Self { map })
    }

    /// Maps `len` bytes of `file` from `offset` (a multiple of the page
    /// size), shared; the file is grown to `offset + len` if shorter. Two
    /// rings can share one memfd this way.
    ///
    /// # Errors
    ///
    /// The `ftruncate` or `mmap` error (`EINVAL` for an unaligned offset).
    pub fn file_range(file: &File, offset: u64, len: usize) -> io::Result<Self> {
        let end = offset + len as u64;
        if file.metadata()?.len() < end {
            file.set_len(end)?;
        }
        // SAFETY: as in `file`.
        let map = unsafe { MmapOptions::new().offset(offset).len(len).map_mut(file)? };
        Ok(Self { map })
    }

    /// A new memfd of `len` bytes, mapped; the file can be handed to another
    /// process, which maps it with [`MmapRegion::file`].
    ///
    /// # Errors
    ///
    /// The `memfd_create`, `ftruncate` or `mmap` error.
    #[cfg(target_os = "linux")]
    pub fn memfd(name: &str, len: usize) -> io::Result<(Self, File)> {
        use std::os::fd::FromRawFd;
        let cname = std::ffi::CString::new(name)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a valid NUL-terminated name and flags.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(fd) };
        let region = Self::file(&file, len)?;
        Ok((region, file))
    }
}

// SAFETY: mmap returns page-aligned memory (so 128-aligned), valid for len
// bytes, zero-filled for anonymous and new file mappings, fixed until unmapped
// on drop.
unsafe impl Region for MmapRegion {
    fn as_ptr(&self) -> *mut u8 {
        self.map.as_ptr().cast_mut()
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
