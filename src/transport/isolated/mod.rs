//! The process-isolated transport: plugins run in worker processes, so a
//! plugin that crashes takes down only its worker, never the host.
//!
//! The host starts [`IsolatedConfig::workers`] worker processes per plugin
//! (`nylon-transport worker ...`, the same binary, or any binary that calls
//! [`worker_main`]). Each loads the library, detects its ABI, and drives it
//! with the in-process [`Fast`](super::Fast) or [`V2`](super::V2) transport
//! through a shadow context built from the phase-start frame. Host and worker
//! talk over a pair of rings ([`crate::ring`]) in one shared memfd mapping.
//! See `docs/isolation.md` for the protocol and the safety argument.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::wait::{run_started, Latency, PhaseProgress, Settle, WaitPolicy};
use super::{OpenError, PhaseOutcome, SessionError, SessionOptions, TraceEntry, Transport};
use crate::abi::legacy::{Method, Phase};
use crate::host::context::{HttpContext, WsRecv};
use crate::host::dispatch::DispatchError;
use crate::pool::Slab;
use crate::ring::RingError;
use host::{lock, Counters, Help, Launch, Stage, Worker};

mod doorbell;
mod host;
mod looking;
mod names;
mod probe;
pub mod proto;
mod slabs;
mod watch;
mod worker;

/// Settings of an [`IsolatedPlugin`].
#[derive(Clone, Debug)]
pub struct IsolatedConfig {
    /// Worker processes per plugin (default 2); at least 1.
    pub workers: usize,
    /// Submissions queued per worker, at most (default 1024); past it
    /// [`Transport::open`] returns [`OpenError::Overloaded`].
    pub queue: usize,
    /// A phase that runs longer ends with [`PhaseOutcome::Timeout`] in the
    /// worker; a worker that owes answers and sends nothing for this long
    /// (and a quarter more, at most a second) is killed and restarted
    /// (default 5 s).
    pub phase_timeout: Duration,
    /// The first and the largest delay between restarts of one worker
    /// (default 10 ms, 2 s); the delay doubles after each death in a row.
    pub restart_backoff: (Duration, Duration),
    /// The argv that starts a worker; the host appends its own arguments.
    /// Default: `[current_exe, "worker"]`.
    pub worker_command: Vec<OsString>,
    /// Which in-process transport a worker drives a legacy library with
    /// (v2 libraries always use [`V2`](super::V2)).
    pub legacy_transport: InnerKind,
    /// Send header names as interned ids once the worker knows them
    /// (default true); false sends every name in place (the bench's
    /// like-for-like variant).
    pub intern_names: bool,
    /// Send payloads of 4 KiB and more in slabs of the shared mapping
    /// (default true); false puts every payload inside the frames (the
    /// bench's like-for-like variant).
    pub slabs: bool,
}

impl Default for IsolatedConfig {
    fn default() -> Self {
        let exe = std::env::current_exe()
            .map(OsString::from)
            .unwrap_or_else(|_| OsString::from("nylon-transport"));
        Self {
            workers: 2,
            queue: 1024,
            phase_timeout: Duration::from_secs(5),
            restart_backoff: (Duration::from_millis(10), Duration::from_secs(2)),
            worker_command: vec![exe, OsString::from("worker")],
            legacy_transport: InnerKind::Fast,
            intern_names: true,
            slabs: true,
        }
    }
}

/// The in-process transport a worker uses for a legacy library.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InnerKind {
    /// [`Fast`](super::Fast), replies inline.
    #[default]
    Fast,
    /// [`Fast`](super::Fast), replies deferred.
    FastDeferred,
    /// [`Baseline`](super::Baseline).
    Baseline,
}

/// The ABI a worker found in the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// The legacy C ABI.
    Legacy,
    /// The v2 ABI.
    V2,
}

/// Why an isolated plugin could not be started or asked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolatedError {
    /// A worker process could not be started (spawn, memfd, mapping).
    Spawn(String),
    /// A worker could not load or initialize the library; its message.
    Load(String),
    /// A worker died or broke the protocol before it answered.
    Worker(String),
    /// The plugin was shut down.
    ShutDown,
}

impl fmt::Display for IsolatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(m) => write!(f, "cannot start a worker: {m}"),
            Self::Load(m) => write!(f, "worker cannot load the plugin: {m}"),
            Self::Worker(m) => write!(f, "worker failed: {m}"),
            Self::ShutDown => f.write_str("plugin is shut down"),
        }
    }
}

impl std::error::Error for IsolatedError {}

/// Counters of an [`IsolatedPlugin`], as [`IsolatedPlugin::stats`] reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolatedStats {
    /// Worker processes started (the first ones and every restart).
    pub started: u64,
    /// Restarts after a death.
    pub restarts: u64,
    /// Worker deaths (crash, exit, killed after a timeout or garbage).
    pub deaths: u64,
    /// Why the last worker died, if one did.
    pub last_death: Option<String>,
    /// Sessions open now.
    pub in_flight: u64,
    /// Opens refused with [`OpenError::Overloaded`], and phases refused with
    /// [`SessionError::Busy`] (the worker's ring was full).
    pub rejected: u64,
    /// Payloads the host sent in slabs of the shared mapping (phase-start
    /// payloads and bodies, read replies), not inside frames.
    pub slabs_sent: u64,
    /// Bodies and chunks of phase ends the host read from the worker's
    /// slabs.
    pub slabs_received: u64,
}

