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
//! - a fresh FlatBuffers builder per header read, `to_string` decimals and
//!   serde_json params.
//!
//! Not reproduced: the `try_lock` that skips waiting for a phase, the missing
//! reply for an absent header, the missing timeout, and the receiver leak.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

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

/// The largest payload the host accepts from a plugin in one message (64 MiB).
///
/// A longer message is an error for its session; the bytes are not read.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// One plugin-to-host message as the callback queues it.
enum Msg {
    Data(u32, Vec<u8>),
    Bad(PayloadError),
}

type SessionMap = RwLock<HashMap<u32, Sender<Msg>>>;

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
            Some(tx) => {
                if tx.send(msg).is_err() {
                    DROPPED.count(buf.sid);
                }
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
        }
    }
}

/// A session of the [`Baseline`] transport.
#[derive(Debug)]
pub struct BaselineSession {
    sid: u32,
    plugin: Arc<LegacyPlugin>,
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

impl Transport for Baseline {
    type Plugin = LegacyPlugin;
    type Session = BaselineSession;

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
        // Registered before the call, so the plugin may send during registration.
        ACTIVE
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(sid, tx);
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
            rx,
            closed: false,
            ws: WsState::default(),
            trace: options.trace.then(Vec::new),
        })
    }

    fn run_phase(
        &self,
        s: &mut BaselineSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        if s.closed {
            return PhaseOutcome::Error(SessionError::Closed);
        }
        let mut deadline = Instant::now() + timeout;
        let plugin = Arc::clone(&s.plugin);
        let sid = s.sid;
        s.record(Direction::ToPlugin, phase as u8, Method::PHASE_START, &[]);
        self.spawner.spawn(Box::new(move || {
            plugin.event_stream(&FfiBuffer::new(sid, phase, Method::PHASE_START, &[]));
        }));
        let mut reply = Vec::new();
        loop {
            if s.ws.active() {
                // WebSocket mode: the plugin's queued commands first, then the client.
                match s.rx.try_recv() {
                    Ok(msg) => {
                        if let Some(out) = s.handle(msg, ctx, &mut reply) {
                            return out;
                        }
                        // In WebSocket mode the timeout is an idle timeout,
                        // re-armed by traffic in either direction.
                        deadline = Instant::now() + timeout;
                        continue;
                    }
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
                }
                // Today's host copies every client message into a new Vec.
                let mut msg = Vec::new();
                match ctx.websocket_recv(Duration::from_millis(1), &mut msg) {
                    WsRecv::Text => {
                        s.send(Phase::Zero, Method::WebsocketOnMessageText as u32, &msg);
                        deadline = Instant::now() + timeout;
                        continue;
                    }
                    WsRecv::Binary => {
                        s.send(Phase::Zero, Method::WebsocketOnMessageBinary as u32, &msg);
                        deadline = Instant::now() + timeout;
                        continue;
                    }
                    WsRecv::Closed => {
                        // Commands the plugin queued before the close still apply.
                        while let Ok(msg) = s.rx.try_recv() {
                            if let Some(out) = s.handle(msg, ctx, &mut reply) {
                                return out;
                            }
                        }
                        s.ws.closed = true;
                        s.send(Phase::Zero, Method::WebsocketOnClose as u32, &[]);
                        ctx.websocket_close();
                        return PhaseOutcome::StreamEnd;
                    }
                    WsRecv::Idle => {}
                }
            }
            let wait = if s.ws.active() {
                deadline.min(Instant::now() + Duration::from_millis(1))
            } else {
                deadline
            };
            match s.rx.recv_deadline(wait) {
                Ok(msg) => {
                    if let Some(out) = s.handle(msg, ctx, &mut reply) {
                        return out;
                    }
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return s.fail(PhaseOutcome::Timeout)
                }
            }
        }
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
