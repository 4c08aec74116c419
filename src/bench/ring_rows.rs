//! The ring's benchmark rows: `channel` (a round trip between two threads),
//! `ring_round_trip` (a round trip between two processes) and
//! `ring_batched` (one-way throughput of 64-byte frames, in batches), each
//! against its best non-ring equivalent.
//!
//! `ring_round_trip` re-executes the `nylon-transport` binary as its far end
//! (the hidden `__ring-echo` and `__pipe-echo` commands), found next to the
//! running executable.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Row, Variant};
use crate::ring::{
    region_size, Consumer, HeapRegion, MmapRegion, Msg, Producer, Region, Ring, RingError,
};

/// Ring capacity of every row (64 KiB of frames).
const CAP: usize = 1 << 16;
/// How long a benchmark side waits for its peer before it calls it a failure.
const PATIENCE: Duration = Duration::from_secs(10);
/// Frames a batched producer hands over per call.
const BATCH: usize = 32;
/// Frame method that tells a `__ring-echo` process to exit.
const STOP: u32 = u32::MAX;

/// A partner thread, stopped (flag, then join) when the variant is dropped.
struct Partner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Partner {
    fn spawn(f: impl FnOnce(&AtomicBool) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        Self {
            stop,
            thread: Some(std::thread::spawn(move || f(&flag))),
        }
    }
}

impl Drop for Partner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn ring_pair<R: Region>(region: R) -> Result<(Producer<R>, Consumer<R>), String> {
    Ring::create(region, CAP)
        .map(Ring::split)
        .map_err(|e| e.to_string())
}

/// The ring side of a round trip: sends `i` (session and 8-byte payload),
/// waits for the same frame back.
fn ping<R: Region>(
    tx: &mut Producer<R>,
    rx: &mut Consumer<R>,
    iters: u64,
    active: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    for i in 0..iters {
        tx.push_timeout(i as u32, 1, 0, &i.to_le_bytes(), PATIENCE)
            .map_err(|e| e.to_string())?;
        look(rx, active).map_err(|e| e.to_string())?;
        let f = rx.pop_timeout(PATIENCE).map_err(|e| e.to_string())?;
        if f.header().session != i as u32 || f.payload() != i.to_le_bytes() {
            return Err("reply out of order".into());
        }
    }
    Ok(start.elapsed())
}

/// Keeps looking at `rx`, yielding between looks, for up to `active`
/// (nothing with zero: the ring's own wait then spins, yields and sleeps).
/// This is what the isolated transport's worker and dispatcher do before
/// they sleep, so its round trips can be compared with the ring's on the
/// same terms.
fn look<R: Region>(rx: &mut Consumer<R>, active: Duration) -> Result<(), RingError> {
    if active.is_zero() {
        return Ok(());
    }
    let until = Instant::now() + active;
    while !rx.has_frame()? && Instant::now() < until {
        std::thread::yield_now();
    }
    Ok(())
}

/// The far end of a ring round trip: answers every frame with a copy of
/// it, written from the frame in place before the frame is handed back.
/// Returns when `stop` says so (looked at every 50 ms while idle), on a
/// frame with method [`STOP`], or on an error.
fn echo<R: Region>(
    rx: &mut Consumer<R>,
    tx: &mut Producer<R>,
    active: Duration,
    stop: impl Fn() -> bool,
) -> Result<(), RingError> {
    loop {
        look(rx, active)?;
        let f = match rx.pop_timeout(Duration::from_millis(50)) {
            Ok(f) => f,
            Err(RingError::Timeout) if !stop() => continue,
            Err(RingError::Timeout) => return Ok(()),
            Err(e) => return Err(e),
        };
        let h = f.header();
        if h.method == STOP {
            return Ok(());
        }
        tx.push_timeout(h.session, h.method, h.flags, f.payload(), PATIENCE)?;
    }
}

