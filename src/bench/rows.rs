//! The benchmark rows: for each, the baseline and the fast variant, built
//! over the real example plugins.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::context::{BenchContext, WsCodec, PAYLOAD};
use super::{Row, Variant};
use crate::abi::legacy::Phase;
use crate::codec::encode_headers;
use crate::codec::fast::HeaderEncoder;
use crate::codec::json::lookup;
use crate::host::context::HttpContext;
use crate::host::loader::LegacyPlugin;
use crate::transport::v2::EntryId;
use crate::transport::{
    Baseline, Fast, FastConfig, PhaseOutcome, SessionOptions, Transport, V2Plugin, V2,
};
use crate::ws;

const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads or commands per phase in the `reads` / `commands` entries.
const CALLS: u64 = 1000;
/// WebSocket messages per upgraded session in the websocket rows.
const WS_MESSAGES: u64 = 1000;

/// The loaded example plugins and their files.
#[derive(Debug)]
pub struct Plugins {
    /// The legacy Rust example plugin.
    pub legacy: Arc<LegacyPlugin>,
    /// The v2 Rust example plugin.
    pub v2: Arc<V2Plugin>,
    /// `librust_plugin.so`.
    pub legacy_path: PathBuf,
    /// `libv2_plugin.so`.
    pub v2_path: PathBuf,
}

#[inline(always)]
fn expect_next(o: PhaseOutcome, what: &str) -> Result<(), String> {
    match o {
        PhaseOutcome::Next | PhaseOutcome::StreamEnd => Ok(()),
        other => Err(unexpected(what, other)),
    }
}

#[cold]
#[inline(never)]
fn unexpected(what: &str, o: PhaseOutcome) -> String {
    format!("{what}: unexpected outcome {o:?}")
}

/// One request of the scenario over a legacy transport: open, four phases, close.
pub(super) fn legacy_request<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
    entry: &'static str,
) -> Variant {
    legacy_sessions(t, plugin, entry, WsCodec::Fast, &Phase::ALL, 1)
}

/// The scenario over the v2 ABI: open, four phases, close, per request.
pub(super) fn v2_request(plugin: Arc<V2Plugin>) -> Result<Variant, String> {
    let v2 = V2::default();
    let entry = plugin
        .entry_id("scenario")
        .ok_or("v2 plugin lacks `scenario`")?;
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    Ok(Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            let mut s = v2.open_entry(&plugin, entry).map_err(|e| e.to_string())?;
            for phase in Phase::ALL {
                expect_next(
                    v2.run_phase(&mut s, phase, &mut ctx, PHASE_TIMEOUT),
                    "scenario",
                )?;
            }
            v2.close(s);
        }
        Ok(start.elapsed())
    }))
}

/// One request-filter phase per iteration on a session opened once: the
/// cost of a phase call alone, over any transport.
fn phase_loop<T: Transport + 'static>(
    t: T,
    plugin: Arc<T::Plugin>,
    entry: &'static str,
) -> Result<Variant, String>
where
    T::Session: 'static,
    T::Plugin: Send + Sync + 'static,
{
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let mut s = t
        .open(&plugin, entry, SessionOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(Variant::new(1, move |iters| {
        let start = Instant::now();
        // No context reset per call: nothing grows (the one header set is
        // replaced), and nylon-ring's side has nothing to reset either.
        for _ in 0..iters {
            expect_next(
                t.run_phase(&mut s, Phase::RequestFilter, &mut ctx, PHASE_TIMEOUT),
                entry,
            )?;
        }
        Ok(start.elapsed())
    }))
}

/// `iters` calls spread over phases of `per_phase` calls each (the entry
/// makes exactly that many in its request filter).
fn calls_legacy<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
    entry: &'static str,
    codec: WsCodec,
    per_phase: u64,
) -> Variant {
    legacy_sessions(t, plugin, entry, codec, &[Phase::RequestFilter], per_phase)
}

/// Per iteration: a session opened, `phases` run (each must end `next` or
/// `stream_end`), the session closed; `ops` operations counted per iteration
/// (and as many client WebSocket messages queued).
fn legacy_sessions<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
    entry: &'static str,
    codec: WsCodec,
    phases: &'static [Phase],
    ops: u64,
) -> Variant {
    let mut ctx = BenchContext::scenario(codec);
    Variant::new(ops, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            ctx.queue_ws_messages(ops);
            let mut s = t
                .open(&plugin, entry, SessionOptions::default())
                .map_err(|e| e.to_string())?;
            for &phase in phases {
                expect_next(t.run_phase(&mut s, phase, &mut ctx, PHASE_TIMEOUT), entry)?;
            }
            t.close(s);
        }
        Ok(start.elapsed())
    })
}

