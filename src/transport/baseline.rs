//! The baseline transport: a faithful reproduction of today's host design and
//! of its costs (see `docs/baseline.md`), without its bugs.
//!
//! Reproduced on purpose, because that is what it measures:
//! - a process-global `RwLock<HashMap<sid, Sender>>` read-locked on every
//!   plugin-to-host message;
//! - a copy of every payload into a `Vec` inside the callback;
//! - an unbounded channel per session;
//! - the phase start handed to another thread (today's `tokio::spawn`);
//! - replies sent from the driver thread after the message is dequeued;
//! - the driver's task woken per message (today's channel wakes its
//!   receiving task; here the callback wakes the phase future's waker);
//! - a fresh FlatBuffers builder per header read, `to_string` decimals and
//!   serde_json params.
//!
//! Not reproduced: the `try_lock` that skips waiting for a phase, the missing
//! reply for an absent header, the missing timeout, and the receiver leak.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::{unbounded, Receiver, Sender};

use super::drops::Drops;
use super::{
    Direction, OpenError, PhaseOutcome, SessionError, SessionOptions, TraceEntry, Transport,
};
use crate::abi::legacy::{FfiBuffer, Method, PayloadError, Phase};
use crate::codec::encode_headers;
use crate::codec::scalar::encode_params;
use crate::host::context::{HttpContext, WsRecv};
use crate::host::dispatch::{dispatch, DispatchError, PhaseEnd, ReplyEncoding, Step, WsState};
use crate::host::loader::LegacyPlugin;
use crate::spawn::Spawner;
use crate::transport::wait::{run_to_end, Latency, PhaseProgress, WaitPolicy};

/// The largest payload the host accepts from a plugin in one message (64 MiB).
///
/// A longer message is an error for its session; the bytes are not read.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// One plugin-to-host message as the callback queues it.
enum Msg {
    Data(u32, Vec<u8>),
    Bad(PayloadError),
}

/// What the callback finds for a session: its queue and the task to wake.
#[derive(Debug)]
struct Inbox {
    tx: Sender<Msg>,
    waker: AtomicWaker,
}

type SessionMap = RwLock<HashMap<u32, Arc<Inbox>>>;

/// Today's `ACTIVE_SESSIONS`: the global map every callback read-locks.
static ACTIVE: LazyLock<SessionMap> = LazyLock::new(|| RwLock::new(HashMap::new()));
/// Messages that arrived for a session the host does not know (dropped).
static DROPPED: Drops = Drops::new();
static NEXT_SID: AtomicU32 = AtomicU32::new(1);

/// Allocates a session id; never 0, wraps around after `u32::MAX`.
pub(crate) fn next_sid() -> u32 {
    loop {
        let sid = NEXT_SID.fetch_add(1, Ordering::Relaxed);
        if sid != 0 {
            return sid;
        }
    }
}

/// The host callback handed to every baseline session.
///
/// # Safety
///
/// - `buf` is NULL or points to a valid `FfiBuffer` whose payload (when
///   `len > 0`) is `len` readable bytes, both valid for the call (ABI rule).
unsafe extern "C" fn baseline_callback(buf: *const FfiBuffer) {
    // A panic must not cross the C boundary; there is nothing to report it to.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if buf.is_null() {
            DROPPED.count_anonymous();
            return;
        }
        // SAFETY: non-null and valid for the call, by the caller's contract.
        let buf = unsafe { *buf };
        let msg = if buf.len > MAX_PAYLOAD {
            Msg::Bad(PayloadError::TooLong(buf.len))
        } else {
            // SAFETY: the plugin guarantees ptr/len for the duration of the call.
            match unsafe { buf.payload() } {
                Ok(p) => Msg::Data(buf.method, p.to_vec()),
                Err(e) => Msg::Bad(e),
            }
        };
        let tx = ACTIVE
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&buf.sid)
            .cloned();
        match tx {
            Some(inbox) => {
                if inbox.tx.send(msg).is_err() {
                    DROPPED.count(buf.sid);
                }
                inbox.waker.wake();
            }
            None => {
                DROPPED.count(buf.sid);
            }
        }
    }));
}

