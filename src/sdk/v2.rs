//! The plugin side of the v2 ABI: direct calls, zero-copy reads, batched
//! commands. See [`crate::abi::v2`] for the contract.
//!
//! ```no_run
//! use nylon_transport::sdk::v2::{Call, Handler, Plugin};
//! use nylon_transport::sdk::{Flow, SdkError};
//!
//! struct Auth;
//! struct AuthHandler;
//!
//! impl Plugin for Auth {
//!     const NAME: &'static str = "auth";
//!     const ENTRIES: &'static [nylon_transport::abi::v2::Str] = nylon_transport::entries!["auth"];
//!     fn initialize(_config: &[u8]) -> Result<Self, String> {
//!         Ok(Auth)
//!     }
//!     fn open(&self, _entry: u32) -> Option<Box<dyn Handler>> {
//!         Some(Box::new(AuthHandler))
//!     }
//! }
//!
//! impl Handler for AuthHandler {
//!     fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
//!         if cx.header("x-api-key").is_none() {
//!             cx.set_status(401);
//!             return Ok(Flow::End);
//!         }
//!         Ok(Flow::Next)
//!     }
//! }
//!
//! nylon_transport::export_v2_plugin!(Auth);
//! ```

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crossbeam_queue::ArrayQueue;

use super::{panic_message, Flow, SdkError, WsEvent};
use crate::abi::v2::{self, field, number, CallHandle, HostTable, PluginTable, Status, Str};

/// A v2 plugin: one instance per `init`.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The plugin's name, reported by `inspect`.
    const NAME: &'static str;
    /// The entries; an entry's id is its index. Build with [`entries!`](crate::entries).
    const ENTRIES: &'static [Str];

    /// Builds the plugin from its JSON config text (empty when none).
    ///
    /// # Errors
    ///
    /// A message; the host refuses to load the plugin.
    fn initialize(config: &[u8]) -> Result<Self, String>;

    /// Opens a session of entry `entry` (an index into `ENTRIES`).
    fn open(&self, entry: u32) -> Option<Box<dyn Handler>>;

    /// Called once when the host unloads the plugin.
    fn shutdown(&self) {}
}

/// One session of a v2 entry. Handlers default to [`Flow::Next`].
///
/// Return [`Flow::Hold`] after [`Call::websocket_upgrade`] for WebSocket mode.
/// To finish a phase on another thread, call [`Call::detach`], move the
/// [`Detached`] there, return anything, and call [`Detached::complete`].
pub trait Handler: Send + 'static {
    /// Phase 1.
    ///
    /// # Errors
    ///
    /// Any [`SdkError`]: an error outcome for the session.
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 2.
    ///
    /// # Errors
    ///
    /// As [`Handler::request_filter`].
    fn response_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 3, once per body chunk.
    ///
    /// # Errors
    ///
    /// As [`Handler::request_filter`].
    fn response_body_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 4.
    ///
    /// # Errors
    ///
    /// As [`Handler::request_filter`].
    fn logging(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// A WebSocket event; commands on `cx` apply when it returns.
    fn on_websocket(&mut self, event: WsEvent<'_>, cx: &mut Call<'_>) {
        let _ = (event, cx);
    }
}

/// Builds a `&'static [Str]` of entry names for [`Plugin::ENTRIES`].
#[macro_export]
macro_rules! entries {
    ($($name:literal),* $(,)?) => {
        &[$($crate::abi::v2::Str::from_static($name)),*]
    };
}

/// Exports `nylon_v2_plugin` for a [`Plugin`](crate::sdk::v2::Plugin) type.
#[macro_export]
macro_rules! export_v2_plugin {
    ($plugin:ty) => {
        /// v2 ABI: `const nylon_v2_plugin_t *nylon_v2_plugin(void)`.
        #[no_mangle]
        pub extern "C" fn nylon_v2_plugin() -> *const $crate::abi::v2::PluginTable {
            $crate::sdk::v2::table::<$plugin>()
        }
    };
}

