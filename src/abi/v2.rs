//! The v2 plugin ABI: versioned, layout-checked, zero-copy, direct calls.
//!
//! A v2 plugin exports one symbol, [`PLUGIN_SYMBOL`] (`nylon_v2_plugin`), a
//! function returning a pointer to its [`PluginTable`]. The host checks the
//! table's version and layout sizes before using anything else in it, reads
//! the entry names from it once, and from then on calls entries by index.
//!
//! Each phase is one direct call, [`PluginTable::phase`], with a borrowed
//! [`CallHandle`]. Inside the call the plugin reads the request through the
//! host's [`HostTable`]: every read returns a [`Str`] borrowed from the host
//! until the phase call returns (or, for an asynchronous phase, until the
//! plugin completes it). Commands are appended to a per-session buffer and
//! applied in order when the phase ends, which is why borrowed reads stay
//! valid: nothing changes the request or response during a phase. A phase
//! returns its [`Flow`] as a value; a plugin that finishes on another thread
//! returns [`Status::PENDING`] and calls [`HostTable::complete`] later.
//!
//! The C view of the same types is `include/nylon_v2.h`.
#![allow(missing_docs)] // field docs are on the C header and the types below

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

/// The ABI version this crate speaks. A plugin built for another is refused.
pub const ABI_VERSION: u32 = 1;

/// The one symbol a v2 plugin exports.
pub const PLUGIN_SYMBOL: &str = "nylon_v2_plugin";

/// `const nylon_v2_plugin_t *nylon_v2_plugin(void)`.
pub type GetPluginFn = unsafe extern "C" fn() -> *const PluginTable;

/// A borrowed byte string: `{ptr, len}`. `ptr` is meaningless when `len == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Str {
    /// First byte.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

// SAFETY: a Str is a borrowed view; sharing it is sound for the 'static
// strings used in plugin tables, the only place it sits in a static.
unsafe impl Sync for Str {}
// SAFETY: as above; the pointee's lifetime is governed by the ABI rules, not
// by the thread that holds the view.
unsafe impl Send for Str {}

impl Str {
    /// The empty string.
    pub const EMPTY: Str = Str {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// A view of a static string (for plugin tables).
    pub const fn from_static(s: &'static str) -> Str {
        Str {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// A view of `b`, valid as long as `b` is.
    pub fn from_bytes(b: &[u8]) -> Str {
        Str {
            ptr: b.as_ptr(),
            len: b.len(),
        }
    }

    /// The bytes.
    ///
    /// # Safety
    ///
    /// - If `len > 0`, `ptr` points to `len` bytes valid and unchanged for `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            return &[];
        }
        // SAFETY: delegated to the caller.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A status code: 0 is OK, 1 is pending, negatives are errors.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub i32);

impl Status {
    pub const OK: Status = Status(0);
    /// The phase goes on on another thread; the plugin calls `complete`.
    pub const PENDING: Status = Status(1);
    pub const ERROR: Status = Status(-1);
    /// A panic was caught at the boundary.
    pub const PANIC: Status = Status(-2);
    pub const NOT_FOUND: Status = Status(-3);
    pub const INVALID: Status = Status(-4);
    /// The call or session is no longer valid.
    pub const CLOSED: Status = Status(-5);
    /// A bounded buffer is full.
    pub const FULL: Status = Status(-6);
    pub const VERSION: Status = Status(-7);

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "ok",
            1 => "pending",
            -1 => "error",
            -2 => "panic",
            -3 => "not found",
            -4 => "invalid",
            -5 => "closed",
            -6 => "full",
            -7 => "version mismatch",
            _ => "unknown status",
        }
    }
}

/// How a phase ends.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Next = 1,
    End = 2,
    StreamEnd = 3,
    /// WebSocket mode: the phase goes on until the connection closes.
    WebSocket = 4,
}

impl Flow {
    /// Decodes a flow value from a plugin.
    pub fn from_u32(v: u32) -> Option<Flow> {
        Some(match v {
            1 => Flow::Next,
            2 => Flow::End,
            3 => Flow::StreamEnd,
            4 => Flow::WebSocket,
            _ => return None,
        })
    }
}

/// Byte-string fields for [`HostTable::read`].
///
/// METHOD, PATH, QUERY, HOST, CLIENT_IP and ERROR are always valid UTF-8 (the
/// host takes them from text values); the others are bytes.
pub mod field {
    pub const METHOD: u32 = 1;
    pub const PATH: u32 = 2;
    pub const QUERY: u32 = 3;
    pub const HOST: u32 = 4;
    pub const CLIENT_IP: u32 = 5;
    pub const URL: u32 = 6;
    pub const REQUEST_BODY: u32 = 7;
    /// The middleware payload (JSON text; empty when none).
    pub const PAYLOAD: u32 = 8;
    /// Route params as JSON (`{...}` or `null`).
    pub const PARAMS: u32 = 9;
    pub const RESPONSE_BODY: u32 = 10;
    pub const ERROR: u32 = 11;
}

