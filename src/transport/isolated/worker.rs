//! The worker process: maps the two rings of the memfd it inherited, loads
//! the plugin, and serves phase starts with the in-process transport through
//! a [`Shadow`] context built from each phase-start frame and the session's
//! [`RequestPart`] (the request as the session's opening phase start carried
//! it; later phase starts carry only what can change).
//!
//! The main thread runs a small executor: every phase start becomes a task
//! (the in-process transport's phase future, owning its session and shadow
//! context), so phases of different sessions run at once, and a phase that a
//! plugin completes later on its own threads (a Go handler, say) holds
//! nobody else up. A task is polled when its waker fires (the plugin's
//! thread rings the worker's doorbell), when its deadline passes, or when
//! the host closes its session (the phase is then cancelled). The main
//! thread sleeps on the worker's doorbell word, which the host rings after
//! every frame it sends.
//!
//! A read of something the phase start did not carry (the request body)
//! sends [`proto::READ`] and waits for the host's [`proto::READ_REPLY`] on
//! the thread that reads (the plugin's, or the main thread inside a poll);
//! frames for others that it takes from the ring meanwhile go to the
//! backlog (and wake the main thread), answers to other reads to `replies`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use super::doorbell::{self, Doorbell, ARMED};
use super::looking::Looking;
use super::probe;
use super::proto::{self, at, Blob, Command, EndWriter, Start};
use super::slabs::{self, SlabArea};
use super::InnerKind;
use crate::abi::legacy::Phase;
use crate::host::context::{HttpContext, WsMessage, WsRecv};
use crate::host::dispatch::DispatchError;
use crate::host::{inspect, LegacyPlugin};
use crate::pool::Slab;
use crate::ring::{region_size, Consumer, FrameHeader, MmapRegion, Producer, Ring};
use crate::transport::{
    Baseline, Fast, FastConfig, PhaseOutcome, ReplyMode, SessionError, SessionOptions, Transport,
    V2Plugin, V2,
};

/// How long the worker waits for the host when it must (a full ring, the
/// answer to a read) before it gives up and exits.
const HOST_WAIT: Duration = Duration::from_secs(30);
/// The main thread's longest sleep (it then checks that the host lives).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// A reader's longest wait on the ring before it looks for a cancellation.
const READ_SLICE: Duration = Duration::from_millis(100);
/// The main thread's spin before it yields, and the yields before it sleeps.
const IDLE_SPIN: u32 = 128;
const IDLE_YIELDS: u32 = 8;
/// Wakers of ended phase tasks kept for the next ones.
const SPARE_WAKERS: usize = 64;
/// How long the main thread keeps looking (yielding between looks) before
/// it sleeps when no phase is running: a host that sends its next phase
/// start within this finds the worker awake, instead of paying a futex
/// wake-up (tens of µs on a VM whose idle vCPU halted). While phases run on
/// the plugin's own threads it sleeps after the yields: those threads need
/// the CPU more, and their completion wakes it. It looks only while that
/// pays: see [`super::looking`].
const IDLE_ACTIVE: Duration = Duration::from_micros(50);
/// Frame buffers the main thread keeps for reuse, and the largest it keeps.
const SPARE_FRAMES: usize = 64;
const SPARE_FRAME_KEEP: usize = 64 << 10;

/// A map keyed by session id.
type SidMap<V> = HashMap<u32, V, BuildHasherDefault<SidHasher>>;

/// Hashes a session id with one multiply instead of SipHash's rounds: the
/// ids come from the host (which the worker trusts; nobody else can send it
/// frames), and their low bits, the host's slot index, already differ
/// between the sessions in flight.
#[derive(Default)]
struct SidHasher(u64);

impl Hasher for SidHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The worker's arguments (after `worker`).
#[derive(Debug)]
struct Args {
    fd: i32,
    capacity: usize,
    back_offset: u64,
    doorbell_offset: u64,
    slab_offset: u64,
    slabs: bool,
    plugin: PathBuf,
    legacy: InnerKind,
    host_pid: u32,
    timeout: Duration,
    fault: Option<Fault>,
}

/// A protocol violation the worker commits on purpose (`--fault`), for the
/// tests that check the host kills such a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// A phase end with an unknown outcome code.
    GarbageEnd,
    /// A phase end for a session id outside the host's table.
    BadSid,
    /// A frame word that claims more bytes than the ring holds.
    CorruptRing,
    /// A phase end whose body points past the worker's slab area.
    BadSlab,
}

fn parse(args: &[OsString]) -> Result<Args, String> {
    let mut a = Args {
        fd: 0,
        capacity: 0,
        back_offset: 0,
        doorbell_offset: 0,
        slab_offset: 0,
        slabs: true,
        plugin: PathBuf::new(),
        legacy: InnerKind::Fast,
        host_pid: 0,
        timeout: Duration::from_secs(10),
        fault: None,
    };
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k:?} needs a value"))?;
        let s = || v.to_str().ok_or_else(|| format!("{k:?}: not UTF-8"));
        let num = |s: &str| s.parse::<u64>().map_err(|e| format!("{k:?}: {e}"));
        match k.to_str() {
            Some("--fd") => a.fd = num(s()?)? as i32,
            Some("--capacity") => a.capacity = num(s()?)? as usize,
            Some("--back-offset") => a.back_offset = num(s()?)?,
            Some("--doorbell-offset") => a.doorbell_offset = num(s()?)?,
            Some("--slab-offset") => a.slab_offset = num(s()?)?,
            Some("--slabs") => a.slabs = num(s()?)? != 0,
            Some("--plugin") => a.plugin = PathBuf::from(v),
            Some("--host-pid") => a.host_pid = num(s()?)? as u32,
            Some("--timeout-ms") => a.timeout = Duration::from_millis(num(s()?)?),
            Some("--fault") => {
                a.fault = Some(match s()? {
                    "garbage-end" => Fault::GarbageEnd,
                    "bad-sid" => Fault::BadSid,
                    "corrupt-ring" => Fault::CorruptRing,
                    "bad-slab" => Fault::BadSlab,
                    o => return Err(format!("--fault {o}")),
                })
            }
            Some("--legacy") => {
                a.legacy = match s()? {
                    "fast" => InnerKind::Fast,
                    "fast-deferred" => InnerKind::FastDeferred,
                    "baseline" => InnerKind::Baseline,
                    o => return Err(format!("--legacy {o}: fast, fast-deferred or baseline")),
                }
            }
            _ => return Err(format!("unknown worker argument {k:?}")),
        }
    }
    if a.capacity == 0
        || a.doorbell_offset == 0
        || a.slab_offset == 0
        || a.plugin.as_os_str().is_empty()
    {
        return Err(
            "worker needs --capacity, --doorbell-offset, --slab-offset and --plugin".into(),
        );
    }
    Ok(a)
}

