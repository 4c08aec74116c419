//! The host side of one worker: its session slots, its ring producer, the
//! dispatcher thread that reads the worker's frames, and the supervisor
//! thread that starts it, watches it, reaps it and restarts it.
//!
//! # Threads and locks
//!
//! - The **supervisor** (one per worker, for the plugin's lifetime) spawns
//!   each incarnation from its own thread (the worker's `PR_SET_PDEATHSIG`
//!   follows the thread that forked it), waits on the worker's stdout pipe
//!   (EOF = the worker died; a tick drives the stall watchdog), reaps it,
//!   fails its in-flight sessions and restarts it with backoff.
//! - The **dispatcher** (one per incarnation) pops worker-to-host frames,
//!   validates them, stores a phase end in its session's slot and wakes the
//!   session's task through the slot's `AtomicWaker`. It sleeps on the
//!   doorbell ([`super::doorbell`]), not on the ring.
//! - A thread running a phase **synchronously** ([`Help`]) pops those frames
//!   itself while it waits (any session's, handled as the dispatcher would),
//!   so the worker's answer reaches it without waking the dispatcher.
//! - Tasks write host-to-worker frames straight into the ring under the
//!   `link` mutex (the single producer): no thread hop on the request path.
//!
//! Lock order: `link`, then a slot's `state`; `rx`, then a slot's `state`,
//! `control`, `child`, `kill_reason`; `child` alone.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;

use super::doorbell::{self, Doorbell, ARMED, QUIET};
use super::looking::Looking;
use super::names::LinkNames;
use super::proto;
use super::slabs::{self, SlabArea};
use super::watch::Watch;
use super::{Abi, InnerKind, IsolatedConfig, IsolatedError};
use crate::pool::Slab;
use crate::ring::{region_size, Consumer, MmapRegion, Producer, Ring, RingError};

/// Data bytes of each ring (host to worker, worker to host); a frame takes
/// at most half.
pub(super) const RING_CAPACITY: usize = 4 << 20;
/// Bits of a session id that name the slot; the rest is a generation.
const SLOT_BITS: u32 = 16;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
/// How long a control frame (`CLOSE`, a read reply, an entry check,
/// `SHUTDOWN`) waits for room in a full ring; a phase start never waits.
const ROOM_WAIT: Duration = Duration::from_millis(50);
/// How long the host waits for a new worker's hello.
const HELLO_WAIT: Duration = Duration::from_secs(30);
/// The dispatcher's longest sleep (it then looks whether its incarnation
/// was replaced, and at the ring).
const IDLE_WAIT: Duration = Duration::from_secs(1);
/// Frames handled per look at the ring, at most.
const DRAIN_MAX: usize = 64;
/// The dispatcher's spin, and how long it keeps looking (yielding between
/// looks) before it arms the doorbell and sleeps: a worker that answers
/// within this finds it awake (a futex wake-up costs tens of µs on a VM).
const DISPATCH_SPIN: u32 = 128;
/// Bytes of WebSocket commands a session may have waiting for its task (a
/// worker that sends faster than the task applies them fails the phase).
pub(super) const WS_QUEUE_MAX: usize = 8 << 20;
const DISPATCH_ACTIVE: Duration = Duration::from_micros(50);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where a slot's session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// No session.
    Free,
    /// Open, no phase running.
    Idle,
    /// A phase start was sent; waiting for its end.
    Waiting,
    /// The worker asked for something the phase start did not carry.
    Read,
    /// The phase end is in `buf`, validated.
    Ended,
    /// The worker died during the phase; `failure` says why.
    Failed,
}

#[derive(Debug)]
pub(super) struct SlotState {
    pub(super) sid: u32,
    pub(super) epoch: u64,
    pub(super) stage: Stage,
    generation: u32,
    /// The phase end's bytes (memory reused across sessions).
    pub(super) buf: Vec<u8>,
    /// The request URL, rebuilt per phase start (memory reused).
    pub(super) url: Vec<u8>,
    pub(super) failure: Option<String>,
    /// Host slabs lent with the running phase (or with a cancelled one whose
    /// end has not come yet): released when the worker's phase end for
    /// `sid` arrives.
    pub(super) held: [Option<Slab>; 3],
    /// The phase start's header name codes (memory reused).
    pub(super) codes: Vec<u32>,
    /// What the worker asked for in [`Stage::Read`] (a `proto::READ_*`).
    pub(super) read: u8,
    /// The running phase upgraded to a WebSocket: the worker may send
    /// `proto::WS` commands until its end.
    pub(super) ws: bool,
    /// WebSocket commands received and not applied yet: each a `u32`
    /// length and a `proto::WS` payload (memory reused).
    pub(super) ws_in: Vec<u8>,
    /// `ws_in` reached [`WS_QUEUE_MAX`]: the phase fails (`QueueFull`).
    pub(super) ws_over: bool,
}