/// A plugin loaded in worker processes.
///
/// Dropping the last handle shuts the workers down (as
/// [`IsolatedPlugin::shutdown`] with a one-second grace).
pub struct IsolatedPlugin {
    workers: Box<[Arc<Worker>]>,
    counters: Arc<Counters>,
    abi: Abi,
    /// Entries asked about so far, and the plugin's answer.
    entries: RwLock<Vec<(Arc<str>, bool)>>,
    /// Held while a worker is asked about a new entry: one question at a
    /// time (a worker has one answer slot), and each entry asked once.
    checking: Mutex<()>,
    next: AtomicUsize,
    stopped: AtomicBool,
    supervisors: Mutex<Vec<JoinHandle<()>>>,
}

impl fmt::Debug for IsolatedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedPlugin")
            .field("abi", &self.abi)
            .field("workers", &self.worker_pids())
            .finish_non_exhaustive()
    }
}

impl IsolatedPlugin {
    /// Starts the workers; each loads `path`, calls `initialize(config)` and
    /// says hello.
    ///
    /// # Errors
    ///
    /// [`IsolatedError::Spawn`] when a worker cannot be started,
    /// [`IsolatedError::Load`] when it cannot load or initialize the library.
    pub fn start(
        path: &Path,
        config: &[u8],
        cfg: IsolatedConfig,
    ) -> Result<Arc<Self>, IsolatedError> {
        if cfg.workers == 0 || cfg.queue == 0 {
            return Err(IsolatedError::Spawn(
                "workers and queue must be at least 1".into(),
            ));
        }
        if config.len() > host::RING_CAPACITY / 4 {
            return Err(IsolatedError::Spawn("plugin config too large".into()));
        }
        let n = cfg.workers;
        let launch = Arc::new(Launch {
            path: path.to_path_buf(),
            config: config.to_vec(),
            cfg,
            names: crate::intern::HeaderNames::new(proto::DYNAMIC_NAMES),
        });
        let counters = Arc::new(Counters::default());
        let workers: Box<[Arc<Worker>]> = (0..n)
            .map(|i| Arc::new(Worker::new(i, Arc::clone(&launch), Arc::clone(&counters))))
            .collect();
        let mut supervisors = Vec::with_capacity(n);
        let mut firsts = Vec::with_capacity(n);
        for w in workers.iter() {
            let (tx, rx) = std::sync::mpsc::channel();
            let w2 = Arc::clone(w);
            let h = std::thread::Builder::new()
                .name(format!("nylon-iso-s{}", w.index))
                .spawn(move || host::supervise(w2, tx))
                .map_err(|e| IsolatedError::Spawn(e.to_string()))?;
            supervisors.push(h);
            firsts.push(rx);
        }
        let mut abi = Ok(Abi::Legacy);
        for (i, rx) in firsts.into_iter().enumerate() {
            let r = rx
                .recv()
                .unwrap_or_else(|_| Err(IsolatedError::Spawn("supervisor ended".into())));
            match (i, r) {
                (_, Err(e)) => abi = Err(e),
                (0, Ok(a)) => {
                    if abi.is_ok() {
                        abi = Ok(a);
                    }
                }
                (_, Ok(_)) => {}
            }
        }
        let plugin = Arc::new(Self {
            workers,
            counters,
            abi: Abi::Legacy,
            entries: RwLock::new(Vec::new()),
            checking: Mutex::new(()),
            next: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            supervisors: Mutex::new(supervisors),
        });
        match abi {
            Ok(a) => {
                let mut p = plugin;
                // Only this function holds the Arc yet.
                if let Some(m) = Arc::get_mut(&mut p) {
                    m.abi = a;
                }
                Ok(p)
            }
            Err(e) => {
                plugin.shutdown(Duration::from_secs(1));
                Err(e)
            }
        }
    }

