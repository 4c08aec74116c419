//! The fast transport for legacy plugins: what the host side can give every
//! existing plugin without changing its ABI.
//!
//! - **No global lock per message.** Sessions live in a fixed table; a session
//!   id encodes its slot and a generation, so the callback finds its session
//!   with one atomic load and locks only that session.
//! - **Inline replies.** A read is answered inside the callback, on the
//!   plugin's own thread, with no queue and no hand-off. A command is applied
//!   in place. Nothing is copied: the payload is borrowed for the callback.
//! - **Inline phase starts.** The host calls `event_stream` on its own thread;
//!   a plugin that finishes the phase inside that call costs no thread hand-off
//!   at all (and no clock read), and one that finishes later (a Go goroutine)
//!   is waited for as [`super::wait`] describes: a spin of at most a few
//!   microseconds and a few yields, only while this transport's recent
//!   pending-phase latency says the plugin is about to answer, then a park on
//!   that session's own condvar, which the plugin's completion wakes. Under
//!   load the driver parks at once and leaves the CPU to the plugin's threads.
//! - **Cached encodings.** A reused FlatBuffers builder per session, the
//!   request headers encoded once per session, `itoa` decimals.
//! - **Bounded memory.** Messages that arrive between phases wait in a bounded
//!   backlog; in deferred mode reads wait in a bounded queue. Overflow is an
//!   error for that session, never growth.
//!
//! [`ReplyMode::Deferred`] keeps the original host's behaviour for plugins that
//! hold their own lock across the callback (an inline reply re-enters the
//! plugin on the thread inside its callback): phase starts go to a worker pool
//! and reads are answered from the driver thread.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::drops::Drops;
use super::{
    Direction, OpenError, PhaseOutcome, SessionError, SessionOptions, TraceEntry, Transport,
};
use crate::abi::legacy::{EventStreamFn, FfiBuffer, Method, MethodKind, PayloadError, Phase};
use crate::codec::fast::{write_i64, write_params, write_u64, HeaderEncoder};
use crate::host::context::{HttpContext, WsRecv};
use crate::host::dispatch::{dispatch, DispatchError, PhaseEnd, ReplyEncoding, Step, WsState};
use crate::host::loader::LegacyPlugin;
use crate::spawn::Spawner;
use crate::transport::baseline::MAX_PAYLOAD;
use crate::transport::wait::{now_ns, Latency, Settle, WaitPolicy};

/// Number of session slots (concurrently open fast sessions, all plugins).
pub const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_BITS: u32 = 14;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;

/// Messages kept for a session between two phases, at most.
pub const BACKLOG_MESSAGES: usize = 1024;
/// Payload bytes kept for a session between two phases, at most.
pub const BACKLOG_BYTES: usize = 1 << 20;
/// Reads waiting for the driver in deferred mode, at most.
pub const DEFERRED_READS: usize = 64;

/// How the host answers a plugin's reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplyMode {
    /// Inside the callback, on the plugin's thread (the fast default).
    #[default]
    Inline,
    /// From the driver thread, as the original host does; phase starts run on
    /// a worker pool. For plugins that hold a lock across the callback.
    Deferred,
}

/// Settings of the [`Fast`] transport.
#[derive(Clone, Copy, Debug)]
pub struct FastConfig {
    /// How reads are answered.
    pub reply_mode: ReplyMode,
    /// How the driver waits for a phase that ends on another thread (see
    /// [`super::wait`]): adaptive by default.
    pub wait: WaitPolicy,
}

impl Default for FastConfig {
    fn default() -> Self {
        Self {
            reply_mode: ReplyMode::Inline,
            wait: WaitPolicy::Adaptive,
        }
    }
}

