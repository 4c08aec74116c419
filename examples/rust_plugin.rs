//! An example legacy-ABI plugin written with the Rust SDK. The tests load it
//! as a real `.so`; each entry exercises part of the ABI.
//!
//! Entries:
//! - `all_methods`: every read, and every response command, in the four phases;
//!   reports what it read as response headers.
//! - `end`: answers the request itself (`END`).
//! - `stream`: a streamed response.
//! - `ws`: upgrades to WebSocket, echoes and broadcasts, closes on `bye`.
//! - `error`, `panic`: a handler that fails / panics.
//! - hostile ones for the tests: `silent`, `unknown_method`, `malformed`,
//!   `bad_length`, `event_to_host`, `flood`, `threads`, `victim`, `stale`.
//! - on the plugin's own threads (the Go SDK's way): `threaded`, `delayed`
//!   (see the block at the end); `late_read`: reads and commands from its
//!   own thread only once the host has closed the session.
//! - `body_rewrite`: the body filter as plugin authors write it: reads the
//!   body (107), appends `+x`, sets it (103), on every chunk.
//! - for the benchmarks: `scenario` (the request scenario), `empty`,
//!   `read_command`, `ws_sink` (the anchor rows' operations), `ws_echo`,
//!   `reads`, `commands`.
//! - `ws_room`: room chat: joins the room named by the query's `room=` (or,
//!   without one, by the first message) and broadcasts every later message
//!   to it, the sender included.
//! - for the proxy's end-to-end tests and load test (`host/`): `e2e_headers`,
//!   `e2e_auth`, `e2e_payload`, `e2e_stream`, `e2e_append`, `delay_1ms` (see
//!   the block at the end). With `"shutdown_file": PATH` in its config, the
//!   plugin appends a line to PATH when the host shuts it down.

use std::sync::atomic::{AtomicU32, Ordering};

use nylon_transport::abi::legacy::{FfiBuffer, Method};
use nylon_transport::sdk::{Flow, PhaseCx, PhasePool, Plugin, SdkError, Session, WsCx, WsEvent};

struct Example {
    greeting: String,
}

/// The sid of the last closed `victim` session.
static LAST_VICTIM: AtomicU32 = AtomicU32::new(0);

impl Plugin for Example {
    fn initialize(config: &[u8]) -> Self {
        let greeting = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("greeting").and_then(|g| g.as_str()).map(String::from))
            .unwrap_or_else(|| "hello".into());
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
        Example { greeting }
    }

    fn shutdown(&self) {
        record_shutdown();
    }

    fn open(&self, entry: &str, sid: u32) -> Option<Box<dyn Session>> {
        Some(match entry {
            "all_methods" => Box::new(AllMethods::default()),
            "end" => Box::new(EndEarly(self.greeting.clone())),
            "stream" => Box::new(Stream),
            "ws" => Box::new(Ws),
            "error" => Box::new(Fails),
            "panic" => Box::new(Panics),
            "silent" => Box::new(Silent),
            "unknown_method" => Box::new(Raw(999, Vec::new())),
            "malformed" => Box::new(Raw(
                Method::SetResponseHeader as u32,
                b"\x01\x02garbage".to_vec(),
            )),
            "event_to_host" => Box::new(Raw(Method::WebsocketOnOpen as u32, Vec::new())),
            "bad_length" => Box::new(BadLength),
            "flood" => Box::new(Flood),
            "threads" => Box::new(Threads),
            "victim" => Box::new(Victim(sid)),
            "stale" => Box::new(Stale),
            "scenario" => Box::new(Scenario),
            "late" => Box::new(Late(None)),
            "late_read" => Box::new(LateRead(None)),
            "body_rewrite" => Box::new(BodyRewrite),
            "forge" => Box::new(Forge),
            "slow" => Box::new(Slow),
            "flood_after" => Box::new(FloodAfter),
            "ws_echo" => Box::new(WsEcho),
            "ws_room" => Box::new(WsRoom(None)),
            "reads" => Box::new(Reads),
            "commands" => Box::new(Commands),
            "empty" => Box::new(Empty),
            "read_command" => Box::new(ReadCommand),
            "ws_sink" => Box::new(WsSink),
            "threaded" => Box::new(Threaded(self.open("scenario", sid)?)),
            "delayed" => Box::new(Delayed),
            "e2e_headers" => Box::new(E2eHeaders),
            "e2e_auth" => Box::new(E2eAuth),
            "e2e_payload" => Box::new(E2ePayload),
            "e2e_stream" => Box::new(E2eStream),
            "e2e_append" => Box::new(E2eAppend(0)),
            "delay_1ms" => Box::new(Delay1ms),
            _ => return None,
        })
    }
}