/// The plugin table for `P`, for export or for an in-process plugin
/// ([`V2Plugin::from_static`](crate::transport::v2::V2Plugin::from_static)).
pub fn table<P: Plugin>() -> &'static PluginTable {
    struct Holder<P>(PhantomData<P>);
    impl<P: Plugin> Holder<P> {
        const TABLE: PluginTable = PluginTable {
            abi_version: v2::ABI_VERSION,
            size: size_of::<PluginTable>() as u32,
            host_size: size_of::<HostTable>() as u32,
            reserved: 0,
            name: Str::from_static(P::NAME),
            entries: P::ENTRIES.as_ptr(),
            entry_count: P::ENTRIES.len(),
            init: init::<P>,
            open: open::<P>,
            phase,
            ws_event,
            close,
            shutdown: shutdown::<P>,
        };
    }
    &Holder::<P>::TABLE
}

/// Closed session boxes an instance keeps for reuse, at most.
const SPARE_SESSIONS: usize = 1024;

struct Instance<P> {
    plugin: P,
    host: &'static HostTable,
    /// Closed session boxes kept for reuse, so a steady stream of sessions
    /// allocates nothing on the plugin side either.
    spare: ArrayQueue<Box<SessionBox>>,
}

/// A handler that does nothing, parked in spare session boxes.
struct Parked;

impl Handler for Parked {}

struct SessionBox {
    host: &'static HostTable,
    handler: Box<dyn Handler>,
    /// The instance's spare queue (the instance outlives its sessions).
    spare: *const ArrayQueue<Box<SessionBox>>,
}

unsafe extern "C" fn init<P: Plugin>(
    host: *const HostTable,
    config: Str,
    out: *mut *mut c_void,
) -> i32 {
    catch_unwind(|| {
        if host.is_null() || out.is_null() {
            return Status::INVALID.0;
        }
        // SAFETY: the host table is static in the host, by the v2 ABI.
        let host: &'static HostTable = unsafe { &*host };
        if host.abi_version != v2::ABI_VERSION || (host.size as usize) < size_of::<HostTable>() {
            return Status::VERSION.0;
        }
        // SAFETY: the config is valid for the call.
        let cfg = unsafe { config.as_bytes() };
        match P::initialize(cfg) {
            Ok(plugin) => {
                let inst = Box::new(Instance {
                    plugin,
                    host,
                    spare: ArrayQueue::new(SPARE_SESSIONS),
                });
                // SAFETY: out is non-null and writable.
                unsafe { out.write(Box::into_raw(inst).cast()) };
                Status::OK.0
            }
            Err(_) => Status::ERROR.0,
        }
    })
    .unwrap_or(Status::PANIC.0)
}

unsafe extern "C" fn open<P: Plugin>(
    instance: *mut c_void,
    entry: u32,
    _session: u64,
    out: *mut *mut c_void,
) -> i32 {
    catch_unwind(|| {
        if instance.is_null() || out.is_null() {
            return Status::INVALID.0;
        }
        // SAFETY: the instance pointer came from init::<P>.
        let inst = unsafe { &*instance.cast::<Instance<P>>() };
        match inst.plugin.open(entry) {
            Some(handler) => {
                let b = match inst.spare.pop() {
                    Some(mut b) => {
                        b.handler = handler;
                        b
                    }
                    None => Box::new(SessionBox {
                        host: inst.host,
                        handler,
                        spare: &inst.spare,
                    }),
                };
                // SAFETY: out is non-null and writable.
                unsafe { out.write(Box::into_raw(b).cast()) };
                Status::OK.0
            }
            None => Status::NOT_FOUND.0,
        }
    })
    .unwrap_or(Status::PANIC.0)
}

fn report(host: &HostTable, call: *mut CallHandle, message: &str) {
    // SAFETY: call is the live handle of this phase.
    unsafe { (host.error)(call, Str::from_bytes(message.as_bytes())) };
}