/// The worker's ends of the two rings, and frames set aside while a read
/// waited for its answer.
struct Link {
    tx: Mutex<Producer<MmapRegion>>,
    /// Rung after every frame sent (the host's dispatcher may be asleep).
    bell: Doorbell,
    /// The main thread's doorbell: rung by the host after its frames, and by
    /// [`Link::wake_main`].
    wake: Doorbell,
    /// The main thread has something to do (a task to poll, a backlog).
    woken: AtomicBool,
    rx: Mutex<Consumer<MmapRegion>>,
    backlog: Mutex<VecDeque<(FrameHeader, Vec<u8>)>>,
    /// The backlog is not empty: changed only under its lock, read without
    /// it (a frame put there also sets `woken` after it, so a look that
    /// misses it is followed by another).
    backlogged: AtomicBool,
    /// Answers to reads, taken from the ring by another thread than the
    /// reader's (always under the `rx` lock).
    replies: Mutex<SidMap<Vec<u8>>>,
    host_pid: u32,
    /// The largest frame the ring takes (half its capacity).
    max_frame: usize,
    fault: Option<Fault>,
    /// Bytes of frames sent (the host's consumer position, for
    /// [`Fault::CorruptRing`]).
    sent: Mutex<u64>,
    capacity: usize,
    /// The worker-to-host ring's region, mapped a second time (for
    /// [`Fault::CorruptRing`] only).
    back: Option<MmapRegion>,
    /// The slab area (the worker leases from its half, reads the host's).
    area: SlabArea,
    /// Header names by id (the host announces new ones in phase starts).
    names: proto::NameTable,
    /// Sessions whose phase upgraded to a WebSocket (or is asking to):
    /// the client's events the main thread took from the ring for them.
    ws: Mutex<SidMap<WsInbox>>,
    /// Entries in `ws`, read without its lock.
    ws_open: AtomicUsize,
    /// Entries in `ws` with an `error` (a send looks it up only then).
    ws_failed: AtomicUsize,
}