#[derive(Default)]
struct AllMethods {
    chunks: Vec<String>,
}

impl Session for AllMethods {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let payload = cx.payload_json()?;
        cx.set_response_header("x-payload-key", payload["key"].as_str().unwrap_or("-"));
        cx.set_response_header("x-path", &cx.request_path()?);
        cx.set_response_header("x-url", &cx.request_url()?);
        cx.set_response_header("x-query", &cx.request_query()?);
        cx.set_response_header("x-host", &cx.request_host()?);
        cx.set_response_header("x-client-ip", &cx.client_ip()?);
        cx.set_response_header("x-method", &cx.request_method()?);
        cx.set_response_header("x-bytes", &cx.request_bytes()?.to_string());
        cx.set_response_header(
            "x-ts-positive",
            &(cx.request_timestamp_ms()? > 0).to_string(),
        );
        cx.set_response_header("x-user", &cx.request_header("X-User")?);
        cx.set_response_header("x-absent", &format!("[{}]", cx.request_header("x-absent")?));
        let headers = cx.request_headers()?;
        let names: Vec<_> = headers.iter().map(|(n, v)| format!("{n}={v}")).collect();
        cx.set_response_header("x-headers", &names.join(";"));
        let params = cx.request_params()?;
        cx.set_response_header(
            "x-params",
            &params.map_or("null".into(), |p| {
                p.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(";")
            }),
        );
        let body = cx.request_body()?;
        cx.set_response_header("x-request-body", &String::from_utf8_lossy(&body));
        cx.set_response_header("x-remove-me", "1");
        cx.remove_response_header("x-remove-me");
        cx.set_response_status(201);
        cx.set_response_header("x-status-seen", &cx.response_status()?.to_string());
        cx.set_response_header("x-error-seen", &format!("[{}]", cx.response_error()?));
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_header("x-upstream-status", &cx.response_status()?.to_string());
        let names: Vec<_> = cx.response_headers()?.into_iter().map(|(n, _)| n).collect();
        cx.set_response_header("x-response-headers", &names.join(";"));
        Ok(Flow::Next)
    }

    fn response_body_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let chunk = cx.response_body()?;
        let len = cx.response_bytes()?;
        self.chunks
            .push(format!("{}:{len}", String::from_utf8_lossy(&chunk)));
        Ok(Flow::Next)
    }

    fn logging(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let _ = cx.response_duration_ms()?;
        let _ = cx.response_error()?;
        // Too late to change the response; the host still applies it to its context.
        cx.set_response_header("x-chunks-seen", &self.chunks.join(","));
        Ok(Flow::Next)
    }
}

struct EndEarly(String);

impl Session for EndEarly {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_status(403);
        cx.set_response_header("content-type", "text/plain");
        cx.set_response_body(self.0.as_bytes());
        Ok(Flow::End)
    }
}

struct Stream;

impl Session for Stream {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_header("transfer-encoding", "chunked");
        cx.stream_header();
        cx.stream_write(b"one");
        cx.stream_write(b"two");
        Ok(Flow::StreamEnd)
    }
}

struct Ws;

impl Session for Ws {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, ws: &mut WsCx<'_>) {
        match event {
            WsEvent::Open => ws.join_room("lobby"),
            WsEvent::Text(b"bye") => {
                ws.leave_room("lobby");
                ws.close();
            }
            WsEvent::Text(t) => {
                ws.send_text(t);
                ws.broadcast_text("lobby", t);
            }
            WsEvent::Binary(b) => {
                ws.send_binary(b);
                ws.broadcast_binary("lobby", b);
            }
            WsEvent::Close | WsEvent::Error(_) => {}
        }
    }
}

struct Fails;

