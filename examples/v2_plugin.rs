//! An example v2-ABI plugin written with the Rust SDK. The tests and the
//! benchmarks load it as a real `.so`; the allocation test links the same
//! code in-process.
//!
//! Entries:
//! - `scenario`: the brief's request scenario (see `benches/README.md`).
//! - `all`: every read, reported back as response headers.
//! - `end`, `stream`, `ws`: answering, streaming, WebSocket echo with rooms.
//! - `ws_room`: room chat: joins the room named by the query's `room=` (or by
//!   the first message) and broadcasts every later message to it.
//! - `async`: finishes request filter on another thread (detach/complete).
//! - `error`, `panic`, `silent_async`, `flood`: failures the host must contain.
//! - `empty`, `read_command`, `ws_sink`: the anchor rows' operations (nothing;
//!   one read and one command; a WebSocket message ignored).
//! - `late_report`: lets the last `silent_async` phase's thread make its late
//!   calls, joins it, and reports what they returned as response headers.
//! - `async_late`: as `async`, its thread ends the phase 50 ms later.
//! - `body_rewrite`: the body filter as plugin authors write it: reads the
//!   body, appends `+x`, sets it, on every chunk.
//! - for the proxy's end-to-end tests and load test (`host/`): `e2e_headers`,
//!   `e2e_auth`, `e2e_payload`, `e2e_stream`, `e2e_append`, `delay_1ms`, the
//!   legacy example's entries of those names with the same logic. With
//!   `"shutdown_file": PATH` in its config, the plugin appends a line to PATH
//!   when the host shuts it down.

use nylon_transport::abi::v2::Str;
use nylon_transport::sdk::v2::{Call, Handler, Plugin};
use nylon_transport::sdk::{Flow, SdkError, WsEvent};

/// The example plugin.
pub struct Example;

impl Plugin for Example {
    const NAME: &'static str = "example-v2";
    const ENTRIES: &'static [Str] = nylon_transport::entries![
        "scenario",
        "all",
        "end",
        "stream",
        "ws",
        "async",
        "error",
        "panic",
        "silent_async",
        "flood",
        "ws_echo",
        "reads",
        "commands",
        "empty",
        "read_command",
        "ws_sink",
        "late_report",
        "async_late",
        "body_rewrite",
        "e2e_headers",
        "e2e_auth",
        "e2e_payload",
        "e2e_stream",
        "e2e_append",
        "delay_1ms",
        "ws_room",
        "request_later",
    ];

    fn initialize(config: &[u8]) -> Result<Self, String> {
        if let Some(path) = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| {
                v.get("shutdown_file")
                    .and_then(|f| f.as_str())
                    .map(String::from)
            })
        {
            let _ = SHUTDOWN_FILE.set(path);
        }
        Ok(Example)
    }

    fn shutdown(&self) {
        use std::io::Write;
        if let Some(path) = SHUTDOWN_FILE.get() {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "shutdown v2_plugin");
            }
        }
    }

    fn open(&self, entry: u32) -> Option<Box<dyn Handler>> {
        Some(match entry {
            0 => Box::new(Scenario),
            1 => Box::new(All),
            2 => Box::new(End),
            3 => Box::new(Stream),
            4 => Box::new(Ws),
            5 => Box::new(Async(std::time::Duration::from_millis(5))),
            6 => Box::new(Fails),
            7 => Box::new(Panics),
            8 => Box::new(SilentAsync),
            9 => Box::new(Flood),
            10 => Box::new(WsEcho),
            11 => Box::new(Reads),
            12 => Box::new(Commands),
            13 => Box::new(Empty),
            14 => Box::new(ReadCommand),
            15 => Box::new(WsSink),
            16 => Box::new(LateReport),
            17 => Box::new(Async(std::time::Duration::from_millis(50))),
            18 => Box::new(BodyRewrite),
            19 => Box::new(E2eHeaders),
            20 => Box::new(E2eAuth),
            21 => Box::new(E2ePayload),
            22 => Box::new(E2eStream),
            23 => Box::new(E2eAppend(0)),
            24 => Box::new(Delay1ms),
            25 => Box::new(WsRoom(None)),
            26 => Box::new(RequestLater),
            _ => return None,
        })
    }
}