unsafe extern "C" fn phase(
    state: *mut c_void,
    phase: u32,
    call: *mut CallHandle,
    out_flow: *mut u32,
) -> i32 {
    if state.is_null() || out_flow.is_null() {
        return Status::INVALID.0;
    }
    // SAFETY: state came from open and the host never runs two calls of one
    // session at once.
    let s = unsafe { &mut *state.cast::<SessionBox>() };
    let host = s.host;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut cx = Call {
            host,
            call,
            detached: false,
            _phase: PhantomData,
        };
        let r = match phase {
            1 => s.handler.request_filter(&mut cx),
            2 => s.handler.response_filter(&mut cx),
            3 => s.handler.response_body_filter(&mut cx),
            4 => s.handler.logging(&mut cx),
            _ => Err(SdkError::Handler(format!("unknown phase {phase}"))),
        };
        if cx.detached {
            // The phase ends through `Detached::complete`; whatever the
            // handler returned is ignored.
            return Status::PENDING.0;
        }
        match r {
            Ok(flow) => {
                // SAFETY: out_flow is non-null and writable.
                unsafe { out_flow.write(flow_value(flow)) };
                Status::OK.0
            }
            Err(e) => failed(host, call, e),
        }
    }));
    match r {
        Ok(st) => st,
        Err(p) => {
            report(host, call, &panic_message(&*p));
            Status::PANIC.0
        }
    }
}

/// Reports a handler's error to the host (cold: off the phase's hot path).
#[cold]
#[inline(never)]
fn failed(host: &HostTable, call: *mut CallHandle, e: SdkError) -> i32 {
    report(host, call, &e.to_string());
    Status::ERROR.0
}

#[inline]
fn flow_value(flow: Flow) -> u32 {
    (match flow {
        Flow::Next => v2::Flow::Next,
        Flow::End => v2::Flow::End,
        Flow::StreamEnd => v2::Flow::StreamEnd,
        Flow::Hold => v2::Flow::WebSocket,
    }) as u32
}

unsafe extern "C" fn ws_event(
    state: *mut c_void,
    kind: u32,
    data: Str,
    call: *mut CallHandle,
) -> i32 {
    if state.is_null() {
        return Status::INVALID.0;
    }
    // SAFETY: as in `phase`.
    let s = unsafe { &mut *state.cast::<SessionBox>() };
    // SAFETY: data is valid for the call.
    let bytes = unsafe { data.as_bytes() };
    let event = match kind {
        v2::ws::OPEN => WsEvent::Open,
        v2::ws::TEXT => WsEvent::Text(bytes),
        v2::ws::BINARY => WsEvent::Binary(bytes),
        v2::ws::CLOSE => WsEvent::Close,
        v2::ws::ERROR => WsEvent::Error(bytes),
        _ => return Status::INVALID.0,
    };
    let host = s.host;
    let mut cx = Call {
        host,
        call,
        detached: false,
        _phase: PhantomData,
    };
    match catch_unwind(AssertUnwindSafe(|| s.handler.on_websocket(event, &mut cx))) {
        Ok(()) if cx.detached => Status::PENDING.0,
        Ok(()) => Status::OK.0,
        Err(p) => {
            report(host, call, &panic_message(&*p));
            Status::PANIC.0
        }
    }
}

unsafe extern "C" fn close(state: *mut c_void) {
    if state.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: state came from open; the host closes it once.
        let mut b = unsafe { Box::from_raw(state.cast::<SessionBox>()) };
        // Dropping the user's handler may panic; it is caught above.
        b.handler = Box::new(Parked);
        // SAFETY: the instance (and its queue) outlives every session: the
        // host shuts the instance down only after all sessions are closed.
        let spare = unsafe { &*b.spare };
        // A full queue drops the box instead.
        let _ = spare.push(b);
    });
}

unsafe extern "C" fn shutdown<P: Plugin>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    let _ = catch_unwind(|| {
        // SAFETY: instance came from init::<P>; the host shuts it down once.
        let inst = unsafe { Box::from_raw(instance.cast::<Instance<P>>()) };
        inst.plugin.shutdown();
    });
}