impl Session for Fails {
    fn request_filter(&mut self, _cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        Err(SdkError::Handler("database unavailable".into()))
    }
}

struct Panics;

impl Session for Panics {
    fn request_filter(&mut self, _cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        panic!("boom")
    }
}

struct Silent;

impl Session for Silent {
    fn request_filter(&mut self, _cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        Ok(Flow::Hold)
    }
}

/// Sends one raw message, then waits (the host should fail the session).
struct Raw(u32, Vec<u8>);

impl Session for Raw {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.send_raw(self.0, &self.1);
        Ok(Flow::Hold)
    }
}

struct BadLength;

impl Session for BadLength {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        // A NULL pointer with a non-zero length: the host must not read it.
        let buf = FfiBuffer {
            sid: cx.sid(),
            phase: 0,
            method: Method::SetResponseFullBody as u32,
            ptr: std::ptr::null(),
            len: 16,
        };
        // SAFETY: the pointer is NULL: the host refuses it before reading.
        unsafe { cx.send_raw_buffer(&buf) };
        Ok(Flow::Hold)
    }
}

struct Flood;

impl Session for Flood {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        for i in 0..10_000 {
            cx.set_response_header("x-flood", &i.to_string());
            cx.set_response_header(&format!("x-flood-{}", i % 10), &i.to_string());
        }
        Ok(Flow::Next)
    }
}

struct Threads;

impl Session for Threads {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        std::thread::scope(|s| {
            for t in 0..8 {
                let cx = &*cx;
                s.spawn(move || {
                    for i in 0..200 {
                        cx.set_response_header(&format!("x-thread-{t}"), &i.to_string());
                    }
                    // Reads from several threads at once each get their own reply.
                    assert_eq!(cx.request_path().unwrap_or_default(), "/threads");
                });
            }
        });
        Ok(Flow::Next)
    }
}

struct Victim(u32);

impl Session for Victim {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_header("x-victim-sid", &self.0.to_string());
        Ok(Flow::Next)
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        LAST_VICTIM.store(self.0, Ordering::SeqCst);
    }
}

struct Stale;

impl Session for Stale {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let victim = LAST_VICTIM.load(Ordering::SeqCst);
        let kv = nylon_transport::codec::encode_header_kv("x-stale", "1");
        cx.send_raw_as(victim, Method::SetResponseHeader as u32, &kv);
        cx.send_raw_as(victim, Method::Next as u32, &[]);
        cx.set_response_header("x-victim", &victim.to_string());
        Ok(Flow::Next)
    }
}

/// Never ends the phase: once the host has closed the session (after its
/// timeout), a thread sends a command and NEXT for it.
///
/// The session holds the sending end of a channel; the host's close drops the
/// session and so wakes the thread (which gives up waiting after 30 s).
struct Late(Option<std::sync::mpsc::Sender<()>>);

impl Session for Late {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let sid = cx.sid();
        let kv = nylon_transport::codec::encode_header_kv("x-late", "1");
        let send = cx.raw_sender();
        let (closed, wait_closed) = std::sync::mpsc::channel::<()>();
        self.0 = Some(closed);
        std::thread::spawn(move || {
            let _ = wait_closed.recv_timeout(std::time::Duration::from_secs(30));
            send(sid, Method::SetResponseHeader as u32, &kv);
            send(sid, Method::Next as u32, &[]);
        });
        Ok(Flow::Hold)
    }
}

/// Goes pending, and once the host has closed the session (a cancelled
/// phase), reads the path, sets a header and says NEXT from its own thread:
/// three messages the host must drop without touching the phase's context.
struct LateRead(Option<std::sync::mpsc::Sender<()>>);

impl Session for LateRead {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let sid = cx.sid();
        let kv = nylon_transport::codec::encode_header_kv("x-late", "1");
        let send = cx.raw_sender();
        let (closed, wait_closed) = std::sync::mpsc::channel::<()>();
        self.0 = Some(closed);
        // Tells the host the handler runs (the phase stays pending).
        cx.set_response_header("x-late-started", "1");
        std::thread::spawn(move || {
            // The sender drops with this session, when the host closes it.
            let _ = wait_closed.recv_timeout(std::time::Duration::from_secs(30));
            send(sid, Method::ReadRequestPath as u32, &[]);
            send(sid, Method::SetResponseHeader as u32, &kv);
            send(sid, Method::Next as u32, &[]);
        });
        Ok(Flow::Hold)
    }
}