/// The scenario's payload, parsed typed and borrowing with sonic-rs (the
/// legacy example plugin parses it the same way).
#[derive(serde::Deserialize)]
struct ScenarioPayload<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    limit: u64,
}

/// The request scenario: the legacy `scenario` entry's logic, line for line;
/// only the ABI differs (reads here borrow host memory).
pub struct Scenario;

impl Handler for Scenario {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let raw = cx.payload();
        let payload: ScenarioPayload<'_> =
            sonic_rs::from_slice(raw).map_err(|e| SdkError::Decode(e.to_string()))?;
        let path = cx.path();
        let agent = cx.header("user-agent").unwrap_or_default();
        let (mut count, mut bytes) = (0usize, 0usize);
        for (n, v) in cx.headers() {
            count += 1;
            bytes += n.len() + v.len();
        }
        if path.is_empty()
            || agent.is_empty()
            || count != 8
            || bytes == 0
            || payload.user.is_empty()
            || payload.limit == 0
        {
            return Err(SdkError::Handler("scenario request is incomplete".into()));
        }
        cx.set_header("x-scenario", "1");
        cx.set_header("x-user", "alice");
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let status = cx.status();
        cx.set_header("x-status-class", if status < 400 { "ok" } else { "error" });
        Ok(Flow::Next)
    }

    fn logging(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        std::hint::black_box(cx.duration_ms());
        std::hint::black_box(cx.client_ip());
        Ok(Flow::Next)
    }
}

/// Does nothing: every phase says `next` (the anchor rows' empty call).
struct Empty;

impl Handler for Empty {}

/// One read and one command in request filter (the anchor rows' call with a
/// reply).
struct ReadCommand;

impl Handler for ReadCommand {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        if !cx.path().starts_with('/') {
            return Err(SdkError::Handler("no path".into()));
        }
        cx.set_header("x-anchor", "1");
        Ok(Flow::Next)
    }
}

/// Upgrades to WebSocket and ignores every message (the anchor rows'
/// fire-and-forget with a payload).
struct WsSink;

impl Handler for WsSink {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, _cx: &mut Call<'_>) {
        if let WsEvent::Text(t) = event {
            std::hint::black_box(t.len());
        }
    }
}

struct All;

impl Handler for All {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        cx.set_header("x-method", cx.method());
        cx.set_header("x-path", cx.path());
        cx.set_header("x-query", cx.query());
        cx.set_header("x-host", cx.host());
        cx.set_header("x-client-ip", cx.client_ip());
        cx.set_header("x-url", cx.url());
        cx.set_header("x-request-body", &lossy(cx.request_body()));
        cx.set_header("x-payload", &lossy(cx.payload()));
        let doc = cx.payload_value()?;
        let key = sonic_rs::JsonValueTrait::as_str(&doc["key"])
            .unwrap_or("-")
            .to_string();
        cx.set_header("x-payload-key", &key);
        let raw = cx.payload_get("key")?.unwrap_or_default();
        cx.set_header("x-payload-raw", &lossy(raw));
        cx.set_header("x-params", &lossy(cx.params_json()));
        cx.set_header("x-error", cx.error());
        cx.set_header("x-user", &lossy(cx.header("X-User").unwrap_or(b"-")));
        cx.set_header(
            "x-absent",
            if cx.header("x-absent").is_none() {
                "none"
            } else {
                "some"
            },
        );
        let hs: Vec<String> = cx
            .headers()
            .map(|(n, v)| format!("{}={}", lossy(n), lossy(v)))
            .collect();
        cx.set_header("x-headers", &hs.join(";"));
        cx.set_header("x-bytes", &cx.request_bytes().to_string());
        cx.set_header("x-ts-positive", &(cx.timestamp_ms() > 0).to_string());
        cx.set_header("x-remove-me", "1");
        cx.remove_header("x-remove-me");
        cx.set_status(201);
        // Commands apply at phase end: reads still see the state at phase start.
        cx.set_header("x-status-seen", &cx.status().to_string());
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.set_header("x-upstream-status", &cx.status().to_string());
        let names: Vec<String> = cx
            .response_headers()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect();
        cx.set_header("x-response-headers", &names.join(";"));
        Ok(Flow::Next)
    }

    fn response_body_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let chunk = String::from_utf8_lossy(cx.response_body()).into_owned();
        cx.set_header(
            &format!("x-chunk-{chunk}"),
            &cx.response_bytes().to_string(),
        );
        Ok(Flow::Next)
    }

    fn logging(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.set_header("x-duration-read", &(cx.duration_ms() < 60_000).to_string());
        Ok(Flow::Next)
    }
}