    /// Whether the plugin accepts `entry`: asked of a worker (which opens and
    /// closes a session there) the first time, then from the cache
    /// [`Transport::open`] uses too, so a checked entry opens without a
    /// round trip.
    ///
    /// # Errors
    ///
    /// [`IsolatedError::Worker`] when no worker answered,
    /// [`IsolatedError::ShutDown`] after [`IsolatedPlugin::shutdown`].
    pub fn check_entry(&self, entry: &str) -> Result<bool, IsolatedError> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(IsolatedError::ShutDown);
        }
        self.resolve(entry).map(|(_, ok)| ok)
    }

    /// Asks a live worker whether the plugin accepts `entry` (no cache).
    fn ask_entry(&self, entry: &str) -> Result<bool, IsolatedError> {
        let live = self
            .workers
            .iter()
            .find(|w| w.live.load(Ordering::Acquire))
            .ok_or_else(|| IsolatedError::Worker("no live worker".into()))?;
        live.check_entry(entry)
    }

    /// The ABI the workers found.
    pub fn abi(&self) -> Abi {
        self.abi
    }

    /// The pids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.workers
            .iter()
            .map(|w| w.pid.load(Ordering::Relaxed))
            .filter(|p| *p != 0)
            .collect()
    }

    /// The counters.
    pub fn stats(&self) -> IsolatedStats {
        let c = &self.counters;
        IsolatedStats {
            started: c.started.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            // Acquire: pairs with the reaper's count, made after it took the
            // dead incarnation off the list (`worker_pids`).
            deaths: c.deaths.load(Ordering::Acquire),
            last_death: lock(&c.last_death).clone(),
            in_flight: self
                .workers
                .iter()
                .map(|w| w.open.load(Ordering::Relaxed) as u64)
                .sum(),
            rejected: c.rejected.load(Ordering::Relaxed),
            slabs_sent: c.slabs_sent.load(Ordering::Relaxed),
            slabs_received: c.slabs_received.load(Ordering::Relaxed),
        }
    }

    /// Calls the plugin's `shutdown` in every worker once, waits up to
    /// `grace` for them to exit, then kills the rest. Later opens fail with
    /// [`OpenError::Overloaded`]. Calling it again does nothing.
    pub fn shutdown(&self, grace: Duration) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        for w in self.workers.iter() {
            w.send_shutdown();
        }
        let deadline = Instant::now() + grace;
        let handles = std::mem::take(&mut *lock(&self.supervisors));
        while Instant::now() < deadline && handles.iter().any(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
        for w in self.workers.iter() {
            w.kill_now();
        }
        for h in handles {
            let _ = h.join();
        }
    }

    /// The entry's cached answer, if it was asked about before.
    fn cached_entry(&self, entry: &str) -> Option<(Arc<str>, bool)> {
        let cache = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let (e, ok) = cache.iter().find(|(e, _)| &**e == entry)?;
        Some((Arc::clone(e), *ok))
    }

    /// The entry's answer: cached, or asked of a worker once (the answer is
    /// kept; a failure to ask is not).
    fn resolve(&self, entry: &str) -> Result<(Arc<str>, bool), IsolatedError> {
        if let Some(r) = self.cached_entry(entry) {
            return Ok(r);
        }
        let _one_at_a_time = lock(&self.checking);
        if let Some(r) = self.cached_entry(entry) {
            return Ok(r);
        }
        let ok = self.ask_entry(entry)?;
        let e: Arc<str> = Arc::from(entry);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push((Arc::clone(&e), ok));
        Ok((e, ok))
    }

    /// The entry for [`Transport::open`].
    fn entry(&self, entry: &str) -> Result<Arc<str>, OpenError> {
        match self.resolve(entry) {
            Ok((e, true)) => Ok(e),
            Ok((_, false)) => Err(OpenError::Rejected(entry.to_string())),
            Err(_) => Err(OpenError::Overloaded),
        }
    }
}

impl Drop for IsolatedPlugin {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

/// How long [`Isolated::new`]'s synchronous phases spin before they park.
///
/// An answer crosses to another process and back: a ring round trip plus
/// the plugin's work, some microseconds, and tens of them when this kind of
/// VM is in its slow state. The adaptive policy's window ([`SPIN`]) is
/// below that, so it would stop spinning and park, and a parked phase costs
/// three thread wake-ups (worker, dispatcher, caller) instead of none.
///
/// [`SPIN`]: super::wait::SPIN
pub const ISOLATED_SPIN: Duration = Duration::from_micros(50);

/// The largest encoding buffer a link keeps between phase starts.
const SCRATCH_KEEP: usize = 64 << 10;
/// Bytes of payload and body in the frame past which a phase start is
/// encoded straight into the ring (a counting pass, then the writing pass)
/// instead of through the link's buffer (one pass, then a copy). Headers
/// are not counted (that would take a pass of its own): a frame of huge
/// headers goes through the buffer, which then does not keep its size
/// ([`SCRATCH_KEEP`]).
const SCRATCH_DIRECT: usize = 16 << 10;

/// The process-isolated transport (see the [module docs](self)).
#[derive(Debug)]
pub struct Isolated {
    wait: WaitPolicy,
    latency: Latency,
}

impl Default for Isolated {
    fn default() -> Self {
        Self::new()
    }
}

impl Isolated {
    /// Creates the transport; synchronous phases spin up to
    /// [`ISOLATED_SPIN`] reading the worker's answers themselves.
    pub fn new() -> Self {
        Self::with_wait(WaitPolicy::Spin(ISOLATED_SPIN))
    }