/// Rewrites every body chunk: reads it (107), appends `+x`, sets it (103).
struct BodyRewrite;

impl Session for BodyRewrite {
    fn response_body_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let mut body = cx.response_body()?;
        body.extend_from_slice(b"+x");
        cx.set_response_body(&body);
        Ok(Flow::Next)
    }
}

/// Sends a command under a forged session id: the same table slot as its
/// own id (fast transport) but another generation, far from any a test
/// process reaches (the top bit flipped), so no other session has it.
struct Forge;

impl Session for Forge {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let forged = cx.sid() ^ (1 << 31);
        let kv = nylon_transport::codec::encode_header_kv("x-forged", "1");
        cx.send_raw_as(forged, Method::SetResponseHeader as u32, &kv);
        cx.send_raw_as(forged, Method::End as u32, &[]);
        cx.set_response_header("x-forged-sid", &forged.to_string());
        Ok(Flow::Next)
    }
}

/// Ends its phase with a raw NEXT, then keeps sending: 3000 commands land
/// between two phases, where the fast host keeps at most a bounded backlog.
struct FloodAfter;

impl Session for FloodAfter {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.send_raw(Method::Next as u32, &[]);
        for i in 0..3000 {
            cx.set_response_header("x-after", &i.to_string());
        }
        Ok(Flow::Hold)
    }
}

/// How many `slow` request filters have started (read through
/// [`example_slow_phases_started`]).
static SLOW_STARTED: AtomicU32 = AtomicU32::new(0);

/// The number of `slow` request filters that have started in this copy of
/// the library: the unload-in-flight test shuts the plugin down only once
/// its phase is running. (An atomic load: nothing here can unwind.)
#[no_mangle]
pub extern "C" fn example_slow_phases_started() -> u32 {
    SLOW_STARTED.load(Ordering::SeqCst)
}

/// Reads the request path again and again until a read fails (the plugin
/// is shut down under it: the session closes), and fails the phase with that
/// error; gives up after 30 s (for unload-in-flight tests).
struct Slow;

impl Session for Slow {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            cx.request_path()?;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(SdkError::Handler("the session was never closed".into()))
    }
}

/// The scenario's payload, parsed typed and borrowing with sonic-rs (the
/// v2 example plugin parses it the same way).
#[derive(serde::Deserialize)]
struct ScenarioPayload<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    limit: u64,
}

/// The brief's request scenario (see `benches/README.md`), on the legacy ABI.
/// Its logic is the v2 example's `scenario`, line for line; only the ABI
/// differs (every read here is a copied reply).
struct Scenario;

impl Session for Scenario {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let raw = cx.payload()?;
        let payload: ScenarioPayload<'_> =
            sonic_rs::from_slice(&raw).map_err(|e| SdkError::Decode(e.to_string()))?;
        let path = cx.request_path()?;
        let agent = cx.request_header("user-agent")?;
        let raw_headers = cx.request_headers_raw()?;
        let headers = nylon_transport::codec::decode_headers(&raw_headers)
            .map_err(|e| SdkError::Decode(e.to_string()))?;
        let (mut count, mut bytes) = (0usize, 0usize);
        for (n, v) in headers {
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
        cx.set_response_header("x-scenario", "1");
        cx.set_response_header("x-user", "alice");
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let status = cx.response_status()?;
        cx.set_response_header("x-status-class", if status < 400 { "ok" } else { "error" });
        Ok(Flow::Next)
    }

    fn logging(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        std::hint::black_box(cx.response_duration_ms()?);
        std::hint::black_box(cx.client_ip()?);
        Ok(Flow::Next)
    }
}

/// Does nothing: every phase says `next` (the anchor rows' empty call).
struct Empty;

impl Session for Empty {}

/// One read and one command in request filter (the anchor rows' call with a
/// reply).
struct ReadCommand;

impl Session for ReadCommand {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        if !cx.request_path()?.starts_with('/') {
            return Err(SdkError::Handler("no path".into()));
        }
        cx.set_response_header("x-anchor", "1");
        Ok(Flow::Next)
    }
}