impl SlotState {
    /// Whether another slab can be held for the running phase.
    pub(super) fn can_hold(&self) -> bool {
        self.held.iter().any(Option::is_none)
    }

    /// Keeps a slab lent with the running phase.
    pub(super) fn hold(&mut self, slab: Slab) {
        match self.held.iter_mut().find(|h| h.is_none()) {
            Some(h) => *h = Some(slab),
            // A phase lends at most three (payload, body, one read reply:
            // later replies go in frames, see `can_hold`); a bug otherwise,
            // and the slab is lost to the pool, never reused while the
            // worker reads it.
            None => debug_assert!(false, "more slabs than a phase lends"),
        }
    }
}

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) state: Mutex<SlotState>,
    pub(super) waker: AtomicWaker,
}

/// The host's end of a live incarnation's host-to-worker ring.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) tx: Producer<MmapRegion>,
    pub(super) epoch: u64,
    /// The worker's doorbell, rung after every frame (its main thread sleeps
    /// on it, not on the ring).
    pub(super) bell: Doorbell,
    /// The incarnation's slab area (the host leases from its half).
    pub(super) area: Arc<SlabArea>,
    /// The header names its worker knows.
    pub(super) names: LinkNames,
    /// Where a phase start is encoded before it is copied into the ring
    /// (one pass over the context instead of a counting pass and a writing
    /// pass); reused, so steady traffic allocates nothing.
    pub(super) scratch: Vec<u8>,
}

impl Link {
    /// Loans room for `len` bytes, waiting up to [`ROOM_WAIT`] for the
    /// worker to make room.
    pub(super) fn loan(
        &mut self,
        len: usize,
    ) -> Result<crate::ring::Loan<'_, MmapRegion>, RingError> {
        let deadline = Instant::now() + ROOM_WAIT;
        let mut tries = 0u32;
        loop {
            match self.tx.try_loan(len) {
                Err(RingError::Full) if Instant::now() < deadline => {
                    tries += 1;
                    if tries > 64 {
                        std::thread::sleep(Duration::from_micros(100));
                    } else {
                        std::thread::yield_now();
                    }
                }
                // Re-borrow: the loop's borrow ends with the Err arm.
                Err(e) => return Err(e),
                Ok(_) => break,
            }
        }
        self.tx.try_loan(len)
    }

    /// Pushes a frame whose payload is one blob: `bytes` in a host slab
    /// when worth it and `slab_ok` (returned, to be held until the phase
    /// ends), else in the frame.
    pub(super) fn push_blob(
        &mut self,
        sid: u32,
        method: u32,
        bytes: &[u8],
        slab_ok: bool,
    ) -> Result<Option<Slab>, RingError> {
        use proto::Out;
        let slab = if slab_ok { self.area.put(bytes) } else { None };
        let len = match &slab {
            Some(_) => 8,
            None => 4 + bytes.len(),
        };
        let mut loan = match self.loan(len) {
            Ok(l) => l,
            Err(e) => {
                if let Some(s) = slab {
                    self.area.release(s);
                }
                return Err(e);
            }
        };
        proto::SliceOut::new(loan.payload_mut()).blob(bytes, slab.as_ref().map(Slab::offset));
        loan.commit(sid, method, 0);
        self.bell.ring();
        Ok(slab)
    }

    /// Pushes a frame of `head` then `body` without waiting: a full ring
    /// is `Err(RingError::Full)` at once.
    pub(super) fn try_push_parts(
        &mut self,
        sid: u32,
        method: u32,
        head: &[u8],
        body: &[u8],
    ) -> Result<(), RingError> {
        let mut loan = self.tx.try_loan(head.len() + body.len())?;
        let (h, b) = loan.payload_mut().split_at_mut(head.len());
        h.copy_from_slice(head);
        b.copy_from_slice(body);
        loan.commit(sid, method, 0);
        self.bell.ring();
        Ok(())
    }

    /// Pushes a whole frame (as [`Link::loan`]).
    pub(super) fn push(&mut self, sid: u32, method: u32, payload: &[u8]) -> Result<(), RingError> {
        let mut loan = self.loan(payload.len())?;
        loan.payload_mut().copy_from_slice(payload);
        loan.commit(sid, method, 0);
        self.bell.ring();
        Ok(())
    }
}

/// The host's end of a live incarnation's worker-to-host ring, read by the
/// dispatcher and by synchronous waiters ([`Help`]) in turn.
#[derive(Debug)]
pub(super) struct Rx {
    consumer: Consumer<MmapRegion>,
    epoch: u64,
    bell: Arc<Doorbell>,
    area: Arc<SlabArea>,
}

/// The answers a supervisor or a caller waits for.
#[derive(Debug, Default)]
struct Control {
    hello: Option<Result<Abi, String>>,
    token: u32,
    entry: Option<(u32, bool)>,
}