/// A context pointer lent to the callbacks while a phase runs.
///
/// Only dereferenced under the slot's mutex, and revoked under it before
/// `run_phase` returns, so it never outlives the `&mut` it came from.
#[derive(Clone, Copy)]
struct LentContext {
    ctx: *mut (dyn HttpContext + 'static),
}

// SAFETY: the pointee is `HttpContext: Send`, and the pointer is only used
// under the slot mutex while the lending `run_phase` call is blocked.
unsafe impl Send for LentContext {}

enum Queued {
    Data(u32, Vec<u8>),
    Bad(PayloadError),
}

struct Inner {
    sid: u32,
    event_stream: Option<EventStreamFn>,
    mode: ReplyMode,
    lent: Option<LentContext>,
    outcome: Option<PhaseOutcome>,
    parked: bool,
    /// The driver waits for a pending phase: the plugin's next signal is
    /// stamped for the latency estimate.
    waiting: bool,
    /// When the plugin signalled a waiting driver (`now_ns`, 0 for none):
    /// the end of a pending wait, without the driver's own wake-up in it.
    signalled_ns: u64,
    ws: WsState,
    /// Messages processed in WebSocket mode; the driver re-arms its idle
    /// deadline when this moves.
    ws_traffic: u64,
    /// The open event (350) has been delivered: the driver may now feed
    /// client messages.
    ws_ready: bool,
    enc: FastEncoding,
    backlog: VecDeque<Queued>,
    backlog_bytes: usize,
    overflowed: bool,
    reads: VecDeque<(u32, Vec<u8>)>,
    trace: Option<Vec<TraceEntry>>,
}

struct Slot {
    sid: AtomicU32,
    generation: AtomicU32,
    /// Set when the driver has something to look at (outcome, deferred read).
    signal: AtomicBool,
    inner: Mutex<Inner>,
    wake: Condvar,
}

struct Table {
    slots: Box<[Slot]>,
    /// Free slot indices, a stack: the slot freed last is reused first, so
    /// the memory sessions touch stays proportional to how many run at once,
    /// not to the table size. Locked on open and close only, never per
    /// message.
    free: Mutex<Vec<u32>>,
}

static TABLE: LazyLock<Table> = LazyLock::new(|| {
    let slots: Box<[Slot]> = (0..SLOTS)
        .map(|_| Slot {
            sid: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            signal: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                sid: 0,
                event_stream: None,
                mode: ReplyMode::Inline,
                lent: None,
                outcome: None,
                parked: false,
                waiting: false,
                signalled_ns: 0,
                ws: WsState::default(),
                ws_traffic: 0,
                ws_ready: false,
                enc: FastEncoding::default(),
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                overflowed: false,
                reads: VecDeque::new(),
                trace: None,
            }),
            wake: Condvar::new(),
        })
        .collect();
    let free = Mutex::new((0..SLOTS as u32).rev().collect());
    Table { slots, free }
});

static DROPPED: Drops = Drops::new();

/// Messages the fast host dropped because their session was unknown or
/// closed (process-wide).
pub fn dropped_messages() -> u64 {
    DROPPED.total()
}

/// Messages the fast host dropped that named session `sid` (unknown or
/// closed when they arrived).
pub fn dropped_messages_for(sid: u32) -> u64 {
    DROPPED.for_sid(sid)
}

fn lock(slot: &Slot) -> MutexGuard<'_, Inner> {
    slot.inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many generations a slot cycles through before a sid repeats.
const GENERATIONS: u32 = (1 << (32 - SLOT_BITS)) - 1;

/// The sid of the `generation`-th use of slot `idx`: the generation fills the
/// high bits and cycles through `1..=GENERATIONS`, so a sid is never 0 and
/// consecutive uses of a slot never share a sid.
fn sid_for(generation: u32, idx: u32) -> u32 {
    ((generation % GENERATIONS + 1) << SLOT_BITS) | idx
}

fn slot_of(sid: u32) -> &'static Slot {
    &TABLE.slots[(sid & SLOT_MASK) as usize]
}