/// The client's events for one session in WebSocket mode, not taken yet.
#[derive(Default)]
struct WsInbox {
    /// `proto::ws_event` kind and bytes, in arrival order.
    events: VecDeque<(u8, Vec<u8>)>,
    /// The client closed: every later look says so.
    closed: bool,
    /// Why a message the plugin sent could not be sent (its next send
    /// fails with it).
    error: Option<String>,
    /// The host answered the upgrade (until then the inbox only keeps
    /// events that may follow the answer).
    upgraded: bool,
    /// The session's phase task, found once (by its first event), then
    /// marked ready by each event without a search.
    task: Option<Arc<TaskWake>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Link {
    fn send(&self, sid: u32, method: u32, payload: &[u8]) -> Result<(), String> {
        lock(&self.tx)
            .push_timeout(sid, method, 0, payload, HOST_WAIT)
            .map_err(|e| format!("cannot write to the host: {e}"))?;
        self.bell.ring();
        if self.fault.is_some() {
            *lock(&self.sent) +=
                (crate::ring::FRAME_HEADER + payload.len().div_ceil(16) * 16) as u64;
        }
        Ok(())
    }

    /// The next frame: from the backlog, else from the ring (waiting; the
    /// worker exits when the host is gone).
    fn next(&self) -> Result<(FrameHeader, Vec<u8>), String> {
        if let Some(f) = lock(&self.backlog).pop_front() {
            return Ok(f);
        }
        let mut rx = lock(&self.rx);
        loop {
            match rx.pop_timeout(Duration::from_secs(1)) {
                Ok(f) => return Ok((f.header(), f.payload().to_vec())),
                Err(crate::ring::RingError::Timeout) => {
                    if !host_alive(self.host_pid) {
                        return Err("the host is gone".into());
                    }
                }
                Err(e) => return Err(format!("host ring: {e}")),
            }
        }
    }

    /// Tells the main thread it has work, waking it if it sleeps.
    fn wake_main(&self) {
        self.woken.store(true, Ordering::SeqCst);
        self.wake.ring();
    }

    /// Whether session `sid`'s phase upgraded to a WebSocket (it then lasts
    /// as long as the connection: no phase deadline, for good).
    fn in_websocket(&self, sid: u32) -> bool {
        self.ws_open.load(Ordering::Relaxed) > 0
            && lock(&self.ws).get(&sid).is_some_and(|i| i.upgraded)
    }

    /// The host answered `sid`'s upgrade: it is in WebSocket mode.
    fn mark_upgraded(&self, sid: u32) {
        if let Some(inbox) = lock(&self.ws).get_mut(&sid) {
            inbox.upgraded = true;
        }
    }

    /// Starts keeping the client's events for `sid`.
    fn open_inbox(&self, sid: u32) {
        if lock(&self.ws).insert(sid, WsInbox::default()).is_none() {
            self.ws_open.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops keeping them (the phase ended, or the upgrade failed).
    fn close_inbox(&self, sid: u32) {
        if self.ws_open.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(inbox) = lock(&self.ws).remove(&sid) {
            self.ws_open.fetch_sub(1, Ordering::Relaxed);
            if inbox.error.is_some() {
                self.ws_failed.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Keeps a client event for `sid` and marks its phase task ready
    /// (`task` finds it, once per session); an event for a session no
    /// longer in WebSocket mode (its phase ended) is dropped.
    fn deliver(
        &self,
        sid: u32,
        frame: &[u8],
        task: impl FnOnce() -> Option<Arc<TaskWake>>,
    ) -> Result<(), String> {
        let (kind, data) = proto::decode_ws_event(frame).map_err(|e| e.to_string())?;
        let mut ws = lock(&self.ws);
        let Some(inbox) = ws.get_mut(&sid) else {
            return Ok(());
        };
        if kind == proto::ws_event::ERROR {
            if inbox.error.is_none() {
                self.ws_failed.fetch_add(1, Ordering::Relaxed);
            }
            inbox.error = Some(String::from_utf8_lossy(data).into_owned());
            return Ok(());
        }
        inbox.events.push_back((kind, data.to_vec()));
        if inbox.task.is_none() {
            inbox.task = task();
        }
        if let Some(t) = &inbox.task {
            // The main thread's own flag: polled in this pass.
            t.ready.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    /// The next frame without waiting: the backlog's, else the ring's (unless
    /// a reader holds the ring: it moves what it takes to the backlog and
    /// wakes us), copied into a buffer from `spare` when there is one.
    /// Answers to reads go to `replies`.
    fn try_next(&self, spare: &mut Vec<Vec<u8>>) -> Result<Option<(FrameHeader, Vec<u8>)>, String> {
        // SYNC POINT: `SeqCst`, after the caller's `SeqCst` clear of `woken`;
        // pairs with `await_reply`'s set of `backlogged`, then of `woken`.
        if self.backlogged.load(Ordering::SeqCst) {
            let mut backlog = lock(&self.backlog);
            let f = backlog.pop_front();
            if backlog.is_empty() {
                self.backlogged.store(false, Ordering::SeqCst);
            }
            if let Some(f) = f {
                return Ok(Some(f));
            }
        }
        let mut rx = match self.rx.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(None),
        };
        loop {
            let Some(f) = rx.try_pop().map_err(|e| format!("host ring: {e}"))? else {
                return Ok(None);
            };
            let h = f.header();
            let mut p = spare.pop().unwrap_or_default();
            p.clear();
            p.extend_from_slice(f.payload());
            drop(f);
            if h.method == proto::READ_REPLY {
                if let Some(old) = lock(&self.replies).insert(h.session, p) {
                    spare.push(old);
                }
                continue;
            }
            return Ok(Some((h, p)));
        }
    }

    /// Whether the main thread has something to do. A frame put in the
    /// backlog sets `woken` after it, and the main thread clears `woken`
    /// before it empties the backlog: so `woken` covers the backlog.
    fn has_work(&self) -> Result<bool, String> {
        if self.woken.load(Ordering::SeqCst) {
            return Ok(true);
        }
        match self.rx.try_lock() {
            Ok(mut rx) => rx.has_frame().map_err(|e| format!("host ring: {e}")),
            Err(TryLockError::Poisoned(e)) => e
                .into_inner()
                .has_frame()
                .map_err(|e| format!("host ring: {e}")),
            // A reader holds the ring, and wakes us with what it takes.
            Err(TryLockError::WouldBlock) => Ok(false),
        }
    }

    /// Waits until the main thread has work or `deadline` passes (without
    /// one, [`IDLE_WAIT`]): a spin, [`IDLE_YIELDS`] yields and more for up
    /// to `active` (only while `looking` says it pays), then a sleep on the
    /// doorbell (armed, then a last look: the protocol is in
    /// [`super::doorbell`]). The clock is read only after the spin.
    fn idle(
        &self,
        deadline: Option<Instant>,
        active: Duration,
        looking: &mut Looking,
    ) -> Result<(), String> {
        for _ in 0..IDLE_SPIN {
            if self.has_work()? {
                if !active.is_zero() {
                    looking.hit();
                }
                return Ok(());
            }
            std::hint::spin_loop();
        }
        let start = Instant::now();
        let deadline = deadline.unwrap_or(start + IDLE_WAIT);
        // Only a gap between phases (nothing running here) is looked
        // through and measured: a running phase's completion wakes us.
        let gap = |looking: &mut Looking| {
            if !active.is_zero() {
                looking.record(start.elapsed(), active);
            }
        };
        let look = active.is_zero() || looking.pays();
        if look {
            let until = start + active;
            let mut yields = 0;
            loop {
                if self.has_work()? {
                    gap(looking);
                    return Ok(());
                }
                yields += 1;
                if yields > IDLE_YIELDS {
                    let now = Instant::now();
                    if now >= until || now >= deadline {
                        break;
                    }
                }
                if active.is_zero() {
                    std::thread::yield_now();
                } else {
                    looking.yield_now();
                }
            }
        }
        self.wake.arm();
        if self.has_work()? {
            gap(looking);
            return Ok(());
        }
        let now = Instant::now();
        self.wake.sleep(ARMED, deadline.min(now + IDLE_WAIT));
        gap(looking);
        if now.elapsed() >= IDLE_WAIT && !host_alive(self.host_pid) {
            return Err("the host is gone".into());
        }
        Ok(())
    }

    /// Waits for the answer to a read of session `sid`, setting other frames
    /// aside. A `CLOSE` of the session (the host gave up on the phase and will
    /// not answer) makes the answer empty: the phase then ends, its end is
    /// dropped by the host, and the `CLOSE`, kept, closes the session.
    fn await_reply(&self, sid: u32) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + HOST_WAIT;
        loop {
            let mut rx = lock(&self.rx);
            if let Some(p) = lock(&self.replies).remove(&sid) {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("waiting for a read reply: no answer".into());
            }
            let f = match rx.pop_timeout(left.min(READ_SLICE)) {
                Ok(f) => f,
                Err(crate::ring::RingError::Timeout) => continue,
                Err(e) => return Err(format!("waiting for a read reply: {e}")),
            };
            let (h, p) = (f.header(), f.payload().to_vec());
            drop(f);
            if h.method == proto::READ_REPLY {
                if h.session == sid {
                    return Ok(p);
                }
                lock(&self.replies).insert(h.session, p);
                continue;
            }
            let cancelled = h.method == proto::CLOSE && h.session == sid;
            let mut backlog = lock(&self.backlog);
            backlog.push_back((h, p));
            self.backlogged.store(true, Ordering::SeqCst);
            drop(backlog);
            self.wake_main();
            if cancelled {
                return Ok(Vec::new());
            }
        }
    }
}

/// Whether the host process is still our parent.
fn host_alive(host_pid: u32) -> bool {
    std::os::unix::process::parent_id() == host_pid
}

/// Asks the kernel to kill this process when its parent thread dies.
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and changes
    // only this process's death signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
}

/// The `worker` subcommand (see [`super::worker_main`]).
pub(super) fn main(args: &[OsString]) -> ExitCode {
    die_with_parent();
    let args = match parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("nylon worker: {e}");
            return ExitCode::from(2);
        }
    };
    if args.host_pid != 0 && !host_alive(args.host_pid) {
        return ExitCode::from(3);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nylon worker {}: {e}", std::process::id());
            ExitCode::from(3)
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    // Opening the descriptor's /proc entry gives this process its own handle
    // on the inherited memfd, without unsafe code.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", args.fd))
        .map_err(|e| format!("descriptor {}: {e}", args.fd))?;
    let link = Arc::new(map(&file, args)?);
    drop(file);
    let (h, config) = link.next()?;
    if h.method != proto::INIT {
        return Err("the first frame is not INIT".into());
    }
    let fail = |link: &Link, e: String| {
        let _ = link.send(0, proto::LOAD_ERROR, e.as_bytes());
        Err(e)
    };
    let abi = match inspect(&args.plugin) {
        Ok(r) => r.abi,
        Err(e) => return fail(&link, e.to_string()),
    };
    let pid = std::process::id();
    let hello = |abi: u8| {
        let mut b = vec![abi];
        b.extend_from_slice(&pid.to_le_bytes());
        b
    };
    if abi == "v2" {
        let plugin = match V2Plugin::load(&args.plugin, &config) {
            Ok(p) => Arc::new(p),
            Err(e) => return fail(&link, e.to_string()),
        };
        link.send(0, proto::HELLO, &hello(1))?;
        // The plugin's shutdown runs when its last Arc drops.
        return serve(&V2::default(), plugin, &link, args.timeout, |_| {});
    }
    let plugin = match LegacyPlugin::load(&args.plugin) {
        Ok(p) => Arc::new(p),
        Err(e) => return fail(&link, e.to_string()),
    };
    if let Err(e) = plugin.initialize(&config) {
        return fail(&link, e.to_string());
    }
    link.send(0, proto::HELLO, &hello(0))?;
    let shutdown = |p: &Arc<LegacyPlugin>| p.shutdown();
    match args.legacy {
        InnerKind::Fast => serve(&Fast::default(), plugin, &link, args.timeout, shutdown),
        InnerKind::FastDeferred => {
            let t = Fast::new(FastConfig {
                reply_mode: ReplyMode::Deferred,
                ..FastConfig::default()
            });
            serve(&t, plugin, &link, args.timeout, shutdown)
        }
        InnerKind::Baseline => serve(&Baseline::new(), plugin, &link, args.timeout, shutdown),
    }
}

fn map(file: &File, args: &Args) -> Result<Link, String> {
    let len = region_size(args.capacity);
    let to = MmapRegion::file_range(file, 0, len).map_err(|e| e.to_string())?;
    let back = MmapRegion::file_range(file, args.back_offset, len).map_err(|e| e.to_string())?;
    let rx = Ring::open(to).map_err(|e| e.to_string())?.into_consumer();
    let tx = Ring::open(back).map_err(|e| e.to_string())?.into_producer();
    let (bell, wake) = Doorbell::pair(
        MmapRegion::file_range(file, args.doorbell_offset, doorbell::LEN)
            .map_err(|e| e.to_string())?,
    )?;
    let area = SlabArea::new(
        MmapRegion::file_range(file, args.slab_offset, 2 * slabs::HALF)
            .map_err(|e| e.to_string())?,
        false,
        args.slabs,
    )?;
    Ok(Link {
        area,
        names: proto::NameTable::new(),
        ws: Mutex::new(SidMap::default()),
        ws_open: AtomicUsize::new(0),
        ws_failed: AtomicUsize::new(0),
        tx: Mutex::new(tx),
        bell,
        wake,
        woken: AtomicBool::new(false),
        rx: Mutex::new(rx),
        backlog: Mutex::new(VecDeque::new()),
        backlogged: AtomicBool::new(false),
        replies: Mutex::new(SidMap::default()),
        host_pid: args.host_pid,
        max_frame: args.capacity / 2 - crate::ring::FRAME_HEADER,
        fault: args.fault,
        sent: Mutex::new(0),
        capacity: args.capacity,
        back: match args.fault {
            Some(Fault::CorruptRing) => Some(
                MmapRegion::file_range(file, args.back_offset, len).map_err(|e| e.to_string())?,
            ),
            _ => None,
        },
    })
}

/// A phase task's waker: marks the task ready and wakes the main thread.
struct TaskWake {
    ready: AtomicBool,
    /// The deadline passed or the host closed the session: the next poll
    /// cancels the phase.
    expired: AtomicBool,
    link: Arc<Link>,
}

impl Wake for TaskWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::SeqCst);
        self.link.wake_main();
    }
}

/// What a phase task gives back: the session, the context (with the phase's
/// commands), the outcome.
type TaskOutput<S> = (S, Box<Shadow>, PhaseOutcome);

/// A phase running on the main thread's executor.
struct Task<'a, S> {
    sid: u32,
    /// Set when a poll first leaves the phase waiting (most phases end in
    /// their first poll, and never read the clock): the phase's time counts
    /// from then.
    deadline: Option<Instant>,
    state: Arc<TaskWake>,
    waker: Waker,
    fut: Pin<Box<dyn Future<Output = TaskOutput<S>> + 'a>>,
    /// The host closed the session: close it once the phase is over.
    close: bool,
    /// The phase upgraded to a WebSocket: no deadline.
    websocket: bool,
}