/// Counters shared by a plugin's workers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) started: AtomicU64,
    pub(super) restarts: AtomicU64,
    pub(super) deaths: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) slabs_sent: AtomicU64,
    pub(super) slabs_received: AtomicU64,
    pub(super) last_death: Mutex<Option<String>>,
}

/// What every worker of a plugin is started with.
#[derive(Debug)]
pub(super) struct Launch {
    pub(super) path: PathBuf,
    pub(super) config: Vec<u8>,
    pub(super) cfg: IsolatedConfig,
    /// The plugin's header name ids (shared by its workers).
    pub(super) names: crate::intern::HeaderNames,
}

/// One worker: the process (across restarts) and its sessions.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) slots: Box<[Slot]>,
    pub(super) free: Mutex<Vec<u32>>,
    /// Open sessions.
    pub(super) open: AtomicUsize,
    pub(super) link: Mutex<Option<Link>>,
    /// The worker-to-host ring of the live incarnation (`None` once it died
    /// or broke the protocol).
    rx: Mutex<Option<Rx>>,
    /// Host slabs of sessions that ended while the worker still ran their
    /// last phase (a cancelled one): `(sid, epoch, slab)`, released when that
    /// phase's late end arrives. Its capacity is the pool's slab count, so
    /// it never grows on the request path.
    orphans: Mutex<Vec<(u32, u64, Slab)>>,
    /// `orphans.len()`, read without the lock.
    orphaned: AtomicUsize,
    /// Who reads `rx` ([`Help`]), what the worker owes, and who must arm
    /// the doorbell ([`Worker::watch`]).
    pub(super) watch: Watch,
    /// The current incarnation (bumped before each spawn).
    pub(super) epoch: AtomicU64,
    pub(super) live: AtomicBool,
    pub(super) pid: AtomicU32,
    child: Mutex<Option<Child>>,
    kill_reason: Mutex<Option<String>>,
    /// Frames received from the worker (the stall watchdog's clock).
    progress: AtomicU64,
    /// Phases of this worker in WebSocket mode: each owes its end for as
    /// long as its connection lives, which the stall watchdog must not
    /// count as a stall.
    pub(super) ws_phases: AtomicU64,
    control: Mutex<Control>,
    control_cv: Condvar,
    pub(super) stopping: AtomicBool,
    pub(super) last_death: Mutex<Option<String>>,
    pub(super) counters: Arc<Counters>,
    launch: Arc<Launch>,
}

impl Worker {
    pub(super) fn new(index: usize, launch: Arc<Launch>, counters: Arc<Counters>) -> Self {
        let n = launch.cfg.queue.clamp(1, 1 << SLOT_BITS);
        let slots = (0..n)
            .map(|_| Slot {
                state: Mutex::new(SlotState {
                    sid: 0,
                    epoch: 0,
                    stage: Stage::Free,
                    generation: 0,
                    buf: Vec::new(),
                    url: Vec::new(),
                    failure: None,
                    held: [None, None, None],
                    codes: Vec::new(),
                    read: 0,
                    ws: false,
                    ws_in: Vec::new(),
                    ws_over: false,
                }),
                waker: AtomicWaker::new(),
            })
            .collect();
        Self {
            index,
            slots,
            free: Mutex::new((0..n as u32).rev().collect()),
            open: AtomicUsize::new(0),
            link: Mutex::new(None),
            rx: Mutex::new(None),
            orphans: Mutex::new(Vec::with_capacity(slabs::CLASSES.iter().map(|c| c.1).sum())),
            orphaned: AtomicUsize::new(0),
            watch: Watch::default(),
            epoch: AtomicU64::new(0),
            live: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            child: Mutex::new(None),
            kill_reason: Mutex::new(None),
            progress: AtomicU64::new(0),
            ws_phases: AtomicU64::new(0),
            control: Mutex::new(Control::default()),
            control_cv: Condvar::new(),
            stopping: AtomicBool::new(false),
            last_death: Mutex::new(None),
            counters,
            launch,
        }
    }

    /// The plugin's header name table.
    pub(super) fn names(&self) -> &crate::intern::HeaderNames {
        &self.launch.names
    }

