//! The host side of the v2 ABI: direct calls, zero-copy reads, batched
//! commands (see [`crate::abi::v2`]).
//!
//! A phase is one call into the plugin. Reads during the call go straight to
//! the [`HttpContext`] through [`HOST_TABLE`] and return borrowed slices.
//! Commands are appended to the session's [`Commands`] buffer (bounded, its
//! memory reused across phases) and applied in order when the phase returns.
//! An asynchronous plugin detaches the call, returns `PENDING`, and completes
//! it from its own thread with `complete`, which wakes the phase's task
//! through the session's `AtomicWaker` (no condvar shared between sessions).
//! The synchronous form waits as [`super::wait`] describes (a short spin and
//! a few yields only while the recent completion latency is short, then a
//! park on its own thread, which the waker unparks).
//!
//! While a detached call is pending, the context stays lent to it: the host
//! functions reach it under the call's `busy` lock, and the phase future's
//! `Drop` revokes it under that same lock.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

use crossbeam_queue::ArrayQueue;
use libloading::Library;

use super::{OpenError, PhaseOutcome, SessionError, SessionOptions, TraceEntry, Transport};
use crate::abi::legacy::Phase;
use crate::abi::v2::{self, field, number, CallHandle, Flow, HostTable, PluginTable, Status, Str};
use crate::codec::fast::write_params;
use crate::host::context::{HttpContext, WsMessage, WsRecv};
use crate::host::loader::{load_v2, LoadError};
use crate::transport::wait::{run_started, Latency, PhaseProgress, WaitPolicy};

/// Command bytes one phase may buffer, at most (16 MiB); past it commands
/// return `FULL` and the phase fails with `QueueFull`.
pub const MAX_COMMAND_BYTES: usize = 16 << 20;
/// Commands one phase may buffer, at most.
pub const MAX_COMMANDS: usize = 1 << 16;

/// A loaded (or in-process) v2 plugin with its instance.
pub struct V2Plugin {
    table: &'static PluginTable,
    instance: *mut c_void,
    entries: Vec<String>,
    /// Call states of sessions that failed while a detached call may still
    /// be in the plugin's hands; freed at shutdown, never reused. On the
    /// heap: the plugin holds their addresses, which must not move.
    graveyard: Mutex<Vec<CallBox>>,
    /// Call states of closed sessions, reused by the next opens so that a
    /// steady stream of sessions allocates nothing (bounded; lock-free).
    spare: ArrayQueue<CallBox>,
    _lib: Option<Library>,
}

// SAFETY: the instance pointer is owned by the plugin, which the v2 ABI
// requires to be usable from any thread (entries are called concurrently).
unsafe impl Send for V2Plugin {}
// SAFETY: as above; the host only passes the pointer back to the plugin.
unsafe impl Sync for V2Plugin {}

impl fmt::Debug for V2Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V2Plugin")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl V2Plugin {
    /// Loads a v2 plugin library and initialises it with `config` (JSON text).
    ///
    /// # Errors
    ///
    /// [`LoadError`] for a missing symbol, a version or layout mismatch, or a
    /// failed `init`.
    pub fn load(path: impl AsRef<Path>, config: &[u8]) -> Result<Self, LoadError> {
        let (lib, table) = load_v2(path)?;
        Self::init(table, config, Some(lib))
    }

    /// Uses a plugin table linked into this process (no `dlopen`).
    ///
    /// # Errors
    ///
    /// As [`V2Plugin::load`], minus the loading.
    pub fn from_static(table: &'static PluginTable, config: &[u8]) -> Result<Self, LoadError> {
        table.check().map_err(LoadError::V2)?;
        Self::init(table, config, None)
    }

    fn init(
        table: &'static PluginTable,
        config: &[u8],
        lib: Option<Library>,
    ) -> Result<Self, LoadError> {
        // SAFETY: the table passed `check`; entry names are static plugin data.
        let entries = unsafe { table.entry_names() };
        let mut instance = std::ptr::null_mut();
        // SAFETY: HOST_TABLE is static; config outlives the call; out is valid.
        let st = unsafe { (table.init)(&HOST_TABLE, Str::from_bytes(config), &mut instance) };
        if st != Status::OK.0 {
            return Err(LoadError::Init(st));
        }
        Ok(Self {
            table,
            instance,
            entries,
            graveyard: Mutex::new(Vec::new()),
            spare: ArrayQueue::new(SPARE_CALLS),
            _lib: lib,
        })
    }

    /// The entry names; an entry's id is its index.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Resolves an entry name to its id, once, at configuration time.
    pub fn entry_id(&self, name: &str) -> Option<EntryId> {
        self.entries
            .iter()
            .position(|e| e == name)
            .map(|i| EntryId(i as u32))
    }
}

impl Drop for V2Plugin {
    fn drop(&mut self) {
        // SAFETY: called once; every session holds an Arc to the plugin, so
        // none is open any more.
        unsafe { (self.table.shutdown)(self.instance) };
        self.graveyard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Closed sessions' call states a plugin keeps for reuse, at most.
pub const SPARE_CALLS: usize = 4096;
/// A spare call state whose command buffer grew past this is freed instead.
const SPARE_CALL_BYTES: usize = 64 << 10;

impl V2Plugin {
    /// A call state for a new session: a spare one, or a new one.
    fn take_call(&self) -> CallBox {
        self.spare.pop().unwrap_or_else(CallState::boxed)
    }

    /// Keeps a closed session's call state for reuse (dropped when the
    /// spares are full). Only a call no plugin thread can reach comes here.
    fn give_back(&self, call: CallBox) {
        // SAFETY: the session is closed and its call revoked; the caller
        // owns the only reference.
        let inner = unsafe { call.owner() };
        // A session that buffered a flood keeps no memory past its life.
        if inner.cmds.bytes.capacity() > SPARE_CALL_BYTES
            || inner.cmds.ops.capacity() > SPARE_CALL_BYTES / 16
        {
            return;
        }
        let _ = self.spare.push(call);
    }
}

/// A resolved entry of a [`V2Plugin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId(pub u32);

/// One buffered command. Ranges index the command byte buffer.
#[derive(Clone, Copy, Debug)]
enum Cmd {
    SetHeader(u32, u32, u32),
    Remove(u32, u32),
    Status(u16),
    Body(u32, u32),
    StreamHeader,
    StreamWrite(u32, u32),
    WsUpgrade,
    WsSend(u32, u32, u32),
    WsClose,
    WsRoom(u32, u32, bool),
    WsBroadcast(u32, u32, u32, u32),
}

/// The per-session command buffer: bytes and operations, reused every phase.
#[derive(Debug, Default)]
pub struct Commands {
    bytes: Vec<u8>,
    ops: Vec<Cmd>,
    overflowed: bool,
}

impl Commands {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ops.clear();
        self.overflowed = false;
    }

    /// Copies `s` into the buffer; `None` when the bound would be passed.
    #[inline]
    fn put(&mut self, s: &[u8]) -> Option<u32> {
        if self.bytes.len() + s.len() > MAX_COMMAND_BYTES {
            self.overflowed = true;
            return None;
        }
        let at = self.bytes.len() as u32;
        self.bytes.extend_from_slice(s);
        Some(at)
    }

    /// Copies `a` then `b` into the buffer, adjacent; the offset of `a`, or
    /// `None` when the bound would be passed.
    #[inline]
    fn put2(&mut self, a: &[u8], b: &[u8]) -> Option<u32> {
        if self.bytes.len() + a.len() + b.len() > MAX_COMMAND_BYTES {
            self.overflowed = true;
            return None;
        }
        let at = self.bytes.len() as u32;
        self.bytes.reserve(a.len() + b.len());
        self.bytes.extend_from_slice(a);
        self.bytes.extend_from_slice(b);
        Some(at)
    }

    #[inline(always)]
    fn push(&mut self, cmd: Cmd) -> i32 {
        if self.ops.len() >= MAX_COMMANDS {
            self.overflowed = true;
            return Status::FULL.0;
        }
        self.ops.push(cmd);
        Status::OK.0
    }

    fn slice(&self, at: u32, len: u32) -> &[u8] {
        &self.bytes[at as usize..(at + len) as usize]
    }
}

/// Atomics of a call, shared with a plugin thread after `detach`.
#[derive(Debug, Default)]
struct CallSync {
    /// The plugin handed the call to another thread (complete via `complete`).
    shared: AtomicBool,
    /// Spin lock held by host functions on a shared call, and by the driver
    /// when it revokes the context.
    busy: AtomicBool,
    done: AtomicBool,
    status: AtomicI32,
    flow: AtomicU32,
    /// The task waiting for a detached call; `complete` wakes it.
    waker: AtomicWaker,
}

struct CallInner {
    ctx: Option<*mut (dyn HttpContext + 'static)>,
    cmds: Commands,
    url: Vec<u8>,
    params: Vec<u8>,
    error: Vec<u8>,
}

/// The state behind a [`CallHandle`]: one per session, reused every phase.
pub struct CallState {
    sync: CallSync,
    inner: UnsafeCell<CallInner>,
}

impl fmt::Debug for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallState").finish_non_exhaustive()
    }
}