    /// Creates the transport with another wait for synchronous phases
    /// (`WaitPolicy::Spin(Duration::ZERO)` parks at once and leaves the
    /// answer to the dispatcher, as an asynchronous phase does).
    pub fn with_wait(wait: WaitPolicy) -> Self {
        Self {
            wait,
            latency: Latency::default(),
        }
    }
}

/// One session open in a worker.
#[derive(Debug)]
pub struct IsolatedSession {
    plugin: Arc<IsolatedPlugin>,
    worker: usize,
    slot: u32,
    sid: u32,
    epoch: u64,
    entry: Arc<str>,
    /// The worker has opened the session (with its first phase start).
    opened: bool,
    /// Failed, cancelled or timed out: later phases return `Closed`.
    closed: bool,
    /// The slab area of the incarnation the session runs on (from its first
    /// phase start): where the worker's phase ends point.
    area: Option<Arc<slabs::SlabArea>>,
}

impl IsolatedSession {
    /// The pid of the worker process the session runs in (0 if it is down).
    pub fn worker_pid(&self) -> u32 {
        self.plugin.workers[self.worker].pid.load(Ordering::Relaxed)
    }

    /// Tells the worker to close the session (best effort: a dead or
    /// replaced worker has forgotten it already).
    fn close_remote(&mut self) {
        if !self.opened {
            return;
        }
        self.opened = false;
        let w = &self.plugin.workers[self.worker];
        if let Some(l) = lock(&w.link).as_mut() {
            if l.epoch == self.epoch {
                let _ = l.push(self.sid, proto::CLOSE, &[]);
            }
        }
    }
}

impl Drop for IsolatedSession {
    fn drop(&mut self) {
        self.close_remote();
        self.plugin.workers[self.worker].release(self.slot);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PhaseState {
    Start,
    Running,
    Done,
}

/// The future of one isolated phase (see [`Transport::phase`]).
///
/// The first poll writes the phase start into the worker's ring; the
/// dispatcher stores the phase end in the session's slot and wakes the task;
/// the next poll applies the commands to the context. Dropping it while the
/// phase runs cancels it: the session is closed in the worker.
pub struct IsolatedPhase<'a> {
    s: &'a mut IsolatedSession,
    ctx: &'a mut dyn HttpContext,
    phase: Phase,
    state: PhaseState,
    /// The phase upgraded to a WebSocket (counted in the worker's
    /// `ws_phases` until it ends).
    websocket: bool,
    /// WebSocket messages that went either way (the idle timeout's).
    traffic: u64,
    /// The client's close went to the worker: nothing more to pull.
    client_closed: bool,
    /// The client's last message; the WebSocket commands being applied
    /// (swapped with the slot's queue).
    ws_msg: Vec<u8>,
    ws_cmds: Vec<u8>,
}

impl fmt::Debug for IsolatedPhase<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedPhase")
            .field("phase", &self.phase)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl IsolatedPhase<'_> {
    /// Writes the phase start; `Some` when the phase cannot start.
    fn start(&mut self) -> Option<PhaseOutcome> {
        if self.s.closed {
            return Some(PhaseOutcome::Error(SessionError::Closed));
        }
        let w = &self.s.plugin.workers[self.s.worker];
        let slot = &w.slots[self.s.slot as usize];
        let mut link = lock(&w.link);
        let Some(l) = link.as_mut().filter(|l| l.epoch == self.s.epoch) else {
            drop(link);
            self.s.closed = true;
            self.s.opened = false;
            return Some(PhaseOutcome::Error(SessionError::Worker(w.death_reason())));
        };
        let mut st = lock(&slot.state);
        // The opening phase carries the request part, once per session.
        let entry = (!self.s.opened).then_some(&*self.s.entry);
        st.url.clear();
        if entry.is_some() {
            self.ctx.request_url(&mut st.url);
        }
        // Large payloads go in host slabs, held until the phase ends (the
        // worker keeps a copy for the session's later phases).
        let payload = entry.and(self.ctx.payload()).and_then(|p| l.area.put(p));
        let body = l.area.put(self.ctx.response_body());
        let slabbed = proto::Slabbed {
            payload: payload.as_ref().map(Slab::offset),
            body: body.as_ref().map(Slab::offset),
        };
        let mut codes = std::mem::take(&mut st.codes);
        // Small frames (the usual case: large bodies go in slabs) are
        // encoded once into the link's buffer, header names coded as they
        // come; large ones (a body or payload no slab took) are counted
        // first and then written in place, never held twice.
        let in_frame = entry.and(self.ctx.payload()).map_or(0, <[u8]>::len)
            * usize::from(slabbed.payload.is_none())
            + self.ctx.response_body().len() * usize::from(slabbed.body.is_none());
        // The same phase start into a counter, the buffer or the ring.
        macro_rules! encode {
            ($out:expr, $names:expr) => {
                proto::encode_start(
                    $out,
                    self.phase as u8,
                    entry,
                    self.ctx,
                    &st.url,
                    slabbed,
                    $names,
                )
            };
        }
        let mut frame = std::mem::take(&mut l.scratch);
        frame.clear();
        // Counted before the worker can answer (its answer uncounts it; see
        // `Worker::sent_request`). Before the frame is written: a locked
        // instruction waits for earlier stores, and the frame's stores into
        // the ring (lines the worker last read) are slow.
        w.watch.request();
        let mut coder = l.names.coder(w.names(), &mut codes);
        let len = if in_frame > SCRATCH_DIRECT {
            let mut count = proto::Counter::default();
            encode!(&mut count, &mut coder);
            count.0
        } else {
            encode!(&mut frame, &mut coder);
            frame.len()
        };
        // Never waits: a full ring (a worker behind or stuck) fails the
        // phase at once, so a task never blocks its thread here.
        let mut loan = match l.tx.try_loan(len) {
            Ok(loan) => loan,
            Err(e) => {
                w.watch.unrequest();
                l.scratch = frame;
                for slab in [payload, body].into_iter().flatten() {
                    l.area.release(slab);
                }
                l.names.rollback(&codes);
                st.codes = codes;
                drop(st);
                drop(link);
                self.s.closed = true;
                if e == RingError::Full {
                    w.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Some(PhaseOutcome::Error(SessionError::Busy(format!(
                        "worker {}'s ring is full",
                        w.index
                    ))));
                }
                return Some(PhaseOutcome::Error(SessionError::Worker(format!(
                    "cannot send the phase start: {e}"
                ))));
            }
        };
        for slab in [payload, body].into_iter().flatten() {
            w.counters.slabs_sent.fetch_add(1, Ordering::Relaxed);
            st.hold(slab);
        }
        st.stage = Stage::Waiting;
        st.ws = false;
        st.ws_over = false;
        st.ws_in.clear();
        // Nothing slow between the frame's first store and its commit.
        if frame.is_empty() {
            encode!(
                &mut proto::SliceOut::new(loan.payload_mut()),
                &mut codes.iter()
            );
        } else {
            loan.payload_mut().copy_from_slice(&frame);
        }
        loan.commit(self.s.sid, proto::PHASE_START, 0);
        st.codes = codes;
        l.bell.ring();
        // A frame far larger than usual does not keep its buffer.
        if frame.capacity() <= SCRATCH_KEEP {
            l.scratch = frame;
        }
        drop(st);
        if self.s.area.is_none() {
            self.s.area = Some(Arc::clone(&l.area));
        }
        self.s.opened = true;
        self.state = PhaseState::Running;
        drop(link);
        w.sent_request();
        None
    }

