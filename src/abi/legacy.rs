//! The legacy Nylon plugin ABI, exactly as today's plugins speak it.
//!
//! Every message in both directions is an [`FfiBuffer`] passed by pointer.
//! Host to plugin goes through the plugin's `event_stream` symbol; plugin to
//! host goes through the [`DataEventFn`] callback handed to
//! `register_session_stream`.

use std::ffi::c_void;
use std::fmt;
use std::mem::{align_of, offset_of, size_of};

/// One message of the legacy protocol, in either direction.
///
/// # Memory layout
///
/// ```text
/// offset  0       4     5         8        12        16      24      32
///         +-------+-----+---------+--------+---------+-------+-------+
///         | sid   |phase| padding | method | padding |  ptr  |  len  |
///         | u32   | u8  |  (3)    |  u32   |  (4)    | *u8   |  u64  |
///         +-------+-----+---------+--------+---------+-------+-------+
/// ```
///
/// The padding bytes are unspecified and never read. `ptr` is meaningless
/// when `len == 0` (it may be NULL or dangling); [`FfiBuffer::payload`] tests
/// `len` first.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FfiBuffer {
    /// Session id, as handed to `register_session_stream`.
    pub sid: u32,
    /// Phase number (0..=4); 0 on every reply, event and plugin message.
    pub phase: u8,
    /// Method id (see [`Method`]); 0 is the phase-start pseudo-method.
    pub method: u32,
    /// Payload pointer, owned by the sender and valid only during the call.
    pub ptr: *const u8,
    /// Payload length in bytes.
    pub len: u64,
}

const _: () = {
    assert!(size_of::<FfiBuffer>() == 32);
    assert!(align_of::<FfiBuffer>() == 8);
    assert!(offset_of!(FfiBuffer, sid) == 0);
    assert!(offset_of!(FfiBuffer, phase) == 4);
    assert!(offset_of!(FfiBuffer, method) == 8);
    assert!(offset_of!(FfiBuffer, ptr) == 16);
    assert!(offset_of!(FfiBuffer, len) == 24);
};

impl FfiBuffer {
    /// Creates a message that borrows `payload` for as long as the buffer is used.
    ///
    /// An empty payload gets a non-null dangling pointer, as the original host sends.
    pub fn new(sid: u32, phase: Phase, method: u32, payload: &[u8]) -> Self {
        Self {
            sid,
            phase: phase as u8,
            method,
            ptr: payload.as_ptr(),
            len: payload.len() as u64,
        }
    }

    /// Returns the payload bytes, or an error if the length cannot be a real slice.
    ///
    /// # Errors
    ///
    /// [`PayloadError::TooLong`] if `len` exceeds `isize::MAX`, and
    /// [`PayloadError::Null`] if `len > 0` and `ptr` is NULL.
    ///
    /// # Safety
    ///
    /// - If `len > 0`, `ptr` must point to `len` initialised bytes that stay
    ///   valid and unchanged for `'a`.
    pub unsafe fn payload<'a>(&self) -> Result<&'a [u8], PayloadError> {
        if self.len == 0 {
            return Ok(&[]);
        }
        if self.len > isize::MAX as u64 {
            return Err(PayloadError::TooLong(self.len));
        }
        if self.ptr.is_null() {
            return Err(PayloadError::Null(self.len));
        }
        // SAFETY: ptr is non-null, len fits in isize, and the caller guarantees
        // that ptr points to len valid bytes for 'a.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) })
    }
}

/// Why the payload of an [`FfiBuffer`] could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadError {
    /// `len` does not fit in a slice.
    TooLong(u64),
    /// `ptr` is NULL while `len` is not zero.
    Null(u64),
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(len) => write!(f, "payload length {len} exceeds the address space"),
            Self::Null(len) => write!(f, "null payload pointer with length {len}"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// The host callback type: `void (*data_event_fn)(const FfiBuffer*)`.
pub type DataEventFn = unsafe extern "C" fn(*const FfiBuffer);
/// `void initialize(const uint8_t *cfg, uint32_t cfg_len)`.
pub type InitializeFn = unsafe extern "C" fn(*const u8, u32);
/// `void plugin_free(uint8_t *p)`; resolved, never called (no message hands memory over).
pub type PluginFreeFn = unsafe extern "C" fn(*mut u8);
/// `bool register_session_stream(uint32_t sid, const uint8_t *entry, uint32_t entry_len, data_event_fn cb)`.
///
/// Read as a `u8` and tested `!= 0`, so a C plugin returning another value is not UB.
pub type RegisterSessionStreamFn = unsafe extern "C" fn(u32, *const u8, u32, DataEventFn) -> u8;
/// `void event_stream(const FfiBuffer *buf)`.
pub type EventStreamFn = unsafe extern "C" fn(*const FfiBuffer);
/// `void close_session_stream(uint32_t sid)`.
pub type CloseSessionStreamFn = unsafe extern "C" fn(u32);
/// `void shutdown(void)`.
pub type ShutdownFn = unsafe extern "C" fn();

/// The six symbols every legacy plugin exports, in the order the original host resolves them.
pub const SYMBOLS: [&str; 6] = [
    "initialize",
    "plugin_free",
    "register_session_stream",
    "event_stream",
    "close_session_stream",
    "shutdown",
];

/// An opaque pointer type used only to compare symbol addresses.
pub type RawSymbol = *const c_void;

/// The phase byte of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Not a phase: marks replies to reads and WebSocket events.
    Zero = 0,
    /// Pingora `request_filter`.
    RequestFilter = 1,
    /// Pingora `response_filter` (upstream headers).
    ResponseFilter = 2,
    /// Pingora `response_body_filter`, once per body chunk.
    ResponseBodyFilter = 3,
    /// Pingora `logging`.
    Logging = 4,
}