/// Counts messages the baseline host dropped because their session was
/// unknown or already closed (process-wide).
pub fn dropped_messages() -> u64 {
    DROPPED.total()
}

/// Counts messages the baseline host dropped that named session `sid`
/// (unknown or already closed when they arrived).
pub fn dropped_messages_for(sid: u32) -> u64 {
    DROPPED.for_sid(sid)
}

/// Today's host design, measured honestly. See the [module docs](self).
#[derive(Debug)]
pub struct Baseline {
    spawner: Spawner,
    /// Recorded by the synchronous wrapper (its fixed backoff reads none).
    latency: Latency,
}

impl Default for Baseline {
    fn default() -> Self {
        Self::new()
    }
}

impl Baseline {
    /// Creates the transport (its spawner threads start on demand).
    #[must_use]
    pub fn new() -> Self {
        Self {
            spawner: Spawner::new("nylon-baseline-phase"),
            latency: Latency::default(),
        }
    }
}

/// A session of the [`Baseline`] transport.
#[derive(Debug)]
pub struct BaselineSession {
    sid: u32,
    plugin: Arc<LegacyPlugin>,
    inbox: Arc<Inbox>,
    rx: Receiver<Msg>,
    closed: bool,
    ws: WsState,
    trace: Option<Vec<TraceEntry>>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Data(m, d) => write!(f, "Data({m}, {} bytes)", d.len()),
            Self::Bad(e) => write!(f, "Bad({e})"),
        }
    }
}

impl BaselineSession {
    /// The session id.
    pub fn sid(&self) -> u32 {
        self.sid
    }

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

    fn send(&mut self, phase: Phase, method: u32, payload: &[u8]) {
        self.record(Direction::ToPlugin, phase as u8, method, payload);
        self.plugin
            .event_stream(&FfiBuffer::new(self.sid, phase, method, payload));
    }

    /// Forgets the session on both sides after a timeout or error.
    fn fail(&mut self, outcome: PhaseOutcome) -> PhaseOutcome {
        if !self.closed {
            self.closed = true;
            // Forgotten before the plugin is told, so that whatever it sends
            // once it knows is dropped (and counted), not queued here.
            ACTIVE
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.sid);
            self.plugin.close_session(self.sid);
        }
        outcome
    }

    /// Processes one message; `Some` when the phase is over.
    fn handle(
        &mut self,
        msg: Msg,
        ctx: &mut dyn HttpContext,
        reply: &mut Vec<u8>,
    ) -> Option<PhaseOutcome> {
        let (method, data) = match msg {
            Msg::Data(m, d) => (m, d),
            Msg::Bad(e) => return Some(self.fail(PhaseOutcome::Error(SessionError::Payload(e)))),
        };
        self.record(Direction::ToHost, 0, method, &data);
        match dispatch(
            method,
            &data,
            ctx,
            &mut self.ws,
            &mut BaselineEncoding,
            reply,
        ) {
            Ok(Step::Continue) => None,
            Ok(Step::Reply) => {
                let reply = std::mem::take(reply);
                self.send(Phase::Zero, method, &reply);
                None
            }
            Ok(Step::Upgraded) => {
                self.send(Phase::Zero, Method::WebsocketOnOpen as u32, &[]);
                None
            }
            Ok(Step::End(end)) => Some(match end {
                PhaseEnd::Next => PhaseOutcome::Next,
                PhaseEnd::End => PhaseOutcome::End,
                PhaseEnd::StreamEnd => PhaseOutcome::StreamEnd,
            }),
            // A failed write to an open WebSocket is the connection's problem,
            // not the plugin's: tell the plugin (event 354) and go on.
            Err(DispatchError::Downstream { reason, .. }) if self.ws.active() => {
                self.send(
                    Phase::Zero,
                    Method::WebsocketOnError as u32,
                    reason.as_bytes(),
                );
                None
            }
            Err(e) => Some(self.fail(PhaseOutcome::Error(SessionError::Dispatch(e)))),
        }
    }
}

