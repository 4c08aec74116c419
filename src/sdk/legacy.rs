//! The legacy-ABI export glue and runtime of the Rust plugin SDK.
//!
//! This is the plugin half of the baseline design, with today's costs and
//! without today's bugs (`docs/baseline.md`): every payload is `malloc`ed and
//! copied before the callback, each phase runs on a freshly spawned task, and a
//! read is a request followed by a wait on a mutex and condvar over a map keyed
//! by method id. Unlike the Go SDK, a read waits for its own reply (one read at
//! a time per session, with a predicate), an empty reply is a value, closing a
//! session frees its state and wakes its readers, `NEXT`/`END` are sent after
//! the handler's commands, and WebSocket events are delivered in order.
//!
//! Where a phase runs: by default on a cached pool that starts a thread when
//! none is idle (today's task per phase). A session whose
//! [`Session::phase_pool`] names a [`PhasePool`] runs its phases on that
//! pool's fixed set of threads instead, as Go's runtime runs goroutines on a
//! few OS threads: the phase starts there and ends there, with `NEXT` sent
//! from that thread.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock, RwLock, TryLockError};
use std::time::{Duration, Instant};

use super::{panic_message, Flow, Plugin, SdkError, Session, WsEvent};
use crate::abi::legacy::{DataEventFn, FfiBuffer, Method, Phase, SDK_ERROR_METHOD};
use crate::channel::{self, Backpressure};
use crate::codec::{self, scalar};
use crate::spawn::{Job, Spawner};

/// How long a read waits for the host before giving up with [`SdkError::Timeout`].
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);

struct Runtime {
    plugin: RwLock<Option<Arc<dyn Plugin>>>,
    sessions: RwLock<HashMap<u32, Arc<SessionState>>>,
    tasks: Spawner,
}

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime {
    plugin: RwLock::new(None),
    sessions: RwLock::new(HashMap::new()),
    tasks: Spawner::new("nylon-sdk-phase"),
});

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn session(sid: u32) -> Option<Arc<SessionState>> {
    RUNTIME
        .sessions
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&sid)
        .cloned()
}

/// A fixed set of plugin threads that run phases (see the [module docs](self)).
///
/// The threads start on first use and live as long as the process. A phase
/// that blocks (a read waiting for the host) holds its thread meanwhile, so a
/// pool smaller than the number of sessions in flight makes phases queue.
///
/// ```ignore
/// static POOL: PhasePool = PhasePool::new("my-plugin", 4);
/// // in Session: fn phase_pool(&self) -> Option<&'static PhasePool> { Some(&POOL) }
/// ```
#[derive(Debug)]
pub struct PhasePool {
    name: &'static str,
    threads: usize,
    queue: usize,
    tx: OnceLock<channel::Sender<Job>>,
}

impl PhasePool {
    /// Phases a pool holds waiting for a thread, by default.
    pub const DEFAULT_QUEUE: usize = 4096;

    /// A pool of `threads` threads (at least one), named `name`, holding at
    /// most [`PhasePool::DEFAULT_QUEUE`] phases waiting.
    pub const fn new(name: &'static str, threads: usize) -> Self {
        Self::with_queue(name, threads, Self::DEFAULT_QUEUE)
    }

    /// As [`PhasePool::new`], holding at most `queue` phases (at least one)
    /// waiting for a thread; a phase past that is refused at once (the host
    /// hears an error for that session), never queued without bound.
    pub const fn with_queue(name: &'static str, threads: usize, queue: usize) -> Self {
        Self {
            name,
            threads,
            queue,
            tx: OnceLock::new(),
        }
    }

    /// The number of threads.
    pub fn threads(&self) -> usize {
        self.threads.max(1)
    }