/// Reply buffers a thread keeps at once (a reply can re-enter the plugin,
/// which can call back and need a second buffer meanwhile).
const THREAD_REPLY_BUFS: usize = 4;
/// Reply buffers kept process-wide for threads that have none yet: a plugin
/// thread that calls back for the first time takes one instead of
/// allocating, and a thread that exits gives its buffers back.
const SPARE_REPLY_BUFS: usize = 256;
/// A reply buffer's starting capacity (a typical header set fits).
const REPLY_BUF_BYTES: usize = 1024;

/// The process-wide spare reply buffers (filled once, at first use).
fn spare_reply_bufs() -> &'static ArrayQueue<Vec<u8>> {
    static SPARE: OnceLock<ArrayQueue<Vec<u8>>> = OnceLock::new();
    SPARE.get_or_init(|| {
        let q = ArrayQueue::new(SPARE_REPLY_BUFS);
        for _ in 0..SPARE_REPLY_BUFS / 8 {
            let _ = q.push(Vec::with_capacity(REPLY_BUF_BYTES));
        }
        q
    })
}

/// This thread's reply buffers; given back to the spares when it exits.
struct ReplyBufs {
    bufs: [Option<Vec<u8>>; THREAD_REPLY_BUFS],
}

impl Drop for ReplyBufs {
    fn drop(&mut self) {
        for b in self.bufs.iter_mut().filter_map(Option::take) {
            let _ = spare_reply_bufs().push(b);
        }
    }
}

thread_local! {
    static REPLY_BUFS: RefCell<ReplyBufs> = const {
        RefCell::new(ReplyBufs { bufs: [None, None, None, None] })
    };
}

/// Runs `f` with a reply buffer: this thread's, else a spare, else a new one.
fn with_reply_buf<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = REPLY_BUFS
        .try_with(|b| b.borrow_mut().bufs.iter_mut().find_map(Option::take))
        .ok()
        .flatten()
        .or_else(|| spare_reply_bufs().pop())
        .unwrap_or_else(|| Vec::with_capacity(REPLY_BUF_BYTES));
    buf.clear();
    let r = f(&mut buf);
    let kept = REPLY_BUFS.try_with(|b| {
        let mut b = b.borrow_mut();
        match b.bufs.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(std::mem::take(&mut buf)),
            None => {
                let _ = spare_reply_bufs().push(std::mem::take(&mut buf));
            }
        }
    });
    if kept.is_err() {
        // Thread teardown: straight to the spares.
        let _ = spare_reply_bufs().push(buf);
    }
    r
}

impl Inner {
    fn record(&mut self, direction: Direction, phase: u8, method: u32, payload: &[u8]) {
        if let Some(t) = &mut self.trace {
            t.push(TraceEntry {
                direction,
                phase,
                method,
                payload: payload.to_vec(),
            });
        }
    }

    /// Ends the phase with `outcome`; the caller wakes the driver if parked.
    fn finish(&mut self, slot: &Slot, outcome: PhaseOutcome) -> bool {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        self.lent = None;
        self.signal(slot)
    }

    /// Tells the driver there is something to look at; true when it is
    /// parked and the caller must wake it (`slot.wake`, after unlocking).
    fn signal(&mut self, slot: &Slot) -> bool {
        // SYNC POINT: pairs with the driver's Acquire load in its spin.
        slot.signal.store(true, Ordering::Release);
        if self.waiting && self.signalled_ns == 0 {
            // Only a pending phase gets here: an inline one reads no clock.
            self.signalled_ns = now_ns();
        }
        self.parked
    }
}

/// What to send back to the plugin after the lock is released.
enum After {
    Nothing,
    Reply(u32),
    /// Reply, and wake the driver: it has a new duty (the WebSocket client).
    ReplyWake(u32),
    Wake,
}