/// One phase call: reads return data borrowed for the phase, commands apply
/// in order when the phase returns.
pub struct Call<'a> {
    host: &'static HostTable,
    call: *mut CallHandle,
    detached: bool,
    _phase: PhantomData<&'a mut ()>,
}

impl std::fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").finish_non_exhaustive()
    }
}

macro_rules! reads {
    ($life:lifetime) => {
        #[inline]
        fn read(&self, which: u32) -> &$life [u8] {
            let mut out = Str::EMPTY;
            // SAFETY: the call handle is live for this phase.
            let st = unsafe { (self.host.read)(self.call, which, &mut out) };
            if st == Status::OK.0 {
                // SAFETY: the host guarantees the bytes for the phase.
                unsafe { out.as_bytes() }
            } else {
                &[]
            }
        }

        /// A text field. The host hands out these fields from `&str`
        /// values (v2 ABI: METHOD, PATH, QUERY, HOST, CLIENT_IP and ERROR are
        /// UTF-8), so they are not validated again; URL is.
        #[inline]
        fn text(&self, which: u32) -> &$life str {
            let bytes = self.read(which);
            if which == field::URL {
                return std::str::from_utf8(bytes).unwrap_or("");
            }
            debug_assert!(std::str::from_utf8(bytes).is_ok());
            // SAFETY: the host guarantees UTF-8 for these fields (see above).
            unsafe { std::str::from_utf8_unchecked(bytes) }
        }

        /// The request method.
        pub fn method(&self) -> &$life str {
            self.text(field::METHOD)
        }

        /// The URI path.
        pub fn path(&self) -> &$life str {
            self.text(field::PATH)
        }

        /// The raw query, without `?`.
        pub fn query(&self) -> &$life str {
            self.text(field::QUERY)
        }

        /// The host, without port.
        pub fn host(&self) -> &$life str {
            self.text(field::HOST)
        }

        /// The client IP.
        pub fn client_ip(&self) -> &$life str {
            self.text(field::CLIENT_IP)
        }

        /// `scheme://host[:port]path[?query]`.
        pub fn url(&self) -> &$life str {
            self.text(field::URL)
        }

        /// The request body.
        pub fn request_body(&self) -> &$life [u8] {
            self.read(field::REQUEST_BODY)
        }

        /// The middleware payload, JSON text (empty when none).
        pub fn payload(&self) -> &$life [u8] {
            self.read(field::PAYLOAD)
        }

        /// One top-level key of the payload, as raw JSON bytes, without
        /// parsing the rest or allocating ([`crate::codec::json::lookup`]).
        pub fn payload_get(&self, key: &str) -> Result<Option<&$life [u8]>, SdkError> {
            crate::codec::json::lookup(self.payload(), key.as_bytes())
                .map_err(|e| SdkError::Decode(e.to_string()))
        }

        /// The whole payload parsed with sonic-rs (allocates; `Null` when no
        /// payload is configured).
        pub fn payload_value(&self) -> Result<sonic_rs::Value, SdkError> {
            let raw = self.payload();
            if raw.is_empty() {
                return Ok(sonic_rs::Value::new());
            }
            sonic_rs::from_slice(raw).map_err(|e| SdkError::Decode(e.to_string()))
        }

        /// Route params as JSON (`{...}` or `null`).
        pub fn params_json(&self) -> &$life [u8] {
            self.read(field::PARAMS)
        }

        /// The response body (the set body, or the current chunk).
        pub fn response_body(&self) -> &$life [u8] {
            self.read(field::RESPONSE_BODY)
        }

        /// The proxy error message, empty when none.
        pub fn error(&self) -> &$life str {
            self.text(field::ERROR)
        }

        /// The first value of a request header, `None` when absent.
        #[inline]
        pub fn header(&self, name: &str) -> Option<&$life [u8]> {
            let mut out = Str::EMPTY;
            // SAFETY: live handle; name is valid for the call.
            let st = unsafe { (self.host.header)(self.call, Str::from_bytes(name.as_bytes()), &mut out) };
            // SAFETY: the host guarantees the bytes for the phase.
            (st == Status::OK.0).then(|| unsafe { out.as_bytes() })
        }

        /// The request headers in order, names lower-case.
        pub fn headers(&self) -> impl Iterator<Item = (&$life [u8], &$life [u8])> + '_ {
            self.pairs(self.host.header_at)
        }

        /// The response headers as at phase start.
        pub fn response_headers(&self) -> impl Iterator<Item = (&$life [u8], &$life [u8])> + '_ {
            self.pairs(self.host.response_header_at)
        }

        fn pairs(
            &self,
            f: unsafe extern "C" fn(*mut CallHandle, usize, *mut Str, *mut Str) -> i32,
        ) -> impl Iterator<Item = (&$life [u8], &$life [u8])> + '_ {
            (0..).map_while(move |i| {
                let (mut n, mut v) = (Str::EMPTY, Str::EMPTY);
                // SAFETY: live handle; out-pointers are valid.
                let st = unsafe { f(self.call, i, &mut n, &mut v) };
                // SAFETY: the host guarantees the bytes for the phase.
                (st == Status::OK.0).then(|| unsafe { (n.as_bytes(), v.as_bytes()) })
            })
        }

        #[inline]
        fn number(&self, which: u32) -> u64 {
            let mut out = 0u64;
            // SAFETY: live handle; out is valid.
            let st = unsafe { (self.host.number)(self.call, which, &mut out) };
            if st == Status::OK.0 {
                out
            } else {
                0
            }
        }

        /// The response status.
        pub fn status(&self) -> u16 {
            self.number(number::RESPONSE_STATUS) as u16
        }

        /// The request's Content-Length (0 when missing).
        pub fn request_bytes(&self) -> u64 {
            self.number(number::REQUEST_BYTES)
        }

        /// Request start, ms since the Unix epoch.
        pub fn timestamp_ms(&self) -> u64 {
            self.number(number::REQUEST_TIMESTAMP_MS)
        }

        /// Milliseconds since the request started.
        pub fn duration_ms(&self) -> u64 {
            self.number(number::RESPONSE_DURATION_MS)
        }

        /// The response body length.
        pub fn response_bytes(&self) -> u64 {
            self.number(number::RESPONSE_BYTES)
        }

        /// Sets a response header (applied when the phase ends).
        #[inline]
        pub fn set_header(&self, name: &str, value: &str) {
            // SAFETY: live handle; arguments valid for the call (copied).
            unsafe {
                (self.host.set_header)(
                    self.call,
                    Str::from_bytes(name.as_bytes()),
                    Str::from_bytes(value.as_bytes()),
                )
            };
        }

        /// Removes a response header.
        pub fn remove_header(&self, name: &str) {
            // SAFETY: as above.
            unsafe { (self.host.remove_header)(self.call, Str::from_bytes(name.as_bytes())) };
        }

        /// Sets the response status.
        #[inline]
        pub fn set_status(&self, status: u16) {
            // SAFETY: live handle.
            unsafe { (self.host.set_status)(self.call, status) };
        }

        /// Replaces the response body.
        pub fn set_body(&self, body: &[u8]) {
            // SAFETY: as above.
            unsafe { (self.host.set_body)(self.call, Str::from_bytes(body)) };
        }

        /// Writes the header of a streamed response.
        pub fn stream_header(&self) {
            // SAFETY: live handle.
            unsafe { (self.host.stream_header)(self.call) };
        }

        /// Writes one chunk of a streamed response; end with [`Flow::StreamEnd`].
        pub fn stream_write(&self, data: &[u8]) {
            // SAFETY: as above.
            unsafe { (self.host.stream_write)(self.call, Str::from_bytes(data)) };
        }

        /// Sends a WebSocket text frame.
        pub fn ws_send_text(&self, text: &[u8]) {
            // SAFETY: as above.
            unsafe { (self.host.ws_send)(self.call, v2::ws::TEXT, Str::from_bytes(text)) };
        }

        /// Sends a WebSocket binary frame.
        pub fn ws_send_binary(&self, data: &[u8]) {
            // SAFETY: as above.
            unsafe { (self.host.ws_send)(self.call, v2::ws::BINARY, Str::from_bytes(data)) };
        }

        /// Closes the WebSocket; this ends the phase.
        pub fn ws_close(&self) {
            // SAFETY: live handle.
            unsafe { (self.host.ws_close)(self.call) };
        }

        /// Joins a room.
        pub fn join_room(&self, room: &str) {
            // SAFETY: as above.
            unsafe { (self.host.ws_room)(self.call, Str::from_bytes(room.as_bytes()), 1) };
        }

        /// Leaves a room.
        pub fn leave_room(&self, room: &str) {
            // SAFETY: as above.
            unsafe { (self.host.ws_room)(self.call, Str::from_bytes(room.as_bytes()), 0) };
        }

        /// Broadcasts text to a room, this connection included.
        pub fn broadcast_text(&self, room: &str, text: &[u8]) {
            // SAFETY: as above.
            unsafe {
                (self.host.ws_broadcast)(
                    self.call,
                    Str::from_bytes(room.as_bytes()),
                    v2::ws::TEXT,
                    Str::from_bytes(text),
                )
            };
        }

        /// Broadcasts binary to a room, this connection included.
        pub fn broadcast_binary(&self, room: &str, data: &[u8]) {
            // SAFETY: as above.
            unsafe {
                (self.host.ws_broadcast)(
                    self.call,
                    Str::from_bytes(room.as_bytes()),
                    v2::ws::BINARY,
                    Str::from_bytes(data),
                )
            };
        }
    };
}