    /// Runs `job` on one of the pool's threads; a panic in it is caught.
    ///
    /// # Errors
    ///
    /// The job back when the queue is full: the caller runs on the host's
    /// thread (inside `event_stream`), which must never wait for the pool.
    fn run(&self, job: Job) -> Result<(), Job> {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = channel::bounded::<Job>(self.queue.max(1), Backpressure::Reject);
            let rx = Arc::new(rx);
            for _ in 0..self.threads() {
                let rx = Arc::clone(&rx);
                // A thread that cannot start leaves its jobs to the others;
                // with none at all, jobs wait and the host times the phase out.
                let _ = std::thread::Builder::new()
                    .name(self.name.into())
                    .spawn(move || {
                        while let Some(job) = rx.recv() {
                            let _ = catch_unwind(AssertUnwindSafe(job));
                        }
                    });
            }
            tx
        });
        // The threads hold the receiver for ever, so only `Full` happens.
        tx.send(job).map_err(channel::SendError::into_inner)
    }
}

struct Replies {
    slots: HashMap<u32, Vec<u8>>,
    closed: bool,
}

enum OwnedEvent {
    Open,
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Close,
    Error(Vec<u8>),
}

struct SessionState {
    sid: u32,
    cb: DataEventFn,
    /// Where phases run; `None`: the SDK's cached pool.
    pool: Option<&'static PhasePool>,
    handler: Mutex<Box<dyn Session>>,
    pending: Mutex<VecDeque<OwnedEvent>>,
    replies: Mutex<Replies>,
    replied: Condvar,
    read_gate: Mutex<()>,
}

impl SessionState {
    /// Sends one message to the host the way today's SDK does: a `malloc`ed
    /// copy of the payload, the callback, then `free`.
    fn send(&self, method: u32, payload: &[u8]) {
        let copy = if payload.is_empty() {
            std::ptr::null_mut()
        } else {
            // SAFETY: malloc of a non-zero size; the result is checked for NULL.
            let p = unsafe { libc::malloc(payload.len()) }.cast::<u8>();
            if p.is_null() {
                return;
            }
            // SAFETY: p has room for payload.len() bytes and does not overlap payload.
            unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), p, payload.len()) };
            p
        };
        let buf = FfiBuffer {
            sid: self.sid,
            phase: 0,
            method,
            ptr: copy,
            len: payload.len() as u64,
        };
        // SAFETY: buf and its payload stay valid for the whole call, which is all
        // the ABI lets the host keep them; cb is the host's callback.
        unsafe { (self.cb)(&buf) };
        if !copy.is_null() {
            // SAFETY: allocated by malloc above and not freed since.
            unsafe { libc::free(copy.cast()) };
        }
    }

    /// Sends a read and waits for its own reply.
    fn read(&self, method: Method, arg: &[u8]) -> Result<Vec<u8>, SdkError> {
        let id = method as u32;
        let _one_read_at_a_time = lock(&self.read_gate);
        {
            let mut r = lock(&self.replies);
            if r.closed {
                return Err(SdkError::Closed);
            }
            r.slots.remove(&id);
        }
        // The host may reply inline, inside this call: no lock is held here.
        self.send(id, arg);
        let deadline = Instant::now() + READ_TIMEOUT;
        let mut r = lock(&self.replies);
        loop {
            if let Some(v) = r.slots.remove(&id) {
                return Ok(v);
            }
            if r.closed {
                return Err(SdkError::Closed);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SdkError::Timeout);
            }
            r = self
                .replied
                .wait_timeout(r, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn deliver_reply(&self, method: u32, data: &[u8]) {
        let mut r = lock(&self.replies);
        if !r.closed {
            r.slots.insert(method, data.to_vec());
        }
        drop(r);
        self.replied.notify_all();
    }

    fn close(&self) {
        lock(&self.replies).closed = true;
        self.replied.notify_all();
    }

    /// Delivers queued WebSocket events if no handler is running; otherwise the
    /// running handler's owner delivers them when it finishes.
    fn drain_events(&self) {
        loop {
            let mut h = match self.handler.try_lock() {
                Ok(h) => h,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            loop {
                let Some(ev) = lock(&self.pending).pop_front() else {
                    break;
                };
                let event = match &ev {
                    OwnedEvent::Open => WsEvent::Open,
                    OwnedEvent::Text(t) => WsEvent::Text(t),
                    OwnedEvent::Binary(b) => WsEvent::Binary(b),
                    OwnedEvent::Close => WsEvent::Close,
                    OwnedEvent::Error(e) => WsEvent::Error(e),
                };
                let mut ws = WsCx { state: self };
                let r = catch_unwind(AssertUnwindSafe(|| h.on_websocket(event, &mut ws)));
                if let Err(p) = r {
                    self.send(SDK_ERROR_METHOD, panic_message(&*p).as_bytes());
                }
            }
            drop(h);
            // An event queued while we held the lock, by a thread whose
            // try_lock failed, is ours to deliver.
            if lock(&self.pending).is_empty() {
                return;
            }
        }
    }

    fn run_phase(self: Arc<Self>, phase: Phase) {
        let mut h = lock(&self.handler);
        let mut cx = PhaseCx {
            state: &self,
            phase,
        };
        let result = catch_unwind(AssertUnwindSafe(|| match phase {
            Phase::RequestFilter => h.request_filter(&mut cx),
            Phase::ResponseFilter => h.response_filter(&mut cx),
            Phase::ResponseBodyFilter => h.response_body_filter(&mut cx),
            Phase::Logging | Phase::Zero => h.logging(&mut cx),
        }));
        match result {
            Ok(Ok(Flow::Next)) => self.send(Method::Next as u32, &[]),
            Ok(Ok(Flow::End)) => self.send(Method::End as u32, &[]),
            Ok(Ok(Flow::StreamEnd)) => self.send(Method::SetResponseStreamEnd as u32, &[]),
            Ok(Ok(Flow::Hold)) => {}
            Ok(Err(e)) => self.send(SDK_ERROR_METHOD, e.to_string().as_bytes()),
            Err(p) => self.send(SDK_ERROR_METHOD, panic_message(&*p).as_bytes()),
        }
        drop(h);
        self.drain_events();
    }
}

/// What a phase handler can do: reads that return values, commands that send.
pub struct PhaseCx<'a> {
    state: &'a SessionState,
    phase: Phase,
}

impl std::fmt::Debug for PhaseCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseCx")
            .field("sid", &self.state.sid)
            .field("phase", &self.phase)
            .finish()
    }
}