/// The future of one baseline phase (see [`Transport::phase`]).
///
/// The first poll hands the phase start to another thread, as today's host
/// does; every poll then processes the queued messages on the polling thread
/// (the context is never lent to another thread: the callback only copies
/// and queues), and the callback wakes the task when it queues one.
pub struct BaselinePhase<'a> {
    t: &'a Baseline,
    s: &'a mut BaselineSession,
    ctx: &'a mut dyn HttpContext,
    phase: Phase,
    started: bool,
    done: bool,
    reply: Vec<u8>,
    /// Messages either way in WebSocket mode (the idle timeout's traffic).
    traffic: u64,
}

impl std::fmt::Debug for BaselinePhase<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaselinePhase")
            .field("phase", &self.phase)
            .field("started", &self.started)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl BaselinePhase<'_> {
    /// Processes what is queued; `Some` when the phase is over, `None` when
    /// the queue (and, in WebSocket mode, the client) has nothing more.
    fn drain(&mut self) -> Option<PhaseOutcome> {
        let (s, ctx, reply) = (&mut *self.s, &mut *self.ctx, &mut self.reply);
        loop {
            if let Ok(msg) = s.rx.try_recv() {
                if s.ws.active() {
                    self.traffic += 1;
                }
                if let Some(out) = s.handle(msg, ctx, reply) {
                    return Some(out);
                }
                continue;
            }
            if !s.ws.active() {
                return None;
            }
            // WebSocket mode: the plugin's queued commands first, then the
            // client. Today's host copies every client message into a new Vec.
            let mut msg = Vec::new();
            match ctx.websocket_recv(Duration::ZERO, &mut msg) {
                WsRecv::Text => {
                    s.send(Phase::Zero, Method::WebsocketOnMessageText as u32, &msg);
                    self.traffic += 1;
                }
                WsRecv::Binary => {
                    s.send(Phase::Zero, Method::WebsocketOnMessageBinary as u32, &msg);
                    self.traffic += 1;
                }
                WsRecv::Closed => {
                    // Commands the plugin queued before the close still apply.
                    while let Ok(msg) = s.rx.try_recv() {
                        if let Some(out) = s.handle(msg, ctx, reply) {
                            return Some(out);
                        }
                    }
                    s.ws.closed = true;
                    s.send(Phase::Zero, Method::WebsocketOnClose as u32, &[]);
                    ctx.websocket_close();
                    return Some(PhaseOutcome::StreamEnd);
                }
                // Nothing from the client: the host wakes the task when it
                // sends (the synchronous form polls).
                WsRecv::Idle => return None,
            }
        }
    }
}

impl Future for BaselinePhase<'_> {
    type Output = PhaseOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(PhaseOutcome::Error(SessionError::Closed));
        }
        if !this.started {
            if this.s.closed {
                this.done = true;
                return Poll::Ready(PhaseOutcome::Error(SessionError::Closed));
            }
            this.started = true;
            let (phase, sid) = (this.phase, this.s.sid);
            let plugin = Arc::clone(&this.s.plugin);
            this.s
                .record(Direction::ToPlugin, phase as u8, Method::PHASE_START, &[]);
            this.t.spawner.spawn(Box::new(move || {
                plugin.event_stream(&FfiBuffer::new(sid, phase, Method::PHASE_START, &[]));
            }));
        }
        loop {
            if let Some(o) = this.drain() {
                this.done = true;
                return Poll::Ready(o);
            }
            // Registered, then the queue looked at again: a message queued
            // after that look finds this waker.
            this.s.inbox.waker.register(cx.waker());
            if this.s.rx.is_empty() {
                return Poll::Pending;
            }
        }
    }
}