/// Closes a crossbeam partner: drops the sender (the partner's `recv`
/// fails), then joins it.
struct Closing<T> {
    tx: Option<crossbeam_channel::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T> Drop for Closing<T> {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Crossbeam's best for a round trip: two `bounded(1)` (array) channels,
/// blocking `send` and `recv` (they spin, then yield, then park). Measured
/// here against `unbounded` (the same within noise) and `bounded(0)` (a
/// rendezvous, 10x slower or worse).
fn crossbeam_round_trip() -> Variant {
    let (to_tx, to_rx) = crossbeam_channel::bounded::<u64>(1);
    let (back_tx, back_rx) = crossbeam_channel::bounded::<u64>(1);
    let thread = std::thread::spawn(move || {
        while let Ok(v) = to_rx.recv() {
            if back_tx.send(v).is_err() {
                break;
            }
        }
    });
    let partner = Closing {
        tx: Some(to_tx),
        thread: Some(thread),
    };
    Variant::new(1, move |iters| {
        let tx = partner.tx.as_ref().ok_or("stopped")?;
        let start = Instant::now();
        for i in 0..iters {
            tx.send(i).map_err(|e| e.to_string())?;
            if back_rx.recv().map_err(|e| e.to_string())? != i {
                return Err("reply out of order".into());
            }
        }
        Ok(start.elapsed())
    })
}

/// The same round trip through two heap rings between two threads.
fn ring_threads_round_trip() -> Result<Variant, String> {
    let (mut to_tx, mut to_rx) = ring_pair(HeapRegion::new(region_size(CAP)))?;
    let (mut back_tx, mut back_rx) = ring_pair(HeapRegion::new(region_size(CAP)))?;
    let partner = Partner::spawn(move |stop| {
        let _ = echo(&mut to_rx, &mut back_tx, Duration::ZERO, || {
            stop.load(Ordering::Acquire)
        });
    });
    Ok(Variant::new(1, move |iters| {
        let _keep = &partner;
        ping(&mut to_tx, &mut back_rx, iters, Duration::ZERO)
    }))
}

/// `channel`: a message to another thread and back.
pub(crate) fn channel() -> Result<Row, String> {
    Ok(Row::new(
        "channel",
        "~300 ns",
        "~180 ns",
        crossbeam_round_trip(),
        ring_threads_round_trip()?,
    ))
}

/// Where the `nylon-transport` binary is: the running executable, or the
/// one next to it (a test or criterion bench runs from `target/*/deps`),
/// built first with cargo (same profile) when the source tree is there.
pub(super) fn find_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("no binary directory")?.to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let bin = dir.join("nylon-transport");
    if exe == bin {
        return Ok(bin);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    if manifest.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bin",
            "nylon-transport",
            "--manifest-path",
        ])
        .arg(&manifest);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let _ = cmd.status();
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing; build it with `cargo build --bin nylon-transport`",
            bin.display()
        ))
    }
}

/// A child process, killed if it has not exited 5 s after `close` asked it to.
struct Far {
    child: Child,
}