fn lossy(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn decimal<T>(v: &[u8], parse: fn(&[u8]) -> Option<T>) -> Result<T, SdkError> {
    parse(v)
        .ok_or_else(|| SdkError::Decode(format!("not a decimal: {}", String::from_utf8_lossy(v))))
}

fn header_pairs(v: &[u8]) -> Result<Vec<(String, String)>, SdkError> {
    let hs = codec::decode_headers(v).map_err(|e| SdkError::Decode(e.to_string()))?;
    Ok(hs
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

impl PhaseCx<'_> {
    /// The session id.
    pub fn sid(&self) -> u32 {
        self.state.sid
    }

    /// The phase this handler runs in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    fn read(&self, m: Method) -> Result<Vec<u8>, SdkError> {
        self.state.read(m, &[])
    }

    /// The middleware payload as raw JSON bytes (empty when none is configured).
    ///
    /// # Errors
    ///
    /// [`SdkError::Closed`] or [`SdkError::Timeout`], as for every read.
    pub fn payload(&self) -> Result<Vec<u8>, SdkError> {
        self.read(Method::GetPayload)
    }

    /// The middleware payload parsed as JSON (`Null` when none is configured).
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`], and [`SdkError::Decode`] for invalid JSON.
    pub fn payload_json(&self) -> Result<serde_json::Value, SdkError> {
        let raw = self.payload()?;
        if raw.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&raw).map_err(|e| SdkError::Decode(e.to_string()))
    }

    /// The whole request body.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_body(&self) -> Result<Vec<u8>, SdkError> {
        self.read(Method::ReadRequestFullBody)
    }

    /// The first value of a request header; empty when absent.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_header(&self, name: &str) -> Result<String, SdkError> {
        self.state
            .read(Method::ReadRequestHeader, name.as_bytes())
            .map(lossy)
    }

    /// Every request header in order, names lower-case, repeats kept.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`], and [`SdkError::Decode`] for a bad FlatBuffer.
    pub fn request_headers(&self) -> Result<Vec<(String, String)>, SdkError> {
        header_pairs(&self.read(Method::ReadRequestHeaders)?)
    }

    /// Every request header as the host sent them: a `NylonHttpHeaders`
    /// FlatBuffer, to be read in place with
    /// [`decode_headers`](crate::codec::decode_headers) (borrowed pairs, no
    /// `String` per header).
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_headers_raw(&self) -> Result<Vec<u8>, SdkError> {
        self.read(Method::ReadRequestHeaders)
    }

    /// `scheme://host[:port]path[?query]`.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_url(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestUrl).map(lossy)
    }

    /// The URI path.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_path(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestPath).map(lossy)
    }

    /// The raw query, without `?`.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_query(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestQuery).map(lossy)
    }

    /// Route params; `None` when the host never set them.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`], and [`SdkError::Decode`] for bad JSON.
    pub fn request_params(&self) -> Result<Option<Vec<(String, String)>>, SdkError> {
        let raw = self.read(Method::ReadRequestParams)?;
        scalar::decode_params(&raw).map_err(|e| SdkError::Decode(e.to_string()))
    }

    /// The host, without port.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_host(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestHost).map(lossy)
    }

    /// The client IP.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn client_ip(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestClientIp).map(lossy)
    }

    /// The request method token.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn request_method(&self) -> Result<String, SdkError> {
        self.read(Method::ReadRequestMethod).map(lossy)
    }

    /// The request's `Content-Length` (0 when missing).
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`], and [`SdkError::Decode`] for a bad decimal.
    pub fn request_bytes(&self) -> Result<i64, SdkError> {
        decimal(&self.read(Method::ReadRequestBytes)?, scalar::parse_i64)
    }

    /// When the request started, ms since the Unix epoch.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::request_bytes`].
    pub fn request_timestamp_ms(&self) -> Result<u64, SdkError> {
        decimal(&self.read(Method::ReadRequestTimestamp)?, scalar::parse_u64)
    }

    /// The response body as the host has it (set body, or the current chunk).
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn response_body(&self) -> Result<Vec<u8>, SdkError> {
        self.read(Method::ReadResponseFullBody)
    }

    /// The response status.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::request_bytes`].
    pub fn response_status(&self) -> Result<u16, SdkError> {
        let v = decimal(&self.read(Method::ReadResponseStatus)?, scalar::parse_u64)?;
        u16::try_from(v).map_err(|_| SdkError::Decode(format!("status {v} out of range")))
    }

    /// The response body length.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::request_bytes`].
    pub fn response_bytes(&self) -> Result<i64, SdkError> {
        decimal(&self.read(Method::ReadResponseBytes)?, scalar::parse_i64)
    }

    /// The current response headers.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::request_headers`].
    pub fn response_headers(&self) -> Result<Vec<(String, String)>, SdkError> {
        header_pairs(&self.read(Method::ReadResponseHeaders)?)
    }

    /// Milliseconds since the request started.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::request_bytes`].
    pub fn response_duration_ms(&self) -> Result<u64, SdkError> {
        decimal(&self.read(Method::ReadResponseDuration)?, scalar::parse_u64)
    }

    /// The proxy's error message, empty when none.
    ///
    /// # Errors
    ///
    /// As [`PhaseCx::payload`].
    pub fn response_error(&self) -> Result<String, SdkError> {
        self.read(Method::ReadResponseError).map(lossy)
    }

    /// Sets a response header (replacing every value of the name).
    pub fn set_response_header(&self, name: &str, value: &str) {
        let buf = codec::encode_header_kv(name, value);
        self.state.send(Method::SetResponseHeader as u32, &buf);
    }

    /// Removes every value of a response header.
    pub fn remove_response_header(&self, name: &str) {
        self.state
            .send(Method::RemoveResponseHeader as u32, name.as_bytes());
    }

    /// Sets the response status.
    pub fn set_response_status(&self, status: u16) {
        self.state.send(
            Method::SetResponseStatus as u32,
            &scalar::encode_status(status),
        );
    }

    /// Replaces the response body.
    pub fn set_response_body(&self, body: &[u8]) {
        self.state.send(Method::SetResponseFullBody as u32, body);
    }

    /// Writes the response header of a streamed response now.
    pub fn stream_header(&self) {
        self.state.send(Method::SetResponseStreamHeader as u32, &[]);
    }

    /// Writes one body chunk of a streamed response now. Finish the stream by
    /// returning [`Flow::StreamEnd`].
    pub fn stream_write(&self, data: &[u8]) {
        self.state.send(Method::SetResponseStreamData as u32, data);
    }

    /// Asks the host to upgrade to WebSocket. Return [`Flow::Hold`]: events
    /// then arrive at [`Session::on_websocket`], starting with
    /// [`WsEvent::Open`], and the phase ends when the connection closes.
    pub fn websocket_upgrade(&self) {
        self.state.send(Method::WebsocketUpgrade as u32, &[]);
    }

    /// The WebSocket commands, usable from a phase handler too.
    pub fn ws(&self) -> WsCx<'_> {
        WsCx { state: self.state }
    }

    /// Sends a raw message, as the Go SDK's `RequestMethod` does. For tools and
    /// tests; a plugin has no need of it.
    #[doc(hidden)]
    pub fn send_raw(&self, method: u32, payload: &[u8]) {
        self.state.send(method, payload);
    }

    /// Sends a raw message on behalf of another session id (hostile-plugin tests).
    #[doc(hidden)]
    pub fn send_raw_as(&self, sid: u32, method: u32, payload: &[u8]) {
        (self.raw_sender())(sid, method, payload);
    }

    /// A function that sends raw messages through this session's host
    /// callback from any thread, even after the session closed (tests of late
    /// and stray messages).
    #[doc(hidden)]
    pub fn raw_sender(&self) -> impl Fn(u32, u32, &[u8]) + Send + 'static {
        let cb = self.state.cb;
        move |sid, method, payload| {
            let buf = FfiBuffer::new(sid, Phase::Zero, method, payload);
            // SAFETY: buf and payload are valid for the call; the host
            // callback is a process-lifetime function.
            unsafe { cb(&buf) };
        }
    }

    /// Hands an arbitrary buffer, possibly lying about its payload, to the host
    /// callback (hostile-plugin tests). The host must validate it.
    ///
    /// # Safety
    ///
    /// - If `buf.ptr` is non-NULL and `buf.len > 0`, it points to `len`
    ///   readable bytes: the host checks NULL and lengths, but cannot check
    ///   that a non-NULL pointer is valid.
    #[doc(hidden)]
    pub unsafe fn send_raw_buffer(&self, buf: &FfiBuffer) {
        // SAFETY: buf is valid for the call; its payload by the caller's contract.
        unsafe { (self.state.cb)(buf) };
    }
}