/// Integer fields for [`HostTable::number`].
pub mod number {
    pub const RESPONSE_STATUS: u32 = 1;
    pub const REQUEST_BYTES: u32 = 2;
    pub const REQUEST_TIMESTAMP_MS: u32 = 3;
    pub const RESPONSE_DURATION_MS: u32 = 4;
    pub const RESPONSE_BYTES: u32 = 5;
}

/// WebSocket event and frame kinds.
pub mod ws {
    pub const OPEN: u32 = 1;
    pub const TEXT: u32 = 2;
    pub const BINARY: u32 = 3;
    pub const CLOSE: u32 = 4;
    pub const ERROR: u32 = 5;
}

/// An opaque, borrowed handle to one phase call (`nylon_v2_call_h_ref`).
#[repr(C)]
#[derive(Debug)]
pub struct CallHandle {
    _private: [u8; 0],
}

/// The host's function table, handed to the plugin at `init`.
///
/// Every function takes the call handle of the phase it is used in. Reads
/// return borrowed data; commands copy their arguments and return at once.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HostTable {
    pub abi_version: u32,
    /// `sizeof(nylon_v2_host_t)`.
    pub size: u32,
    pub read: unsafe extern "C" fn(call: *mut CallHandle, field: u32, out: *mut Str) -> i32,
    /// First value of a request header (case-insensitive); NOT_FOUND if absent.
    pub header: unsafe extern "C" fn(call: *mut CallHandle, name: Str, out: *mut Str) -> i32,
    /// The request header at `index`; NOT_FOUND past the end.
    pub header_at: unsafe extern "C" fn(
        call: *mut CallHandle,
        index: usize,
        name: *mut Str,
        value: *mut Str,
    ) -> i32,
    /// The response header at `index` (as at phase start); NOT_FOUND past the end.
    pub response_header_at: unsafe extern "C" fn(
        call: *mut CallHandle,
        index: usize,
        name: *mut Str,
        value: *mut Str,
    ) -> i32,
    pub number: unsafe extern "C" fn(call: *mut CallHandle, which: u32, out: *mut u64) -> i32,
    pub set_header: unsafe extern "C" fn(call: *mut CallHandle, name: Str, value: Str) -> i32,
    pub remove_header: unsafe extern "C" fn(call: *mut CallHandle, name: Str) -> i32,
    pub set_status: unsafe extern "C" fn(call: *mut CallHandle, status: u16) -> i32,
    pub set_body: unsafe extern "C" fn(call: *mut CallHandle, body: Str) -> i32,
    pub stream_header: unsafe extern "C" fn(call: *mut CallHandle) -> i32,
    pub stream_write: unsafe extern "C" fn(call: *mut CallHandle, data: Str) -> i32,
    /// Asks for the WebSocket handshake; return Flow::WebSocket from the phase.
    pub ws_upgrade: unsafe extern "C" fn(call: *mut CallHandle) -> i32,
    pub ws_send: unsafe extern "C" fn(call: *mut CallHandle, kind: u32, data: Str) -> i32,
    pub ws_close: unsafe extern "C" fn(call: *mut CallHandle) -> i32,
    /// `join` 1 joins, 0 leaves.
    pub ws_room: unsafe extern "C" fn(call: *mut CallHandle, room: Str, join: u32) -> i32,
    pub ws_broadcast:
        unsafe extern "C" fn(call: *mut CallHandle, room: Str, kind: u32, data: Str) -> i32,
    /// Records an error message for the phase (reported with an ERROR status).
    pub error: unsafe extern "C" fn(call: *mut CallHandle, message: Str) -> i32,
    /// Marks the call as handed to another thread, before the phase returns
    /// PENDING. From then on host functions on it may be called from any
    /// thread (they serialise on the call), until `complete`.
    pub detach: unsafe extern "C" fn(call: *mut CallHandle) -> i32,
    /// Completes a phase that returned PENDING, from any thread, exactly once.
    pub complete: unsafe extern "C" fn(call: *mut CallHandle, status: i32, flow: u32) -> i32,
}