impl Far {
    fn finish(&mut self) {
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The ring side of `ring_round_trip`: two rings in one memfd, the far end
/// a `__ring-echo` process that maps the same memfd.
struct ProcessRings {
    tx: Producer<MmapRegion>,
    rx: Consumer<MmapRegion>,
    far: Far,
}

impl Drop for ProcessRings {
    fn drop(&mut self) {
        let _ = self
            .tx
            .push_timeout(0, STOP, 0, &[], Duration::from_secs(1));
        self.far.finish();
    }
}

/// Where the second ring starts in the memfd (page-aligned).
fn back_offset() -> u64 {
    (region_size(CAP) as u64).div_ceil(1 << 16) << 16
}

/// `active`: how long each side keeps looking, yielding, before the ring's
/// own wait (zero: the ring's wait alone).
fn ring_process_round_trip(active: Duration) -> Result<Variant, String> {
    let len = region_size(CAP);
    let (to, file) = MmapRegion::memfd("nylon-bench-rings", len).map_err(|e| e.to_string())?;
    let back = MmapRegion::file_range(&file, back_offset(), len).map_err(|e| e.to_string())?;
    let tx = Ring::create(to, CAP)
        .map_err(|e| e.to_string())?
        .into_producer();
    let rx = Ring::create(back, CAP)
        .map_err(|e| e.to_string())?
        .into_consumer();
    // The memfd becomes the child's standard input: descriptor 0.
    let child = Command::new(find_binary()?)
        .args(["__ring-echo", "--fd", "0", "--capacity"])
        .arg(CAP.to_string())
        .arg("--back-offset")
        .arg(back_offset().to_string())
        .arg("--active-us")
        .arg(active.as_micros().to_string())
        .stdin(Stdio::from(file))
        .spawn()
        .map_err(|e| format!("cannot start the ring echo process: {e}"))?;
    let mut rings = ProcessRings {
        tx,
        rx,
        far: Far { child },
    };
    Ok(Variant::new(1, move |iters| {
        let ProcessRings { tx, rx, .. } = &mut rings;
        ping(tx, rx, iters, active)
    }))
}

/// The far end of `ring_round_trip` (`nylon-transport __ring-echo`): maps
/// the two rings of the memfd open as descriptor `fd` and echoes frames
/// until told to stop or orphaned; `active_us` as in the ping side.
///
/// # Errors
///
/// A message when the memfd cannot be mapped or a ring is corrupt.
pub fn ring_echo_process(
    fd: i32,
    capacity: usize,
    back_offset: u64,
    active_us: u64,
) -> Result<(), String> {
    // Opening the descriptor's /proc entry gives this process its own
    // handle on the inherited memfd, without unsafe code.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(|e| format!("descriptor {fd}: {e}"))?;
    let len = region_size(capacity);
    let to = MmapRegion::file_range(&file, 0, len).map_err(|e| e.to_string())?;
    let back = MmapRegion::file_range(&file, back_offset, len).map_err(|e| e.to_string())?;
    let mut rx = Ring::open(to).map_err(|e| e.to_string())?.into_consumer();
    let mut tx = Ring::open(back).map_err(|e| e.to_string())?.into_producer();
    let parent = std::os::unix::process::parent_id();
    echo(&mut rx, &mut tx, Duration::from_micros(active_us), || {
        std::os::unix::process::parent_id() != parent
    })
    .map_err(|e| e.to_string())
}

/// The baseline of `ring_round_trip`: the same 8-byte message to a child
/// process and back through two pipes (its standard input and output).
struct PipeEcho {
    to: Option<ChildStdin>,
    back: ChildStdout,
    far: Far,
}

impl Drop for PipeEcho {
    fn drop(&mut self) {
        self.to.take(); // end of input: the child exits
        self.far.finish();
    }
}

fn pipe_process_round_trip() -> Result<Variant, String> {
    let mut child = Command::new(find_binary()?)
        .arg("__pipe-echo")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the pipe echo process: {e}"))?;
    let to = child.stdin.take().ok_or("no child stdin")?;
    let back = child.stdout.take().ok_or("no child stdout")?;
    let mut pipes = PipeEcho {
        to: Some(to),
        back,
        far: Far { child },
    };
    Ok(Variant::new(1, move |iters| {
        let PipeEcho { to, back, .. } = &mut pipes;
        let to = to.as_mut().ok_or("stopped")?;
        let mut buf = [0u8; 8];
        let start = Instant::now();
        for i in 0..iters {
            to.write_all(&i.to_le_bytes()).map_err(|e| e.to_string())?;
            back.read_exact(&mut buf).map_err(|e| e.to_string())?;
            if buf != i.to_le_bytes() {
                return Err("reply out of order".into());
            }
        }
        Ok(start.elapsed())
    }))
}

/// The far end of the pipe baseline (`nylon-transport __pipe-echo`):
/// copies 8-byte messages from standard input to standard output until the
/// input ends.
///
/// # Errors
///
/// A message on an I/O error.
pub fn pipe_echo_process() -> Result<(), String> {
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = [0u8; 8];
    loop {
        match input.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        output
            .write_all(&buf)
            .and_then(|()| output.flush())
            .map_err(|e| e.to_string())?;
    }
}

/// How long `rings_active`'s sides keep looking before they sleep: the
/// isolated transport's worker and dispatcher policy.
const ACTIVE: Duration = Duration::from_micros(50);

/// `ring_round_trip`: a message to another process and back; the
/// `rings_active` variant with both ends looking (yielding) for 50 µs
/// before the ring's wait, as the isolated transport's ends do.
pub(crate) fn round_trip() -> Result<Row, String> {
    Ok(Row::new(
        "ring_round_trip",
        "-",
        "-",
        pipe_process_round_trip()?,
        ring_process_round_trip(Duration::ZERO)?,
    )
    .with("rings_active", ring_process_round_trip(ACTIVE)?))
}

/// A 64-byte frame carrying its sequence number in its first 8 bytes.
fn frame_bytes(seq: u64) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b
}

fn seq_of(b: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?))
}