/// WebSocket commands; all fire-and-forget.
pub struct WsCx<'a> {
    state: &'a SessionState,
}

impl std::fmt::Debug for WsCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsCx")
            .field("sid", &self.state.sid)
            .finish()
    }
}

impl WsCx<'_> {
    /// Sends a text frame.
    pub fn send_text(&self, text: &[u8]) {
        self.state.send(Method::WebsocketSendText as u32, text);
    }

    /// Sends a binary frame.
    pub fn send_binary(&self, data: &[u8]) {
        self.state.send(Method::WebsocketSendBinary as u32, data);
    }

    /// Closes the connection; this ends the phase.
    pub fn close(&self) {
        self.state.send(Method::WebsocketClose as u32, &[]);
    }

    /// Joins a room (an empty name is ignored by the host).
    pub fn join_room(&self, room: &str) {
        self.state
            .send(Method::WebsocketJoinRoom as u32, room.as_bytes());
    }

    /// Leaves a room.
    pub fn leave_room(&self, room: &str) {
        self.state
            .send(Method::WebsocketLeaveRoom as u32, room.as_bytes());
    }

    /// Broadcasts text to a room, this connection included.
    pub fn broadcast_text(&self, room: &str, text: &[u8]) {
        let p = scalar::join_room_payload(room.as_bytes(), text);
        self.state
            .send(Method::WebsocketBroadcastRoomText as u32, &p);
    }

    /// Broadcasts binary to a room, this connection included.
    pub fn broadcast_binary(&self, room: &str, data: &[u8]) {
        let p = scalar::join_room_payload(room.as_bytes(), data);
        self.state
            .send(Method::WebsocketBroadcastRoomBinary as u32, &p);
    }
}