/// The future of one phase: the transport's phase future over the task's
/// own session and context, cut short (and so cancelled) once `expired`.
async fn phase_task<T: Transport>(
    t: &T,
    mut session: T::Session,
    mut shadow: Box<Shadow>,
    phase: Phase,
    state: Arc<TaskWake>,
) -> TaskOutput<T::Session> {
    let outcome = {
        let mut inner = std::pin::pin!(t.phase(&mut session, phase, &mut *shadow));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(o) = inner.as_mut().poll(cx) {
                return Poll::Ready(o);
            }
            if state.expired.load(Ordering::SeqCst) {
                return Poll::Ready(PhaseOutcome::Timeout);
            }
            Poll::Pending
        })
        .await
    };
    (session, shadow, outcome)
}

/// Sends a phase end: the outcome, then the context's commands.
fn send_end(
    link: &Link,
    end: &mut Vec<u8>,
    sid: u32,
    outcome: &PhaseOutcome,
    commands: &[u8],
) -> Result<(), String> {
    end.clear();
    let (code, message) = outcome_code(outcome);
    EndWriter::head(end, code, &message);
    end.extend_from_slice(commands);
    if end.len() > link.max_frame {
        // Too large for the ring: the phase fails, the worker lives.
        let e = format!("phase end of {} bytes is too large for the ring", end.len());
        end.clear();
        EndWriter::head(end, proto::outcome::ERROR, &e);
    }
    link.send(sid, proto::PHASE_END, end)
}