/// Processes one message under the slot lock. A reply is left in `reply`.
fn process(slot: &Slot, g: &mut Inner, method: u32, payload: &[u8], reply: &mut Vec<u8>) -> After {
    let Some(lent) = g.lent else {
        return After::Nothing;
    };
    g.record(Direction::ToHost, 0, method, payload);
    if g.ws.active() {
        g.ws_traffic += 1;
    }
    // SAFETY: `lent` is only set while the lending run_phase call is blocked
    // and revoked under this same lock before it returns; we hold the lock.
    let ctx = unsafe { &mut *lent.ctx };
    let Inner { ws, enc, .. } = g;
    match dispatch(method, payload, ctx, ws, enc, reply) {
        Ok(Step::Continue) => After::Nothing,
        Ok(Step::Reply) => {
            g.record(Direction::ToPlugin, 0, method, reply);
            After::Reply(method)
        }
        Ok(Step::Upgraded) => {
            reply.clear();
            g.record(Direction::ToPlugin, 0, Method::WebsocketOnOpen as u32, &[]);
            After::ReplyWake(Method::WebsocketOnOpen as u32)
        }
        Ok(Step::End(end)) => {
            let o = match end {
                PhaseEnd::Next => PhaseOutcome::Next,
                PhaseEnd::End => PhaseOutcome::End,
                PhaseEnd::StreamEnd => PhaseOutcome::StreamEnd,
            };
            if g.finish(slot, o) {
                After::Wake
            } else {
                After::Nothing
            }
        }
        Err(DispatchError::Downstream { reason, .. }) if g.ws.active() => {
            reply.clear();
            reply.extend_from_slice(reason.as_bytes());
            g.record(
                Direction::ToPlugin,
                0,
                Method::WebsocketOnError as u32,
                reply,
            );
            After::Reply(Method::WebsocketOnError as u32)
        }
        Err(e) => {
            if g.finish(slot, PhaseOutcome::Error(SessionError::Dispatch(e))) {
                After::Wake
            } else {
                After::Nothing
            }
        }
    }
}

/// Sends what `process` asked for, with the lock released.
fn complete(slot: &Slot, sid: u32, es: Option<EventStreamFn>, after: After, reply: &[u8]) {
    match after {
        After::Nothing => {}
        After::Wake => slot.wake.notify_all(),
        After::ReplyWake(method) => {
            // The event first: the driver must not deliver client messages
            // before the plugin has seen the open event.
            complete(slot, sid, es, After::Reply(method), reply);
            let mut g = lock(slot);
            if g.sid == sid {
                g.ws_ready = true;
            }
            drop(g);
            slot.signal.store(true, Ordering::Release);
            slot.wake.notify_all();
        }
        After::Reply(method) => {
            if let Some(es) = es {
                let buf = FfiBuffer::new(sid, Phase::Zero, method, reply);
                // SAFETY: `es` is the plugin's event_stream, valid while the
                // session is open (its plugin Arc is held by the session);
                // buf and reply live across the call.
                unsafe { es(&buf) };
            }
        }
    }
}