    /// Takes a free slot for a new session: its index, sid and epoch.
    pub(super) fn acquire(&self) -> Option<(u32, u32, u64)> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let idx = lock(&self.free).pop()?;
        self.open.fetch_add(1, Ordering::Relaxed);
        let mut st = lock(&self.slots[idx as usize].state);
        st.generation = st.generation % ((1 << (32 - SLOT_BITS)) - 1) + 1;
        st.sid = (st.generation << SLOT_BITS) | idx;
        st.epoch = self.epoch.load(Ordering::Acquire);
        st.stage = Stage::Idle;
        st.failure = None;
        Some((idx, st.sid, st.epoch))
    }

    /// Frees a slot. Slabs its session's last phase still holds (the phase
    /// was cancelled and its end has not come) become orphans, released when
    /// it comes; those of a dead incarnation are forgotten with its pool.
    pub(super) fn release(&self, idx: u32) {
        let mut st = lock(&self.slots[idx as usize].state);
        st.stage = Stage::Free;
        st.failure = None;
        let (sid, epoch) = (st.sid, st.epoch);
        if st.held.iter().any(Option::is_some) {
            let live = self.epoch.load(Ordering::Acquire) == epoch;
            let mut orphans = lock(&self.orphans);
            for slab in st.held.iter_mut().filter_map(Option::take) {
                if live {
                    orphans.push((sid, epoch, slab));
                }
            }
            self.orphaned.store(orphans.len(), Ordering::Release);
        }
        drop(st);
        lock(&self.free).push(idx);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Why the worker's last incarnation died (for sessions of a dead one).
    pub(super) fn death_reason(&self) -> String {
        lock(&self.last_death)
            .clone()
            .unwrap_or_else(|| format!("worker {} restarted", self.index))
    }

    /// Kills incarnation `epoch` (if it is still the current one), giving
    /// `reason` as the cause of its death.
    pub(super) fn kill(&self, epoch: u64, reason: String) {
        let mut child = lock(&self.child);
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if let Some(c) = child.as_mut() {
            let mut r = lock(&self.kill_reason);
            if r.is_none() {
                *r = Some(reason);
            }
            let _ = c.kill();
        }
    }

    /// Handles the frames incarnation `epoch` has sent (at most
    /// [`DRAIN_MAX`]): `Some(count)`, or `None` when that incarnation's ring
    /// is gone. With `block` false a reader busy elsewhere makes it return
    /// `Some(0)` at once.
    pub(super) fn drain(&self, epoch: u64, block: bool) -> Option<usize> {
        let mut rx = if block {
            lock(&self.rx)
        } else {
            match self.rx.try_lock() {
                Ok(g) => g,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return Some(0),
            }
        };
        match rx.as_ref() {
            Some(r) if r.epoch == epoch => Some(self.drain_locked(&mut rx)),
            _ => None,
        }
    }

    /// As [`Worker::drain`], with the ring locked. A frame that breaks the
    /// protocol, or a corrupt ring, kills the worker; nobody reads its ring
    /// again.
    fn drain_locked(&self, rx: &mut Option<Rx>) -> usize {
        let Some(r) = rx.as_mut() else { return 0 };
        let epoch = r.epoch;
        let mut failure = None;
        let area = &r.area;
        let popped = r.consumer.try_pop_many(DRAIN_MAX, |h, payload| {
            if failure.is_none() {
                self.progress.fetch_add(1, Ordering::Relaxed);
                if let Err(reason) = handle(self, epoch, area, h.session, h.method, payload) {
                    failure = Some(reason);
                }
            }
        });
        let n = popped.unwrap_or_else(|e| {
            failure.get_or_insert_with(|| e.to_string());
            0
        });
        if let Some(reason) = failure {
            *rx = None;
            self.kill(epoch, reason);
            // Wake a supervisor waiting for the hello.
            self.control_cv.notify_all();
        }
        n
    }

    /// Asks the worker whether the plugin accepts `entry`.
    pub(super) fn check_entry(&self, entry: &str) -> Result<bool, IsolatedError> {
        let token = {
            let mut c = lock(&self.control);
            c.token = c.token.wrapping_add(1);
            c.entry = None;
            c.token
        };
        {
            let mut link = lock(&self.link);
            let l = link
                .as_mut()
                .ok_or_else(|| IsolatedError::Worker(self.death_reason()))?;
            // Counted before the worker can answer (its answer uncounts it).
            self.watch.request();
            if let Err(e) = l.push(token, proto::CHECK_ENTRY, entry.as_bytes()) {
                self.watch.unrequest();
                return Err(IsolatedError::Worker(e.to_string()));
            }
        }
        self.sent_request();
        let deadline = Instant::now() + self.launch.cfg.phase_timeout + HELLO_WAIT;
        let mut c = lock(&self.control);
        loop {
            if let Some((t, ok)) = c.entry {
                if t == token {
                    return Ok(ok);
                }
            }
            let now = Instant::now();
            if now >= deadline || !self.live.load(Ordering::Acquire) {
                return Err(IsolatedError::Worker(format!(
                    "worker {} did not answer the entry check",
                    self.index
                )));
            }
            c = self
                .control_cv
                .wait_timeout(c, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends `SHUTDOWN` to the live incarnation.
    pub(super) fn send_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(l) = lock(&self.link).as_mut() {
            let _ = l.push(0, proto::SHUTDOWN, &[]);
        }
    }

    /// Kills whatever incarnation is running.
    pub(super) fn kill_now(&self) {
        if let Some(c) = lock(&self.child).as_mut() {
            let _ = c.kill();
        }
    }
}

/// Starts one incarnation: the memfd with both rings and the doorbells, the
/// INIT frame, the process, its dispatcher. Returns the child and the link
/// (the host's producer) for when the worker says hello.
fn spawn(w: &Arc<Worker>, epoch: u64) -> Result<(Child, Link), String> {
    let launch = &w.launch;
    let len = region_size(RING_CAPACITY);
    let back_offset = (len as u64).div_ceil(1 << 16) << 16;
    let bell_offset = 2 * back_offset;
    let slab_offset = bell_offset + (1 << 16);
    let (to, file) = MmapRegion::memfd("nylon-isolated", len).map_err(|e| e.to_string())?;
    let back = MmapRegion::file_range(&file, back_offset, len).map_err(|e| e.to_string())?;
    let (bell, worker_bell) = Doorbell::pair(
        MmapRegion::file_range(&file, bell_offset, doorbell::LEN).map_err(|e| e.to_string())?,
    )?;
    let bell = Arc::new(bell);
    let area = Arc::new(SlabArea::new(
        MmapRegion::file_range(&file, slab_offset, 2 * slabs::HALF).map_err(|e| e.to_string())?,
        true,
        launch.cfg.slabs,
    )?);
    let mut tx = Ring::create(to, RING_CAPACITY)
        .map_err(|e| e.to_string())?
        .into_producer();
    let rx = Ring::create(back, RING_CAPACITY)
        .map_err(|e| e.to_string())?
        .into_consumer();
    tx.try_push(0, proto::INIT, 0, &launch.config)
        .map_err(|e| format!("plugin config: {e}"))?;
    let cmd = &launch.cfg.worker_command;
    let program = cmd.first().ok_or("empty worker command")?;
    let legacy = match launch.cfg.legacy_transport {
        InnerKind::Fast => "fast",
        InnerKind::FastDeferred => "fast-deferred",
        InnerKind::Baseline => "baseline",
    };
    // The worker ends a phase that runs longer with a timeout itself; the
    // watchdog (a tick later) is for a worker that cannot.
    let timeout = launch.cfg.phase_timeout.as_millis().max(1);
    // The memfd becomes the worker's standard input (descriptor 0); its
    // standard output is a pipe whose end of file tells the supervisor the
    // worker is gone.
    let child = Command::new(program)
        .args(&cmd[1..])
        .args(["--fd", "0", "--capacity"])
        .arg(RING_CAPACITY.to_string())
        .arg("--back-offset")
        .arg(back_offset.to_string())
        .arg("--doorbell-offset")
        .arg(bell_offset.to_string())
        .arg("--slab-offset")
        .arg(slab_offset.to_string())
        .args(["--slabs", if launch.cfg.slabs { "1" } else { "0" }])
        .arg("--plugin")
        .arg(&launch.path)
        .args(["--legacy", legacy, "--host-pid"])
        .arg(std::process::id().to_string())
        .arg("--timeout-ms")
        .arg(timeout.to_string())
        .stdin(Stdio::from(file))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.to_string_lossy()))?;
    *lock(&w.rx) = Some(Rx {
        consumer: rx,
        epoch,
        bell: Arc::clone(&bell),
        area: Arc::clone(&area),
    });
    let worker = Arc::clone(w);
    let spawned = std::thread::Builder::new()
        .name(format!("nylon-iso-d{}", w.index))
        .spawn(move || dispatcher(&worker, epoch, &bell));
    if let Err(e) = spawned {
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        *lock(&w.rx) = None;
        return Err(e.to_string());
    }
    Ok((
        child,
        Link {
            tx,
            epoch,
            bell: worker_bell,
            area,
            names: LinkNames::new(launch.cfg.intern_names),
            scratch: Vec::with_capacity(4096),
        },
    ))
}