/// Waits until the consumer has counted `target` frames.
fn await_count(count: &AtomicU64, target: u64, failed: &AtomicBool) -> Result<(), String> {
    let until = Instant::now() + PATIENCE;
    let mut spins = 0u32;
    while count.load(Ordering::Acquire) < target {
        if failed.load(Ordering::Acquire) {
            return Err("the consumer saw a frame out of order".into());
        }
        spins += 1;
        if spins < 1024 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
            if Instant::now() > until {
                return Err("the consumer stalled".into());
            }
        }
    }
    Ok(())
}

/// Crossbeam's best for one-way throughput of `[u8; 64]` values: a
/// `bounded(1024)` channel (array flavour, about the ring's 64 KiB; 256 and
/// 8192 measured the same within noise, 64 and `unbounded` 1.5-3x slower),
/// `send` per value; the consumer blocks on `recv` and drains what else is
/// there with `try_iter`, then counts.
fn crossbeam_batched() -> Variant {
    let (tx, rx) = crossbeam_channel::bounded::<[u8; 64]>(1024);
    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let (c, f) = (Arc::clone(&count), Arc::clone(&failed));
    let thread = std::thread::spawn(move || {
        let mut n = 0u64;
        while let Ok(first) = rx.recv() {
            for v in std::iter::once(first).chain(rx.try_iter()) {
                if seq_of(&v) != Some(n) {
                    f.store(true, Ordering::Release);
                }
                n += 1;
            }
            c.store(n, Ordering::Release);
        }
    });
    let partner = Closing {
        tx: Some(tx),
        thread: Some(thread),
    };
    let mut sent = 0u64;
    Variant::new(1, move |iters| {
        let tx = partner.tx.as_ref().ok_or("stopped")?;
        let start = Instant::now();
        for _ in 0..iters {
            tx.send(frame_bytes(sent)).map_err(|e| e.to_string())?;
            sent += 1;
        }
        await_count(&count, sent, &failed)?;
        Ok(start.elapsed())
    })
}

/// The ring's one-way throughput: batches of [`BATCH`] 64-byte frames with
/// `push_many`; the consumer takes up to 256 at a time with `pop_many`,
/// then counts.
fn ring_batched() -> Result<Variant, String> {
    let (mut tx, mut rx) = ring_pair(HeapRegion::new(region_size(CAP)))?;
    let count = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let (c, f) = (Arc::clone(&count), Arc::clone(&failed));
    let partner = Partner::spawn(move |stop| {
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            match rx.pop_many_timeout(256, Duration::from_millis(50), |_, b| {
                if seq_of(b) != Some(n) {
                    f.store(true, Ordering::Release);
                }
                n += 1;
            }) {
                Ok(_) => c.store(n, Ordering::Release),
                Err(RingError::Timeout) => {}
                Err(_) => {
                    f.store(true, Ordering::Release);
                    return;
                }
            }
        }
    });
    let mut sent = 0u64;
    let mut frames = [[0u8; 64]; BATCH];
    Ok(Variant::new(1, move |iters| {
        let _keep = &partner;
        let start = Instant::now();
        let end = sent + iters;
        while sent < end {
            let k = (end - sent).min(BATCH as u64) as usize;
            for (j, b) in frames[..k].iter_mut().enumerate() {
                *b = frame_bytes(sent + j as u64);
            }
            let msgs: [Msg<'_>; BATCH] = std::array::from_fn(|j| Msg {
                session: 0,
                method: 0,
                flags: 0,
                payload: &frames[j],
            });
            let mut done = 0;
            while done < k {
                done += tx
                    .push_many_timeout(&msgs[done..k], PATIENCE)
                    .map_err(|e| e.to_string())?;
            }
            sent += k as u64;
        }
        await_count(&count, sent, &failed)?;
        Ok(start.elapsed())
    }))
}

/// `ring_batched`: one-way throughput of 64-byte frames, ns per frame.
pub(crate) fn batched() -> Result<Row, String> {
    Ok(Row::new(
        "ring_batched",
        "-",
        "-",
        crossbeam_batched(),
        ring_batched()?,
    ))
}