struct End;

impl Handler for End {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.set_status(403);
        cx.set_header("content-type", "text/plain");
        cx.set_body(b"denied by v2");
        Ok(Flow::End)
    }
}

struct Stream;

impl Handler for Stream {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.stream_header();
        cx.stream_write(b"one");
        cx.stream_write(b"two");
        Ok(Flow::StreamEnd)
    }
}

struct Ws;

impl Handler for Ws {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, cx: &mut Call<'_>) {
        match event {
            WsEvent::Open => cx.join_room("lobby"),
            WsEvent::Text(b"bye") => {
                cx.leave_room("lobby");
                cx.ws_close();
            }
            WsEvent::Text(t) => {
                cx.ws_send_text(t);
                cx.broadcast_text("lobby", t);
            }
            WsEvent::Binary(b) => {
                cx.ws_send_binary(b);
                cx.broadcast_binary("lobby", b);
            }
            WsEvent::Close | WsEvent::Error(_) => {}
        }
    }
}

/// Ends its request filter on its own thread after the delay.
struct Async(std::time::Duration);

impl Handler for Async {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let detached = cx.detach();
        let delay = self.0;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            let path = detached.path().to_string();
            detached.set_header("x-async-path", &path);
            let _ = detached.complete(Ok(Flow::Next));
        });
        Ok(Flow::Next)
    }
}

/// Rewrites every body chunk: reads it, appends `+x`, sets it.
struct BodyRewrite;

impl Handler for BodyRewrite {
    fn response_body_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let mut body = cx.response_body().to_vec();
        body.extend_from_slice(b"+x");
        cx.set_body(&body);
        Ok(Flow::Next)
    }
}

struct Fails;

impl Handler for Fails {
    fn request_filter(&mut self, _cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        Err(SdkError::Handler("database unavailable".into()))
    }
}

struct Panics;

impl Handler for Panics {
    fn request_filter(&mut self, _cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        panic!("boom")
    }
}

/// What the late thread of a `silent_async` phase saw: the path its late
/// read returned, and whether its late completion was accepted.
type LateCalls = (String, Result<(), SdkError>);

/// The thread of the last `silent_async` phase, and the sender that lets it
/// make its late calls; taken by `late_report`.
static LATE: std::sync::Mutex<
    Option<(
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<LateCalls>,
    )>,
> = std::sync::Mutex::new(None);

/// Detaches and never completes in time: its thread keeps the handle and
/// makes its calls only when `late_report` says so, after the host's timeout.
struct SilentAsync;

impl Handler for SilentAsync {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let d = cx.detach();
        let (go, wait_go) = std::sync::mpsc::channel::<()>();
        let late = std::thread::spawn(move || {
            // Told by `late_report` (or, if it never comes, after 30 s).
            let _ = wait_go.recv_timeout(std::time::Duration::from_secs(30));
            let read = d.path().to_string();
            (read, d.complete(Ok(Flow::Next)))
        });
        // A thread never reported is let go (its sender dropped).
        *LATE.lock().unwrap_or_else(|e| e.into_inner()) = Some((go, late));
        Ok(Flow::Next)
    }
}

