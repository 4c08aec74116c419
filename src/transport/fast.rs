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
use std::future::Future;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;

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
use crate::transport::wait::{run_to_end, Latency, PhaseProgress, WaitPolicy};

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
/// Only dereferenced under the slot's mutex, and revoked under it before the
/// lending phase future completes or in its `Drop`, so it never outlives the
/// `&mut` the future holds.
#[derive(Clone, Copy)]
struct LentContext {
    ctx: *mut (dyn HttpContext + 'static),
}

// SAFETY: the pointee is `HttpContext: Send`, and the pointer is only used
// under the slot mutex while the lending phase future is alive (whichever
// thread polls it; its task is suspended or inside that same lock).
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
    /// A pending phase future registered its waker and waits: the plugin's
    /// next signal must wake it (an inline phase is never woken).
    waiting: bool,
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
    inner: Mutex<Inner>,
    /// The task of the session's pending phase, woken when it has something
    /// to look at (an outcome, a deferred read, the WebSocket opened).
    waker: AtomicWaker,
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
            inner: Mutex::new(Inner {
                sid: 0,
                event_stream: None,
                mode: ReplyMode::Inline,
                lent: None,
                outcome: None,
                waiting: false,
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
            waker: AtomicWaker::new(),
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

    /// Ends the phase with `outcome` (and revokes the context); true when
    /// the caller must wake the phase's task (`slot.waker`, after unlocking).
    fn finish(&mut self, outcome: PhaseOutcome) -> bool {
        if self.outcome.is_none() {
            self.outcome = Some(outcome);
        }
        self.lent = None;
        self.signal()
    }

    /// Whether the driver must be told there is something to look at: true
    /// when its phase future is pending, and the caller must wake its task
    /// (`slot.waker`, after unlocking). The future looks at the state under
    /// this same lock before it returns `Pending`, so no signal is lost.
    fn signal(&self) -> bool {
        self.waiting
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
fn process(g: &mut Inner, method: u32, payload: &[u8], reply: &mut Vec<u8>) -> After {
    let Some(lent) = g.lent else {
        return After::Nothing;
    };
    g.record(Direction::ToHost, 0, method, payload);
    if g.ws.active() {
        g.ws_traffic += 1;
    }
    // SAFETY: `lent` is only set while the lending phase future is alive and
    // revoked under this same lock before it completes or in its `Drop`; we
    // hold the lock.
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
            if g.finish(o) {
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
            if g.finish(PhaseOutcome::Error(SessionError::Dispatch(e))) {
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
        After::Wake => slot.waker.wake(),
        After::ReplyWake(method) => {
            // The event first: the driver must not deliver client messages
            // before the plugin has seen the open event.
            complete(slot, sid, es, After::Reply(method), reply);
            let mut g = lock(slot);
            if g.sid == sid {
                g.ws_ready = true;
            }
            drop(g);
            slot.waker.wake();
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
                    g.finish(PhaseOutcome::Error(SessionError::Payload(e)))
                } else {
                    push_backlog(&mut g, Queued::Bad(e));
                    false
                };
                drop(g);
                if wake {
                    slot.waker.wake();
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
                g.finish(PhaseOutcome::Error(SessionError::QueueFull))
            } else {
                g.reads.push_back((buf.method, payload.to_vec()));
                g.signal()
            };
            drop(g);
            if wake {
                slot.waker.wake();
            }
            return;
        }
        let es = g.event_stream;
        with_reply_buf(|reply| {
            let after = process(&mut g, buf.method, payload, reply);
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
            g.waiting = false;
            g.event_stream = None;
            g.backlog.clear();
            g.backlog_bytes = 0;
            g.reads.clear();
        }
        // A pending phase's task is not kept alive by the free slot.
        drop(slot.waker.take());
        s.plugin.close_session(s.sid);
        // The slot is free again once the plugin has been told.
        TABLE
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s.sid & SLOT_MASK);
    }
}

/// Takes the next client WebSocket message, if any, as the event to send.
/// On client close, ends the phase and returns the close event (353).
fn poll_client(g: &mut MutexGuard<'_, Inner>) -> Option<(u32, Vec<u8>)> {
    let lent = g.lent?;
    // SAFETY: as in `process`: lent by a live phase future, used under the lock.
    let ctx = unsafe { &mut *lent.ctx };
    let mut data = Vec::new();
    let method = match ctx.websocket_recv(Duration::ZERO, &mut data) {
        WsRecv::Text => Method::WebsocketOnMessageText,
        WsRecv::Binary => Method::WebsocketOnMessageBinary,
        WsRecv::Idle => return None,
        WsRecv::Closed => {
            g.ws.closed = true;
            ctx.websocket_close();
            g.finish(PhaseOutcome::StreamEnd);
            // The caller sends the close event once the lock is released;
            // the plugin may call back from inside it.
            data.clear();
            Method::WebsocketOnClose
        }
    };
    // Traffic: re-arms the idle timeout.
    g.ws_traffic += 1;
    g.record(Direction::ToPlugin, 0, method as u32, &data);
    Some((method as u32, data))
}

/// Where a [`FastPhase`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FastState {
    /// Not polled yet.
    Start,
    /// Started and not ended: the context is lent to the session's slot.
    Running,
    /// Finished (the context revoked).
    Done,
}

/// The future of one fast phase (see [`Transport::phase`]).
///
/// The first poll lends the context to the session's slot and starts the
/// phase (inline, or on the worker pool in deferred mode); a phase the
/// plugin ends inside that call is `Ready` there. While it is pending, the
/// plugin's callbacks reach the context under the slot lock and wake the
/// task through the slot's `AtomicWaker`; a poll answers deferred reads and,
/// in WebSocket mode, delivers the client's messages. `Drop` of a pending
/// phase revokes the context under the slot lock and closes the session.
pub struct FastPhase<'a> {
    t: &'a Fast,
    s: &'a mut FastSession,
    /// The context, kept as a pointer: it is lent to the slot while the phase
    /// runs, and a `&mut` moved along with this future would be re-asserted
    /// as unique on each move while the plugin's threads use the lent copy.
    ctx: NonNull<dyn HttpContext + 'a>,
    _ctx: PhantomData<&'a mut (dyn HttpContext + 'a)>,
    phase: Phase,
    state: FastState,
    /// The session upgraded to a WebSocket during this phase.
    websocket: bool,
    /// WebSocket traffic seen at the last poll (the idle timeout's).
    traffic: u64,
}

// SAFETY: the pointer stands for the `&'a mut dyn HttpContext` the future
// was made from (`HttpContext: Send`), and is only dereferenced under the
// slot lock (by this future's polls or the plugin's callbacks) or by the
// future itself while nothing is lent.
unsafe impl Send for FastPhase<'_> {}

impl std::fmt::Debug for FastPhase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPhase")
            .field("phase", &self.phase)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl FastPhase<'_> {
    /// Lends the context and starts the phase: `Some` when it ended inside
    /// the call. The inline case takes two slot locks and reads no clock.
    #[inline]
    fn start(&mut self) -> Option<PhaseOutcome> {
        let s = &mut *self.s;
        if s.closed {
            return Some(PhaseOutcome::Error(SessionError::Closed));
        }
        let slot = slot_of(s.sid);
        // SAFETY: lifetime erasure only. The pointer is revoked under the
        // slot lock before this future completes or in its `Drop`, and is
        // only dereferenced under that lock, so it never outlives `'a`.
        let erased: *mut (dyn HttpContext + 'static) = unsafe {
            std::mem::transmute::<*mut (dyn HttpContext + '_), *mut (dyn HttpContext + 'static)>(
                self.ctx.as_ptr(),
            )
        };
        let backlog = {
            let mut g = lock(slot);
            if g.overflowed {
                drop(g);
                self.t.release(s);
                return Some(PhaseOutcome::Error(SessionError::QueueFull));
            }
            g.outcome = None;
            g.waiting = false;
            g.lent = Some(LentContext { ctx: erased });
            g.record(
                Direction::ToPlugin,
                self.phase as u8,
                Method::PHASE_START,
                &[],
            );
            !g.backlog.is_empty()
        };
        self.state = FastState::Running;
        // Leftovers from between phases first; they may end the phase.
        if !backlog || !drain_backlog(s.sid, slot) {
            let start = FfiBuffer::new(s.sid, self.phase, Method::PHASE_START, &[]);
            match &self.t.spawner {
                None => s.plugin.event_stream(&start),
                Some(spawner) => {
                    let plugin = Arc::clone(&s.plugin);
                    let (sid, phase) = (s.sid, self.phase);
                    spawner.spawn(Box::new(move || {
                        plugin.event_stream(&FfiBuffer::new(sid, phase, Method::PHASE_START, &[]));
                    }));
                }
            }
        }
        let mut g = lock(slot);
        let o = g.outcome.take()?;
        g.lent = None;
        drop(g);
        Some(self.end(o))
    }