/// Reads worker-to-host frames of incarnation `epoch` until it is replaced:
/// whatever is there, then a short spin, then (while that pays: see
/// [`super::looking`]) yields for up to [`DISPATCH_ACTIVE`], then sleep on
/// the doorbell.
fn dispatcher(w: &Worker, epoch: u64, bell: &Doorbell) {
    let mut idle = 0u32;
    let mut looking = Looking::new();
    // When the ring ran dry, once the spin is over; whether to look.
    let mut gap: Option<(Instant, bool)> = None;
    loop {
        if w.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        match w.drain(epoch, true) {
            None => return,
            Some(0) => {}
            Some(_) => {
                match gap.take() {
                    Some((start, _)) => looking.record(start.elapsed(), DISPATCH_ACTIVE),
                    None if idle > 0 => looking.hit(),
                    None => {}
                }
                idle = 0;
                continue;
            }
        }
        if w.watch.read() {
            // A synchronous waiter reads the ring, and the last one to leave
            // arms the doorbell (so a later frame wakes this sleep). A word
            // rung since the last look may have sent its wake-up before this
            // sleep: look again instead.
            if !bell.settle() {
                bell.sleep(QUIET, Instant::now() + IDLE_WAIT);
            }
            idle = 0;
            gap = None;
            continue;
        }
        idle += 1;
        if idle <= DISPATCH_SPIN {
            std::hint::spin_loop();
            continue;
        }
        let (start, look) = *gap.get_or_insert_with(|| (Instant::now(), looking.pays()));
        if look && start.elapsed() < DISPATCH_ACTIVE {
            looking.yield_now();
            continue;
        }
        bell.arm();
        match w.drain(epoch, true) {
            None => return,
            Some(0) => bell.sleep(ARMED, Instant::now() + IDLE_WAIT),
            Some(_) => {}
        }
        // The next drain ends the gap (or finds the ring dry and starts
        // looking again, the gap still open).
        gap = gap.map(|(start, _)| (start, false));
        idle = DISPATCH_SPIN;
    }
}