/// Glue for the exported `initialize`.
///
/// # Safety
///
/// - If `len > 0`, `config` points to `len` readable bytes for the call.
pub unsafe fn initialize<P: Plugin>(config: *const u8, len: u32) {
    let _ = catch_unwind(|| {
        let cfg = if len == 0 || config.is_null() {
            &[][..]
        } else {
            // SAFETY: the caller guarantees config/len for the call.
            unsafe { std::slice::from_raw_parts(config, len as usize) }
        };
        let plugin: Arc<dyn Plugin> = Arc::new(P::initialize(cfg));
        *RUNTIME.plugin.write().unwrap_or_else(|e| e.into_inner()) = Some(plugin);
    });
}

/// Glue for the exported `register_session_stream`; returns 1 on success.
///
/// # Safety
///
/// - If `len > 0`, `entry` points to `len` readable bytes for the call.
/// - `cb` stays callable for as long as the session is open.
pub unsafe fn register_session_stream(sid: u32, entry: *const u8, len: u32, cb: DataEventFn) -> u8 {
    let r = catch_unwind(|| {
        let entry = if len == 0 || entry.is_null() {
            &[][..]
        } else {
            // SAFETY: the caller guarantees entry/len for the call.
            unsafe { std::slice::from_raw_parts(entry, len as usize) }
        };
        let Ok(entry) = std::str::from_utf8(entry) else {
            return 0;
        };
        let plugin = RUNTIME
            .plugin
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(handler) = plugin.and_then(|p| p.open(entry, sid)) else {
            return 0;
        };
        let state = Arc::new(SessionState {
            sid,
            cb,
            pool: handler.phase_pool(),
            handler: Mutex::new(handler),
            pending: Mutex::new(VecDeque::new()),
            replies: Mutex::new(Replies {
                slots: HashMap::new(),
                closed: false,
            }),
            replied: Condvar::new(),
            read_gate: Mutex::new(()),
        });
        let old = RUNTIME
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, state);
        if let Some(old) = old {
            old.close();
        }
        1
    });
    r.unwrap_or(0)
}

