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
use crate::pool::Pool;
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

fn expect_next(o: PhaseOutcome, what: &str) -> Result<(), String> {
    match o {
        PhaseOutcome::Next | PhaseOutcome::StreamEnd => Ok(()),
        other => Err(format!("{what}: unexpected outcome {other:?}")),
    }
}

/// One request of the scenario over a legacy transport: open, four phases, close.
fn legacy_request<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
    entry: &'static str,
) -> Variant {
    legacy_sessions(t, plugin, entry, WsCodec::Fast, &Phase::ALL, 1)
}

/// The scenario over the v2 ABI, with sessions reused as a host's pool would.
fn v2_request(plugin: Arc<V2Plugin>) -> Result<Variant, String> {
    let v2 = V2::default();
    let entry = plugin
        .entry_id("scenario")
        .ok_or("v2 plugin lacks `scenario`")?;
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let mut session = None;
    Ok(Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            let s = match &mut session {
                Some(s) => {
                    v2.reopen(s, entry).map_err(|e| e.to_string())?;
                    s
                }
                None => session.insert(v2.open_entry(&plugin, entry).map_err(|e| e.to_string())?),
            };
            for phase in Phase::ALL {
                expect_next(v2.run_phase(s, phase, &mut ctx, PHASE_TIMEOUT), "scenario")?;
            }
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

/// Loads a fresh copy of a library `iters` times (a real load each time).
fn plugin_load(path: PathBuf, v2: bool) -> Variant {
    let dir = std::env::temp_dir().join(format!("nylon-bench-load-{}", std::process::id()));
    let mut n = 0u64;
    Variant::new(1, move |iters| {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let copies: Vec<PathBuf> = (0..iters)
            .map(|_| {
                n += 1;
                let p = dir.join(format!("copy-{n}-{}.so", if v2 { "v2" } else { "legacy" }));
                std::fs::copy(&path, &p)
                    .map(|_| p)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let start = Instant::now();
        for p in &copies {
            if v2 {
                let lib = V2Plugin::load(p, b"{}").map_err(|e| e.to_string())?;
                drop(black_box(lib));
            } else {
                let lib = LegacyPlugin::load(p).map_err(|e| e.to_string())?;
                lib.initialize(b"{}").map_err(|e| e.to_string())?;
                drop(black_box(lib));
            }
        }
        let elapsed = start.elapsed();
        for p in copies {
            let _ = std::fs::remove_file(p);
        }
        Ok(elapsed)
    })
}

fn session_open_baseline(plugin: Arc<LegacyPlugin>) -> Variant {
    let t = Baseline::new();
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let s = t
                .open(&plugin, "scenario", SessionOptions::default())
                .map_err(|e| e.to_string())?;
            t.close(s);
        }
        Ok(start.elapsed())
    })
}

fn session_open_v2(plugin: Arc<V2Plugin>) -> Result<Variant, String> {
    let v2 = V2::default();
    let id = plugin
        .entry_id("scenario")
        .ok_or("v2 plugin lacks `scenario`")?;
    Ok(Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let s = v2.open_entry(&plugin, id).map_err(|e| e.to_string())?;
            v2.close(s);
        }
        Ok(start.elapsed())
    }))
}

fn transfer_baseline() -> Variant {
    let payload = [7u8; 256];
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            // The Go SDK's malloc+memcpy, then the host's copy into a Vec.
            let c_copy = black_box(&payload[..]).to_vec();
            let host_copy = black_box(&c_copy[..]).to_vec();
            black_box(&host_copy);
        }
        Ok(start.elapsed())
    })
}

fn transfer_fast() -> Variant {
    let pool = Pool::new(&[(256, 64), (4096, 16)]);
    let payload = [7u8; 256];
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let mut lease = pool.try_lease(256).map_err(|e| e.to_string())?;
            lease.copy_from_slice(black_box(&payload[..]));
            black_box(&*lease);
        }
        Ok(start.elapsed())
    })
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

fn json_baseline() -> Variant {
    Variant::new(1, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let v: serde_json::Value =
                serde_json::from_slice(black_box(PAYLOAD)).map_err(|e| e.to_string())?;
            black_box((&v["user"], &v["limit"]));
        }
        Ok(start.elapsed())
    })
}

fn json_fast() -> Variant {
    Variant::new(1, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let p = black_box(PAYLOAD);
            let user = lookup(p, b"user").map_err(|e| e.to_string())?;
            let limit = lookup(p, b"limit").map_err(|e| e.to_string())?;
            black_box((user, limit));
        }
        Ok(start.elapsed())
    })
}