/// Lets the last `silent_async` thread make its late calls, joins it, and
/// reports them: `x-late-read` is the late read's path in brackets,
/// `x-late-complete` is `refused` or `accepted`. A panic of that thread fails
/// this phase as a handler panic; with no such thread, `x-late-read` is `none`.
struct LateReport;

impl Handler for LateReport {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let taken = LATE.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some((go, late)) = taken else {
            cx.set_header("x-late-read", "none");
            return Ok(Flow::Next);
        };
        let _ = go.send(());
        // The thread's panic goes on here: the SDK reports it for this phase.
        let (read, completed) = late.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        cx.set_header("x-late-read", &format!("[{read}]"));
        cx.set_header(
            "x-late-complete",
            match completed {
                Ok(()) => "accepted",
                Err(_) => "refused",
            },
        );
        Ok(Flow::Next)
    }
}

struct Flood;

impl Handler for Flood {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let big = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            cx.set_body(&big);
        }
        Ok(Flow::Next)
    }
}

/// Echoes every WebSocket text message.
struct WsEcho;

impl Handler for WsEcho {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, cx: &mut Call<'_>) {
        if let WsEvent::Text(t) = event {
            cx.ws_send_text(t);
        }
    }
}

/// Room chat: joins the room of the query's `room=` (else the first
/// message names it), then broadcasts every message to it (sender included).
struct WsRoom(Option<String>);

impl Handler for WsRoom {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        self.0 = cx
            .query()
            .split('&')
            .find_map(|kv| kv.strip_prefix("room="))
            .filter(|r| !r.is_empty())
            .map(str::to_string);
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, cx: &mut Call<'_>) {
        match (event, &self.0) {
            (WsEvent::Open, Some(room)) => cx.join_room(room),
            (WsEvent::Text(t), None) => {
                let room = String::from_utf8_lossy(t).into_owned();
                cx.join_room(&room);
                self.0 = Some(room);
            }
            (WsEvent::Text(t), Some(room)) => cx.broadcast_text(room, t),
            (WsEvent::Binary(b), Some(room)) => cx.broadcast_binary(room, b),
            _ => {}
        }
    }
}

/// How many reads or commands the `reads` and `commands` entries make.
pub const CALLS_PER_PHASE: usize = 1000;

/// Many synchronous reads in one phase (the per-call cost of a read).
struct Reads;

impl Handler for Reads {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        for _ in 0..CALLS_PER_PHASE {
            std::hint::black_box(cx.path());
        }
        Ok(Flow::Next)
    }
}

/// Many fire-and-forget commands in one phase.
struct Commands;

impl Handler for Commands {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        for _ in 0..CALLS_PER_PHASE {
            cx.set_status(200);
        }
        Ok(Flow::Next)
    }
}

nylon_transport::export_v2_plugin!(Example);

// ---------------------------------------------------------------------------
// Entries for the proxy (`host/`): the legacy example's entries of the same
// names, with the same logic.
// ---------------------------------------------------------------------------

/// Where `shutdown` records that it ran (from the config's `shutdown_file`).
static SHUTDOWN_FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Request filter echoes `x-request-id` and the path; response filter the
/// upstream status.
struct E2eHeaders;

impl Handler for E2eHeaders {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let id =
            String::from_utf8_lossy(cx.header("x-request-id").unwrap_or_default()).into_owned();
        cx.set_header("x-mw-request", &id);
        cx.set_header("x-mw-path", cx.path());
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.set_header("x-mw-response", &cx.status().to_string());
        Ok(Flow::Next)
    }
}

/// 401 (END) without `authorization: Bearer let-me-in`.
struct E2eAuth;

impl Handler for E2eAuth {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        if cx.header("authorization") != Some(&b"Bearer let-me-in"[..]) {
            cx.set_status(401);
            cx.set_header("content-type", "text/plain");
            cx.set_body(b"unauthorized");
            return Ok(Flow::End);
        }
        cx.set_header("x-auth", "ok");
        Ok(Flow::Next)
    }
}