/// The host callback of every fast session.
///
/// # Safety
///
/// - `buf` is NULL or points to a valid `FfiBuffer` whose payload (when
///   `len > 0`) is `len` readable bytes, both valid for the call (ABI rule).
unsafe extern "C" fn fast_callback(buf: *const FfiBuffer) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if buf.is_null() {
            DROPPED.count_anonymous();
            return;
        }
        // SAFETY: non-null and valid for the call, by the caller's contract.
        let buf = unsafe { *buf };
        let slot = slot_of(buf.sid);
        if buf.sid == 0 || slot.sid.load(Ordering::Acquire) != buf.sid {
            DROPPED.count(buf.sid);
            return;
        }
        let payload = if buf.len > MAX_PAYLOAD {
            Err(PayloadError::TooLong(buf.len))
        } else {
            // SAFETY: the plugin guarantees ptr/len for the duration of the call.
            unsafe { buf.payload() }
        };
        let mut g = lock(slot);
        if g.sid != buf.sid {
            // Closed (and maybe reused) between the check and the lock.
            DROPPED.count(buf.sid);
            return;
        }
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                let wake = if g.lent.is_some() {
                    g.finish(slot, PhaseOutcome::Error(SessionError::Payload(e)))
                } else {
                    push_backlog(&mut g, Queued::Bad(e));
                    false
                };
                drop(g);
                if wake {
                    slot.wake.notify_all();
                }
                return;
            }
        };
        if g.lent.is_none() {
            // Between phases: kept, bounded, for the next phase.
            push_backlog(&mut g, Queued::Data(buf.method, payload.to_vec()));
            return;
        }
        let is_read = Method::from_u32(buf.method).is_some_and(|m| m.kind() == MethodKind::Read);
        if g.mode == ReplyMode::Deferred && is_read {
            let wake = if g.reads.len() >= DEFERRED_READS {
                g.finish(slot, PhaseOutcome::Error(SessionError::QueueFull))
            } else {
                g.reads.push_back((buf.method, payload.to_vec()));
                g.signal(slot)
            };
            drop(g);
            if wake {
                slot.wake.notify_all();
            }
            return;
        }
        let es = g.event_stream;
        with_reply_buf(|reply| {
            let after = process(slot, &mut g, buf.method, payload, reply);
            drop(g);
            complete(slot, buf.sid, es, after, reply);
        });
    }));
}

fn push_backlog(g: &mut Inner, q: Queued) {
    let len = match &q {
        Queued::Data(_, d) => d.len(),
        Queued::Bad(_) => 0,
    };
    if g.overflowed {
        return;
    }
    if g.backlog.len() >= BACKLOG_MESSAGES || g.backlog_bytes + len > BACKLOG_BYTES {
        // Overflow: the next phase fails with QueueFull instead of growing.
        g.backlog.clear();
        g.backlog_bytes = 0;
        g.overflowed = true;
        return;
    }
    g.backlog_bytes += len;
    g.backlog.push_back(q);
}

/// The fast transport. See the [module docs](self).
#[derive(Debug)]
pub struct Fast {
    config: FastConfig,
    spawner: Option<Spawner>,
    /// Recent latency of phases that went pending, for the adaptive wait.
    latency: Latency,
}

impl Default for Fast {
    fn default() -> Self {
        Self::new(FastConfig::default())
    }
}

impl Fast {
    /// Creates the transport.
    #[must_use]
    pub fn new(config: FastConfig) -> Self {
        let spawner =
            (config.reply_mode == ReplyMode::Deferred).then(|| Spawner::new("nylon-fast-phase"));
        Self {
            config,
            spawner,
            latency: Latency::default(),
        }
    }
}

/// A session of the [`Fast`] transport.
#[derive(Debug)]
pub struct FastSession {
    sid: u32,
    plugin: Arc<LegacyPlugin>,
    closed: bool,
}

impl FastSession {
    /// The session id.
    pub fn sid(&self) -> u32 {
        self.sid
    }
}