// SAFETY: `inner` is only touched by the one thread that owns the call at a
// time: the driver between phases, the plugin's thread inside a phase call, or
// (after detach) whoever holds `busy`.
unsafe impl Sync for CallState {}
// SAFETY: as above.
unsafe impl Send for CallState {}

/// A heap-allocated [`CallState`], owned like a `Box` but held as a pointer.
///
/// A plugin thread keeps the call handle (a pointer into the state) while
/// the host moves the owner between the session, the spares and the
/// graveyard; a `Box` would assert unique access to the state at each move,
/// which a plugin thread's access through its handle then contradicts (Miri
/// with Tree Borrows reports it). Only shared references are ever made from
/// this pointer; the state's mutable parts are atomics and an `UnsafeCell`.
struct CallBox(NonNull<CallState>);

// SAFETY: owns a `CallState`, which is `Send` and `Sync`.
unsafe impl Send for CallBox {}
// SAFETY: as above; only `&CallState` is handed out.
unsafe impl Sync for CallBox {}

impl std::ops::Deref for CallBox {
    type Target = CallState;

    #[inline(always)]
    fn deref(&self) -> &CallState {
        // SAFETY: allocated in `CallState::boxed` and freed only in `Drop`.
        unsafe { self.0.as_ref() }
    }
}

impl Drop for CallBox {
    fn drop(&mut self) {
        // SAFETY: from `Box::into_raw` in `CallState::boxed`, freed once, here;
        // the owner drops it only when no plugin thread can reach the state.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

impl CallState {
    fn boxed() -> CallBox {
        let state = Box::new(Self {
            sync: CallSync::default(),
            inner: UnsafeCell::new(CallInner {
                ctx: None,
                cmds: Commands {
                    bytes: Vec::with_capacity(1024),
                    ops: Vec::with_capacity(64),
                    overflowed: false,
                },
                url: Vec::with_capacity(128),
                params: Vec::with_capacity(64),
                error: Vec::new(),
            }),
        });
        // SAFETY: `Box::into_raw` never returns null.
        CallBox(unsafe { NonNull::new_unchecked(Box::into_raw(state)) })
    }

    fn handle(&self) -> *mut CallHandle {
        (self as *const Self).cast_mut().cast()
    }

    /// The inner state, for the driver while no phase call is running.
    ///
    /// # Safety
    ///
    /// - No phase call is in progress and the call is not detached-and-live.
    #[allow(clippy::mut_from_ref)]
    unsafe fn owner(&self) -> &mut CallInner {
        // SAFETY: delegated to the caller.
        unsafe { &mut *self.inner.get() }
    }
}

/// Exclusive access to a call from a host function; releases `busy` on drop.
struct Enter<'a> {
    call: &'a CallState,
    locked: bool,
}

impl<'a> Enter<'a> {
    /// # Safety
    ///
    /// - `call` is a handle the host gave to the plugin for a phase that is
    ///   running, or a detached call whose state the host keeps alive.
    #[inline]
    unsafe fn new(call: *mut CallHandle) -> Option<(Self, &'a mut CallInner)> {
        if call.is_null() {
            return None;
        }
        // SAFETY: the handle points to a live CallState, by the caller's contract.
        let state: &'a CallState = unsafe { &*call.cast::<CallState>() };
        let locked = state.sync.shared.load(Ordering::Acquire);
        if locked {
            lock_busy(state);
        }
        let guard = Enter {
            call: state,
            locked,
        };
        // SAFETY: exclusive: either we are the thread inside the sync phase
        // call, or we hold `busy` on a detached call.
        let inner = unsafe { &mut *state.inner.get() };
        // A revoked call (after the phase, or a timed-out detached call).
        inner.ctx?;
        Some((guard, inner))
    }
}

impl Drop for Enter<'_> {
    fn drop(&mut self) {
        if self.locked {
            // SYNC POINT: releases the call to the driver or another plugin thread.
            self.call.sync.busy.store(false, Ordering::Release);
        }
    }
}

macro_rules! host_fn {
    ($call:ident, |$inner:ident| $body:expr) => {
        match catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: the plugin passes back the handle it was given (v2 ABI).
            let Some((_guard, $inner)) = (unsafe { Enter::new($call) }) else {
                return Status::CLOSED.0;
            };
            $body
        })) {
            Ok(st) => st,
            Err(_) => Status::PANIC.0,
        }
    };
}

/// The context of a call.
///
/// # Safety
///
/// - `lent` is Some (checked by `Enter::new`) and lent by a blocked driver,
///   and no other reference to the context is live.
#[inline]
unsafe fn ctx<'a>(lent: Option<*mut (dyn HttpContext + 'static)>) -> &'a mut dyn HttpContext {
    debug_assert!(lent.is_some());
    // SAFETY: Enter::new checked Some; the driver lent it and is blocked.
    unsafe { &mut *lent.unwrap_unchecked() }
}

/// Writes `bytes` to `out` (a plugin pointer), or reports INVALID.
///
/// # Safety
///
/// - `out` is NULL or valid for a write.
#[inline]
unsafe fn give(out: *mut Str, bytes: &[u8]) -> i32 {
    if out.is_null() {
        return Status::INVALID.0;
    }
    // SAFETY: non-null and writable by the caller's contract.
    unsafe { out.write(Str::from_bytes(bytes)) };
    Status::OK.0
}