/// A thread that reads the worker-to-host ring while it waits for its own
/// phase: while one exists the doorbell is quiet, so the worker's answers
/// wake nobody. The last to leave arms it and reads the ring once more (the
/// protocol is in [`super::doorbell`]) when the worker still owes answers;
/// when it owes none, no frame can come, and the doorbell stays quiet until
/// the next request sent while nobody reads ([`Worker::sent_request`]).
/// So back-to-back synchronous phases never write the doorbell word, whose
/// cache line the worker reads after every frame.
#[derive(Debug)]
pub(super) struct Help<'a> {
    w: &'a Worker,
}

impl<'a> Help<'a> {
    /// Starts reading; call before sending the phase start, so that its
    /// answer finds the doorbell quiet.
    pub(super) fn begin(w: &'a Worker) -> Self {
        w.watch.enter();
        if let Some(r) = lock(&w.rx).as_ref() {
            r.bell.disarm();
        }
        Self { w }
    }
}

impl Drop for Help<'_> {
    fn drop(&mut self) {
        if self.w.watch.leave() {
            self.w.watch();
        }
    }
}

impl Worker {
    /// After a request the worker will answer (a phase start, an entry
    /// check; counted first with [`Watch::request`]) is sent: when no
    /// helper reads the ring and the last one left the doorbell quiet, arm
    /// it, so the answer wakes the dispatcher.
    pub(super) fn sent_request(&self) {
        if self.watch.sent() {
            self.watch();
        }
    }

    /// Arms the doorbell and reads the ring once more, if a helper left it
    /// quiet (see [`Help`]).
    fn watch(&self) {
        if self.watch.take() {
            let mut rx = lock(&self.rx);
            if let Some(r) = rx.as_ref() {
                r.bell.arm();
            }
            self.drain_locked(&mut rx);
        }
    }
}

/// Handles one frame from the worker; `Err` means the worker broke the
/// protocol and is killed.
fn handle(
    w: &Worker,
    epoch: u64,
    area: &SlabArea,
    sid: u32,
    method: u32,
    payload: &[u8],
) -> Result<(), String> {
    proto::decode_from_worker(method, payload, area.peer()).map_err(|e| e.to_string())?;
    if matches!(method, proto::PHASE_END | proto::ENTRY) {
        // An answer, to a live phase or a cancelled one (a worker that sends
        // more than it was asked for only blinds its own watchdog).
        w.watch.answered();
    }
    match method {
        proto::PHASE_END | proto::READ | proto::WS => {
            let idx = (sid & SLOT_MASK) as usize;
            let slot = w
                .slots
                .get(idx)
                .ok_or("protocol violation: session id out of range")?;
            let mut st = lock(&slot.state);
            // A freed slot keeps its last sid until it is taken again: the
            // late end of its session's cancelled phase is not "ours" (its
            // slabs went to the orphans when the slot was freed).
            let ours = st.sid == sid && st.epoch == epoch && st.stage != Stage::Free;
            if method == proto::PHASE_END {
                // The worker is done with the slabs lent with the phase.
                if ours {
                    for slab in st.held.iter_mut().filter_map(Option::take) {
                        area.release(slab);
                    }
                } else if w.orphaned.load(Ordering::Acquire) > 0 {
                    let mut orphans = lock(&w.orphans);
                    let mut i = 0;
                    while i < orphans.len() {
                        if orphans[i].0 == sid && orphans[i].1 == epoch {
                            area.release(orphans.swap_remove(i).2);
                        } else {
                            i += 1;
                        }
                    }
                    w.orphaned.store(orphans.len(), Ordering::Release);
                }
            }
            // A stale sid or stage is an answer to a cancelled phase.
            if !ours {
                return Ok(());
            }
            match (method, st.stage) {
                (proto::PHASE_END, Stage::Waiting) => {
                    st.buf.clear();
                    st.buf.extend_from_slice(payload);
                    st.stage = Stage::Ended;
                }
                (proto::READ, Stage::Waiting) => {
                    // One byte (validated above).
                    st.read = payload.first().copied().unwrap_or_default();
                    st.stage = Stage::Read;
                }
                (proto::WS, Stage::Waiting | Stage::Read) => {
                    if !st.ws {
                        return Err(
                            "protocol violation: WebSocket command before an upgrade".into()
                        );
                    }
                    if st.ws_in.len() + 4 + payload.len() > WS_QUEUE_MAX {
                        st.ws_over = true;
                    } else {
                        st.ws_in
                            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
                        st.ws_in.extend_from_slice(payload);
                    }
                }
                (_, Stage::Waiting | Stage::Read) => {
                    return Err("protocol violation: phase end during a read".into())
                }
                _ => return Ok(()),
            }
            drop(st);
            slot.waker.wake();
        }
        proto::HELLO => {
            let (abi, _pid) = proto::decode_hello(payload).map_err(|e| e.to_string())?;
            lock(&w.control).hello = Some(Ok(if abi == 1 { Abi::V2 } else { Abi::Legacy }));
            w.control_cv.notify_all();
        }
        proto::LOAD_ERROR => {
            lock(&w.control).hello = Some(Err(String::from_utf8_lossy(payload).into_owned()));
            w.control_cv.notify_all();
        }
        proto::ENTRY => {
            lock(&w.control).entry = Some((sid, payload == [1]));
            w.control_cv.notify_all();
        }
        _ => return Err("protocol violation: unexpected frame".into()),
    }
    Ok(())
}