impl Fast {
    fn release(&self, s: &mut FastSession) {
        if s.closed {
            return;
        }
        s.closed = true;
        let slot = slot_of(s.sid);
        {
            let mut g = lock(slot);
            slot.sid.store(0, Ordering::Release);
            g.sid = 0;
            g.lent = None;
            g.event_stream = None;
            g.backlog.clear();
            g.backlog_bytes = 0;
            g.reads.clear();
        }
        s.plugin.close_session(s.sid);
        // The slot is free again once the plugin has been told.
        TABLE
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.sid & SLOT_MASK);
    }

    /// Waits until the phase ends or the deadline passes; services the
    /// WebSocket client and deferred reads meanwhile. A phase that already
    /// ended costs one lock: no clock read, no latency sample.
    fn wait(&self, s: &FastSession, slot: &Slot, timeout: Duration) -> Option<PhaseOutcome> {
        let mut g = lock(slot);
        if let Some(o) = g.outcome.take() {
            slot.signal.store(false, Ordering::Relaxed);
            return Some(o);
        }
        // Pending: the plugin answers from another thread (or, in deferred
        // mode, asks for reads first).
        let mut deadline = Instant::now() + timeout;
        let mut traffic = g.ws_traffic;
        // The busy part of the current wait: a new one after each deferred
        // read, since the plugin then has to answer again.
        let mut settle = Settle::new(self.config.wait, &self.latency);
        // A WebSocket phase lasts as long as the connection: not a latency.
        let mut websocket = g.ws.upgraded;
        g.signalled_ns = 0;
        g.waiting = !websocket;
        loop {
            slot.signal.store(false, Ordering::Relaxed);
            if g.ws.upgraded {
                websocket = true;
                g.waiting = false;
            }
            if g.ws_traffic != traffic {
                // In WebSocket mode the timeout is an idle timeout, re-armed
                // by traffic in either direction.
                traffic = g.ws_traffic;
                deadline = Instant::now() + timeout;
            }
            if let Some(o) = g.outcome.take() {
                if !websocket {
                    settle.record(&self.latency, g.signalled_ns);
                }
                g.waiting = false;
                return Some(o);
            }
            // Deferred reads, answered from this thread.
            if let Some((method, payload)) = g.reads.pop_front() {
                if !websocket {
                    settle.record(&self.latency, g.signalled_ns);
                }
                let es = g.event_stream;
                with_reply_buf(|reply| {
                    let after = process(slot, &mut g, method, &payload, reply);
                    drop(g);
                    complete(slot, s.sid, es, after, reply);
                });
                g = lock(slot);
                g.signalled_ns = 0;
                settle = Settle::new(self.config.wait, &self.latency);
                continue;
            }
            if g.ws.active() && g.ws_ready {
                if let Some(event) = self.poll_client(slot, &mut g) {
                    let es = g.event_stream;
                    drop(g);
                    complete(slot, s.sid, es, After::Reply(event.0), &event.1);
                    deadline = Instant::now() + timeout;
                    g = lock(slot);
                    continue;
                }
                if g.outcome.is_some() {
                    continue;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                g.waiting = false;
                return None;
            }
            if !settle.spent() && !g.ws.active() {
                // Spin and yield without the lock: a plugin thread that is
                // about to end the phase must not wait for us.
                drop(g);
                // SYNC POINT: pairs with the Release store in `Inner::signal`.
                settle.run(|| slot.signal.load(Ordering::Acquire));
                g = lock(slot);
                continue;
            }
            // Park on this session's own condvar until the plugin's message
            // wakes us (`Inner::signal` sees `parked`) or the deadline; never
            // on a shorter timer outside WebSocket mode, so a lost wake-up
            // cannot pass for a slow plugin.
            let wait = if g.ws.active() {
                Duration::from_millis(1).min(deadline - now)
            } else {
                deadline - now
            };
            g.parked = true;
            g = slot
                .wake
                .wait_timeout(g, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            g.parked = false;
        }
    }

    /// Takes the next client WebSocket message, if any, as the event to send.
    /// On client close, ends the phase and returns the close event (353).
    fn poll_client(&self, slot: &Slot, g: &mut MutexGuard<'_, Inner>) -> Option<(u32, Vec<u8>)> {
        let lent = g.lent?;
        // SAFETY: as in `process`: lent by our own caller, used under the lock.
        let ctx = unsafe { &mut *lent.ctx };
        let mut data = Vec::new();
        let method = match ctx.websocket_recv(Duration::ZERO, &mut data) {
            WsRecv::Text => Method::WebsocketOnMessageText,
            WsRecv::Binary => Method::WebsocketOnMessageBinary,
            WsRecv::Idle => return None,
            WsRecv::Closed => {
                g.ws.closed = true;
                ctx.websocket_close();
                g.finish(slot, PhaseOutcome::StreamEnd);
                // The caller sends the close event once the lock is released;
                // the plugin may call back from inside it.
                data.clear();
                Method::WebsocketOnClose
            }
        };
        g.record(Direction::ToPlugin, 0, method as u32, &data);
        Some((method as u32, data))
    }
}

/// The future of one fast phase (see [`Transport::phase`]).
///
/// TODO: temporary: runs the blocking phase in its first poll.
pub struct FastPhase<'a> {
    t: &'a Fast,
    s: &'a mut FastSession,
    ctx: &'a mut dyn HttpContext,
    phase: Phase,
}