unsafe extern "C" fn h_read(call: *mut CallHandle, which: u32, out: *mut Str) -> i32 {
    host_fn!(call, |inner| {
        // SAFETY: inside Enter (see `ctx`).
        let c = unsafe { ctx(inner.ctx) };
        let bytes: &[u8] = match which {
            field::METHOD => c.request_method().as_bytes(),
            field::PATH => c.request_path().as_bytes(),
            field::QUERY => c.request_query().as_bytes(),
            field::HOST => c.request_host().as_bytes(),
            field::CLIENT_IP => c.client_ip().as_bytes(),
            // Computed once per phase: a second read returns the same bytes
            // without rewriting a buffer the plugin may still be reading.
            field::URL => {
                if inner.url.is_empty() {
                    c.request_url(&mut inner.url);
                }
                &inner.url
            }
            field::REQUEST_BODY => c.request_body(),
            field::PAYLOAD => c.payload().unwrap_or(&[]),
            field::PARAMS => {
                if inner.params.is_empty() {
                    write_params(c.request_params(), &mut inner.params);
                }
                &inner.params
            }
            field::RESPONSE_BODY => c.response_body(),
            field::ERROR => c.response_error().as_bytes(),
            _ => return Status::INVALID.0,
        };
        // SAFETY: out is the plugin's out-pointer.
        unsafe { give(out, bytes) }
    })
}

unsafe extern "C" fn h_header(call: *mut CallHandle, name: Str, out: *mut Str) -> i32 {
    host_fn!(call, |inner| {
        // SAFETY: the plugin's name is valid for the call (v2 ABI).
        let name = unsafe { name.as_bytes() };
        // SAFETY: inside Enter.
        match unsafe { ctx(inner.ctx) }.request_header(name) {
            // SAFETY: out is the plugin's out-pointer.
            Some(v) => unsafe { give(out, v) },
            None => Status::NOT_FOUND.0,
        }
    })
}

/// Writes a header pair to the plugin's out-pointers.
///
/// # Safety
///
/// - `name` and `value` are NULL or valid for a write.
unsafe fn give_pair(pair: Option<(&[u8], &[u8])>, name: *mut Str, value: *mut Str) -> i32 {
    match pair {
        None => Status::NOT_FOUND.0,
        Some(_) if name.is_null() || value.is_null() => Status::INVALID.0,
        Some((n, v)) => {
            // SAFETY: non-null out-pointers of the plugin; the slices are
            // borrowed from the context, which does not change during the phase.
            unsafe {
                name.write(Str::from_bytes(n));
                value.write(Str::from_bytes(v));
            }
            Status::OK.0
        }
    }
}

unsafe extern "C" fn h_header_at(
    call: *mut CallHandle,
    index: usize,
    name: *mut Str,
    value: *mut Str,
) -> i32 {
    host_fn!(call, |inner| {
        // SAFETY: inside Enter.
        let c = unsafe { ctx(inner.ctx) };
        // SAFETY: the plugin's out-pointers.
        unsafe { give_pair(c.request_header_at(index), name, value) }
    })
}

unsafe extern "C" fn h_response_header_at(
    call: *mut CallHandle,
    index: usize,
    name: *mut Str,
    value: *mut Str,
) -> i32 {
    host_fn!(call, |inner| {
        // SAFETY: inside Enter.
        let c = unsafe { ctx(inner.ctx) };
        // SAFETY: the plugin's out-pointers.
        unsafe { give_pair(c.response_header_at(index), name, value) }
    })
}

unsafe extern "C" fn h_number(call: *mut CallHandle, which: u32, out: *mut u64) -> i32 {
    host_fn!(call, |inner| {
        // SAFETY: inside Enter.
        let c = unsafe { ctx(inner.ctx) };
        let v = match which {
            number::RESPONSE_STATUS => u64::from(c.response_status()),
            number::REQUEST_BYTES => c.request_content_length().max(0) as u64,
            number::REQUEST_TIMESTAMP_MS => c.request_timestamp_ms(),
            number::RESPONSE_DURATION_MS => c.response_duration_ms(),
            number::RESPONSE_BYTES => c.response_bytes(),
            _ => return Status::INVALID.0,
        };
        if out.is_null() {
            return Status::INVALID.0;
        }
        // SAFETY: non-null out-pointer of the plugin.
        unsafe { out.write(v) };
        Status::OK.0
    })
}

/// A host function that only appends to the command buffer. It cannot
/// unwind (no indexing, no unwrap; allocation failure aborts), so it skips
/// `catch_unwind`, which keeps the hot path of a command to a few instructions.
macro_rules! cmd_fn {
    ($call:ident, |$inner:ident| $body:expr) => {{
        // SAFETY: the plugin passes back the handle it was given (v2 ABI).
        let Some((_guard, $inner)) = (unsafe { Enter::new($call) }) else {
            return Status::CLOSED.0;
        };
        $body
    }};
}

macro_rules! put {
    ($cmds:expr, $s:expr) => {
        // SAFETY: the plugin's argument is valid for the call (v2 ABI).
        match $cmds.put(unsafe { $s.as_bytes() }) {
            Some(at) => (at, $s.len as u32),
            None => return Status::FULL.0,
        }
    };
}

unsafe extern "C" fn h_set_header(call: *mut CallHandle, name: Str, value: Str) -> i32 {
    cmd_fn!(call, |inner| {
        let c = &mut inner.cmds;
        // SAFETY: the plugin's arguments are valid for the call (v2 ABI).
        let (n, v) = unsafe { (name.as_bytes(), value.as_bytes()) };
        let Some(at) = c.put2(n, v) else {
            return Status::FULL.0;
        };
        c.push(Cmd::SetHeader(at, n.len() as u32, v.len() as u32))
    })
}

unsafe extern "C" fn h_remove_header(call: *mut CallHandle, name: Str) -> i32 {
    cmd_fn!(call, |inner| {
        let c = &mut inner.cmds;
        let (n, nl) = put!(c, name);
        c.push(Cmd::Remove(n, nl))
    })
}

unsafe extern "C" fn h_set_status(call: *mut CallHandle, status: u16) -> i32 {
    cmd_fn!(call, |inner| inner.cmds.push(Cmd::Status(status)))
}

unsafe extern "C" fn h_set_body(call: *mut CallHandle, body: Str) -> i32 {
    cmd_fn!(call, |inner| {
        let c = &mut inner.cmds;
        let (b, bl) = put!(c, body);
        c.push(Cmd::Body(b, bl))
    })
}

unsafe extern "C" fn h_stream_header(call: *mut CallHandle) -> i32 {
    cmd_fn!(call, |inner| inner.cmds.push(Cmd::StreamHeader))
}

unsafe extern "C" fn h_stream_write(call: *mut CallHandle, data: Str) -> i32 {
    cmd_fn!(call, |inner| {
        let c = &mut inner.cmds;
        let (d, dl) = put!(c, data);
        c.push(Cmd::StreamWrite(d, dl))
    })
}

unsafe extern "C" fn h_ws_upgrade(call: *mut CallHandle) -> i32 {
    cmd_fn!(call, |inner| inner.cmds.push(Cmd::WsUpgrade))
}