    /// Looks at the slot: WebSocket commands to apply, the phase's end, a
    /// read to answer, a death; in WebSocket mode, the client's messages to
    /// pass on.
    fn resume(&mut self, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        loop {
            let w = &self.s.plugin.workers[self.s.worker];
            let slot = &w.slots[self.s.slot as usize];
            let mut st = lock(&slot.state);
            // Sent before anything the stage says (the phase's end comes
            // after them).
            if !st.ws_in.is_empty() {
                std::mem::swap(&mut st.ws_in, &mut self.ws_cmds);
                drop(st);
                self.apply_ws();
                continue;
            }
            if st.ws_over {
                st.ws_over = false;
                st.stage = Stage::Idle;
                drop(st);
                return Poll::Ready(self.end(PhaseOutcome::Error(SessionError::QueueFull)));
            }
            match st.stage {
                Stage::Ended => {
                    st.stage = Stage::Idle;
                    let peer = self.s.area.as_deref().map_or(&[][..], |a| a.peer());
                    let o = apply(&st.buf, peer, self.ctx, &self.s.entry, &w.counters);
                    drop(st);
                    return Poll::Ready(self.end(o));
                }
                Stage::Failed => {
                    st.stage = Stage::Idle;
                    let reason = st.failure.take().unwrap_or_default();
                    drop(st);
                    self.s.opened = false;
                    return Poll::Ready(
                        self.end(PhaseOutcome::Error(SessionError::Worker(reason))),
                    );
                }
                Stage::Read if st.read == proto::READ_WS_UPGRADE => {
                    st.stage = Stage::Waiting;
                    drop(st);
                    self.upgrade();
                }
                Stage::Read => {
                    st.stage = Stage::Waiting;
                    drop(st);
                    let body = self.ctx.request_body();
                    let mut link = lock(&w.link);
                    let sent = match link.as_mut() {
                        Some(l) if l.epoch == self.s.epoch => {
                            // The slot is locked before the reply is sent, so
                            // the slab is held before the phase can end.
                            let mut st = lock(&slot.state);
                            // A worker that reads more than once per phase
                            // gets the later answers in frames.
                            let slab_ok = st.can_hold();
                            match l.push_blob(self.s.sid, proto::READ_REPLY, body, slab_ok) {
                                Ok(Some(slab)) => {
                                    w.counters.slabs_sent.fetch_add(1, Ordering::Relaxed);
                                    st.hold(slab);
                                    true
                                }
                                Ok(None) => true,
                                Err(_) => false,
                            }
                        }
                        _ => false,
                    };
                    drop(link);
                    if !sent {
                        // Too large or the worker is gone: it waits in vain
                        // until the watchdog or its death ends the phase.
                        continue;
                    }
                }
                Stage::Waiting if self.websocket && !self.client_closed => {
                    drop(st);
                    match self.pull_client() {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(o) => return Poll::Ready(self.end(o)),
                    }
                    // Registered under the lock the dispatcher changes the
                    // slot under, after a last look: nothing is lost.
                    let slot = &self.s.plugin.workers[self.s.worker].slots[self.s.slot as usize];
                    let st = lock(&slot.state);
                    if st.stage == Stage::Waiting && st.ws_in.is_empty() && !st.ws_over {
                        slot.waker.register(cx.waker());
                        return Poll::Pending;
                    }
                }
                Stage::Waiting => {
                    slot.waker.register(cx.waker());
                    return Poll::Pending;
                }
                Stage::Idle | Stage::Free => {
                    drop(st);
                    return Poll::Ready(self.end(PhaseOutcome::Error(SessionError::Closed)));
                }
            }
        }
    }