/// Serves frames until [`proto::SHUTDOWN`] (then `shutdown`) or the host is
/// gone: the executor of the module docs.
fn serve<T: Transport>(
    t: &T,
    plugin: Arc<T::Plugin>,
    link: &Arc<Link>,
    timeout: Duration,
    shutdown: impl FnOnce(&Arc<T::Plugin>),
) -> Result<(), String> {
    // Sessions with no phase running, with their request parts; a running
    // phase's session is its task's, its request part its shadow's.
    let mut sessions: SidMap<(T::Session, Box<RequestPart>)> = SidMap::default();
    // Request parts of closed sessions, for the next ones.
    let mut spares: Vec<Box<RequestPart>> = Vec::new();
    let mut tasks: Vec<Task<'_, T::Session>> = Vec::new();
    let mut shadows: Vec<Box<Shadow>> = Vec::new();
    // Worker slabs of sent phase ends, the host's to read until its next
    // frame for the session.
    let mut held: SidMap<Vec<Slab>> = SidMap::default();
    let release = |held: &mut SidMap<Vec<Slab>>, sid: u32| {
        if let Some(list) = held.get_mut(&sid) {
            for slab in list.drain(..) {
                link.area.release(slab);
            }
        }
    };
    let mut end = Vec::new();
    // Wakers of ended tasks that nobody else holds, for the next ones.
    let mut wakers: Vec<(Arc<TaskWake>, Waker)> = Vec::new();
    let mut looking = Looking::new();
    // Frame buffers for `try_next`, reused (a phase start's goes to its
    // shadow, which gives back the one it had).
    let mut frames: Vec<Vec<u8>> = Vec::new();
    loop {
        // Cleared before looking, so a wake from now on is seen by the
        // next `idle`.
        link.woken.store(false, Ordering::SeqCst);
        let mut t0 = probe::now();
        while let Some((h, mut payload)) = link.try_next(&mut frames)? {
            let t1 = probe::now();
            probe::add(0, t0, t1);
            let sid = h.session;
            if matches!(h.method, proto::PHASE_START | proto::CLOSE) {
                // The host applied the session's last phase end.
                release(&mut held, sid);
            }
            match h.method {
                proto::CHECK_ENTRY => {
                    let entry = String::from_utf8_lossy(&payload);
                    let ok = match t.open(&plugin, &entry, SessionOptions::default()) {
                        Ok(s) => {
                            t.close(s);
                            1
                        }
                        Err(_) => 0,
                    };
                    link.send(sid, proto::ENTRY, &[ok])?;
                }
                proto::PHASE_START if link.fault.is_some() => return commit_fault(link, sid),
                proto::PHASE_START => {
                    let mut shadow = shadows
                        .pop()
                        .unwrap_or_else(|| Box::new(Shadow::new(Arc::clone(link))));
                    std::mem::swap(&mut shadow.frame, &mut payload);
                    let ready = if tasks.iter().any(|k| k.sid == sid) {
                        // The host never starts a second phase of a session
                        // before the first ended.
                        shadow.commands.clear();
                        Err(PhaseOutcome::Error(SessionError::Closed))
                    } else {
                        prepare(t, &plugin, (&mut sessions, &mut spares), &mut shadow, sid)
                            .map_err(|e| e.to_string())?
                    };
                    let t2 = probe::now();
                    probe::add(1, t1, t2);
                    match ready {
                        Ok((session, phase)) => {
                            let (state, waker) = wakers.pop().unwrap_or_else(|| {
                                let state = Arc::new(TaskWake {
                                    ready: AtomicBool::new(false),
                                    expired: AtomicBool::new(false),
                                    link: Arc::clone(link),
                                });
                                (Arc::clone(&state), Waker::from(state))
                            });
                            // Polled at once: most phases end inline.
                            state.ready.store(true, Ordering::Relaxed);
                            state.expired.store(false, Ordering::Relaxed);
                            tasks.push(Task {
                                sid,
                                deadline: None,
                                waker,
                                fut: Box::pin(phase_task(
                                    t,
                                    session,
                                    shadow,
                                    phase,
                                    Arc::clone(&state),
                                )),
                                state,
                                close: false,
                                websocket: false,
                            });
                            probe::add(2, t2, probe::now());
                        }
                        Err(outcome) => {
                            send_end(link, &mut end, sid, &outcome, &shadow.commands)?;
                            shadow.give_back(&mut held, sid, false);
                            shadows.push(shadow);
                        }
                    }
                }
                proto::CLOSE => {
                    held.remove(&sid);
                    if let Some(task) = tasks.iter_mut().find(|k| k.sid == sid) {
                        // Cancel the phase the host gave up on; a read it
                        // waits on gets an empty answer.
                        task.close = true;
                        task.state.expired.store(true, Ordering::SeqCst);
                        task.state.ready.store(true, Ordering::SeqCst);
                        lock(&link.replies).entry(sid).or_default();
                    } else if let Some((s, req)) = sessions.remove(&sid) {
                        t.close(s);
                        spares.push(req);
                        // An answer to a read of its last phase that came late.
                        lock(&link.replies).remove(&sid);
                    }
                }
                proto::SHUTDOWN => {
                    // Running phases are cancelled with their tasks.
                    tasks.clear();
                    for (_, (s, _)) in sessions.drain() {
                        t.close(s);
                    }
                    shutdown(&plugin);
                    return Ok(());
                }
                proto::WS_EVENT => {
                    // For a phase still in WebSocket mode: its task polls
                    // the client again.
                    link.deliver(sid, &payload, || {
                        tasks
                            .iter()
                            .find(|k| k.sid == sid)
                            .map(|k| Arc::clone(&k.state))
                    })?;
                }
                // A late answer to a read whose phase already ended.
                proto::READ_REPLY | proto::INIT => {}
                m => return Err(format!("unknown frame kind {m} from the host")),
            }
            if frames.len() < SPARE_FRAMES && payload.capacity() <= SPARE_FRAME_KEEP {
                frames.push(payload);
            }
            t0 = probe::now();
        }
        // Read once, and only when a task is waiting (has a deadline).
        let mut now = None;
        let mut i = 0;
        while i < tasks.len() {
            let task = &mut tasks[i];
            if let Some(d) = task.deadline {
                if *now.get_or_insert_with(Instant::now) >= d {
                    if link.in_websocket(task.sid) {
                        // Upgraded since: it lasts as long as its
                        // connection (the host times out an idle one).
                        task.deadline = None;
                        task.websocket = true;
                    } else {
                        task.state.expired.store(true, Ordering::SeqCst);
                    }
                }
            }
            let due = task.state.ready.swap(false, Ordering::SeqCst)
                || task.state.expired.load(Ordering::SeqCst);
            if !due {
                i += 1;
                continue;
            }
            let t3 = probe::now();
            let Poll::Ready((session, shadow, outcome)) = task
                .fut
                .as_mut()
                .poll(&mut Context::from_waker(&task.waker))
            else {
                // Looked up until the phase upgrades, never after.
                if task.deadline.is_none() && !task.websocket {
                    if link.in_websocket(task.sid) {
                        task.websocket = true;
                    } else {
                        task.deadline = Some(*now.get_or_insert_with(Instant::now) + timeout);
                    }
                }
                i += 1;
                continue;
            };
            let mut shadow = shadow;
            let t4 = probe::now();
            probe::add(3, t3, t4);
            let Task {
                sid,
                state,
                waker,
                fut,
                close,
                ..
            } = tasks.swap_remove(i);
            drop(fut);
            link.close_inbox(sid);
            // Only a phase that read (its answer came) or was cancelled (an
            // empty answer may wait for it) can have left an answer.
            if close || shadow.request_body.is_some() {
                lock(&link.replies).remove(&sid);
            }
            send_end(link, &mut end, sid, &outcome, &shadow.commands)?;
            let t5 = probe::now();
            probe::add(4, t4, t5);
            // The host drops the end of a phase it cancelled, and reads
            // nothing of it.
            shadow.give_back(&mut held, sid, close);
            let req = shadow.req.take().unwrap_or_default();
            if close {
                t.close(session);
                spares.push(req);
            } else {
                sessions.insert(sid, (session, req));
            }
            shadows.push(shadow);
            // A waker a plugin thread still holds may yet fire: not reused.
            if Arc::strong_count(&state) == 2 && wakers.len() < SPARE_WAKERS {
                wakers.push((state, waker));
            }
            probe::add(5, t5, probe::now());
            probe::phase_done("worker", probe::WORKER);
        }
        // Straight to `idle`, even after work: its first look finds a frame
        // that came meanwhile, or a task woken (`woken`).
        let deadline = tasks.iter().filter_map(|k| k.deadline).min();
        // Looks for the host's next frame a while when nothing runs here.
        let active = if tasks.is_empty() {
            IDLE_ACTIVE
        } else {
            Duration::ZERO
        };
        link.idle(deadline, active, &mut looking)?;
    }
}

/// Breaks the protocol as `--fault` asked, then waits to be killed.
fn commit_fault(link: &Link, sid: u32) -> Result<(), String> {
    match link.fault {
        Some(Fault::GarbageEnd) => link.send(sid, proto::PHASE_END, &[42, 0, 0, 0, 0, 0, 0, 0])?,
        Some(Fault::BadSlab) => {
            let mut end = Vec::new();
            EndWriter::head(&mut end, proto::outcome::NEXT, "");
            // Ends one byte past the worker's half.
            let offset = (slabs::HALF - slabs::SLAB_MIN + 1) as u32;
            proto::write_slab_command(&mut end, Command::SetBody(&[0; slabs::SLAB_MIN]), offset);
            link.send(sid, proto::PHASE_END, &end)?;
        }
        Some(Fault::BadSid) => {
            let mut end = Vec::new();
            EndWriter::head(&mut end, proto::outcome::NEXT, "");
            link.send(0xffff, proto::PHASE_END, &end)?;
        }
        Some(Fault::CorruptRing) => {
            if let Some(back) = &link.back {
                use crate::ring::Region;
                // The first data word (after the 256-byte header) the host
                // reads next: published, with a length past the data area.
                let word = (1u32 << 31) | 0x3fff_fff0;
                let sent = *lock(&link.sent);
                let at = 256 + (sent % link.capacity as u64) as usize;
                if at + 4 <= back.len() {
                    // SAFETY: in bounds of the mapping (checked); the bytes
                    // are shared memory the host validates, which is the
                    // point of this fault.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            word.to_le_bytes().as_ptr(),
                            back.as_ptr().add(at),
                            4,
                        )
                    };
                }
            }
            // No wake: the host's consumer finds the word when its wait
            // times out.
        }
        None => {}
    }
    std::thread::sleep(HOST_WAIT);
    Err("the host did not kill a faulty worker".into())
}

/// Readies one phase start: loads the context, opens the session when
/// asked (keeping the request part the frame carries), and lends the
/// session's request part to the shadow. `Ok(Ok(_))` is the session and
/// phase to run; `Ok(Err(outcome))` a phase that ends at once (a refused
/// open, an unknown session); `Err` a frame that breaks the protocol.
#[allow(clippy::type_complexity)]
fn prepare<T: Transport>(
    t: &T,
    plugin: &Arc<T::Plugin>,
    (sessions, spares): (
        &mut SidMap<(T::Session, Box<RequestPart>)>,
        &mut Vec<Box<RequestPart>>,
    ),
    shadow: &mut Shadow,
    sid: u32,
) -> Result<Result<(T::Session, Phase), PhaseOutcome>, proto::ProtoError> {
    shadow.load(sid)?;
    let Some(phase) = Phase::from_u8(shadow.start.phase) else {
        return Err(proto::ProtoError("bad phase"));
    };
    if shadow.start.flags & proto::START_OPEN != 0 {
        let request = &shadow.start.request;
        let entry = std::str::from_utf8(at(&shadow.frame, request.entry)).unwrap_or("");
        match t.open(plugin, entry, SessionOptions::default()) {
            Ok(s) => {
                let mut req = spares.pop().unwrap_or_default();
                req.fill(
                    &shadow.frame,
                    shadow.start.flags,
                    &mut shadow.start.request,
                    shadow.link.area.peer(),
                );
                if let Some((old, old_req)) = sessions.insert(sid, (s, req)) {
                    t.close(old);
                    spares.push(old_req);
                }
            }
            Err(_) => return Ok(Err(rejected())),
        }
    }
    match sessions.remove(&sid) {
        Some((s, req)) => {
            shadow.req = Some(req);
            Ok(Ok((s, phase)))
        }
        None => Ok(Err(PhaseOutcome::Error(SessionError::Closed))),
    }
}