unsafe extern "C" fn h_ws_send(call: *mut CallHandle, kind: u32, data: Str) -> i32 {
    cmd_fn!(call, |inner| {
        if kind != v2::ws::TEXT && kind != v2::ws::BINARY {
            return Status::INVALID.0;
        }
        let c = &mut inner.cmds;
        let (d, dl) = put!(c, data);
        c.push(Cmd::WsSend(kind, d, dl))
    })
}

unsafe extern "C" fn h_ws_close(call: *mut CallHandle) -> i32 {
    cmd_fn!(call, |inner| inner.cmds.push(Cmd::WsClose))
}

unsafe extern "C" fn h_ws_room(call: *mut CallHandle, room: Str, join: u32) -> i32 {
    cmd_fn!(call, |inner| {
        let c = &mut inner.cmds;
        let (r, rl) = put!(c, room);
        c.push(Cmd::WsRoom(r, rl, join != 0))
    })
}

unsafe extern "C" fn h_ws_broadcast(call: *mut CallHandle, room: Str, kind: u32, data: Str) -> i32 {
    cmd_fn!(call, |inner| {
        if kind != v2::ws::TEXT && kind != v2::ws::BINARY {
            return Status::INVALID.0;
        }
        let c = &mut inner.cmds;
        let (r, rl) = put!(c, room);
        let (_, dl) = put!(c, data);
        c.push(Cmd::WsBroadcast(r, rl, kind, dl))
    })
}

unsafe extern "C" fn h_error(call: *mut CallHandle, message: Str) -> i32 {
    cmd_fn!(call, |inner| {
        inner.error.clear();
        // SAFETY: the plugin's message is valid for the call.
        let m = unsafe { message.as_bytes() };
        inner.error.extend_from_slice(&m[..m.len().min(4096)]);
        Status::OK.0
    })
}

unsafe extern "C" fn h_detach(call: *mut CallHandle) -> i32 {
    if call.is_null() {
        return Status::INVALID.0;
    }
    // SAFETY: the plugin passes the handle of the phase call in progress on
    // this thread (v2 ABI: detach before returning PENDING).
    let state: &CallState = unsafe { &*call.cast::<CallState>() };
    // SYNC POINT: published before the plugin hands the pointer to its thread.
    state.sync.shared.store(true, Ordering::Release);
    Status::OK.0
}

unsafe extern "C" fn h_complete(call: *mut CallHandle, status: i32, flow: u32) -> i32 {
    if call.is_null() {
        return Status::INVALID.0;
    }
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the plugin passes back the handle it was given.
        let state: &CallState = unsafe { &*call.cast::<CallState>() };
        if !state.sync.shared.load(Ordering::Acquire) {
            return Status::INVALID.0;
        }
        lock_busy(state);
        // SAFETY: we hold `busy`.
        let inner = unsafe { &mut *state.inner.get() };
        let mut waker = None;
        let st = if inner.ctx.is_none() || state.sync.done.load(Ordering::Relaxed) {
            // Too late (timed out) or twice: refused.
            Status::CLOSED.0
        } else {
            state.sync.status.store(status, Ordering::Relaxed);
            state.sync.flow.store(flow, Ordering::Relaxed);
            // SYNC POINT: the plugin's commands and result become visible to
            // the driver, which acquires `done`.
            state.sync.done.store(true, Ordering::Release);
            // Taken under `busy`, woken after it: the driver may reuse or
            // free the call as soon as `busy` is released.
            waker = state.sync.waker.take();
            Status::OK.0
        };
        // SYNC POINT: releases the call.
        state.sync.busy.store(false, Ordering::Release);
        if let Some(w) = waker {
            w.wake();
        }
        st
    }));
    r.unwrap_or(Status::PANIC.0)
}

/// The host table every v2 plugin gets.
pub static HOST_TABLE: HostTable = HostTable {
    abi_version: v2::ABI_VERSION,
    size: std::mem::size_of::<HostTable>() as u32,
    read: h_read,
    header: h_header,
    header_at: h_header_at,
    response_header_at: h_response_header_at,
    number: h_number,
    set_header: h_set_header,
    remove_header: h_remove_header,
    set_status: h_set_status,
    set_body: h_set_body,
    stream_header: h_stream_header,
    stream_write: h_stream_write,
    ws_upgrade: h_ws_upgrade,
    ws_send: h_ws_send,
    ws_close: h_ws_close,
    ws_room: h_ws_room,
    ws_broadcast: h_ws_broadcast,
    error: h_error,
    detach: h_detach,
    complete: h_complete,
};

/// A plugin's `phase` function (v2 ABI).
type PhaseFn = unsafe extern "C" fn(*mut c_void, u32, *mut CallHandle, *mut u32) -> i32;

/// The v2 transport. See the [module docs](self).
#[derive(Debug, Default)]
pub struct V2 {
    wait: WaitPolicy,
    /// Recent latency of detached calls, for the adaptive wait.
    latency: Latency,
}