/// Reads the request side and the payload in every phase after the first
/// (which a worker answers from the session's opening phase start) and
/// writes what it read into a response header per phase.
struct RequestLater;

impl RequestLater {
    fn record(cx: &Call<'_>, phase: &str) {
        let seen = format!(
            "{} {} {} {} {} {} user={} headers={} first={} params={} payload={}:{} started={}",
            cx.method(),
            cx.path(),
            cx.query(),
            cx.host(),
            cx.client_ip(),
            cx.url(),
            String::from_utf8_lossy(cx.header("x-user").unwrap_or_default()),
            cx.headers().count(),
            cx.headers()
                .next()
                .map(|(n, v)| format!(
                    "{}={}",
                    String::from_utf8_lossy(n),
                    String::from_utf8_lossy(v)
                ))
                .unwrap_or_default(),
            String::from_utf8_lossy(cx.params_json()),
            cx.payload().len(),
            cx.payload().iter().map(|b| u64::from(*b)).sum::<u64>(),
            cx.timestamp_ms() > 0,
        );
        cx.set_header(&format!("x-later-{phase}"), &seen);
    }
}

impl Handler for RequestLater {
    fn request_filter(&mut self, _cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        Self::record(cx, "response");
        Ok(Flow::Next)
    }

    fn response_body_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        Self::record(cx, "body");
        Ok(Flow::Next)
    }

    fn logging(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        Self::record(cx, "logging");
        Ok(Flow::Next)
    }
}

/// A plugin service answering with its payload.
struct E2ePayload;

impl Handler for E2ePayload {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        cx.set_header("content-type", "application/json");
        cx.set_body(cx.payload());
        Ok(Flow::End)
    }
}

/// A streaming service on its own thread: header, three chunks naming the
/// path 2 ms apart, end.
struct E2eStream;

impl Handler for E2eStream {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let d = cx.detach();
        std::thread::spawn(move || {
            let path = d.path().to_string();
            d.set_header("content-type", "text/plain");
            d.stream_header();
            for i in 0..3 {
                d.stream_write(format!("chunk{i} {path}\n").as_bytes());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _ = d.complete(Ok(Flow::StreamEnd));
        });
        Ok(Flow::Next)
    }
}

/// Reads the body, appends `|N`, sets it, on every non-empty chunk.
struct E2eAppend(u32);

impl Handler for E2eAppend {
    fn response_body_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let body = cx.response_body();
        if !body.is_empty() {
            let mut out = body.to_vec();
            out.extend_from_slice(format!("|{}", self.0).as_bytes());
            self.0 += 1;
            cx.set_body(&out);
        }
        Ok(Flow::Next)
    }
}

/// Ends its request filter 1 ms later from a timer thread.
struct Delay1ms;

/// The timer thread's queue (equal delays: in order).
static TIMER: std::sync::OnceLock<
    std::sync::Mutex<
        std::sync::mpsc::Sender<(std::time::Instant, nylon_transport::sdk::v2::Detached)>,
    >,
> = std::sync::OnceLock::new();

impl Handler for Delay1ms {
    fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
        let when = std::time::Instant::now() + std::time::Duration::from_millis(1);
        let tx = TIMER
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::channel::<(
                    std::time::Instant,
                    nylon_transport::sdk::v2::Detached,
                )>();
                std::thread::Builder::new()
                    .name("v2-plugin-timer".into())
                    .spawn(move || {
                        while let Ok((when, d)) = rx.recv() {
                            let now = std::time::Instant::now();
                            if when > now {
                                std::thread::sleep(when - now);
                            }
                            let _ = d.complete(Ok(Flow::Next));
                        }
                    })
                    .expect("spawn the timer thread");
                std::sync::Mutex::new(tx)
            })
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tx.send((when, cx.detach()))
            .map_err(|_| SdkError::Handler("the timer thread is gone".into()))?;
        Ok(Flow::Next)
    }
}