fn calls_v2(
    plugin: Arc<V2Plugin>,
    entry: &'static str,
    codec: WsCodec,
    per_phase: u64,
) -> Result<Variant, String> {
    let v2 = V2::default();
    let id: EntryId = plugin
        .entry_id(entry)
        .ok_or(format!("v2 plugin lacks `{entry}`"))?;
    let mut ctx = BenchContext::scenario(codec);
    Ok(Variant::new(per_phase, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            ctx.queue_ws_messages(per_phase);
            let mut s = v2.open_entry(&plugin, id).map_err(|e| e.to_string())?;
            expect_next(
                v2.run_phase(&mut s, Phase::RequestFilter, &mut ctx, PHASE_TIMEOUT),
                entry,
            )?;
            v2.close(s);
        }
        Ok(start.elapsed())
    }))
}

fn fast_legacy() -> Fast {
    Fast::new(FastConfig::default())
}

/// Opens and closes a session per iteration with `open` and `close`.
fn session_open<S>(
    mut open: impl FnMut() -> Result<S, crate::transport::OpenError> + Send + 'static,
    mut close: impl FnMut(S) + Send + 'static,
) -> Variant {
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            close(open().map_err(|e| e.to_string())?);
        }
        Ok(start.elapsed())
    })
}

/// [`session_open`] of a legacy entry, by name (the legacy ABI's only way).
fn legacy_session_open<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
    entry: &'static str,
) -> Variant {
    let t = Arc::new(t);
    let t2 = Arc::clone(&t);
    session_open(
        move || t.open(&plugin, entry, SessionOptions::default()),
        move |s| t2.close(s),
    )
}

/// [`session_open`] of a v2 entry by the id resolved once, as a v2 host
/// opens sessions.
fn v2_session_open(plugin: Arc<V2Plugin>, entry: &'static str) -> Result<Variant, String> {
    let id = plugin
        .entry_id(entry)
        .ok_or(format!("v2 plugin lacks `{entry}`"))?;
    let v2 = Arc::new(V2::default());
    let v2b = Arc::clone(&v2);
    Ok(session_open(
        move || v2.open_entry(&plugin, id),
        move |s| v2b.close(s),
    ))
}

fn lock_baseline() -> Variant {
    let (tx, _rx) = crossbeam_channel::unbounded::<(u32, Vec<u8>)>();
    type SessionMap = RwLock<HashMap<u32, crossbeam_channel::Sender<(u32, Vec<u8>)>>>;
    let map: SessionMap = RwLock::new((1..=64).map(|i| (i, tx.clone())).collect());
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            // Today's callback: read-lock the global map, clone the sender.
            let sid = (i % 64) as u32 + 1;
            let s = map
                .read()
                .map_err(|_| "poisoned")?
                .get(&black_box(sid))
                .cloned();
            black_box(s);
        }
        Ok(start.elapsed())
    })
}

fn lock_fast() -> Variant {
    // The fast transport's lookup: one atomic load in a slot table, then the
    // session's own (uncontended) lock.
    let slots: Vec<(AtomicU32, Mutex<u64>)> = (0..64)
        .map(|i| (AtomicU32::new(i + 1), Mutex::new(0)))
        .collect();
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            let sid = (i % 64) as u32 + 1;
            let slot = &slots[(black_box(sid) - 1) as usize];
            if slot.0.load(Ordering::Acquire) == sid {
                let mut g = slot.1.lock().map_err(|_| "poisoned")?;
                *g += 1;
            }
        }
        Ok(start.elapsed())
    })
}

/// The scenario payload with its wanted keys at the end.
const PAYLOAD_LAST: &[u8] = br#"{"roles":["admin","ops"],"region":"eu-west-1","trace":true,"meta":{"a":1,"b":"two"},"user":"alice","limit":10}"#;

/// The two keys the scenario plugins want, typed and borrowing.
#[derive(serde::Deserialize)]
struct Wanted<'a> {
    #[serde(borrow)]
    user: std::borrow::Cow<'a, str>,
    limit: u64,
}