impl V2 {
    /// A transport that waits for detached calls with `wait` (the default is
    /// [`WaitPolicy::Adaptive`]).
    #[must_use]
    pub fn with_wait(wait: WaitPolicy) -> Self {
        Self {
            wait,
            latency: Latency::default(),
        }
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Session ids each thread takes from [`NEXT_SESSION`] at once.
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block of session ids: (next, end).
    static IDS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// A process-unique session id, without a shared atomic per session.
#[inline]
fn next_session_id() -> u64 {
    IDS.with(|ids| {
        let (mut next, mut end) = ids.get();
        if next == end {
            next = NEXT_SESSION.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = next + ID_BLOCK;
        }
        ids.set((next + 1, end));
        next
    })
}

/// A session of the [`V2`] transport.
pub struct V2Session {
    plugin: Arc<V2Plugin>,
    /// The plugin's `phase`, copied out of its table (one load per call
    /// instead of three).
    phase_fn: PhaseFn,
    state: *mut c_void,
    call: Option<CallBox>,
    closed: bool,
    ws_open: bool,
    ws_closed: bool,
    /// Client message buffer, reused.
    ws_buf: Vec<u8>,
    /// A failed write to the client, to report as an ERROR event.
    ws_error: Option<String>,
}

// SAFETY: the plugin state pointer is the plugin's, which the v2 ABI requires
// to be usable from the thread that drives the session, whichever it is.
unsafe impl Send for V2Session {}

impl fmt::Debug for V2Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V2Session")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl V2 {
    /// Opens a session of an entry resolved beforehand (no string compare).
    ///
    /// # Errors
    ///
    /// [`OpenError::Rejected`] if the plugin refuses.
    pub fn open_entry(
        &self,
        plugin: &Arc<V2Plugin>,
        entry: EntryId,
    ) -> Result<V2Session, OpenError> {
        let mut state = std::ptr::null_mut();
        let session = next_session_id();
        // SAFETY: instance came from init; out is valid.
        let st = unsafe { (plugin.table.open)(plugin.instance, entry.0, session, &mut state) };
        if st != Status::OK.0 {
            let name = plugin
                .entries
                .get(entry.0 as usize)
                .cloned()
                .unwrap_or_default();
            return Err(OpenError::Rejected(name));
        }
        Ok(V2Session {
            plugin: Arc::clone(plugin),
            phase_fn: plugin.table.phase,
            state,
            call: Some(plugin.take_call()),
            closed: false,
            ws_open: false,
            ws_closed: false,
            ws_buf: Vec::new(),
            ws_error: None,
        })
    }

    /// Reopens `session` for a new request of the same entry, keeping its
    /// buffers (what a host with a session pool does).
    ///
    /// # Errors
    ///
    /// [`OpenError::Rejected`] if the plugin refuses.
    pub fn reopen(&self, session: &mut V2Session, entry: EntryId) -> Result<(), OpenError> {
        self.release(session);
        let mut state = std::ptr::null_mut();
        let id = next_session_id();
        let plugin = &session.plugin;
        // SAFETY: as in open_entry.
        let st = unsafe { (plugin.table.open)(plugin.instance, entry.0, id, &mut state) };
        if st != Status::OK.0 {
            let name = plugin
                .entries
                .get(entry.0 as usize)
                .cloned()
                .unwrap_or_default();
            return Err(OpenError::Rejected(name));
        }
        if session.call.is_none() {
            session.call = Some(session.plugin.take_call());
        }
        session.state = state;
        session.closed = false;
        session.ws_open = false;
        session.ws_closed = false;
        Ok(())
    }

    fn release(&self, s: &mut V2Session) {
        if s.closed {
            return;
        }
        s.closed = true;
        // SAFETY: state came from open and is not used after close.
        unsafe { (s.plugin.table.close)(s.state) };
    }

    /// Fails the session; a detached call may still be in the plugin's hands,
    /// so its state goes to the plugin's graveyard instead of being reused.
    fn fail(&self, s: &mut V2Session, outcome: PhaseOutcome, detached: bool) -> PhaseOutcome {
        if detached {
            if let Some(call) = s.call.take() {
                // Revoked: host functions on it return CLOSED without touching
                // its buffers, so they can be freed now; only the small state
                // itself must stay at its address.
                lock_busy(&call);
                // SAFETY: we hold `busy`, and the context is revoked.
                let inner = unsafe { &mut *call.inner.get() };
                inner.cmds = Commands::default();
                inner.url = Vec::new();
                inner.params = Vec::new();
                inner.error = Vec::new();
                call.sync.busy.store(false, Ordering::Release);
                s.plugin
                    .graveyard
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(call);
            }
        }
        self.release(s);
        outcome
    }

    /// Starts the plugin's `phase` (or `ws_event`) call.
    ///
    /// The common case, a call that ends inside the call, touches no atomic
    /// but one load, reads no clock and takes no lock.
    #[inline]
    fn start_call(
        &self,
        s: &mut V2Session,
        ctx: *mut (dyn HttpContext + '_),
        invoke: impl FnOnce(*mut c_void, *mut CallHandle, &mut u32) -> i32,
    ) -> Started {
        let Some(call) = s.call.as_deref() else {
            return Started::Done(Err(PhaseOutcome::Error(SessionError::Closed)));
        };
        // SAFETY: lifetime erasure only. The pointer is revoked below when
        // the call ends inside it; a detached call keeps it until the phase
        // future revokes it under `busy` (when `complete` has been seen, or in
        // the future's `Drop`), and the future holds the `&mut` it came from
        // all that time, so it never outlives the context.
        let erased: *mut (dyn HttpContext + 'static) = unsafe {
            std::mem::transmute::<*mut (dyn HttpContext + '_), *mut (dyn HttpContext + 'static)>(
                ctx,
            )
        };
        {
            // SAFETY: no phase call is running on this call, and it is not
            // detached (a detached call is never reused: see `fail`).
            let inner = unsafe { call.owner() };
            inner.ctx = Some(erased);
            inner.cmds.clear();
            inner.url.clear();
            inner.params.clear();
            inner.error.clear();
        }
        let mut flow = 0u32;
        let st = invoke(s.state, call.handle(), &mut flow);
        // SYNC POINT: acquires `detach`'s Release store when the plugin
        // handed the call to another thread (which then owns the call).
        if call.sync.shared.load(Ordering::Acquire) {
            return self.detached(s, st);
        }
        // Never handed to another thread: the call has returned, so only
        // this thread can touch the call now.
        // SAFETY: as above.
        let inner = unsafe { call.owner() };
        inner.ctx = None;
        if st == Status::OK.0 && !inner.cmds.overflowed {
            return Started::Done(Ok(flow));
        }
        Started::Done(Err(self.failed(s, st, false)))
    }

    /// The rest of [`V2::start_call`] for a call the plugin detached.
    #[cold]
    #[inline(never)]
    fn detached(&self, s: &mut V2Session, st: i32) -> Started {
        if st == Status::PENDING.0 {
            return Started::Pending;
        }
        let Some(call) = s.call.as_deref() else {
            return Started::Done(Err(PhaseOutcome::Error(SessionError::Closed)));
        };
        // Detached, yet answered at once: another thread may still hold
        // the handle, so the call cannot be reused. A protocol error.
        revoke(call);
        let e = SessionError::Plugin(format!(
            "the plugin detached the call but returned status {st} instead of PENDING"
        ));
        Started::Done(Err(self.fail(s, PhaseOutcome::Error(e), true)))
    }

    /// Polls a detached call: `Ready` once the plugin called `complete`.
    #[cold]
    #[inline(never)]
    fn poll_detached(
        &self,
        s: &mut V2Session,
        cx: &mut Context<'_>,
    ) -> Poll<Result<u32, PhaseOutcome>> {
        let Some(call) = s.call.as_deref() else {
            return Poll::Ready(Err(PhaseOutcome::Error(SessionError::Closed)));
        };
        // Registered before `done` is read: a `complete` that comes after
        // the read finds this waker (the `AtomicWaker` protocol).
        call.sync.waker.register(cx.waker());
        // SYNC POINT: acquires the plugin's commands and result (the Release
        // store of `done` in `h_complete`).
        if !call.sync.done.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Not needed any more: do not keep the task alive.
        drop(call.sync.waker.take());
        let st = call.sync.status.load(Ordering::Relaxed);
        let flow = call.sync.flow.load(Ordering::Relaxed);
        revoke(call);
        if st != Status::OK.0 {
            return Poll::Ready(Err(self.failed(s, st, true)));
        }
        // SAFETY: the call is revoked; nobody else touches it now.
        let inner = unsafe { call.owner() };
        if inner.cmds.overflowed {
            let o = self.fail(s, PhaseOutcome::Error(SessionError::QueueFull), true);
            return Poll::Ready(Err(o));
        }
        // Completed and revoked under `busy`: no plugin thread can reach the
        // call any more, so it is reusable.
        call.sync.shared.store(false, Ordering::Relaxed);
        call.sync.done.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(flow))
    }

    /// Fails the session for status `st` (or a command overflow), with the
    /// plugin's error message when it gave one.
    #[cold]
    #[inline(never)]
    fn failed(&self, s: &mut V2Session, st: i32, detached: bool) -> PhaseOutcome {
        let Some(call) = s.call.as_deref() else {
            return PhaseOutcome::Error(SessionError::Closed);
        };
        // SAFETY: the call is revoked; nobody else touches it now.
        let inner = unsafe { call.owner() };
        let e = if st == Status::OK.0 {
            SessionError::QueueFull
        } else if inner.error.is_empty() {
            SessionError::Plugin(format!(
                "plugin returned status {st} ({})",
                Status(st).name()
            ))
        } else {
            SessionError::Plugin(String::from_utf8_lossy(&inner.error).into_owned())
        };
        inner.error.clear();
        self.fail(s, PhaseOutcome::Error(e), detached)
    }

    /// Applies the buffered commands in order; `Err` for a downstream failure.
    #[inline(never)]
    fn apply(
        &self,
        s: &mut V2Session,
        ctx: &mut dyn HttpContext,
    ) -> Result<Option<PhaseOutcome>, SessionError> {
        let Some(call) = s.call.as_deref() else {
            return Err(SessionError::Closed);
        };
        // SAFETY: the call is revoked; only this thread uses it.
        let inner = unsafe { call.owner() };
        let c = &inner.cmds;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut end = None;
        for op in &c.ops {
            match *op {
                Cmd::SetHeader(n, nl, vl) => {
                    let name = c.slice(n, nl);
                    let value = c.slice(n + nl, vl);
                    match (as_text(name), as_text(value)) {
                        (Some(n), Some(v)) => ctx.set_response_header(n, v),
                        _ => {
                            return Err(SessionError::Plugin(
                                "header name or value is not UTF-8".into(),
                            ))
                        }
                    }
                }
                Cmd::Remove(n, nl) => match std::str::from_utf8(c.slice(n, nl)) {
                    Ok(n) => ctx.remove_response_header(n),
                    Err(_) => return Err(SessionError::Plugin("header name is not UTF-8".into())),
                },
                Cmd::Status(st) => ctx.set_response_status(st),
                Cmd::Body(b, bl) => ctx.set_response_body(c.slice(b, bl)),
                Cmd::StreamHeader => ctx.response_stream_header().map_err(SessionError::Plugin)?,
                Cmd::StreamWrite(d, dl) => ctx
                    .response_stream_data(c.slice(d, dl))
                    .map_err(SessionError::Plugin)?,
                Cmd::WsUpgrade => {
                    if !s.ws_open {
                        match ctx.websocket_upgrade() {
                            Ok(()) => s.ws_open = true,
                            Err(_) => end = Some(PhaseOutcome::End),
                        }
                    }
                }
                Cmd::WsSend(kind, d, dl) => {
                    if s.ws_open && !s.ws_closed {
                        let data = c.slice(d, dl);
                        let msg = if kind == v2::ws::TEXT {
                            WsMessage::Text(data)
                        } else {
                            WsMessage::Binary(data)
                        };
                        if let Err(e) = ctx.websocket_send(msg) {
                            // The connection's problem, not the plugin's: it
                            // hears of it as an ERROR event (the legacy 354).
                            s.ws_error = Some(e);
                        }
                    }
                }
                Cmd::WsClose => {
                    if s.ws_open && !s.ws_closed {
                        s.ws_closed = true;
                        ctx.websocket_close();
                        end = Some(PhaseOutcome::StreamEnd);
                    }
                }
                Cmd::WsRoom(r, rl, join) => {
                    if s.ws_open && !s.ws_closed && rl > 0 {
                        let room = text(c.slice(r, rl));
                        if join {
                            ctx.websocket_join_room(&room);
                        } else {
                            ctx.websocket_leave_room(&room);
                        }
                    }
                }
                Cmd::WsBroadcast(r, rl, kind, dl) => {
                    if s.ws_open && !s.ws_closed && rl > 0 {
                        let room = text(c.slice(r, rl));
                        let data = c.slice(r + rl, dl);
                        let msg = if kind == v2::ws::TEXT {
                            WsMessage::Text(data)
                        } else {
                            WsMessage::Binary(data)
                        };
                        ctx.websocket_broadcast(&room, msg);
                    }
                }
            }
        }
        Ok(end)
    }
}

/// `b` as text: checked ASCII on the fast path (header names and most values
/// are), full UTF-8 validation otherwise.
#[inline]
fn as_text(b: &[u8]) -> Option<&str> {
    if b.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(b) })
    } else {
        std::str::from_utf8(b).ok()
    }
}