impl std::fmt::Debug for FastPhase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPhase")
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl std::future::Future for FastPhase<'_> {
    type Output = PhaseOutcome;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<PhaseOutcome> {
        let this = self.get_mut();
        std::task::Poll::Ready(this.t.run_phase_blocking(
            this.s,
            this.phase,
            this.ctx,
            Duration::from_secs(60),
        ))
    }
}

impl Fast {
    fn run_phase_blocking(
        &self,
        s: &mut FastSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        if s.closed {
            return PhaseOutcome::Error(SessionError::Closed);
        }
        let slot = slot_of(s.sid);
        // SAFETY: lifetime erasure only; the pointer is revoked below, under
        // the slot lock, before this function returns, and only dereferenced
        // under that lock, so it never outlives `ctx`.
        let erased: *mut (dyn HttpContext + 'static) = unsafe {
            std::mem::transmute::<*mut (dyn HttpContext + '_), *mut (dyn HttpContext + 'static)>(
                ctx,
            )
        };
        {
            let mut g = lock(slot);
            if g.overflowed {
                drop(g);
                self.release(s);
                return PhaseOutcome::Error(SessionError::QueueFull);
            }
            g.outcome = None;
            slot.signal.store(false, Ordering::Relaxed);
            g.lent = Some(LentContext { ctx: erased });
            g.record(Direction::ToPlugin, phase as u8, Method::PHASE_START, &[]);
        }
        // Leftovers from between phases, in arrival order.
        loop {
            let mut g = lock(slot);
            let Some(q) = g.backlog.pop_front() else {
                break;
            };
            let (method, data) = match q {
                Queued::Data(m, d) => {
                    g.backlog_bytes -= d.len();
                    (m, d)
                }
                Queued::Bad(e) => {
                    g.finish(slot, PhaseOutcome::Error(SessionError::Payload(e)));
                    break;
                }
            };
            let es = g.event_stream;
            with_reply_buf(|reply| {
                let after = process(slot, &mut g, method, &data, reply);
                drop(g);
                complete(slot, s.sid, es, after, reply);
            });
        }
        if lock(slot).outcome.is_none() {
            let start = FfiBuffer::new(s.sid, phase, Method::PHASE_START, &[]);
            match &self.spawner {
                None => s.plugin.event_stream(&start),
                Some(spawner) => {
                    let plugin = Arc::clone(&s.plugin);
                    let sid = s.sid;
                    spawner.spawn(Box::new(move || {
                        plugin.event_stream(&FfiBuffer::new(sid, phase, Method::PHASE_START, &[]));
                    }));
                }
            }
        }
        let outcome = self.wait(s, slot, timeout);
        {
            let mut g = lock(slot);
            g.lent = None;
            slot.signal.store(false, Ordering::Relaxed);
        }
        match outcome {
            Some(o @ (PhaseOutcome::Next | PhaseOutcome::End | PhaseOutcome::StreamEnd)) => o,
            Some(o) => {
                self.release(s);
                o
            }
            None => {
                self.release(s);
                PhaseOutcome::Timeout
            }
        }
    }
}

impl Transport for Fast {
    type Plugin = LegacyPlugin;
    type Session = FastSession;
    type PhaseFuture<'a> = FastPhase<'a>;