    fn end(&mut self, o: PhaseOutcome) -> PhaseOutcome {
        self.state = PhaseState::Done;
        self.leave_websocket();
        if !matches!(
            o,
            PhaseOutcome::Next | PhaseOutcome::End | PhaseOutcome::StreamEnd
        ) {
            // The worker closed its session after a failure; a dead worker
            // forgot it.
            self.s.closed = true;
            self.s.close_remote();
        }
        o
    }
}

impl IsolatedPhase<'_> {
    /// Answers the worker's [`proto::READ_WS_UPGRADE`]: the handshake is
    /// the host context's; the worker learns its result. Upgraded, the
    /// phase lasts as long as the connection.
    fn upgrade(&mut self) {
        let result = self.ctx.websocket_upgrade();
        self.ws_msg.clear();
        match &result {
            Ok(()) => self.ws_msg.push(0),
            Err(reason) => {
                self.ws_msg.push(1);
                self.ws_msg.extend_from_slice(reason.as_bytes());
            }
        }
        let w = &self.s.plugin.workers[self.s.worker];
        let slot = &w.slots[self.s.slot as usize];
        let mut link = lock(&w.link);
        let Some(l) = link.as_mut().filter(|l| l.epoch == self.s.epoch) else {
            // The worker is gone: the slot fails the phase.
            return;
        };
        // Marked before the answer is sent: the worker's commands that
        // follow it find the slot upgraded.
        let mut st = lock(&slot.state);
        st.ws = result.is_ok();
        if l.push(self.s.sid, proto::READ_REPLY, &self.ws_msg).is_err() {
            // As for a read: the worker waits in vain until the watchdog
            // or its death ends the phase.
            st.ws = false;
            return;
        }
        drop(st);
        drop(link);
        if result.is_ok() && !self.websocket {
            self.websocket = true;
            w.ws_phases.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The phase is over (or cancelled): it no longer owes its end for the
    /// life of a connection.
    fn leave_websocket(&mut self) {
        if std::mem::take(&mut self.websocket) {
            let w = &self.s.plugin.workers[self.s.worker];
            let _ = w
                .ws_phases
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Applies the WebSocket commands taken from the slot, in order (each
    /// validated by the dispatcher as it arrived).
    fn apply_ws(&mut self) {
        let mut cmds = std::mem::take(&mut self.ws_cmds);
        let mut rest = &cmds[..];
        while let Some((len, tail)) = rest.split_first_chunk::<4>() {
            let n = (u32::from_le_bytes(*len) as usize).min(tail.len());
            let (record, next) = tail.split_at(n);
            rest = next;
            self.traffic += 1;
            match proto::decode_ws_command(record) {
                Ok(proto::WsCommand::Send(m)) => {
                    if let Err(reason) = self.ctx.websocket_send(m) {
                        // The plugin's later sends fail with it (it cannot
                        // be the failed send's own result: that returned
                        // in the worker long ago).
                        self.report_send_error(&reason);
                    }
                }
                Ok(proto::WsCommand::Close) => self.ctx.websocket_close(),
                Ok(proto::WsCommand::Join(room)) => self.ctx.websocket_join_room(room),
                Ok(proto::WsCommand::Leave(room)) => self.ctx.websocket_leave_room(room),
                Ok(proto::WsCommand::Broadcast(room, m)) => self.ctx.websocket_broadcast(room, m),
                // Checked on arrival: cannot happen.
                Err(_) => {}
            }
        }
        cmds.clear();
        self.ws_cmds = cmds;
    }

    /// Tells the worker a send failed in the host (best effort: a worker
    /// whose ring is full learns it from the close that follows).
    fn report_send_error(&mut self, reason: &str) {
        let w = &self.s.plugin.workers[self.s.worker];
        if let Some(l) = lock(&w.link).as_mut().filter(|l| l.epoch == self.s.epoch) {
            let _ = l.try_push_parts(
                self.s.sid,
                proto::WS_EVENT,
                &[proto::ws_event::ERROR],
                reason.as_bytes(),
            );
        }
    }

    /// Passes the client's waiting messages (and its close) to the worker:
    /// `Ok(true)` when it passed any. A full ring fails the phase at once
    /// (`Busy`): the task's thread never waits for the worker.
    fn pull_client(&mut self) -> Result<bool, PhaseOutcome> {
        let w = &self.s.plugin.workers[self.s.worker];
        let mut moved = false;
        loop {
            let kind = match self.ctx.websocket_recv(Duration::ZERO, &mut self.ws_msg) {
                WsRecv::Text => proto::ws_event::TEXT,
                WsRecv::Binary => proto::ws_event::BINARY,
                WsRecv::Closed => {
                    self.ws_msg.clear();
                    self.client_closed = true;
                    proto::ws_event::CLOSED
                }
                WsRecv::Idle => return Ok(moved),
            };
            let pushed = match lock(&w.link).as_mut() {
                Some(l) if l.epoch == self.s.epoch => {
                    l.try_push_parts(self.s.sid, proto::WS_EVENT, &[kind], &self.ws_msg)
                }
                // The worker is gone: the slot fails the phase.
                _ => Ok(()),
            };
            match pushed {
                Ok(()) => {}
                Err(RingError::Full) => {
                    w.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(PhaseOutcome::Error(SessionError::Busy(format!(
                        "worker {}'s ring is full: a WebSocket message could not be passed on",
                        w.index
                    ))));
                }
                Err(e) => {
                    return Err(PhaseOutcome::Error(SessionError::Worker(format!(
                        "cannot pass on a WebSocket message: {e}"
                    ))))
                }
            }
            self.traffic += 1;
            moved = true;
            if self.client_closed {
                return Ok(true);
            }
        }
    }
}

/// Applies a validated phase end to the context: its commands in order,
/// then its outcome. Bodies and chunks may be in `slabs` (the worker's slab
/// area), copied from there straight into the context.
fn apply(
    frame: &[u8],
    slabs: &[u8],
    ctx: &mut dyn HttpContext,
    entry: &str,
    counters: &Counters,
) -> PhaseOutcome {
    let mut failed: Option<DispatchError> = None;
    let in_slabs = |b: &[u8]| !b.is_empty() && slabs.as_ptr_range().contains(&b.as_ptr());
    let decoded = proto::decode_end(frame, slabs, |c| {
        if failed.is_some() {
            return;
        }
        if let proto::Command::SetBody(b) | proto::Command::StreamData(b) = c {
            if in_slabs(b) {
                counters.slabs_received.fetch_add(1, Ordering::Relaxed);
            }
        }
        let r = match c {
            proto::Command::Status(s) => {
                ctx.set_response_status(s);
                Ok(())
            }
            proto::Command::SetHeader(n, v) => {
                ctx.set_response_header(n, v);
                Ok(())
            }
            proto::Command::RemoveHeader(n) => {
                ctx.remove_response_header(n);
                Ok(())
            }
            proto::Command::SetBody(b) => {
                ctx.set_response_body(b);
                Ok(())
            }
            proto::Command::StreamHeader => ctx
                .response_stream_header()
                .map_err(|e| (Method::SetResponseStreamHeader, e)),
            proto::Command::StreamData(d) => ctx
                .response_stream_data(d)
                .map_err(|e| (Method::SetResponseStreamData, e)),
            proto::Command::StreamEnd => ctx
                .response_stream_end()
                .map_err(|e| (Method::SetResponseStreamEnd, e)),
        };
        if let Err((m, reason)) = r {
            failed = Some(DispatchError::Downstream {
                method: m as u32,
                reason,
            });
        }
    });
    let (code, message) = match decoded {
        Ok(d) => d,
        // The dispatcher validated the frame before storing it.
        Err(e) => return PhaseOutcome::Error(SessionError::Worker(e.to_string())),
    };
    if let Some(e) = failed {
        return PhaseOutcome::Error(SessionError::Dispatch(e));
    }
    use proto::outcome::*;
    match code {
        NEXT => PhaseOutcome::Next,
        END => PhaseOutcome::End,
        STREAM_END => PhaseOutcome::StreamEnd,
        TIMEOUT => PhaseOutcome::Timeout,
        REJECTED => PhaseOutcome::Error(SessionError::Plugin(format!(
            "plugin refused to open a session for entry `{entry}`"
        ))),
        QUEUE_FULL => PhaseOutcome::Error(SessionError::QueueFull),
        CLOSED => PhaseOutcome::Error(SessionError::Closed),
        PLUGIN_REPORTED => PhaseOutcome::Error(SessionError::Dispatch(DispatchError::Plugin(
            message.to_string(),
        ))),
        _ => PhaseOutcome::Error(SessionError::Plugin(message.to_string())),
    }
}

impl Future for IsolatedPhase<'_> {
    type Output = PhaseOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        let this = self.get_mut();
        match this.state {
            PhaseState::Start => match this.start() {
                Some(o) => {
                    this.state = PhaseState::Done;
                    Poll::Ready(o)
                }
                None => this.resume(cx),
            },
            PhaseState::Running => this.resume(cx),
            PhaseState::Done => Poll::Ready(PhaseOutcome::Error(SessionError::Closed)),
        }
    }
}

impl PhaseProgress for IsolatedPhase<'_> {
    fn websocket(&self) -> Option<u64> {
        self.websocket.then_some(self.traffic)
    }
}

impl Drop for IsolatedPhase<'_> {
    fn drop(&mut self) {
        if self.state == PhaseState::Running {
            // Cancelled: a late phase end finds the slot idle and is dropped.
            let w = &self.s.plugin.workers[self.s.worker];
            lock(&w.slots[self.s.slot as usize].state).stage = Stage::Idle;
            self.leave_websocket();
            self.s.closed = true;
            self.s.close_remote();
        }
    }
}

impl Transport for Isolated {
    type Plugin = IsolatedPlugin;
    type Session = IsolatedSession;
    type PhaseFuture<'a> = IsolatedPhase<'a>;