    /// The phase ended with `o`: the session is closed after a failure.
    #[inline]
    fn end(&mut self, o: PhaseOutcome) -> PhaseOutcome {
        self.state = FastState::Done;
        match o {
            PhaseOutcome::Next | PhaseOutcome::End | PhaseOutcome::StreamEnd => o,
            o => {
                self.t.release(self.s);
                o
            }
        }
    }

    /// A poll of a pending phase: its outcome, else its deferred reads and
    /// WebSocket client answered, then `Pending` with the waker registered.
    #[cold]
    #[inline(never)]
    fn resume(&mut self, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        let sid = self.s.sid;
        let slot = slot_of(sid);
        let mut g = lock(slot);
        loop {
            if g.ws.upgraded {
                // A WebSocket phase lasts as long as the connection.
                self.websocket = true;
            }
            if let Some(o) = g.outcome.take() {
                g.lent = None;
                g.waiting = false;
                drop(g);
                return Poll::Ready(self.end(o));
            }
            // Deferred reads, answered from the polling thread.
            if let Some((method, payload)) = g.reads.pop_front() {
                let es = g.event_stream;
                with_reply_buf(|reply| {
                    let after = process(&mut g, method, &payload, reply);
                    drop(g);
                    complete(slot, sid, es, after, reply);
                });
                g = lock(slot);
                continue;
            }
            if g.ws.active() && g.ws_ready {
                if let Some(event) = poll_client(&mut g) {
                    let es = g.event_stream;
                    drop(g);
                    complete(slot, sid, es, After::Reply(event.0), &event.1);
                    g = lock(slot);
                    continue;
                }
                if g.outcome.is_some() {
                    continue;
                }
            }
            // Nothing to do until the plugin signals. Registered and looked
            // at under the lock the plugin signals under: nothing is lost.
            slot.waker.register(cx.waker());
            g.waiting = true;
            self.traffic = g.ws_traffic;
            return Poll::Pending;
        }
    }
}