/// sonic-rs reading the same two keys (lazy `get`), for reference.
pub fn json_sonic() -> Variant {
    Variant::new(1, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let p = black_box(PAYLOAD);
            let user = sonic_rs::get(p, &["user"]).map_err(|e| e.to_string())?;
            let limit = sonic_rs::get(p, &["limit"]).map_err(|e| e.to_string())?;
            black_box((user.as_raw_str().len(), limit.as_raw_str().len()));
        }
        Ok(start.elapsed())
    })
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

type Handler = Box<dyn Fn(u32) -> u32 + Send>;

fn dispatch_baseline() -> Variant {
    // Today's per-phase lookup: a formatted "{plugin}-{entry}" key, then a
    // string-keyed map, then the handler.
    let mut map: HashMap<String, Handler> = HashMap::new();
    for e in ["auth", "scenario", "rate-limit", "ws", "logger", "cors"] {
        map.insert(format!("plugin_sdk-{e}"), Box::new(|p| p + 1));
    }
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            let key = format!("{}-{}", black_box("plugin_sdk"), black_box("scenario"));
            let h = map.get(&key).ok_or("no handler")?;
            black_box(h((i % 4) as u32));
        }
        Ok(start.elapsed())
    })
}

fn dispatch_fast() -> Variant {
    // v2: the entry was resolved to an id once; a call indexes a table.
    let table: Vec<Handler> = (0..6)
        .map(|_| Box::new(|p: u32| p + 1) as Handler)
        .collect();
    let id = EntryId(1);
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for i in 0..iters {
            let h = &table[black_box(id).0 as usize];
            black_box(h((i % 4) as u32));
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

/// Builds every row over `plugins`.
///
/// # Errors
///
/// A message when an example plugin lacks an entry or a ring cannot be mapped.
pub fn all(plugins: &Plugins) -> Result<Vec<Row>, String> {
    let l = &plugins.legacy;
    let v = &plugins.v2;
    let mut request = Row::new(
        "request",
        "15-25 µs",
        "6-10 µs",
        legacy_request(Baseline::new(), l.clone(), "scenario"),
        v2_request(v.clone())?,
    );
    request.fast_legacy = Some(legacy_request(fast_legacy(), l.clone(), "scenario"));
    let mut rows = vec![
        request,
        Row::new(
            "websocket",
            "3-5 µs",
            "-",
            calls_legacy(
                Baseline::new(),
                l.clone(),
                "ws_echo",
                WsCodec::Baseline,
                WS_MESSAGES,
            ),
            calls_v2(v.clone(), "ws_echo", WsCodec::Fast, WS_MESSAGES)?,
        ),
        Row::new(
            "plugin_load",
            "~100 µs",
            "-",
            plugin_load(plugins.legacy_path.clone(), false),
            plugin_load(plugins.v2_path.clone(), true),
        ),
        Row::new(
            "session_open",
            "~50 µs",
            "-",
            session_open_baseline(l.clone()),
            session_open_v2(v.clone())?,
        ),
        Row::new(
            "ffi_call",
            "1-2 µs",
            "0.5-1 µs",
            calls_legacy(Baseline::new(), l.clone(), "reads", WsCodec::Fast, CALLS),
            calls_v2(v.clone(), "reads", WsCodec::Fast, CALLS)?,
        ),
        Row::new(
            "transfer_memory",
            "~500 ns",
            "~150 ns",
            transfer_baseline(),
            transfer_fast(),
        ),
        super::ring_rows::channel()?,
        Row::new("lock", "~100 ns", "-", lock_baseline(), lock_fast()),
        Row::new("json_payload", "5-10 µs", "-", json_baseline(), json_fast()),
        Row::new(
            "header_serialization",
            "2-3 µs",
            "1-2 µs",
            headers_baseline(),
            headers_fast(),
        ),
        Row::new("frame_parse", "1-2 µs", "-", frame_baseline(), frame_fast()),
        Row::new(
            "dispatch",
            "~500 ns",
            "-",
            dispatch_baseline(),
            dispatch_fast(),
        ),
        Row::new(
            "command",
            "1-2 µs",
            "0.5-1 µs",
            calls_legacy(Baseline::new(), l.clone(), "commands", WsCodec::Fast, CALLS),
            calls_v2(v.clone(), "commands", WsCodec::Fast, CALLS)?,
        ),
        super::ring_rows::round_trip()?,
        super::ring_rows::batched()?,
    ];
    for r in &mut rows {
        r.note = super::note(r.name);
    }
    Ok(rows)
}