/// Upgrades to WebSocket and ignores every message (the anchor rows'
/// fire-and-forget with a payload).
struct WsSink;

impl Session for WsSink {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, _ws: &mut WsCx<'_>) {
        if let WsEvent::Text(t) = event {
            std::hint::black_box(t.len());
        }
    }
}

/// Echoes every WebSocket text message.
struct WsEcho;

impl Session for WsEcho {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, ws: &mut WsCx<'_>) {
        if let WsEvent::Text(t) = event {
            ws.send_text(t);
        }
    }
}

/// The room named by a query's `room=` parameter, if any.
fn room_of(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("room="))
        .filter(|r| !r.is_empty())
        .map(str::to_string)
}

/// Room chat: joins the room of the query's `room=` (else the first
/// message names it), then broadcasts every message to it (sender included).
struct WsRoom(Option<String>);

impl Session for WsRoom {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        self.0 = room_of(&cx.request_query()?);
        cx.websocket_upgrade();
        Ok(Flow::Hold)
    }

    fn on_websocket(&mut self, event: WsEvent<'_>, ws: &mut WsCx<'_>) {
        match (event, &self.0) {
            (WsEvent::Open, Some(room)) => ws.join_room(room),
            (WsEvent::Text(t), None) => {
                let room = String::from_utf8_lossy(t).into_owned();
                ws.join_room(&room);
                self.0 = Some(room);
            }
            (WsEvent::Text(t), Some(room)) => ws.broadcast_text(room, t),
            (WsEvent::Binary(b), Some(room)) => ws.broadcast_binary(room, b),
            _ => {}
        }
    }
}

/// How many reads or commands the `reads` and `commands` entries make.
pub const CALLS_PER_PHASE: usize = 1000;

/// Many synchronous reads in one phase (the per-call cost of a read).
struct Reads;

impl Session for Reads {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        for _ in 0..CALLS_PER_PHASE {
            std::hint::black_box(cx.request_path()?);
        }
        Ok(Flow::Next)
    }
}

/// Many fire-and-forget commands in one phase.
struct Commands;

impl Session for Commands {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        for _ in 0..CALLS_PER_PHASE {
            cx.set_response_status(200);
        }
        Ok(Flow::Next)
    }
}

// ---------------------------------------------------------------------------
// Phases on the plugin's own threads, as the Go SDK runs them: a goroutine per
// phase on a few OS threads, reads as requests through the host callback with
// a wait for the reply, the phase ended by NEXT sent from that thread. Used by
// the `request_contended` bench row and the wake-up tests.
// ---------------------------------------------------------------------------

/// The plugin's own threads: a fixed few, as Go's runtime has (never a new
/// thread per phase, which would measure thread creation).
static PLUGIN_THREADS: PhasePool = PhasePool::new("rust-plugin-phase", 4);

/// The `scenario` entry's logic (its reads and commands, whatever they are),
/// every phase run on [`PLUGIN_THREADS`].
struct Threaded(Box<dyn Session>);

impl Session for Threaded {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        self.0.request_filter(cx)
    }

    fn response_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        self.0.response_filter(cx)
    }

    fn response_body_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        self.0.response_body_filter(cx)
    }

    fn logging(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        self.0.logging(cx)
    }

    fn phase_pool(&self) -> Option<&'static PhasePool> {
        Some(&PLUGIN_THREADS)
    }
}

/// How long the `delayed` entry's request filter takes.
pub const DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// Ends its request filter [`DELAY`] after it starts, on one of
/// [`PLUGIN_THREADS`]: the host's driver has parked by then, and only the
/// plugin's NEXT can wake it.
struct Delayed;

impl Session for Delayed {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        std::thread::sleep(DELAY);
        let path = cx.request_path()?;
        cx.set_response_header("x-delayed-path", &path);
        Ok(Flow::Next)
    }

    fn phase_pool(&self) -> Option<&'static PhasePool> {
        Some(&PLUGIN_THREADS)
    }
}

// ---------------------------------------------------------------------------
// Entries for the proxy (`host/`): its end-to-end tests and load test. The v2
// example has the same entries with the same logic.
// ---------------------------------------------------------------------------