/// The wait status as a reason: `worker 1234 killed by signal 11 (SIGSEGV)`.
pub(super) fn describe(pid: u32, status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = match sig {
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGKILL => "SIGKILL",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGTERM => "SIGTERM",
            libc::SIGTRAP => "SIGTRAP",
            _ => "signal",
        };
        format!("worker {pid} killed by signal {sig} ({name})")
    } else {
        format!(
            "worker {pid} exited with status {}",
            status.code().unwrap_or(-1)
        )
    }
}

/// Waits for the hello of the incarnation just spawned.
fn await_hello(w: &Worker, pid: u32) -> Result<Abi, IsolatedError> {
    let deadline = Instant::now() + HELLO_WAIT;
    let mut c = lock(&w.control);
    loop {
        if let Some(h) = c.hello.take() {
            return h.map_err(IsolatedError::Load);
        }
        let exited = lock(&w.child)
            .as_mut()
            .and_then(|ch| ch.try_wait().ok().flatten());
        if let Some(status) = exited {
            return Err(IsolatedError::Load(describe(pid, status)));
        }
        if Instant::now() >= deadline {
            return Err(IsolatedError::Spawn("no hello from the worker".into()));
        }
        c = w
            .control_cv
            .wait_timeout(c, Duration::from_millis(20))
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Waits until the worker's stdout reaches end of file (it died or exited),
/// forwarding what it prints to stderr, and killing it when it stalls.
fn watch(w: &Worker, epoch: u64, out: &mut std::process::ChildStdout) {
    let cfg = &w.launch.cfg;
    let tick = (cfg.phase_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut last = w.progress.load(Ordering::Relaxed);
    let mut stalled: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: out.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, tick.as_millis() as i32) };
        if n > 0 {
            match out.read(&mut buf) {
                Ok(0) => return,
                Ok(k) => {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(&buf[..k]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
            continue;
        }
        // The stall watchdog: the worker owes an answer (to a phase still
        // waited for, or to one the host cancelled: the worker is just as
        // stuck; not the end of a phase in WebSocket mode) and has sent
        // nothing for a whole phase timeout.
        let now = w.progress.load(Ordering::Relaxed);
        if now != last {
            last = now;
            stalled = None;
            continue;
        }
        // A WebSocket phase owes its end until its connection closes.
        if w.watch.owed() <= w.ws_phases.load(Ordering::Relaxed) {
            stalled = None;
            continue;
        }
        let since = *stalled.get_or_insert_with(Instant::now);
        // A tick of grace: a phase that merely ran out its time is answered
        // (with a timeout) by the worker at `phase_timeout`.
        if since.elapsed() >= cfg.phase_timeout + tick {
            w.kill(epoch, format!("no answer within {:?}", cfg.phase_timeout));
        }
    }
}

/// The supervisor of one worker: start, watch, reap, fail in-flight
/// sessions, restart with backoff; until the plugin stops. The first
/// incarnation's result goes to `first`.
pub(super) fn supervise(
    w: Arc<Worker>,
    first: std::sync::mpsc::Sender<Result<Abi, IsolatedError>>,
) {
    let cfg = w.launch.cfg.clone();
    let mut first = Some(first);
    let mut backoff = cfg.restart_backoff.0;
    loop {
        let epoch = w.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        lock(&w.control).hello = None;
        // The last incarnation's link is gone (reaped): nothing more is
        // counted for it.
        w.watch.forget();
        let (mut child, link) = match spawn(&w, epoch) {
            Ok(c) => c,
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(IsolatedError::Spawn(e)));
                    return;
                }
                eprintln!("nylon: cannot restart worker {}: {e}", w.index);
                if sleep_unless_stopping(&w, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(cfg.restart_backoff.1);
                continue;
            }
        };
        let pid = child.id();
        let mut out = child.stdout.take();
        *lock(&w.child) = Some(child);
        w.counters.started.fetch_add(1, Ordering::Relaxed);
        if first.is_none() {
            w.counters.restarts.fetch_add(1, Ordering::Relaxed);
        }
        let hello = await_hello(&w, pid);
        let born = Instant::now();
        match hello {
            Ok(abi) => {
                *lock(&w.link) = Some(link);
                w.live.store(true, Ordering::Release);
                w.pid.store(pid, Ordering::Release);
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(abi));
                }
                if let Some(out) = out.as_mut() {
                    watch(&w, epoch, out);
                }
            }
            Err(e) => {
                w.kill(epoch, e.to_string());
                if let Some(f) = first.take() {
                    reap(&w, pid, epoch, true);
                    let _ = f.send(Err(e));
                    return;
                }
                eprintln!("nylon: worker {} did not start: {e}", w.index);
            }
        }
        let stopping = w.stopping.load(Ordering::Acquire);
        reap(&w, pid, epoch, stopping);
        if stopping || w.stopping.load(Ordering::Acquire) {
            return;
        }
        if born.elapsed() > cfg.restart_backoff.1 {
            backoff = cfg.restart_backoff.0;
        }
        if sleep_unless_stopping(&w, backoff) {
            return;
        }
        backoff = (backoff * 2).min(cfg.restart_backoff.1);
    }
}