    fn name(&self) -> &'static str {
        "fast"
    }

    fn open(
        &self,
        plugin: &Arc<LegacyPlugin>,
        entry: &str,
        options: SessionOptions,
    ) -> Result<FastSession, OpenError> {
        let idx = TABLE
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or(OpenError::TooManySessions)?;
        let slot = &TABLE.slots[idx as usize];
        let sid = sid_for(slot.generation.fetch_add(1, Ordering::Relaxed), idx);
        {
            let mut g = lock(slot);
            g.sid = sid;
            g.event_stream = Some(plugin.symbols().event_stream);
            g.mode = self.config.reply_mode;
            g.lent = None;
            g.outcome = None;
            g.parked = false;
            g.ws = WsState::default();
            g.ws_traffic = 0;
            g.ws_ready = false;
            g.enc.request_headers_cached = false;
            g.backlog.clear();
            g.backlog_bytes = 0;
            g.overflowed = false;
            g.reads.clear();
            g.trace = options.trace.then(Vec::new);
            slot.sid.store(sid, Ordering::Release);
        }
        let mut session = FastSession {
            sid,
            plugin: Arc::clone(plugin),
            closed: false,
        };
        if !plugin.register_session(sid, entry, fast_callback) {
            self.release(&mut session);
            return Err(OpenError::Rejected(entry.to_string()));
        }
        Ok(session)
    }

    fn phase<'a>(
        &'a self,
        session: &'a mut FastSession,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> FastPhase<'a> {
        FastPhase {
            t: self,
            s: session,
            ctx,
            phase,
        }
    }

    fn run_phase(
        &self,
        s: &mut FastSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        self.run_phase_blocking(s, phase, ctx, timeout)
    }

    fn close(&self, mut s: FastSession) {
        self.release(&mut s);
    }

    fn take_trace(&self, s: &mut FastSession) -> Vec<TraceEntry> {
        if s.closed {
            return Vec::new();
        }
        lock(slot_of(s.sid)).trace.take().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_uses_of_a_slot_get_distinct_nonzero_sids() {
        for idx in [0, 5, SLOT_MASK] {
            let mut seen = std::collections::HashSet::new();
            for g in 0..GENERATIONS {
                let s = sid_for(g, idx);
                assert_ne!(s, 0);
                assert_eq!(s & SLOT_MASK, idx, "the sid names its slot");
                assert!(seen.insert(s), "generation {g} repeats a sid");
            }
            assert_eq!(
                sid_for(GENERATIONS, idx),
                sid_for(0, idx),
                "the cycle closes after every generation"
            );
        }
        // The generation counter wraps at u32::MAX: the use after it still
        // gets another sid.
        assert_ne!(
            sid_for(u32::MAX, 5),
            sid_for(u32::MAX.wrapping_add(1), 5),
            "the counter's wrap repeats a sid"
        );
    }
}

/// The fast reply encodings: a reused builder, the request headers encoded
/// once per session, `itoa` decimals, params written by hand.
#[derive(Debug, Default)]
pub struct FastEncoding {
    /// Built on first use, so idle session slots hold no encoder memory.
    headers: Option<HeaderEncoder>,
    request_headers: Vec<u8>,
    request_headers_cached: bool,
}

impl ReplyEncoding for FastEncoding {
    fn headers(&mut self, ctx: &dyn HttpContext, response: bool, out: &mut Vec<u8>) {
        let encoder = self.headers.get_or_insert_with(HeaderEncoder::new);
        if response {
            encoder.encode(|f| ctx.for_each_response_header(f), out);
            return;
        }
        if !self.request_headers_cached {
            self.request_headers.clear();
            encoder.encode(
                |f| ctx.for_each_request_header(f),
                &mut self.request_headers,
            );
            self.request_headers_cached = true;
        }
        out.extend_from_slice(&self.request_headers);
    }

    fn decimal_u64(&mut self, v: u64, out: &mut Vec<u8>) {
        write_u64(v, out);
    }

    fn decimal_i64(&mut self, v: i64, out: &mut Vec<u8>) {
        write_i64(v, out);
    }

    fn params(&mut self, params: Option<&[(String, String)]>, out: &mut Vec<u8>) {
        write_params(params, out);
    }
}