impl PhaseProgress for BaselinePhase<'_> {
    fn websocket(&self) -> Option<u64> {
        self.s.ws.active().then_some(self.traffic)
    }
}

impl Drop for BaselinePhase<'_> {
    fn drop(&mut self) {
        if self.started && !self.done {
            // Cancelled: the session is forgotten, then the plugin is told.
            self.s.fail(PhaseOutcome::Timeout);
        }
    }
}

impl Transport for Baseline {
    type Plugin = LegacyPlugin;
    type Session = BaselineSession;
    type PhaseFuture<'a> = BaselinePhase<'a>;

    fn name(&self) -> &'static str {
        "baseline"
    }

    fn open(
        &self,
        plugin: &Arc<LegacyPlugin>,
        entry: &str,
        options: SessionOptions,
    ) -> Result<BaselineSession, OpenError> {
        let sid = next_sid();
        let (tx, rx) = unbounded();
        let inbox = Arc::new(Inbox {
            tx,
            waker: AtomicWaker::new(),
        });
        // Registered before the call, so the plugin may send during registration.
        ACTIVE
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, Arc::clone(&inbox));
        if !plugin.register_session(sid, entry, baseline_callback) {
            ACTIVE
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&sid);
            return Err(OpenError::Rejected(entry.to_string()));
        }
        Ok(BaselineSession {
            sid,
            plugin: Arc::clone(plugin),
            inbox,
            rx,
            closed: false,
            ws: WsState::default(),
            trace: options.trace.then(Vec::new),
        })
    }

    fn phase<'a>(
        &'a self,
        session: &'a mut BaselineSession,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> BaselinePhase<'a> {
        BaselinePhase {
            t: self,
            s: session,
            ctx,
            phase,
            started: false,
            done: false,
            reply: Vec::new(),
            traffic: 0,
        }
    }

    fn run_phase(
        &self,
        s: &mut BaselineSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        // As a host that blocks in its channel's receive (the baseline's wait
        // before phases were futures): a brief backoff, then park until the
        // callback's wake.
        run_to_end(
            self.phase(s, phase, ctx),
            WaitPolicy::Backoff,
            &self.latency,
            timeout,
        )
    }

    fn close(&self, mut s: BaselineSession) {
        if !s.closed {
            s.closed = true;
            // As in `fail`: forgotten first, then the plugin is told.
            ACTIVE
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&s.sid);
            s.plugin.close_session(s.sid);
        }
    }

    fn take_trace(&self, s: &mut BaselineSession) -> Vec<TraceEntry> {
        s.trace.take().unwrap_or_default()
    }
}

/// Today's reply encodings: a new builder per header read, `to_string`
/// decimals, serde_json params.
#[derive(Clone, Copy, Debug, Default)]
pub struct BaselineEncoding;

impl ReplyEncoding for BaselineEncoding {
    fn headers(&mut self, ctx: &dyn HttpContext, response: bool, out: &mut Vec<u8>) {
        // Today's host clones the header map before building.
        let mut copy: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut push = |n: &[u8], v: &[u8]| copy.push((n.to_vec(), v.to_vec()));
        if response {
            ctx.for_each_response_header(&mut push);
        } else {
            ctx.for_each_request_header(&mut push);
        }
        out.extend_from_slice(&encode_headers(
            copy.iter().map(|(n, v)| (n.as_slice(), v.as_slice())),
        ));
    }

    fn decimal_u64(&mut self, v: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(v.to_string().as_bytes());
    }

    fn decimal_i64(&mut self, v: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(v.to_string().as_bytes());
    }

    fn params(&mut self, params: Option<&[(String, String)]>, out: &mut Vec<u8>) {
        out.extend_from_slice(&encode_params(params));
    }
}