/// The outcome a refused open reports (see [`outcome_code`]).
fn rejected() -> PhaseOutcome {
    PhaseOutcome::Error(SessionError::Plugin(REJECTED_MARK.into()))
}

const REJECTED_MARK: &str = "\u{0}rejected";

fn outcome_code(o: &PhaseOutcome) -> (u8, String) {
    use proto::outcome::*;
    match o {
        PhaseOutcome::Next => (NEXT, String::new()),
        PhaseOutcome::End => (END, String::new()),
        PhaseOutcome::StreamEnd => (STREAM_END, String::new()),
        PhaseOutcome::Timeout => (TIMEOUT, String::new()),
        PhaseOutcome::Error(SessionError::Plugin(m)) if m == REJECTED_MARK => {
            (REJECTED_CODE, m.clone())
        }
        PhaseOutcome::Error(SessionError::QueueFull) => (QUEUE_FULL, String::new()),
        PhaseOutcome::Error(SessionError::Closed) => (CLOSED, String::new()),
        // The host wraps the message in `SessionError::Plugin` again.
        PhaseOutcome::Error(SessionError::Plugin(m)) => (ERROR, m.clone()),
        PhaseOutcome::Error(SessionError::Dispatch(DispatchError::Plugin(m))) => {
            (PLUGIN_REPORTED, m.clone())
        }
        PhaseOutcome::Error(e) => (ERROR, e.to_string()),
    }
}

const REJECTED_CODE: u8 = proto::outcome::REJECTED;

/// The request side of a session, as its opening phase start carried it: a
/// copy of that frame, the ranges of the request's fields in it, and the
/// params as strings. Kept with the session between its phases.
#[derive(Default)]
pub(super) struct RequestPart {
    frame: Vec<u8>,
    part: proto::Request,
    params: Vec<(String, String)>,
    has_params: bool,
    /// The payload, when it came in a host slab (which goes back to the
    /// host when the opening phase ends): a copy.
    payload: Option<Vec<u8>>,
    has_payload: bool,
}

impl RequestPart {
    /// Takes the request part of a decoded opening phase start (`frame` and
    /// the ranges `request` in it; `request` gets this part's old vectors),
    /// a payload in a slab from `slabs` (the host's slab area).
    fn fill(&mut self, frame: &[u8], flags: u8, request: &mut proto::Request, slabs: &[u8]) {
        self.frame.clear();
        self.frame.extend_from_slice(frame);
        std::mem::swap(&mut self.part, request);
        self.has_payload = flags & proto::START_PAYLOAD != 0;
        self.payload = match self.part.payload {
            Blob::Slab(_) => Some(self.part.payload.get(frame, slabs).to_vec()),
            Blob::Frame(_) => None,
        };
        // Route params that are there but empty stay `Some(&[])`.
        self.has_params = flags & proto::START_PARAMS != 0;
        self.params.clear();
        for (k, v) in &self.part.params {
            let s = |sp| String::from_utf8_lossy(at(&self.frame, sp)).into_owned();
            self.params.push((s(*k), s(*v)));
        }
    }

    fn s(&self, i: usize) -> &str {
        std::str::from_utf8(at(&self.frame, self.part.strings[i])).unwrap_or("")
    }
}

/// Where a response header's name or value lies in [`EditedHeaders`]: in
/// the phase start's frame (a name may be an interned id), or in its own
/// bytes.
#[derive(Clone, Copy, Debug)]
enum Src {
    Frame(proto::Name),
    Own(proto::Span),
}

/// A phase's response headers once the plugin changes them: the phase
/// start's headers as ranges of its frame, changed by the rules of
/// [`ResponseHeaders`](crate::host::context::ResponseHeaders) after the
/// upstream response (a set replaces the first header of its name and
/// drops the later ones, or appends the name lower-cased; a remove drops
/// every one). Bytes the plugin sets, and names lower-cased, go to `own`;
/// once the buffers have grown, no allocation. Every method takes the
/// frame and name table the ranges refer to.
#[derive(Debug, Default)]
struct EditedHeaders {
    list: Vec<(Src, Src)>,
    own: Vec<u8>,
}

impl EditedHeaders {
    /// The frame's `headers`, names lower-cased, in order.
    fn rebuild(
        &mut self,
        frame: &[u8],
        names: &proto::NameTable,
        headers: &[(proto::Name, proto::Span)],
    ) {
        self.list.clear();
        self.own.clear();
        for &(n, v) in headers {
            let bytes = n.get(frame, names);
            let name = if bytes.iter().any(u8::is_ascii_uppercase) {
                let o = self.own.len();
                self.own.extend(bytes.iter().map(u8::to_ascii_lowercase));
                Src::Own((o as u32, bytes.len() as u32))
            } else {
                Src::Frame(n)
            };
            self.list.push((name, Src::Frame(proto::Name::Frame(v))));
        }
    }

    fn get<'a>(&'a self, frame: &'a [u8], names: &'a proto::NameTable, src: Src) -> &'a [u8] {
        match src {
            Src::Frame(n) => n.get(frame, names),
            Src::Own(span) => at(&self.own, span),
        }
    }

    fn at<'a>(
        &'a self,
        frame: &'a [u8],
        names: &'a proto::NameTable,
        index: usize,
    ) -> Option<(&'a [u8], &'a [u8])> {
        let &(n, v) = self.list.get(index)?;
        Some((self.get(frame, names, n), self.get(frame, names, v)))
    }

    fn own(&mut self, bytes: impl ExactSizeIterator<Item = u8>) -> Src {
        let (o, n) = (self.own.len(), bytes.len());
        self.own.extend(bytes);
        Src::Own((o as u32, n as u32))
    }

    /// Whether header `i` is called `name` (any case).
    fn named(&self, frame: &[u8], names: &proto::NameTable, i: usize, name: &str) -> bool {
        self.get(frame, names, self.list[i].0)
            .eq_ignore_ascii_case(name.as_bytes())
    }

    /// Drops every header called `name` from index `from` on.
    fn remove_from(&mut self, frame: &[u8], names: &proto::NameTable, from: usize, name: &str) {
        let mut j = from;
        while j < self.list.len() {
            if self.named(frame, names, j, name) {
                self.list.remove(j);
            } else {
                j += 1;
            }
        }
    }

    fn set(&mut self, frame: &[u8], names: &proto::NameTable, name: &str, value: &[u8]) {
        let v = self.own(value.iter().copied());
        match (0..self.list.len()).find(|&i| self.named(frame, names, i, name)) {
            Some(i) => {
                self.list[i].1 = v;
                self.remove_from(frame, names, i + 1, name);
            }
            None => {
                let n = self.own(name.bytes().map(|b| b.to_ascii_lowercase()));
                self.list.push((n, v));
            }
        }
    }

    fn remove(&mut self, frame: &[u8], names: &proto::NameTable, name: &str) {
        self.remove_from(frame, names, 0, name);
    }
}