/// The plugin's table, returned by `nylon_v2_plugin()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PluginTable {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// `sizeof(nylon_v2_plugin_t)` as the plugin was built.
    pub size: u32,
    /// `sizeof(nylon_v2_host_t)` as the plugin was built.
    pub host_size: u32,
    pub reserved: u32,
    pub name: Str,
    /// Entry names; an entry's id is its index.
    pub entries: *const Str,
    pub entry_count: usize,
    /// Creates a plugin instance from the config (JSON text, may be empty).
    pub init: unsafe extern "C" fn(
        host: *const HostTable,
        config: Str,
        out_instance: *mut *mut c_void,
    ) -> i32,
    /// Opens a session of an entry; returns its state in `out_state`.
    pub open: unsafe extern "C" fn(
        instance: *mut c_void,
        entry: u32,
        session: u64,
        out_state: *mut *mut c_void,
    ) -> i32,
    /// Runs one phase (1..=4). OK with `*out_flow` set, PENDING, or an error.
    pub phase: unsafe extern "C" fn(
        state: *mut c_void,
        phase: u32,
        call: *mut CallHandle,
        out_flow: *mut u32,
    ) -> i32,
    /// A WebSocket event; commands go through `call`.
    pub ws_event: unsafe extern "C" fn(
        state: *mut c_void,
        kind: u32,
        data: Str,
        call: *mut CallHandle,
    ) -> i32,
    /// Closes a session; `state` is not used again.
    pub close: unsafe extern "C" fn(state: *mut c_void),
    /// Destroys an instance; called once, after every session is closed.
    pub shutdown: unsafe extern "C" fn(instance: *mut c_void),
}

// SAFETY: the table is immutable data and function pointers; the entry
// pointer refers to static data of the plugin.
unsafe impl Sync for PluginTable {}
// SAFETY: as above.
unsafe impl Send for PluginTable {}

#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<Str>() == 16);
    assert!(size_of::<HostTable>() == 8 + 19 * 8);
    assert!(offset_of!(HostTable, read) == 8);
    assert!(offset_of!(HostTable, complete) == 8 + 18 * 8);
    assert!(size_of::<PluginTable>() == 16 + 16 + 16 + 6 * 8);
    assert!(offset_of!(PluginTable, name) == 16);
    assert!(offset_of!(PluginTable, entries) == 32);
    assert!(offset_of!(PluginTable, init) == 48);
    assert!(offset_of!(PluginTable, shutdown) == 88);
};

/// Why a v2 table was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    /// Another ABI version.
    Version { found: u32, expected: u32 },
    /// The plugin table's layout size differs from ours.
    PluginLayout { found: u32, expected: u32 },
    /// The plugin was built against a host table of another size.
    HostLayout { found: u32, expected: u32 },
    /// The entry list is not readable.
    Entries,
    /// `nylon_v2_plugin()` returned NULL.
    Null,
}

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Version { found, expected } => {
                write!(f, "plugin speaks v2 ABI version {found}, this host speaks {expected}")
            }
            Self::PluginLayout { found, expected } => write!(
                f,
                "plugin table is {found} bytes, this host expects {expected}: built for another layout"
            ),
            Self::HostLayout { found, expected } => write!(
                f,
                "plugin was built against a {found}-byte host table, this host has {expected}"
            ),
            Self::Entries => f.write_str("plugin entry list is missing"),
            Self::Null => f.write_str("nylon_v2_plugin() returned NULL"),
        }
    }
}

impl std::error::Error for TableError {}

impl PluginTable {
    /// Checks version and layout sizes, before anything else in the table is used.
    ///
    /// # Errors
    ///
    /// [`TableError`] describing the first mismatch.
    pub fn check(&self) -> Result<(), TableError> {
        if self.abi_version != ABI_VERSION {
            return Err(TableError::Version {
                found: self.abi_version,
                expected: ABI_VERSION,
            });
        }
        let expected = size_of::<PluginTable>() as u32;
        if self.size != expected {
            return Err(TableError::PluginLayout {
                found: self.size,
                expected,
            });
        }
        let expected = size_of::<HostTable>() as u32;
        if self.host_size != expected {
            return Err(TableError::HostLayout {
                found: self.host_size,
                expected,
            });
        }
        if self.entry_count > 0 && self.entries.is_null() {
            return Err(TableError::Entries);
        }
        Ok(())
    }

    /// The entry names, lossily decoded.
    ///
    /// # Safety
    ///
    /// - [`PluginTable::check`] passed, and `entries` points to
    ///   `entry_count` valid [`Str`]s whose bytes live as long as the plugin.
    pub unsafe fn entry_names(&self) -> Vec<String> {
        if self.entry_count == 0 {
            return Vec::new();
        }
        // SAFETY: delegated to the caller.
        let entries = unsafe { std::slice::from_raw_parts(self.entries, self.entry_count) };
        entries
            .iter()
            // SAFETY: delegated to the caller.
            .map(|s| String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned())
            .collect()
    }
}