impl<'a> Call<'a> {
    reads!('a);

    /// Asks for the WebSocket handshake; return [`Flow::Hold`].
    pub fn websocket_upgrade(&self) {
        // SAFETY: live handle.
        unsafe { (self.host.ws_upgrade)(self.call) };
    }

    /// Hands the phase to another thread. Whatever the handler returns
    /// afterwards is ignored; the phase ends with [`Detached::complete`].
    pub fn detach(&mut self) -> Detached {
        // SAFETY: live handle, on the thread inside the phase call.
        unsafe { (self.host.detach)(self.call) };
        self.detached = true;
        Detached {
            host: self.host,
            call: self.call,
            done: false,
        }
    }
}

/// A phase handed to another thread; complete it exactly once.
///
/// Reads borrow until the phase is completed. Dropping it without
/// completing ends the phase with an error.
pub struct Detached {
    host: &'static HostTable,
    call: *mut CallHandle,
    done: bool,
}

// SAFETY: after `detach` the host serialises every use of the call handle,
// from any thread (v2 ABI).
unsafe impl Send for Detached {}

impl std::fmt::Debug for Detached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detached")
            .field("done", &self.done)
            .finish()
    }
}

impl Detached {
    reads!('_);

    /// Completes the phase.
    ///
    /// # Errors
    ///
    /// [`SdkError::Closed`] when the host gave up on the phase (timeout).
    pub fn complete(mut self, result: Result<Flow, SdkError>) -> Result<(), SdkError> {
        self.done = true;
        let (status, flow) = match result {
            Ok(flow) => (Status::OK.0, flow_value(flow)),
            Err(e) => {
                report(self.host, self.call, &e.to_string());
                (Status::ERROR.0, 0)
            }
        };
        // SAFETY: the detached handle, completed once.
        let st = unsafe { (self.host.complete)(self.call, status, flow) };
        if st == Status::OK.0 {
            Ok(())
        } else {
            Err(SdkError::Closed)
        }
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        if !self.done {
            report(
                self.host,
                self.call,
                "detached phase dropped without completing",
            );
            // SAFETY: the detached handle, completed once.
            unsafe { (self.host.complete)(self.call, Status::ERROR.0, 0) };
        }
    }
}