/// Spins until this thread holds the call's `busy` lock.
fn lock_busy(call: &CallState) {
    while call
        .sync
        .busy
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        std::hint::spin_loop();
    }
}

/// Takes the context back from a call, waiting out a plugin thread inside a
/// host function.
fn revoke(call: &CallState) {
    if !call.sync.shared.load(Ordering::Acquire) {
        // Never handed to another thread: the phase call has returned, so
        // only this thread can touch the call.
        // SAFETY: as above.
        let inner = unsafe { &mut *call.inner.get() };
        inner.ctx = None;
        return;
    }
    lock_busy(call);
    // SAFETY: we hold `busy`; a sync phase call has returned.
    let inner = unsafe { &mut *call.inner.get() };
    inner.ctx = None;
    call.sync.busy.store(false, Ordering::Release);
}

/// How a call into the plugin started.
enum Started {
    /// It ended inside the call: the flow, or the outcome of a failure.
    Done(Result<u32, PhaseOutcome>),
    /// The plugin detached it and returned `PENDING`: `complete` ends it.
    Pending,
}

/// What a pending detached call was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaited {
    /// The phase call itself.
    Phase,
    /// A WebSocket event (open, a client message).
    Event,
    /// The close event, after which the phase ends.
    Close,
}

/// Where a [`V2Phase`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum V2State {
    /// Not polled yet.
    Start,
    /// A detached call is in the plugin's hands, the context lent to it.
    Detached(Awaited),
    /// Upgraded: the open event is next.
    WsOpen,
    /// WebSocket mode, between two events.
    WebSocket,
    /// Finished.
    Done,
}

/// The future of one v2 phase (see [`Transport::phase`]).
///
/// The phase call runs in the first poll; a call the plugin ends inside it
/// makes that poll `Ready`. A detached call keeps the context lent until
/// `complete` (which wakes the task) or until the future is dropped (which
/// revokes it under the call's `busy` lock and closes the session).
pub struct V2Phase<'a> {
    t: &'a V2,
    s: &'a mut V2Session,
    /// The context, kept as a pointer: it is lent to the plugin's call, and a
    /// `&mut` moved along with this future would be re-asserted as unique on
    /// each move while a plugin thread uses the lent copy.
    ctx: NonNull<dyn HttpContext + 'a>,
    _ctx: PhantomData<&'a mut (dyn HttpContext + 'a)>,
    phase: Phase,
    state: V2State,
    /// WebSocket events delivered so far (the idle timeout's traffic).
    traffic: u64,
}

// SAFETY: the pointer stands for the `&'a mut dyn HttpContext` the future
// was made from (`HttpContext: Send`); it is used by the future's polls while
// nothing is lent, and by the plugin's host functions under the call's rules.
unsafe impl Send for V2Phase<'_> {}