/// Processes the messages kept between phases, in arrival order; true when
/// they ended the phase.
#[cold]
#[inline(never)]
fn drain_backlog(sid: u32, slot: &Slot) -> bool {
    loop {
        let mut g = lock(slot);
        if g.outcome.is_some() {
            return true;
        }
        let Some(q) = g.backlog.pop_front() else {
            return false;
        };
        let (method, data) = match q {
            Queued::Data(m, d) => {
                g.backlog_bytes -= d.len();
                (m, d)
            }
            Queued::Bad(e) => {
                g.finish(PhaseOutcome::Error(SessionError::Payload(e)));
                return true;
            }
        };
        let es = g.event_stream;
        with_reply_buf(|reply| {
            let after = process(&mut g, method, &data, reply);
            drop(g);
            complete(slot, sid, es, after, reply);
        });
    }
}

impl Future for FastPhase<'_> {
    type Output = PhaseOutcome;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        let this = self.get_mut();
        match this.state {
            FastState::Start => match this.start() {
                Some(o) => {
                    this.state = FastState::Done;
                    Poll::Ready(o)
                }
                None => this.resume(cx),
            },
            FastState::Running => this.resume(cx),
            FastState::Done => Poll::Ready(PhaseOutcome::Error(SessionError::Closed)),
        }
    }
}

impl PhaseProgress for FastPhase<'_> {
    fn websocket(&self) -> Option<u64> {
        self.websocket.then_some(self.traffic)
    }
}

impl Drop for FastPhase<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.state == FastState::Running {
            // Cancelled: `release` revokes the context under the slot lock
            // (after any callback inside it is done), then tells the plugin.
            self.t.release(self.s);
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
            g.waiting = false;
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
            ctx: NonNull::from(ctx),
            _ctx: PhantomData,
            phase,
            state: FastState::Start,
            websocket: false,
            traffic: 0,
        }
    }

    fn run_phase(
        &self,
        s: &mut FastSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        run_to_end(
            self.phase(s, phase, ctx),
            self.config.wait,
            &self.latency,
            timeout,
        )
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