    fn name(&self) -> &'static str {
        "isolated"
    }

    /// Opens a session on the worker with the fewest open sessions among
    /// the next ones in turn. The worker opens it with the first phase
    /// start (the entry was checked once, when first seen).
    ///
    /// # Errors
    ///
    /// [`OpenError::Rejected`] when the plugin refuses the entry,
    /// [`OpenError::Overloaded`] when every worker is full or down.
    fn open(
        &self,
        plugin: &Arc<IsolatedPlugin>,
        entry: &str,
        _options: SessionOptions,
    ) -> Result<IsolatedSession, OpenError> {
        if plugin.stopped.load(Ordering::Acquire) {
            return Err(OpenError::Overloaded);
        }
        let entry = plugin.entry(entry)?;
        let n = plugin.workers.len();
        let first = plugin.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = (first + k) % n;
            if let Some((slot, sid, epoch)) = plugin.workers[i].acquire() {
                return Ok(IsolatedSession {
                    plugin: Arc::clone(plugin),
                    worker: i,
                    slot,
                    sid,
                    epoch,
                    entry,
                    opened: false,
                    closed: false,
                    area: None,
                });
            }
        }
        plugin.counters.rejected.fetch_add(1, Ordering::Relaxed);
        Err(OpenError::Overloaded)
    }

    fn phase<'a>(
        &'a self,
        session: &'a mut IsolatedSession,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> IsolatedPhase<'a> {
        IsolatedPhase {
            s: session,
            ctx,
            phase,
            state: PhaseState::Start,
            websocket: false,
            traffic: 0,
            client_closed: false,
            ws_msg: Vec::new(),
            ws_cmds: Vec::new(),
        }
    }

    /// Runs the phase on this thread. While it waits (a spin and yields, as
    /// [`WaitPolicy`] plans them) the thread reads the worker's answers from
    /// the ring itself ([`Help`]), so an answer costs no wake-up of the
    /// dispatcher; past that plan it parks until the dispatcher wakes it.
    fn run_phase(
        &self,
        session: &mut IsolatedSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        let t0 = probe::now();
        let plugin = Arc::clone(&session.plugin);
        let w = &plugin.workers[session.worker];
        let slot = &w.slots[session.slot as usize];
        let epoch = session.epoch;
        // Before the phase start is sent, so that its answer finds the
        // doorbell quiet.
        let help = Help::begin(w);
        let mut fut = self.phase(session, phase, ctx);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if let Poll::Ready(o) = Pin::new(&mut fut).poll(&mut cx) {
            return o;
        }
        // The clock is read while the worker runs the phase, never between
        // its answer and our return (as is `Settle::new`'s).
        let t1 = probe::now();
        let started = Instant::now();
        let answered = || {
            // A reader busy elsewhere (`None`: the worker is gone) is fine:
            // the slot says whether our answer came.
            let _ = w.drain(epoch, false);
            let st = lock(&slot.state);
            !matches!(st.stage, Stage::Waiting) || !st.ws_in.is_empty() || st.ws_over
        };
        loop {
            let mut settle = Settle::new(self.wait, &self.latency);
            if !settle.run(answered) {
                break;
            }
            let t2 = probe::now();
            if let Poll::Ready(o) = Pin::new(&mut fut).poll(&mut cx) {
                // Only the adaptive plan learns from its waits.
                if matches!(self.wait, WaitPolicy::Adaptive) {
                    settle.record(&self.latency, 0);
                }
                let t3 = probe::now();
                probe::add(0, t0, t1);
                probe::add(1, t1, t2);
                probe::add(2, t2, t3);
                probe::phase_done("host", probe::HOST);
                return o;
            }
            if fut.websocket {
                // A connection's life, not a phase's: the dispatcher reads
                // the worker's commands, and the client is polled as any
                // WebSocket phase's is.
                break;
            }
            // The worker asked for a read, which the poll answered: wait again.
        }
        // The plan is spent: hand the ring back to the dispatcher and park.
        drop(help);
        // A WebSocket phase's timeout is an idle timeout, whole from here.
        let left = if fut.websocket {
            timeout
        } else {
            timeout.saturating_sub(started.elapsed())
        };
        run_started(fut, WaitPolicy::Spin(Duration::ZERO), &self.latency, left)
    }

    fn close(&self, session: IsolatedSession) {
        drop(session);
    }

    fn take_trace(&self, _session: &mut IsolatedSession) -> Vec<TraceEntry> {
        Vec::new()
    }
}

/// The `worker` subcommand: both binaries (`nylon-transport`, and the
/// host's `nylon-serve`) call it with the arguments after `worker`.
pub fn worker_main(args: &[OsString]) -> std::process::ExitCode {
    worker::main(args)
}