/// The worker's context for one phase: the request as the session's
/// opening phase start carried it ([`RequestPart`]), the rest as this
/// phase's start carried it, the response as the plugin's commands change
/// it, and those commands, encoded for the phase end.
pub(super) struct Shadow {
    link: Arc<Link>,
    sid: u32,
    frame: Vec<u8>,
    start: Start,
    /// The session's request part, lent for the phase.
    req: Option<Box<RequestPart>>,
    status: u16,
    /// The response headers once a command changed them (`headers_built`;
    /// until then they are the frame's, `start.response_headers`, every
    /// name lower-case).
    headers: EditedHeaders,
    headers_built: bool,
    body: Option<Vec<u8>>,
    /// The read reply (its frame) and where in it, or in the host's slabs,
    /// the body is.
    request_body: Option<(Vec<u8>, Blob)>,
    commands: Vec<u8>,
    /// Worker slabs the commands point to.
    leased: Vec<Slab>,
    /// The phase upgraded to a WebSocket: the plugin's WebSocket commands
    /// go to the host as they come (`proto::WS`), the client's events come
    /// through `Link::ws`.
    ws_up: bool,
    /// A WebSocket command being encoded (memory reused).
    ws_out: Vec<u8>,
}

impl Shadow {
    fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            sid: 0,
            frame: Vec::new(),
            start: Start::default(),
            req: None,
            status: 200,
            headers: EditedHeaders::default(),
            headers_built: false,
            body: None,
            request_body: None,
            commands: Vec::new(),
            leased: Vec::new(),
            ws_up: false,
            ws_out: Vec::new(),
        }
    }

    /// Hands the slabs of the phase end just sent to `held` (the host reads
    /// them until its next frame for `sid`), or back to the pool when the
    /// host will not read them (`drop`).
    fn give_back(&mut self, held: &mut SidMap<Vec<Slab>>, sid: u32, drop: bool) {
        if self.leased.is_empty() {
            return;
        }
        if drop {
            for slab in self.leased.drain(..) {
                self.link.area.release(slab);
            }
        } else {
            held.entry(sid).or_default().append(&mut self.leased);
        }
    }

    /// Decodes the phase start in `frame` (the caller put it there).
    fn load(&mut self, sid: u32) -> Result<(), proto::ProtoError> {
        proto::decode_start(
            &self.frame,
            &mut self.start,
            self.link.area.peer().len(),
            &self.link.names,
        )?;
        self.sid = sid;
        self.status = self.start.status;
        self.headers_built = false;
        // Names sent in place may have upper-case letters (ids never do):
        // then the list is built now, with its names lower-cased.
        let frame = &self.frame;
        if self.start.response_headers.iter().any(|(n, _)| {
            matches!(n, proto::Name::Frame(_))
                && n.get(frame, &self.link.names)
                    .iter()
                    .any(u8::is_ascii_uppercase)
        }) {
            self.build_headers();
        }
        self.body = None;
        self.request_body = None;
        self.commands.clear();
        self.ws_up = false;
        Ok(())
    }

    /// Asks the host for something the phase start did not carry
    /// ([`proto::READ`]) and waits for its answer: empty when the host
    /// gave up on the phase. A host that is gone or stuck ends the worker.
    fn ask(&self, what: u8) -> Vec<u8> {
        let reply = self
            .link
            .send(self.sid, proto::READ, &[what])
            .and_then(|()| self.link.await_reply(self.sid));
        match reply {
            Ok(frame) => frame,
            Err(e) => {
                // Nothing sensible remains.
                eprintln!("nylon worker {}: {e}", std::process::id());
                std::process::exit(3);
            }
        }
    }

    /// Sends one WebSocket command to the host, if the phase upgraded.
    fn ws_command(&mut self, c: proto::WsCommand<'_>) -> Result<(), String> {
        if !self.ws_up {
            return Err("websocket is not open".into());
        }
        self.ws_out.clear();
        proto::write_ws_command(&mut self.ws_out, c);
        if self.ws_out.len() > self.link.max_frame {
            return Err(format!(
                "a WebSocket message of {} bytes is too large for the worker's ring",
                self.ws_out.len()
            ));
        }
        self.link.send(self.sid, proto::WS, &self.ws_out)
    }

    fn s(&self, i: usize) -> &str {
        self.req.as_deref().map_or("", |r| r.s(i))
    }

    /// Builds the response header list from the frame's, for a change.
    fn build_headers(&mut self) {
        if !self.headers_built {
            self.headers_built = true;
            self.headers
                .rebuild(&self.frame, &self.link.names, &self.start.response_headers);
        }
    }

    fn command(&mut self, c: Command<'_>) {
        if let Command::SetBody(b) | Command::StreamData(b) = c {
            if let Some(slab) = self.link.area.put(b) {
                proto::write_slab_command(&mut self.commands, c, slab.offset());
                self.leased.push(slab);
                return;
            }
        }
        proto::write_command(&mut self.commands, c);
    }
}

impl HttpContext for Shadow {
    fn request_method(&self) -> &str {
        self.s(proto::S_METHOD)
    }

    fn request_path(&self) -> &str {
        self.s(proto::S_PATH)
    }

    fn request_query(&self) -> &str {
        self.s(proto::S_QUERY)
    }

    fn request_host(&self) -> &str {
        self.s(proto::S_HOST)
    }