/// Glue for the exported `event_stream`.
///
/// # Safety
///
/// - `buf` is NULL or points to a valid `FfiBuffer` whose payload is readable
///   for the call.
pub unsafe fn event_stream(buf: *const FfiBuffer) {
    let _ = catch_unwind(|| {
        if buf.is_null() {
            return;
        }
        // SAFETY: non-null and valid for the call by the caller's contract.
        let buf = unsafe { *buf };
        let Some(state) = session(buf.sid) else {
            return;
        };
        match Phase::from_u8(buf.phase) {
            Some(Phase::Zero) => {}
            Some(phase) => {
                match state.pool {
                    Some(pool) => {
                        let s = Arc::clone(&state);
                        if pool.run(Box::new(move || s.run_phase(phase))).is_err() {
                            // Refused, not queued: the session hears why.
                            state.send(SDK_ERROR_METHOD, b"the plugin's phase queue is full");
                        }
                    }
                    None => RUNTIME
                        .tasks
                        .spawn(Box::new(move || state.run_phase(phase))),
                }
                return;
            }
            None => return,
        }
        // SAFETY: the host guarantees ptr/len for the call.
        let Ok(data) = (unsafe { buf.payload() }) else {
            return;
        };
        let event = match Method::from_u32(buf.method) {
            Some(Method::WebsocketOnOpen) => OwnedEvent::Open,
            Some(Method::WebsocketOnMessageText) => OwnedEvent::Text(data.to_vec()),
            Some(Method::WebsocketOnMessageBinary) => OwnedEvent::Binary(data.to_vec()),
            Some(Method::WebsocketOnClose) => OwnedEvent::Close,
            Some(Method::WebsocketOnError) => OwnedEvent::Error(data.to_vec()),
            _ => {
                state.deliver_reply(buf.method, data);
                return;
            }
        };
        lock(&state.pending).push_back(event);
        state.drain_events();
    });
}

/// Glue for the exported `close_session_stream`: frees the session and wakes
/// any reader still waiting in it.
pub fn close_session_stream(sid: u32) {
    let _ = catch_unwind(|| {
        let state = RUNTIME
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&sid);
        if let Some(s) = state {
            s.close();
        }
    });
}