impl fmt::Debug for V2Phase<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V2Phase")
            .field("phase", &self.phase)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl V2Phase<'_> {
    /// The context, for the driver while nothing is lent.
    ///
    /// # Safety
    ///
    /// - No call holds the context (it was never lent, or it was revoked).
    #[inline(always)]
    unsafe fn ctx(&mut self) -> &mut dyn HttpContext {
        // SAFETY: the pointer came from the `&'a mut` this future holds for
        // `'a`, and no other reference to it is live (the caller's contract).
        unsafe { self.ctx.as_mut() }
    }

    /// The first poll's work: the phase call. `Ok` when the phase ended
    /// inside it, else the state of what is pending. (On the parts, not on
    /// the future: `run_phase` builds the future only when it is pending.)
    #[inline(always)]
    fn start(
        t: &V2,
        s: &mut V2Session,
        ctx: NonNull<dyn HttpContext + '_>,
        phase: Phase,
    ) -> Result<PhaseOutcome, V2State> {
        if s.closed {
            return Ok(PhaseOutcome::Error(SessionError::Closed));
        }
        let (phase_fn, phase) = (s.phase_fn, phase as u32);
        let started = t.start_call(s, ctx.as_ptr(), |state, call, flow| {
            // SAFETY: state is the session's; call and flow outlive the call.
            unsafe { phase_fn(state, phase, call, flow) }
        });
        match started {
            Started::Done(r) => Self::after_phase(t, s, ctx, r),
            Started::Pending => Err(V2State::Detached(Awaited::Phase)),
        }
    }

    /// What follows a phase call that ended: its commands, then its flow.
    /// `Err(WsOpen)` when the phase goes on as a WebSocket.
    #[inline(always)]
    fn after_phase(
        t: &V2,
        s: &mut V2Session,
        mut ctx: NonNull<dyn HttpContext + '_>,
        r: Result<u32, PhaseOutcome>,
    ) -> Result<PhaseOutcome, V2State> {
        let flow = match r {
            Ok(f) => f,
            Err(o) => return Ok(o),
        };
        // SAFETY: the call has ended and was revoked: nothing else holds the
        // context, which the future (or `run_phase`) borrows for `'_`.
        let ctx = unsafe { ctx.as_mut() };
        if s.has_commands() {
            match t.apply(s, ctx) {
                Err(e) => return Ok(t.fail(s, PhaseOutcome::Error(e), false)),
                Ok(Some(o)) => return Ok(o),
                Ok(None) => {}
            }
        }
        let Some(flow) = Flow::from_u32(flow) else {
            let e = SessionError::Plugin(format!("invalid flow value {flow}"));
            return Ok(t.fail(s, PhaseOutcome::Error(e), false));
        };
        Ok(match flow {
            Flow::Next => PhaseOutcome::Next,
            Flow::End => PhaseOutcome::End,
            Flow::StreamEnd => match ctx.response_stream_end() {
                Ok(()) => PhaseOutcome::StreamEnd,
                Err(e) => t.fail(s, PhaseOutcome::Error(SessionError::Plugin(e)), false),
            },
            Flow::WebSocket if s.ws_open => return Err(V2State::WsOpen),
            Flow::WebSocket => {
                let e = SessionError::Plugin("WebSocket flow without an upgrade".into());
                t.fail(s, PhaseOutcome::Error(e), false)
            }
        })
    }

    /// What follows a WebSocket event call that ended: its commands.
    fn after_event(
        &mut self,
        r: Result<u32, PhaseOutcome>,
    ) -> Result<Option<PhaseOutcome>, PhaseOutcome> {
        r?;
        // SAFETY: the call has ended and was revoked.
        let ctx = unsafe { self.ctx.as_mut() };
        let (t, s) = (self.t, &mut *self.s);
        if !s.has_commands() {
            return Ok(None);
        }
        t.apply(s, ctx)
            .map_err(|e| t.fail(s, PhaseOutcome::Error(e), false))
    }

    /// Delivers one WebSocket event (its data is the session's `ws_buf`,
    /// left untouched until the event's call has ended).
    fn event(&mut self, kind: u32, with_data: bool) -> Started {
        self.traffic += 1;
        let (t, s, ctx) = (self.t, &mut *self.s, self.ctx.as_ptr());
        let table = s.plugin.table;
        let data = if with_data {
            Str::from_bytes(&s.ws_buf)
        } else {
            Str::from_bytes(&[])
        };
        t.start_call(s, ctx, |state, call, _flow| {
            // SAFETY: state is the session's; `data` points into the
            // session's `ws_buf`, which is not touched until the call ends
            // (a detached call included), nor freed while the session lives.
            unsafe { (table.ws_event)(state, kind, data, call) }
        })
    }

    /// Everything after the first poll's inline case.
    #[cold]
    #[inline(never)]
    fn resume(&mut self, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        loop {
            let (awaited, r) = match self.state {
                V2State::Start | V2State::Done => {
                    self.state = V2State::Done;
                    return Poll::Ready(PhaseOutcome::Error(SessionError::Closed));
                }
                V2State::Detached(awaited) => match self.t.poll_detached(self.s, cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(r) => (awaited, r),
                },
                V2State::WsOpen => match self.event(v2::ws::OPEN, false) {
                    Started::Done(r) => (Awaited::Event, r),
                    Started::Pending => {
                        self.state = V2State::Detached(Awaited::Event);
                        continue;
                    }
                },
                V2State::WebSocket => {
                    let mut data = std::mem::take(&mut self.s.ws_buf);
                    // SAFETY: between two events: nothing is lent.
                    let got = unsafe { self.ctx() }.websocket_recv(Duration::ZERO, &mut data);
                    self.s.ws_buf = data;
                    let (kind, awaited) = match got {
                        WsRecv::Text => (v2::ws::TEXT, Awaited::Event),
                        WsRecv::Binary => (v2::ws::BINARY, Awaited::Event),
                        WsRecv::Closed => {
                            self.s.ws_closed = true;
                            // SAFETY: as above.
                            unsafe { self.ctx() }.websocket_close();
                            (v2::ws::CLOSE, Awaited::Close)
                        }
                        // Nothing from the client: the host wakes the task
                        // when it sends (the synchronous form polls).
                        WsRecv::Idle => return Poll::Pending,
                    };
                    match self.event(kind, awaited == Awaited::Event) {
                        Started::Done(r) => (awaited, r),
                        Started::Pending => {
                            self.state = V2State::Detached(awaited);
                            continue;
                        }
                    }
                }
            };
            // A call ended (inline, or detached and completed).
            let done = match awaited {
                Awaited::Phase => match Self::after_phase(self.t, self.s, self.ctx, r) {
                    Ok(o) => o,
                    Err(state) => {
                        self.state = state;
                        continue;
                    }
                },
                Awaited::Event => match self.after_event(r) {
                    Ok(None) => {
                        self.state = V2State::WebSocket;
                        continue;
                    }
                    Ok(Some(o)) | Err(o) => o,
                },
                Awaited::Close => match self.after_event(r) {
                    Err(o) => o,
                    Ok(_) => PhaseOutcome::StreamEnd,
                },
            };
            self.state = V2State::Done;
            return Poll::Ready(done);
        }
    }
}

impl Future for V2Phase<'_> {
    type Output = PhaseOutcome;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        let this = self.get_mut();
        if this.state == V2State::Start {
            match Self::start(this.t, this.s, this.ctx, this.phase) {
                Ok(o) => {
                    this.state = V2State::Done;
                    return Poll::Ready(o);
                }
                Err(state) => this.state = state,
            }
        }
        this.resume(cx)
    }
}

impl PhaseProgress for V2Phase<'_> {
    fn websocket(&self) -> Option<u64> {
        match self.state {
            V2State::WsOpen
            | V2State::WebSocket
            | V2State::Detached(Awaited::Event | Awaited::Close) => Some(self.traffic),
            _ => None,
        }
    }
}