    fn request_url(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.s(proto::S_URL).as_bytes());
    }

    fn client_ip(&self) -> &str {
        self.s(proto::S_CLIENT_IP)
    }

    fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        let r = self.req.as_deref()?;
        r.part
            .headers
            .iter()
            .find(|(n, _)| n.get(&r.frame, &self.link.names).eq_ignore_ascii_case(name))
            .map(|(_, v)| at(&r.frame, *v))
    }

    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        let r = self.req.as_deref()?;
        r.part
            .headers
            .get(index)
            .map(|(n, v)| (n.get(&r.frame, &self.link.names), at(&r.frame, *v)))
    }

    fn request_body(&mut self) -> &[u8] {
        if self.request_body.is_none() {
            // One extra round trip: the body is not in the phase start.
            let frame = self.ask(proto::READ_REQUEST_BODY);
            let body = if frame.is_empty() {
                // The host gave up on the phase: no answer comes.
                Ok((frame, Blob::default()))
            } else {
                proto::decode_read_reply(&frame, self.link.area.peer().len())
                    .map(|blob| (frame, blob))
            };
            match body {
                Ok(b) => self.request_body = Some(b),
                Err(e) => {
                    // The host broke the protocol: nothing sensible remains.
                    eprintln!("nylon worker {}: {e}", std::process::id());
                    std::process::exit(3);
                }
            }
        }
        match &self.request_body {
            Some((frame, blob)) => self.link.area.get(frame, *blob),
            None => &[],
        }
    }

    fn request_params(&self) -> Option<&[(String, String)]> {
        self.req
            .as_deref()
            .filter(|r| r.has_params)
            .map(|r| r.params.as_slice())
    }

    fn request_timestamp_ms(&self) -> u64 {
        self.req.as_deref().map_or(0, |r| r.part.timestamp_ms)
    }

    fn payload(&self) -> Option<&[u8]> {
        let r = self.req.as_deref().filter(|r| r.has_payload)?;
        Some(match &r.payload {
            Some(copy) => copy,
            None => r.part.payload.get(&r.frame, &[]),
        })
    }

    fn response_status(&self) -> u16 {
        self.status
    }

    fn set_response_status(&mut self, status: u16) {
        self.status = status;
        self.command(Command::Status(status));
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.build_headers();
        self.headers
            .set(&self.frame, &self.link.names, name, value.as_bytes());
        self.command(Command::SetHeader(name, value));
    }

    fn remove_response_header(&mut self, name: &str) {
        self.build_headers();
        self.headers.remove(&self.frame, &self.link.names, name);
        self.command(Command::RemoveHeader(name));
    }

    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        if self.headers_built {
            return self.headers.at(&self.frame, &self.link.names, index);
        }
        self.start
            .response_headers
            .get(index)
            .map(|(n, v)| (n.get(&self.frame, &self.link.names), at(&self.frame, *v)))
    }

    fn set_response_body(&mut self, body: &[u8]) {
        self.body = Some(body.to_vec());
        self.command(Command::SetBody(body));
    }

    fn response_body(&self) -> &[u8] {
        match &self.body {
            Some(b) => b,
            None => self.link.area.get(&self.frame, self.start.body),
        }
    }

    fn response_stream_header(&mut self) -> Result<(), String> {
        self.command(Command::StreamHeader);
        Ok(())
    }

    fn response_stream_data(&mut self, data: &[u8]) -> Result<(), String> {
        self.command(Command::StreamData(data));
        Ok(())
    }

    fn response_stream_end(&mut self) -> Result<(), String> {
        self.command(Command::StreamEnd);
        Ok(())
    }

    fn response_bytes(&self) -> u64 {
        match &self.body {
            Some(b) => b.len() as u64,
            None => self.start.response_bytes,
        }
    }

    fn response_duration_ms(&self) -> u64 {
        self.start.duration_ms
    }

    fn response_error(&self) -> &str {
        std::str::from_utf8(at(&self.frame, self.start.error)).unwrap_or("")
    }

    /// One round trip: the handshake is the host's (it answers a bad one
    /// itself). Events for the session are kept from before the question,
    /// as the host may send them right after its answer.
    fn websocket_upgrade(&mut self) -> Result<(), String> {
        if self.ws_up {
            return Ok(());
        }
        self.link.open_inbox(self.sid);
        let frame = self.ask(proto::READ_WS_UPGRADE);
        let result = if frame.is_empty() {
            Err("the host gave up on the phase".to_string())
        } else {
            match proto::decode_upgrade_reply(&frame) {
                Ok(r) => r.map_err(str::to_string),
                Err(e) => {
                    eprintln!("nylon worker {}: {e}", std::process::id());
                    std::process::exit(3);
                }
            }
        };
        match result {
            Ok(()) => {
                self.ws_up = true;
                self.link.mark_upgraded(self.sid);
            }
            Err(_) => self.link.close_inbox(self.sid),
        }
        result
    }

    /// Passed on to the host at once. A send that fails there (the client
    /// gone or too slow) cannot fail this call, which returned long
    /// before: the next one fails with its reason.
    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String> {
        // No lock and no lookup per send while no connection failed. A
        // send that misses an error counted just now (`Relaxed`) is sent;
        // a later send fails with it.
        if self.ws_up && self.link.ws_failed.load(Ordering::Relaxed) > 0 {
            if let Some(inbox) = lock(&self.link.ws).get(&self.sid) {
                if let Some(e) = &inbox.error {
                    return Err(e.clone());
                }
            }
        }
        self.ws_command(proto::WsCommand::Send(msg))
    }

    fn websocket_close(&mut self) {
        let _ = self.ws_command(proto::WsCommand::Close);
    }

    /// Never waits (the in-process transports ask with a zero wait): the
    /// main thread fills the inbox and polls the phase's task.
    fn websocket_recv(&mut self, _wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        buf.clear();
        if !self.ws_up {
            return WsRecv::Closed;
        }
        let mut ws = lock(&self.link.ws);
        let Some(inbox) = ws.get_mut(&self.sid) else {
            return WsRecv::Closed;
        };
        match inbox.events.pop_front() {
            Some((proto::ws_event::TEXT, data)) => {
                buf.extend_from_slice(&data);
                WsRecv::Text
            }
            Some((proto::ws_event::BINARY, data)) => {
                buf.extend_from_slice(&data);
                WsRecv::Binary
            }
            Some(_) => {
                inbox.closed = true;
                WsRecv::Closed
            }
            None if inbox.closed => WsRecv::Closed,
            None => WsRecv::Idle,
        }
    }

    fn websocket_join_room(&mut self, room: &str) {
        let _ = self.ws_command(proto::WsCommand::Join(room));
    }

    fn websocket_leave_room(&mut self, room: &str) {
        let _ = self.ws_command(proto::WsCommand::Leave(room));
    }

    fn websocket_broadcast(&mut self, room: &str, msg: WsMessage<'_>) {
        let _ = self.ws_command(proto::WsCommand::Broadcast(room, msg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::context::ResponseHeaders;

    /// The worker's header edits against the host's own list, over every
    /// short sequence of sets and removes: the same headers, in the same
    /// order, with the same bytes.
    #[test]
    fn edited_headers_follow_the_hosts_rules() {
        let names = proto::NameTable::new();
        let server = crate::intern::WELL_KNOWN
            .iter()
            .position(|n| *n == "server")
            .expect("a well-known name") as u32;
        // A frame holding the phase start's headers: `server` by id, a
        // duplicate name, one in upper case (sent in place).
        let frame = b"x-dupX-Upabcd".to_vec();
        let start = [
            (proto::Name::Id(server), (9, 1)),
            (proto::Name::Frame((0, 5)), (10, 1)),
            (proto::Name::Frame((5, 4)), (11, 1)),
            (proto::Name::Frame((0, 5)), (12, 1)),
        ];
        let upstream: Vec<(String, Vec<u8>)> = start
            .iter()
            .map(|&(n, v)| {
                let name = std::str::from_utf8(n.get(&frame, &names)).unwrap();
                (name.to_string(), at(&frame, v).to_vec())
            })
            .collect();
        let ops: [(&str, Option<&str>); 6] = [
            ("X-Dup", Some("1")),
            ("x-dup", None),
            ("x-up", Some("22")),
            ("SERVER", None),
            ("x-new", Some("3")),
            ("X-NEW", Some("")),
        ];
        let list = |e: &EditedHeaders| {
            (0..)
                .map_while(|i| e.at(&frame, &names, i))
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect::<Vec<_>>()
        };
        let mut edited = EditedHeaders::default();
        // Every sequence of three operations (repeats included).
        for seq in 0..ops.len().pow(3) {
            let mut host = ResponseHeaders::default();
            host.apply_upstream(upstream.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            edited.rebuild(&frame, &names, &start);
            let mut k = seq;
            for _ in 0..3 {
                let (name, value) = ops[k % ops.len()];
                k /= ops.len();
                match value {
                    Some(v) => {
                        host.set(name, v.as_bytes());
                        edited.set(&frame, &names, name, v.as_bytes());
                    }
                    None => {
                        host.remove(name);
                        edited.remove(&frame, &names, name);
                    }
                }
                let want: Vec<_> = host
                    .as_slice()
                    .iter()
                    .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
                    .collect();
                assert_eq!(list(&edited), want, "sequence {seq}");
            }
        }
    }
}
