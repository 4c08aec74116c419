//! The worker process: maps the two rings of the memfd it inherited, loads
//! the plugin, and serves phase starts with the in-process transport through
//! a [`Shadow`] context built from each phase-start frame.
//!
//! The worker runs one phase at a time, on its main thread (the plugin's own
//! threads may complete it, as in-process). A read of something the phase
//! start did not carry (the request body) sends [`proto::READ`] and waits for
//! the host's [`proto::READ_REPLY`]; frames for other sessions that arrive
//! meanwhile wait in a backlog.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::doorbell::{self, Doorbell};
use super::proto::{self, at, Command, EndWriter, Start};
use super::InnerKind;
use crate::abi::legacy::Phase;
use crate::host::context::{HttpContext, ResponseHeaders, WsMessage, WsRecv};
use crate::host::dispatch::DispatchError;
use crate::host::{inspect, LegacyPlugin};
use crate::ring::{region_size, Consumer, FrameHeader, MmapRegion, Producer, Ring};
use crate::transport::{
    Baseline, Fast, FastConfig, PhaseOutcome, ReplyMode, SessionError, SessionOptions, Transport,
    V2Plugin, V2,
};

/// How long the worker waits for the host when it must (a full ring, the
/// answer to a read) before it gives up and exits.
const HOST_WAIT: Duration = Duration::from_secs(30);

/// The worker's arguments (after `worker`).
#[derive(Debug)]
struct Args {
    fd: i32,
    capacity: usize,
    back_offset: u64,
    doorbell_offset: u64,
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
}