fn check(user: &[u8], limit: u64) -> Result<(), String> {
    if user == b"alice" && limit == 10 {
        Ok(())
    } else {
        Err("wrong values".into())
    }
}

/// How a JSON variant reads the two keys.
#[derive(Clone, Copy)]
enum Json {
    Value,
    Typed,
    Sonic,
    Scan,
}

fn json(how: Json, payload: &'static [u8]) -> Variant {
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let p = black_box(payload);
            match how {
                Json::Value => {
                    let v: serde_json::Value =
                        serde_json::from_slice(p).map_err(|e| e.to_string())?;
                    let user = v["user"].as_str().unwrap_or_default();
                    check(user.as_bytes(), v["limit"].as_u64().unwrap_or_default())?;
                }
                Json::Typed => {
                    let w: Wanted<'_> = serde_json::from_slice(p).map_err(|e| e.to_string())?;
                    check(w.user.as_bytes(), w.limit)?;
                }
                Json::Sonic => {
                    let w: Wanted<'_> = sonic_rs::from_slice(p).map_err(|e| e.to_string())?;
                    check(w.user.as_bytes(), w.limit)?;
                }
                Json::Scan => {
                    let user = lookup(p, b"user").map_err(|e| e.to_string())?;
                    let limit = lookup(p, b"limit").map_err(|e| e.to_string())?;
                    let (Some(user), Some(limit)) = (user, limit) else {
                        return Err("keys missing".into());
                    };
                    let user = user.strip_prefix(b"\"").and_then(|u| u.strip_suffix(b"\""));
                    let limit = std::str::from_utf8(limit)
                        .ok()
                        .and_then(|l| l.parse().ok())
                        .unwrap_or(0);
                    check(user.unwrap_or_default(), limit)?;
                }
            }
        }
        Ok(start.elapsed())
    })
}

fn json_row(name: &'static str, payload: &'static [u8]) -> Row {
    Row::new(
        name,
        "5-10 µs",
        "-",
        json(Json::Value, payload),
        json(Json::Sonic, payload),
    )
    .with("serde_typed", json(Json::Typed, payload))
    .with("key_scan", json(Json::Scan, payload))
}

fn headers_baseline() -> Variant {
    let ctx = BenchContext::scenario(WsCodec::Fast);
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            // Today's host: clone the header map, then a new builder.
            let mut copy: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            ctx.for_each_request_header(&mut |n, v| copy.push((n.to_vec(), v.to_vec())));
            let buf = encode_headers(copy.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
            black_box(buf);
        }
        Ok(start.elapsed())
    })
}

fn headers_fast() -> Variant {
    let ctx = BenchContext::scenario(WsCodec::Fast);
    let mut enc = HeaderEncoder::new();
    let mut out = Vec::with_capacity(1024);
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            out.clear();
            enc.encode(|f| ctx.for_each_request_header(f), &mut out);
            black_box(&out);
        }
        Ok(start.elapsed())
    })
}

fn frame_baseline() -> Variant {
    let frame = ws::client_frame(ws::opcode::TEXT, &[b'm'; 125], [1, 2, 3, 4]);
    let mut read_buf: Vec<u8> = Vec::new();
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            read_buf.extend_from_slice(black_box(&frame));
            let head = ws::parse_head(&read_buf, 1 << 20)
                .ok()
                .flatten()
                .ok_or("bad frame")?;
            let end = head.header_len + head.len as usize;
            let mut payload = read_buf[head.header_len..end].to_vec();
            if let Some(m) = head.mask {
                ws::unmask_bytewise(&mut payload, m);
            }
            read_buf.drain(..end);
            black_box(payload);
        }
        Ok(start.elapsed())
    })
}

fn frame_fast() -> Variant {
    let frame = ws::client_frame(ws::opcode::TEXT, &[b'm'; 125], [1, 2, 3, 4]);
    let mut read_buf: Vec<u8> = Vec::with_capacity(256);
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            read_buf.clear();
            read_buf.extend_from_slice(black_box(&frame));
            let (_, range) = ws::parse_frame(&mut read_buf, 1 << 20)
                .ok()
                .flatten()
                .ok_or("bad frame")?;
            black_box(&read_buf[range]);
        }
        Ok(start.elapsed())
    })
}