/// Where `shutdown` records that it ran (from the config's `shutdown_file`).
static SHUTDOWN_FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Appends a line to the configured shutdown file, if any.
fn record_shutdown() {
    use std::io::Write;
    if let Some(path) = SHUTDOWN_FILE.get() {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "shutdown rust_plugin");
        }
    }
}

/// A middleware on both sides of the upstream: request filter echoes the
/// request's `x-request-id` and path as `x-mw-request` / `x-mw-path`;
/// response filter sets `x-mw-response` to the upstream status.
struct E2eHeaders;

impl Session for E2eHeaders {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_header("x-mw-request", &cx.request_header("x-request-id")?);
        cx.set_response_header("x-mw-path", &cx.request_path()?);
        Ok(Flow::Next)
    }

    fn response_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        cx.set_response_header("x-mw-response", &cx.response_status()?.to_string());
        Ok(Flow::Next)
    }
}

/// An auth middleware: without `authorization: Bearer let-me-in` it answers
/// 401 itself (END); with it, it lets the request through.
struct E2eAuth;

impl Session for E2eAuth {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        if cx.request_header("authorization")? != "Bearer let-me-in" {
            cx.set_response_status(401);
            cx.set_response_header("content-type", "text/plain");
            cx.set_response_body(b"unauthorized");
            return Ok(Flow::End);
        }
        cx.set_response_header("x-auth", "ok");
        Ok(Flow::Next)
    }
}

/// A plugin service that answers with its payload as the body (JSON).
struct E2ePayload;

impl Session for E2ePayload {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let payload = cx.payload()?;
        cx.set_response_header("content-type", "application/json");
        cx.set_response_body(&payload);
        Ok(Flow::End)
    }
}

/// A streaming plugin service on the plugin's own threads: the header, then
/// three chunks naming the request path, 2 ms apart, then the end.
struct E2eStream;

impl Session for E2eStream {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let path = cx.request_path()?;
        cx.set_response_header("content-type", "text/plain");
        cx.stream_header();
        for i in 0..3 {
            cx.stream_write(format!("chunk{i} {path}\n").as_bytes());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(Flow::StreamEnd)
    }

    fn phase_pool(&self) -> Option<&'static PhasePool> {
        Some(&PLUGIN_THREADS)
    }
}

/// The body rewrite plugin authors write for upstream Nylon: in every body
/// filter phase, read the body (107), append to it, set it (103). It appends
/// `|N`, N counting this session's non-empty chunks from 0.
struct E2eAppend(u32);

impl Session for E2eAppend {
    fn response_body_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let mut body = cx.response_body()?;
        if !body.is_empty() {
            body.extend_from_slice(format!("|{}", self.0).as_bytes());
            self.0 += 1;
            cx.set_response_body(&body);
        }
        Ok(Flow::Next)
    }
}

/// Ends its request filter 1 ms after it starts, from a timer thread, as a
/// Go plugin awaiting a service does: no plugin thread is held meanwhile.
struct Delay1ms;

/// Phases the timer thread ends: (when, sid, the host callback).
type Timed = (std::time::Instant, u32, Box<dyn Fn(u32, u32, &[u8]) + Send>);

/// The timer thread's queue (every delay is the same, so it is in order).
static TIMER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Timed>>> =
    std::sync::OnceLock::new();

fn timer() -> std::sync::mpsc::Sender<Timed> {
    TIMER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<Timed>();
            std::thread::Builder::new()
                .name("rust-plugin-timer".into())
                .spawn(move || {
                    while let Ok((when, sid, send)) = rx.recv() {
                        let now = std::time::Instant::now();
                        if when > now {
                            std::thread::sleep(when - now);
                        }
                        send(sid, Method::Next as u32, &[]);
                    }
                })
                .expect("spawn the timer thread");
            std::sync::Mutex::new(tx)
        })
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

impl Session for Delay1ms {
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let when = std::time::Instant::now() + std::time::Duration::from_millis(1);
        let item: Timed = (when, cx.sid(), Box::new(cx.raw_sender()));
        timer()
            .send(item)
            .map_err(|_| SdkError::Handler("the timer thread is gone".into()))?;
        Ok(Flow::Hold)
    }
}

nylon_transport::export_legacy_plugin!(Example);