fn parse(args: &[OsString]) -> Result<Args, String> {
    let mut a = Args {
        fd: 0,
        capacity: 0,
        back_offset: 0,
        doorbell_offset: 0,
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
            Some("--plugin") => a.plugin = PathBuf::from(v),
            Some("--host-pid") => a.host_pid = num(s()?)? as u32,
            Some("--timeout-ms") => a.timeout = Duration::from_millis(num(s()?)?),
            Some("--fault") => {
                a.fault = Some(match s()? {
                    "garbage-end" => Fault::GarbageEnd,
                    "bad-sid" => Fault::BadSid,
                    "corrupt-ring" => Fault::CorruptRing,
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
    if a.capacity == 0 || a.doorbell_offset == 0 || a.plugin.as_os_str().is_empty() {
        return Err("worker needs --capacity, --doorbell-offset and --plugin".into());
    }
    Ok(a)
}

/// The worker's ends of the two rings, and frames set aside while a read
/// waited for its answer.
struct Link {
    tx: Mutex<Producer<MmapRegion>>,
    /// Rung after every frame sent (the host's dispatcher may be asleep).
    bell: Doorbell,
    rx: Mutex<Consumer<MmapRegion>>,
    backlog: Mutex<VecDeque<(FrameHeader, Vec<u8>)>>,
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

    /// Waits for the answer to a read of session `sid`, setting other frames aside.
    fn await_reply(&self, sid: u32) -> Result<Vec<u8>, String> {
        let mut rx = lock(&self.rx);
        loop {
            let f = rx
                .pop_timeout(HOST_WAIT)
                .map_err(|e| format!("waiting for a read reply: {e}"))?;
            let (h, p) = (f.header(), f.payload().to_vec());
            drop(f);
            if h.method == proto::READ_REPLY && h.session == sid {
                return Ok(p);
            }
            let cancelled = h.method == proto::CLOSE && h.session == sid;
            lock(&self.backlog).push_back((h, p));
            if cancelled {
                // The host gave up on the phase and will not answer: the read
                // comes back empty, the phase ends (its end is dropped by the
                // host) and the CLOSE, kept above, closes the session.
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
    let bell = Doorbell::new(
        MmapRegion::file_range(file, args.doorbell_offset, doorbell::LEN)
            .map_err(|e| e.to_string())?,
    )?;
    Ok(Link {
        tx: Mutex::new(tx),
        bell,
        rx: Mutex::new(rx),
        backlog: Mutex::new(VecDeque::new()),
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

/// Serves frames until [`proto::SHUTDOWN`] (then `shutdown`) or the host is gone.
fn serve<T: Transport>(
    t: &T,
    plugin: Arc<T::Plugin>,
    link: &Arc<Link>,
    timeout: Duration,
    shutdown: impl FnOnce(&Arc<T::Plugin>),
) -> Result<(), String> {
    let mut sessions: HashMap<u32, T::Session> = HashMap::new();
    let mut shadow = Shadow::new(Arc::clone(link));
    let mut end = Vec::new();
    loop {
        let (h, payload) = link.next()?;
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
                link.send(h.session, proto::ENTRY, &[ok])?;
            }
            proto::PHASE_START if link.fault.is_some() => return commit_fault(link, h.session),
            proto::PHASE_START => {
                end.clear();
                let code = phase(
                    t,
                    &plugin,
                    &mut sessions,
                    &mut shadow,
                    h.session,
                    payload,
                    timeout,
                );
                let code = match code {
                    Ok(o) => o,
                    Err(e) => return Err(e.to_string()),
                };
                let (code, message) = outcome_code(&code);
                EndWriter::head(&mut end, code, &message);
                end.extend_from_slice(&shadow.commands);
                if end.len() > link.max_frame {
                    // Too large for the ring: the phase fails, the worker lives.
                    let e = format!("phase end of {} bytes is too large for the ring", end.len());
                    end.clear();
                    EndWriter::head(&mut end, proto::outcome::ERROR, &e);
                }
                link.send(h.session, proto::PHASE_END, &end)?;
            }
            proto::CLOSE => {
                if let Some(s) = sessions.remove(&h.session) {
                    t.close(s);
                }
            }
            proto::SHUTDOWN => {
                for (_, s) in sessions.drain() {
                    t.close(s);
                }
                shutdown(&plugin);
                return Ok(());
            }
            // A late answer to a read whose phase already ended.
            proto::READ_REPLY | proto::INIT => {}
            m => return Err(format!("unknown frame kind {m} from the host")),
        }
    }
}

/// Breaks the protocol as `--fault` asked, then waits to be killed.
fn commit_fault(link: &Link, sid: u32) -> Result<(), String> {
    match link.fault {
        Some(Fault::GarbageEnd) => link.send(sid, proto::PHASE_END, &[42, 0, 0, 0, 0, 0, 0, 0])?,
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

/// Runs one phase start: opens the session when asked, then the phase.
fn phase<T: Transport>(
    t: &T,
    plugin: &Arc<T::Plugin>,
    sessions: &mut HashMap<u32, T::Session>,
    shadow: &mut Shadow,
    sid: u32,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<PhaseOutcome, proto::ProtoError> {
    shadow.load(sid, frame)?;
    let Some(phase) = Phase::from_u8(shadow.start.phase) else {
        return Err(proto::ProtoError("bad phase"));
    };
    if shadow.start.flags & proto::START_OPEN != 0 {
        let entry = std::str::from_utf8(at(&shadow.frame, shadow.start.entry)).unwrap_or("");
        match t.open(plugin, entry, SessionOptions::default()) {
            Ok(s) => {
                if let Some(old) = sessions.insert(sid, s) {
                    t.close(old);
                }
            }
            Err(_) => return Ok(rejected()),
        }
    }
    let Some(s) = sessions.get_mut(&sid) else {
        return Ok(PhaseOutcome::Error(SessionError::Closed));
    };
    Ok(t.run_phase(s, phase, shadow, timeout))
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

/// The worker's context for one phase: the request as the phase-start frame
/// carried it, the response as the plugin's commands change it, and those
/// commands, encoded for the phase end.
pub(super) struct Shadow {
    link: Arc<Link>,
    sid: u32,
    frame: Vec<u8>,
    start: Start,
    params: Vec<(String, String)>,
    status: u16,
    headers: ResponseHeaders,
    body: Option<Vec<u8>>,
    request_body: Option<Vec<u8>>,
    commands: Vec<u8>,
}

impl Shadow {
    fn new(link: Arc<Link>) -> Self {
        Self {
            link,
            sid: 0,
            frame: Vec::new(),
            start: Start::default(),
            params: Vec::new(),
            status: 200,
            headers: ResponseHeaders::default(),
            body: None,
            request_body: None,
            commands: Vec::new(),
        }
    }

    fn load(&mut self, sid: u32, frame: Vec<u8>) -> Result<(), proto::ProtoError> {
        self.frame = frame;
        proto::decode_start(&self.frame, &mut self.start)?;
        self.sid = sid;
        self.params.clear();
        for (k, v) in &self.start.params {
            let s = |sp| String::from_utf8_lossy(at(&self.frame, sp)).into_owned();
            self.params.push((s(*k), s(*v)));
        }
        self.status = self.start.status;
        self.headers = ResponseHeaders::default();
        let frame = &self.frame;
        self.headers
            .apply_upstream(self.start.response_headers.iter().map(|(n, v)| {
                (
                    std::str::from_utf8(at(frame, *n)).unwrap_or(""),
                    at(frame, *v),
                )
            }));
        self.body = None;
        self.request_body = None;
        self.commands.clear();
        Ok(())
    }

    fn s(&self, i: usize) -> &str {
        std::str::from_utf8(at(&self.frame, self.start.strings[i])).unwrap_or("")
    }

    fn command(&mut self, c: Command<'_>) {
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
        self.start
            .request_headers
            .iter()
            .find(|(n, _)| at(&self.frame, *n).eq_ignore_ascii_case(name))
            .map(|(_, v)| at(&self.frame, *v))
    }

    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.start
            .request_headers
            .get(index)
            .map(|(n, v)| (at(&self.frame, *n), at(&self.frame, *v)))
    }

    fn request_body(&mut self) -> &[u8] {
        if self.request_body.is_none() {
            // One extra round trip: the body is not in the phase start.
            let body = self
                .link
                .send(self.sid, proto::READ, &[proto::READ_REQUEST_BODY])
                .and_then(|()| self.link.await_reply(self.sid));
            match body {
                Ok(b) => self.request_body = Some(b),
                Err(e) => {
                    // The host is gone or stuck: nothing sensible remains.
                    eprintln!("nylon worker {}: {e}", std::process::id());
                    std::process::exit(3);
                }
            }
        }
        self.request_body.as_deref().unwrap_or(&[])
    }

    fn request_params(&self) -> Option<&[(String, String)]> {
        (self.start.flags & proto::START_PARAMS != 0).then_some(self.params.as_slice())
    }

    fn request_timestamp_ms(&self) -> u64 {
        self.start.timestamp_ms
    }

    fn payload(&self) -> Option<&[u8]> {
        (self.start.flags & proto::START_PAYLOAD != 0).then(|| at(&self.frame, self.start.payload))
    }

    fn response_status(&self) -> u16 {
        self.status
    }

    fn set_response_status(&mut self, status: u16) {
        self.status = status;
        self.command(Command::Status(status));
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.headers.set(name, value.as_bytes());
        self.command(Command::SetHeader(name, value));
    }

    fn remove_response_header(&mut self, name: &str) {
        self.headers.remove(name);
        self.command(Command::RemoveHeader(name));
    }

    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.headers.at(index)
    }

    fn set_response_body(&mut self, body: &[u8]) {
        self.body = Some(body.to_vec());
        self.command(Command::SetBody(body));
    }

    fn response_body(&self) -> &[u8] {
        match &self.body {
            Some(b) => b,
            None => at(&self.frame, self.start.body),
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
        self.s(proto::S_ERROR)
    }

    fn websocket_upgrade(&mut self) -> Result<(), String> {
        Err("websocket is not supported with process isolation".into())
    }

    fn websocket_send(&mut self, _msg: WsMessage<'_>) -> Result<(), String> {
        Err("websocket is not open".into())
    }

    fn websocket_close(&mut self) {}

    fn websocket_recv(&mut self, _wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        buf.clear();
        WsRecv::Closed
    }

    fn websocket_join_room(&mut self, _room: &str) {}

    fn websocket_leave_room(&mut self, _room: &str) {}

    fn websocket_broadcast(&mut self, _room: &str, _msg: WsMessage<'_>) {}
}