/// A spinning cross-thread ping-pong: the machine's state right now.
pub fn reference_ping_pong(iters: u64) -> Duration {
    let flag = Arc::new(AtomicU64::new(0));
    let f2 = Arc::clone(&flag);
    let t = std::thread::spawn(move || {
        for i in 0..iters {
            while f2.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            f2.store(2 * i + 2, Ordering::Release);
        }
    });
    let start = Instant::now();
    for i in 0..iters {
        flag.store(2 * i + 1, Ordering::Release);
        while flag.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let d = start.elapsed();
    let _ = t.join();
    d
}

/// Builds every row over `plugins`. The nylon-ring variants are added by
/// [`super::attach_anchor`].
///
/// # Errors
///
/// A message when an example plugin lacks an entry or a ring cannot be mapped.
pub fn all(plugins: &Plugins) -> Result<Vec<Row>, String> {
    let l = &plugins.legacy;
    let v = &plugins.v2;
    let per_call = |name, before, target, entry| -> Result<Row, String> {
        Ok(Row::new(
            name,
            before,
            target,
            calls_legacy(Baseline::new(), l.clone(), entry, WsCodec::Fast, CALLS),
            calls_v2(v.clone(), entry, WsCodec::Fast, CALLS)?,
        )
        .with(
            "fast_legacy",
            calls_legacy(fast_legacy(), l.clone(), entry, WsCodec::Fast, CALLS),
        ))
    };
    let phase_row = |name, entry| -> Result<Row, String> {
        Ok(Row::new(
            name,
            "-",
            "-",
            phase_loop(Baseline::new(), l.clone(), entry)?,
            phase_loop(V2::default(), v.clone(), entry)?,
        )
        .with("fast_legacy", phase_loop(fast_legacy(), l.clone(), entry)?))
    };
    let messages = |name, entry, base_codec, fast_codec| -> Result<Row, String> {
        Ok(Row::new(
            name,
            "3-5 µs",
            "-",
            calls_legacy(Baseline::new(), l.clone(), entry, base_codec, WS_MESSAGES),
            calls_v2(v.clone(), entry, fast_codec, WS_MESSAGES)?,
        )
        .with(
            "fast_legacy",
            calls_legacy(fast_legacy(), l.clone(), entry, fast_codec, WS_MESSAGES),
        ))
    };
    let mut rows = vec![
        Row::new(
            "request",
            "15-25 µs",
            "6-10 µs",
            legacy_request(Baseline::new(), l.clone(), "scenario"),
            v2_request(v.clone())?,
        )
        .with(
            "fast_legacy",
            legacy_request(fast_legacy(), l.clone(), "scenario"),
        ),
        phase_row("empty_phase", "empty")?,
        phase_row("read_command", "read_command")?,
        messages("event", "ws_sink", WsCodec::Raw, WsCodec::Raw)?,
        messages("websocket", "ws_echo", WsCodec::Baseline, WsCodec::Fast)?.with_elsewhere(
            "isolated",
            super::isolated::websocket(plugins, WS_MESSAGES)?,
        ),
        Row::new(
            "session_open",
            "~50 µs",
            "-",
            legacy_session_open(Baseline::new(), l.clone(), "scenario"),
            v2_session_open(v.clone(), "scenario")?,
        )
        .with(
            "fast_legacy",
            legacy_session_open(fast_legacy(), l.clone(), "scenario"),
        ),
        per_call("ffi_call", "1-2 µs", "0.5-1 µs", "reads")?,
        per_call("command", "1-2 µs", "0.5-1 µs", "commands")?,
        super::ring_rows::channel()?,
        Row::new("lock", "~100 ns", "-", lock_baseline(), lock_fast()),
        json_row("json_payload", PAYLOAD),
        json_row("json_payload_last", PAYLOAD_LAST),
        Row::new(
            "header_serialization",
            "2-3 µs",
            "1-2 µs",
            headers_baseline(),
            headers_fast(),
        ),
        Row::new("frame_parse", "1-2 µs", "-", frame_baseline(), frame_fast()),
        super::ring_rows::round_trip()?,
        super::ring_rows::batched()?,
    ];
    rows.push(super::contended::row(l));
    rows.push(super::isolated::row(plugins)?);
    for r in &mut rows {
        r.note = super::note(r.name);
    }
    Ok(rows)
}