impl Phase {
    /// The four real phases in the order the host runs them.
    pub const ALL: [Phase; 4] = [
        Phase::RequestFilter,
        Phase::ResponseFilter,
        Phase::ResponseBodyFilter,
        Phase::Logging,
    ];

    /// Decodes a phase byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Zero,
            1 => Self::RequestFilter,
            2 => Self::ResponseFilter,
            3 => Self::ResponseBodyFilter,
            4 => Self::Logging,
            _ => return None,
        })
    }

    /// The snake-case name used in CLI output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zero => "zero",
            Self::RequestFilter => "request_filter",
            Self::ResponseFilter => "response_filter",
            Self::ResponseBodyFilter => "response_body_filter",
            Self::Logging => "logging",
        }
    }
}

/// What a method does, which decides how the host treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    /// NEXT or END: ends the phase.
    Control,
    /// A read: the host replies exactly once, with the same method id.
    Read,
    /// A fire-and-forget command: no reply.
    Command,
    /// A host-to-plugin WebSocket event.
    Event,
}

macro_rules! methods {
    ($($(#[$doc:meta])* $name:ident = $id:literal, $wire:literal, $kind:ident;)*) => {
        /// A legacy method id (`legacy-abi.md` §4), in schema order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Method {
            $($(#[$doc])* $name = $id,)*
        }

        impl Method {
            /// Every method id, the phase-start pseudo-method 0 excluded.
            pub const ALL: [Method; 41] = [$(Method::$name),*];

            /// Decodes a method id; `None` for an unknown id (0 included).
            pub fn from_u32(id: u32) -> Option<Self> {
                match id {
                    $($id => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The Go SDK's string name of the method (`NylonMethods`).
            pub fn wire_name(self) -> &'static str {
                match self {
                    $(Self::$name => $wire,)*
                }
            }

            /// What the method does.
            pub fn kind(self) -> MethodKind {
                match self {
                    $(Self::$name => MethodKind::$kind,)*
                }
            }
        }
    };
}

methods! {
    /// Ends the phase: continue.
    Next = 1, "next", Control;
    /// Ends the phase: the plugin answered the request.
    End = 2, "end", Control;
    /// Read: the middleware's JSON payload.
    GetPayload = 3, "get_payload", Read;
    /// Command: set a response header (FlatBuffers `HeaderKeyValue`).
    SetResponseHeader = 100, "set_response_header", Command;
    /// Command: remove a response header by name.
    RemoveResponseHeader = 101, "remove_response_header", Command;
    /// Command: set the response status (big-endian u16).
    SetResponseStatus = 102, "set_response_status", Command;
    /// Command: replace the response body.
    SetResponseFullBody = 103, "set_response_full_body", Command;
    /// Command: write a body chunk downstream now.
    SetResponseStreamData = 104, "set_response_stream_data", Command;
    /// Command that ends the phase: finish a streamed response.
    SetResponseStreamEnd = 105, "set_response_stream_end", Command;
    /// Command: write the response header of a streamed response.
    SetResponseStreamHeader = 106, "set_response_stream_header", Command;
    /// Read: the response body.
    ReadResponseFullBody = 107, "read_response_full_body", Read;
    /// Read: the response status (ASCII decimal).
    ReadResponseStatus = 108, "read_response_status", Read;
    /// Read: the response body length (ASCII decimal).
    ReadResponseBytes = 109, "read_response_bytes", Read;
    /// Read: the response headers (FlatBuffers `NylonHttpHeaders`).
    ReadResponseHeaders = 110, "read_response_headers", Read;
    /// Read: milliseconds since the request started (ASCII decimal).
    ReadResponseDuration = 111, "read_response_duration", Read;
    /// Read: the proxy error message, empty if none.
    ReadResponseError = 112, "read_response_error", Read;
    /// Read: the whole request body.
    ReadRequestFullBody = 200, "read_request_full_body", Read;
    /// Read: the first value of one request header (case-insensitive name).
    ReadRequestHeader = 201, "read_request_header", Read;
    /// Read: all request headers (FlatBuffers `NylonHttpHeaders`).
    ReadRequestHeaders = 202, "read_request_headers", Read;
    /// Read: `scheme://host[:port]path[?query]`.
    ReadRequestUrl = 203, "read_request_url", Read;
    /// Read: the URI path.
    ReadRequestPath = 204, "read_request_path", Read;
    /// Read: the raw query, without `?`.
    ReadRequestQuery = 205, "read_request_query", Read;
    /// Read: route params as a JSON object, or `null`.
    ReadRequestParams = 206, "read_request_params", Read;
    /// Read: the host, without port.
    ReadRequestHost = 207, "read_request_host", Read;
    /// Read: the client IP, without port.
    ReadRequestClientIp = 208, "read_request_client_ip", Read;
    /// Read: the method token.
    ReadRequestMethod = 209, "read_request_method", Read;
    /// Read: the Content-Length value (ASCII decimal).
    ReadRequestBytes = 210, "read_request_bytes", Read;
    /// Read: request start, ms since the Unix epoch (ASCII decimal).
    ReadRequestTimestamp = 211, "read_request_timestamp", Read;
    /// Command: upgrade to WebSocket; the host answers with event 350.
    WebsocketUpgrade = 300, "websocket_upgrade", Command;
    /// Command: send a text frame.
    WebsocketSendText = 301, "websocket_send_text", Command;
    /// Command: send a binary frame.
    WebsocketSendBinary = 302, "websocket_send_binary", Command;
    /// Command that ends the phase: close the WebSocket.
    WebsocketClose = 303, "websocket_close", Command;
    /// Command: join a room.
    WebsocketJoinRoom = 310, "websocket_join_room", Command;
    /// Command: leave a room.
    WebsocketLeaveRoom = 311, "websocket_leave_room", Command;
    /// Command: broadcast text to a room (`room\0message`).
    WebsocketBroadcastRoomText = 312, "websocket_broadcast_room_text", Command;
    /// Command: broadcast binary to a room (`room\0payload`).
    WebsocketBroadcastRoomBinary = 313, "websocket_broadcast_room_binary", Command;
    /// Event: the WebSocket is open.
    WebsocketOnOpen = 350, "websocket_on_open", Event;
    /// Event: a client text message.
    WebsocketOnMessageText = 351, "websocket_on_message_text", Event;
    /// Event: a client binary message.
    WebsocketOnMessageBinary = 352, "websocket_on_message_binary", Event;
    /// Event: the WebSocket closed.
    WebsocketOnClose = 353, "websocket_on_close", Event;
    /// Event: a WebSocket error (UTF-8 message).
    WebsocketOnError = 354, "websocket_on_error", Event;
}

impl Method {
    /// The phase-start pseudo-method id (host to plugin only, with phase 1..=4).
    pub const PHASE_START: u32 = 0;

    /// Whether receiving this method ends the current phase.
    pub fn ends_phase(self) -> bool {
        matches!(
            self,
            Self::Next | Self::End | Self::SetResponseStreamEnd | Self::WebsocketClose
        )
    }
}

/// Extension method id with which our Rust SDK reports a handler error or panic.
///
/// A legacy host treats it as an unknown method, which is an error for the
/// session: the same outcome. Our host maps it to an `error` outcome carrying the
/// UTF-8 message in the payload. It is outside every range the legacy ABI uses.
pub const SDK_ERROR_METHOD: u32 = 0x4E59_0001;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forty_one_unique_methods_round_trip() {
        let mut ids: Vec<u32> = Method::ALL.iter().map(|m| *m as u32).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 41);
        for m in Method::ALL {
            assert_eq!(Method::from_u32(m as u32), Some(m));
        }
        assert_eq!(Method::from_u32(0), None);
        assert_eq!(Method::from_u32(4), None);
        assert_eq!(Method::from_u32(SDK_ERROR_METHOD), None);
    }

    #[test]
    fn method_kinds_match_the_spec_counts() {
        let count = |k| Method::ALL.iter().filter(|m| m.kind() == k).count();
        assert_eq!(count(MethodKind::Control), 2);
        assert_eq!(count(MethodKind::Read), 1 + 6 + 12);
        assert_eq!(count(MethodKind::Event), 5);
        assert_eq!(count(MethodKind::Command), 41 - 2 - 19 - 5);
    }

    #[test]
    fn empty_payload_ignores_the_pointer() {
        let buf = FfiBuffer {
            sid: 1,
            phase: 0,
            method: 1,
            ptr: std::ptr::null(),
            len: 0,
        };
        // SAFETY: len is 0, so ptr is not read.
        assert_eq!(unsafe { buf.payload() }, Ok(&[][..]));
        let bad = FfiBuffer { len: 3, ..buf };
        // SAFETY: ptr is null, which payload() rejects before reading.
        assert_eq!(unsafe { bad.payload() }, Err(PayloadError::Null(3)));
        let huge = FfiBuffer {
            len: u64::MAX,
            ptr: 8 as *const u8,
            ..buf
        };
        // SAFETY: len exceeds isize::MAX, which payload() rejects before reading.
        let result = unsafe { huge.payload() };
        assert_eq!(result, Err(PayloadError::TooLong(u64::MAX)));
    }
}