/// Sleeps `d` in short steps; true when the plugin is stopping.
fn sleep_unless_stopping(w: &Worker, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if w.stopping.load(Ordering::Acquire) {
            return true;
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    w.stopping.load(Ordering::Acquire)
}

/// Reaps incarnation `epoch` and fails its in-flight sessions.
fn reap(w: &Worker, pid: u32, epoch: u64, quiet: bool) {
    // Its stdout closed: it is gone, or about to be. One that closed its
    // stdout and lives on is killed after a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    let status = loop {
        let mut g = lock(&w.child);
        let Some(c) = g.as_mut() else { break None };
        match c.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= deadline => {
                let _ = c.kill();
                break c.wait().ok();
            }
            Ok(None) => {}
            Err(_) => break None,
        }
        drop(g);
        std::thread::sleep(Duration::from_millis(1));
    };
    let mut reason = match status {
        Some(s) => describe(pid, s),
        None => format!("worker {pid} vanished"),
    };
    if let Some(r) = lock(&w.kill_reason).take() {
        reason = format!("worker {pid} killed: {r}");
    }
    // No longer offered to new sessions nor listed among the pids, before
    // the death is counted: whoever sees the death in the stats (Acquire
    // there) sees it gone, not still live until the restart.
    w.live.store(false, Ordering::Release);
    w.pid.store(0, Ordering::Release);
    // Counted before the sessions hear of it, so that a session that saw
    // its worker die also sees the death in the stats.
    *lock(&w.last_death) = Some(reason.clone());
    if !quiet {
        w.counters.deaths.fetch_add(1, Ordering::Release);
        *lock(&w.counters.last_death) = Some(reason.clone());
        eprintln!("nylon: {reason}; restarting");
    }
    // No new phase can start on this incarnation once the link is gone.
    // Nobody reads its ring again (frames it sent before dying are lost
    // with it: their sessions fail below).
    *lock(&w.rx) = None;
    let mut link = lock(&w.link);
    *link = None;
    {
        // Its slabs went with its mapping.
        let mut orphans = lock(&w.orphans);
        orphans.retain(|o| o.1 != epoch);
        w.orphaned.store(orphans.len(), Ordering::Release);
    }
    for slot in w.slots.iter() {
        let mut st = lock(&slot.state);
        if st.epoch == epoch {
            st.held = [None, None, None];
        }
        if st.epoch == epoch && matches!(st.stage, Stage::Waiting | Stage::Read) {
            st.stage = Stage::Failed;
            st.failure = Some(reason.clone());
            drop(st);
            slot.waker.wake();
        }
    }
    drop(link);
    *lock(&w.child) = None;
    w.control_cv.notify_all();
}