/// Glue for the exported `shutdown`: calls [`Plugin::shutdown`] and closes
/// every session.
pub fn shutdown() {
    let _ = catch_unwind(|| {
        let plugin = RUNTIME
            .plugin
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = plugin {
            p.shutdown();
        }
        let sessions: Vec<_> = RUNTIME
            .sessions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, s) in sessions {
            s.close();
        }
    });
}

/// Exports the six legacy symbols for a [`Plugin`] type.
///
/// ```ignore
/// nylon_transport::export_legacy_plugin!(MyPlugin);
/// ```
#[macro_export]
macro_rules! export_legacy_plugin {
    ($plugin:ty) => {
        /// Legacy ABI: `void initialize(const uint8_t *cfg, uint32_t len)`.
        ///
        /// # Safety
        ///
        /// - `cfg` points to `len` readable bytes for the call.
        #[no_mangle]
        pub unsafe extern "C" fn initialize(cfg: *const u8, len: u32) {
            // SAFETY: delegated to the caller (the host), per the legacy ABI.
            unsafe { $crate::sdk::legacy::initialize::<$plugin>(cfg, len) }
        }

        /// Legacy ABI: `void plugin_free(uint8_t *p)`. No legacy message hands
        /// plugin memory to the host, so there is nothing to free.
        #[no_mangle]
        pub extern "C" fn plugin_free(_p: *mut u8) {}

        /// Legacy ABI: `bool register_session_stream(...)`.
        ///
        /// # Safety
        ///
        /// - `entry` points to `len` readable bytes for the call.
        /// - `cb` stays callable while the session is open.
        #[no_mangle]
        pub unsafe extern "C" fn register_session_stream(
            sid: u32,
            entry: *const u8,
            len: u32,
            cb: $crate::abi::legacy::DataEventFn,
        ) -> u8 {
            // SAFETY: delegated to the caller (the host), per the legacy ABI.
            unsafe { $crate::sdk::legacy::register_session_stream(sid, entry, len, cb) }
        }

        /// Legacy ABI: `void event_stream(const FfiBuffer *buf)`.
        ///
        /// # Safety
        ///
        /// - `buf` and its payload are valid for the call.
        #[no_mangle]
        pub unsafe extern "C" fn event_stream(buf: *const $crate::abi::legacy::FfiBuffer) {
            // SAFETY: delegated to the caller (the host), per the legacy ABI.
            unsafe { $crate::sdk::legacy::event_stream(buf) }
        }

        /// Legacy ABI: `void close_session_stream(uint32_t sid)`.
        #[no_mangle]
        pub extern "C" fn close_session_stream(sid: u32) {
            $crate::sdk::legacy::close_session_stream(sid)
        }

        /// Legacy ABI: `void shutdown(void)`.
        #[no_mangle]
        pub extern "C" fn shutdown() {
            $crate::sdk::legacy::shutdown()
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_full_phase_pool_refuses_at_once_and_runs_what_it_took() {
        static POOL: PhasePool = PhasePool::with_queue("test-pool", 1, 1);
        let (started_tx, started) = mpsc::channel::<u32>();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let job = |n: u32| -> Job {
            let started_tx = started_tx.clone();
            let gate = Arc::clone(&gate);
            Box::new(move || {
                let _ = started_tx.send(n);
                let _ = lock(&gate).recv_timeout(Duration::from_secs(30));
            })
        };
        // The one thread takes job 1 and blocks in it.
        assert!(POOL.run(job(1)).is_ok());
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(1));
        // Job 2 waits in the queue of one; job 3 is refused, without waiting.
        assert!(POOL.run(job(2)).is_ok());
        let refused = std::time::Instant::now();
        assert!(POOL.run(job(3)).is_err(), "a full queue must refuse");
        assert!(refused.elapsed() < Duration::from_secs(10));
        // Released, the pool runs job 2 (and never job 3).
        release.send(()).unwrap();
        assert_eq!(started.recv_timeout(Duration::from_secs(10)), Ok(2));
        release.send(()).unwrap();
        assert!(started.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