impl Drop for V2Phase<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        if !matches!(self.state, V2State::Start | V2State::Done) {
            self.cancel();
        }
    }
}

impl V2Phase<'_> {
    /// Cancels a phase dropped before its end.
    #[cold]
    #[inline(never)]
    fn cancel(&mut self) {
        match self.state {
            V2State::Start | V2State::Done => {}
            V2State::Detached(_) => {
                // Cancelled while the plugin holds the call: the context is
                // taken back under `busy` (waiting out a host function in
                // progress), then the session is closed on both sides.
                if let Some(call) = self.s.call.as_deref() {
                    revoke(call);
                }
                self.t.fail(self.s, PhaseOutcome::Timeout, true);
            }
            V2State::WsOpen | V2State::WebSocket => self.t.release(self.s),
        }
    }
}

impl Transport for V2 {
    type Plugin = V2Plugin;
    type Session = V2Session;
    type PhaseFuture<'a> = V2Phase<'a>;

    fn name(&self) -> &'static str {
        "fast-v2"
    }

    fn open(
        &self,
        plugin: &Arc<V2Plugin>,
        entry: &str,
        _options: SessionOptions,
    ) -> Result<V2Session, OpenError> {
        let id = plugin
            .entry_id(entry)
            .ok_or_else(|| OpenError::Rejected(entry.to_string()))?;
        self.open_entry(plugin, id)
    }

    #[inline]
    fn phase<'a>(
        &'a self,
        session: &'a mut V2Session,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> V2Phase<'a> {
        V2Phase {
            t: self,
            s: session,
            ctx: NonNull::from(ctx),
            _ctx: PhantomData,
            phase,
            state: V2State::Start,
            traffic: 0,
        }
    }

    #[inline]
    fn run_phase(
        &self,
        s: &mut V2Session,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        // The first poll's work, without a waker: the common case ends here,
        // and the future is only built for a phase that went pending.
        let ctx = NonNull::from(ctx);
        match V2Phase::start(self, s, ctx, phase) {
            Ok(o) => o,
            Err(state) => {
                let fut = V2Phase {
                    t: self,
                    s,
                    ctx,
                    _ctx: PhantomData,
                    phase,
                    state,
                    traffic: 0,
                };
                run_started(fut, self.wait, &self.latency, timeout)
            }
        }
    }

    fn close(&self, mut s: V2Session) {
        self.release(&mut s);
    }

    fn take_trace(&self, _s: &mut V2Session) -> Vec<TraceEntry> {
        Vec::new()
    }
}

impl V2Session {
    /// Whether the last call buffered commands (the driver owns the call).
    #[inline]
    fn has_commands(&self) -> bool {
        // SAFETY: called by the driver after the call returned and was revoked.
        self.call
            .as_deref()
            .is_some_and(|c| !unsafe { c.owner() }.cmds.ops.is_empty())
    }
}

impl Drop for V2Session {
    fn drop(&mut self) {
        if !self.closed {
            self.closed = true;
            // SAFETY: state came from open and is not used after close.
            unsafe { (self.plugin.table.close)(self.state) };
        }
        // A call still here was never handed to a plugin thread that could
        // outlive its phase (those go to the graveyard): reusable.
        if let Some(call) = self.call.take() {
            self.plugin.give_back(call);
        }
    }
}

/// The phase future over an in-process plugin, small enough for Miri
/// (`cargo +nightly miri test --lib -- transport::v2::`): a detached call
/// completed from the plugin's thread, and a detached call whose future is
/// dropped before the plugin's thread uses the handle.
#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Sender};
    use std::task::Waker;
    use std::thread::JoinHandle;

    use super::*;
    use crate::host::{MemoryContext, RequestSpec};
    use crate::sdk::v2::{Call, Handler, Plugin};
    use crate::sdk::{Flow, SdkError};

    /// What the `held` entry's thread saw once let go: the path its late
    /// read returned, and whether its late completion was accepted.
    type Late = (String, bool);

    /// The `held` entry's thread and the sender that lets it go.
    static HELD: Mutex<Option<(Sender<()>, JoinHandle<Late>)>> = Mutex::new(None);

    struct Test;

    impl Plugin for Test {
        const NAME: &'static str = "v2-future-test";
        const ENTRIES: &'static [Str] = crate::entries!["later", "held"];

        fn initialize(_config: &[u8]) -> Result<Self, String> {
            Ok(Test)
        }

        fn open(&self, entry: u32) -> Option<Box<dyn Handler>> {
            match entry {
                0 => Some(Box::new(Later)),
                1 => Some(Box::new(Held)),
                _ => None,
            }
        }
    }

    /// Completes on its own thread after reading the path and setting a header.
    struct Later;

    impl Handler for Later {
        fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
            let d = cx.detach();
            std::thread::spawn(move || {
                let path = d.path().to_string();
                d.set_header("x-path", &path);
                let _ = d.complete(Ok(Flow::Next));
            });
            Ok(Flow::Next)
        }
    }

    /// Detaches; its thread reads and completes only when let go.
    struct Held;

    impl Handler for Held {
        fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
            let d = cx.detach();
            let (go, wait_go) = channel::<()>();
            let late = std::thread::spawn(move || {
                let _ = wait_go.recv();
                let path = d.path().to_string();
                (path, d.complete(Ok(Flow::Next)).is_ok())
            });
            *HELD.lock().unwrap_or_else(|e| e.into_inner()) = Some((go, late));
            Ok(Flow::Next)
        }
    }

    fn plugin() -> Arc<V2Plugin> {
        Arc::new(V2Plugin::from_static(crate::sdk::v2::table::<Test>(), b"").unwrap())
    }

    fn request(path: &str) -> MemoryContext {
        let spec = RequestSpec {
            path: path.into(),
            ..Default::default()
        };
        MemoryContext::new(spec, None)
    }

    #[test]
    fn a_call_completed_on_the_plugins_thread_ends_the_phase() {
        let (t, p) = (V2::default(), plugin());
        let mut s = t.open(&p, "later", SessionOptions::default()).unwrap();
        let mut ctx = request("/later");
        let o = t.run_phase(
            &mut s,
            Phase::RequestFilter,
            &mut ctx,
            Duration::from_secs(30),
        );
        assert_eq!(o, PhaseOutcome::Next);
        assert_eq!(ctx.headers(), [("x-path".to_string(), b"/later".to_vec())]);
        t.close(s);
    }

    #[test]
    fn a_dropped_future_revokes_the_context_before_the_plugins_thread_uses_it() {
        let (t, p) = (V2::default(), plugin());
        let mut s = t.open(&p, "held", SessionOptions::default()).unwrap();
        let mut ctx = request("/held");
        {
            let mut fut = std::pin::pin!(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
            let polled = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            assert!(polled.is_pending());
        }
        let (go, late) = HELD
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap();
        go.send(()).unwrap();
        let (path, accepted) = late.join().unwrap();
        assert_eq!(path, "", "the late read found the context revoked");
        assert!(!accepted, "the late completion was refused");
        let o = t.run_phase(&mut s, Phase::Logging, &mut ctx, Duration::from_secs(30));
        assert_eq!(o, PhaseOutcome::Error(SessionError::Closed));
        t.close(s);
    }
}
