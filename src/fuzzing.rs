//! Entry points for the fuzz targets in `fuzz/` (and for the tests that
//! replay their corpora on stable). Each takes arbitrary bytes, feeds them to
//! one decoder of untrusted input, and panics only when an invariant breaks
//! (a differential mismatch, an out-of-bounds result); a decoder error is a
//! pass. Not part of the public API.
#![doc(hidden)]
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use crate::abi::legacy::Phase;
use crate::codec::{self, json, scalar};
use crate::host::context::{HttpContext, MemoryContext, RequestSpec};
use crate::host::dispatch::{dispatch, WsState};
use crate::ring::{region_size, HeapRegion, Region, Ring, FRAME_HEADER};
use crate::transport::baseline::BaselineEncoding;
use crate::transport::fast::FastEncoding;
use crate::transport::{PhaseOutcome, Transport};
use crate::ws;

fn u32_at(data: &[u8], i: usize) -> u32 {
    let mut b = [0u8; 4];
    for (k, x) in b.iter_mut().enumerate() {
        *x = data.get(i + k).copied().unwrap_or(0);
    }
    u32::from_le_bytes(b)
}

fn context() -> MemoryContext {
    let spec = RequestSpec {
        method: "POST".into(),
        path: "/a/b".into(),
        query: "x=1".into(),
        host: "h:8080".into(),
        client_ip: "1.2.3.4".into(),
        headers: vec![
            ("X-A".into(), "1".into()),
            ("Sec-WebSocket-Key".into(), "k".into()),
        ],
        body: "body".into(),
        ..Default::default()
    };
    MemoryContext::new(spec, Some(br#"{"k":"v"}"#.to_vec()))
}

/// Any legacy message a plugin may send: a method id (first 4 bytes, or a
/// known id picked by the first byte) and a payload. The baseline and the
/// fast encodings must agree on the outcome, the reply bytes and the
/// resulting response.
pub fn legacy_dispatch(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let method = if pick < 200 {
        crate::abi::legacy::Method::ALL[usize::from(pick) % 41] as u32
    } else {
        u32_at(rest, 0)
    };
    let payload = rest.get(4..).unwrap_or(&[]);
    let mut a = context();
    let mut b = a.clone();
    let (mut wa, mut wb) = (WsState::default(), WsState::default());
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    let out_a = dispatch(
        method,
        payload,
        &mut a,
        &mut wa,
        &mut BaselineEncoding,
        &mut ra,
    );
    let out_b = dispatch(
        method,
        payload,
        &mut b,
        &mut wb,
        &mut FastEncoding::default(),
        &mut rb,
    );
    assert_eq!(out_a, out_b, "outcome differs for method {method}");
    // The duration is read from the clock at each call: it may tick between them.
    if out_a.is_ok() && method != crate::abi::legacy::Method::ReadResponseDuration as u32 {
        assert_eq!(ra, rb, "reply differs for method {method}");
    }
    assert_eq!(a.headers(), b.headers());
    assert_eq!(a.response_status(), b.response_status());
    assert_eq!(wa, wb);
}

/// The FlatBuffers header messages: verified before use; whatever verifies
/// re-encodes to the same pairs.
pub fn header_messages(data: &[u8]) {
    if let Ok((k, v)) = codec::decode_header_kv(data) {
        let again = codec::encode_header_kv(k, v);
        assert_eq!(codec::decode_header_kv(&again), Ok((k, v)));
    }
    if let Ok(pairs) = codec::decode_headers(data) {
        let again = codec::encode_headers(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let back = codec::decode_headers(&again).expect("re-encoded headers verify");
        assert_eq!(back.len(), pairs.len());
    }
}

/// The JSON payload and params: the key lookup never panics, returns a
/// slice of the input, and agrees with serde_json on valid objects.
pub fn json_payload(data: &[u8]) {
    let key = data
        .first()
        .map_or(&b"k"[..], |b| if b % 2 == 0 { b"user" } else { b"limit" });
    let found = json::lookup(data, key);
    if let Ok(Some(v)) = found {
        let start = v.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + v.len() <= data.len());
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        let key_str = std::str::from_utf8(key).unwrap_or("");
        let quoted = [b"\"", key, b"\""].concat();
        let occurrences = data
            .windows(quoted.len())
            .filter(|w| *w == &quoted[..])
            .count();
        // Compare only where raw-byte lookup and serde must agree: no escapes,
        // and the key spelled once (serde keeps the last duplicate).
        if !data.contains(&b'\\') && occurrences <= 1 {
            match (found, map.get(key_str)) {
                (Ok(Some(v)), Some(t)) => {
                    let ours: serde_json::Value =
                        serde_json::from_slice(v).expect("a valid value span");
                    assert_eq!(&ours, t);
                }
                (Ok(None), None) => {}
                (ours, theirs) => panic!("lookup {ours:?} vs serde {theirs:?}"),
            }
        }
    }
    let _ = scalar::decode_params(data);
}

/// Decimal and status decoders against std.
pub fn scalars(data: &[u8]) {
    let s = std::str::from_utf8(data).ok();
    let ours = scalar::parse_u64(data);
    let std = s
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<u64>().ok());
    assert_eq!(ours, std, "u64 {data:?}");
    let ours = scalar::parse_i64(data);
    let std = s
        .filter(|s| !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok());
    assert_eq!(ours, std, "i64 {data:?}");
    if let Some(st) = scalar::decode_status(data) {
        assert_eq!(st.to_be_bytes(), data[..2]);
    }
    if let Some((room, msg)) = scalar::split_room(data) {
        assert!(!room.is_empty() && room.len() + 1 + msg.len() == data.len());
    }
}

/// The ring reader against an arbitrary shared region: a ring is created,
/// a few frames pushed, then the input overwrites the region (indices,
/// frame words, frames, data) from an offset it chooses; opening and
/// popping must give errors or frames whose payload lies inside the data
/// area, never a panic, and input that missed the frames and what the
/// consumer reads must leave the pushed frames intact.
pub fn ring_region(data: &[u8]) {
    const CAP: usize = 512;
    // The ring header is `region_size(0)` bytes: the first 128 are read only
    // by `open`, `head` starts at 128, the data area after the header.
    const HEADER_LINE: usize = 128;
    let header = region_size(0);
    let region = HeapRegion::new(region_size(CAP));
    let data_start = region.as_ptr() as usize + header;
    let inside = move |b: &[u8]| {
        let s = b.as_ptr() as usize;
        s >= data_start + FRAME_HEADER && s + b.len() <= data_start + CAP
    };
    let Ok(ring) = Ring::create(region, CAP) else {
        return;
    };
    let (mut p, mut c) = ring.split();
    let mut pushed = Vec::new();
    for i in 0..u32::from(data.first().copied().unwrap_or(0) % 8) {
        let payload = [i as u8; 37];
        if p.try_push(i, i, 0, &payload).is_ok() {
            pushed.push((i, payload.to_vec()));
        }
    }
    // 64 bytes a frame, and the cleared word after the last.
    let used = header + pushed.len() * 64 + FRAME_HEADER;
    let offset = u32_at(data, 1) as usize % region_size(CAP);
    let garbage = data.get(5..).unwrap_or(&[]);
    let len = garbage.len().min(region_size(CAP) - offset);
    // SAFETY: both halves live on this thread; nothing runs concurrently.
    unsafe { c.scribble_for_fuzzing(offset, &garbage[..len]) };
    let untouched = len == 0 || offset >= used || offset + len <= HEADER_LINE;
    let mut got = Vec::new();
    let mut failed = false;
    for _ in 0..16 {
        match c.try_pop() {
            Ok(Some(f)) => {
                assert!(inside(f.payload()), "payload outside the data area");
                got.push((f.header().session, f.payload().to_vec()));
            }
            Ok(None) => break,
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if untouched {
        assert!(
            !failed && got == pushed,
            "input outside the frames changed them"
        );
    }
    let _ = p.try_push(1, 1, 0, b"after");
    // Opening a region that is entirely the input.
    let region = HeapRegion::new(region_size(CAP));
    let data_start = region.as_ptr() as usize + header;
    let n = data.len().min(region_size(CAP));
    // SAFETY: no ring uses this region yet.
    unsafe { region.scribble(0, &data[..n]) };
    if let Ok(r) = Ring::open(region) {
        let cap = r.capacity();
        let (_, mut c) = r.split();
        for _ in 0..16 {
            match c.try_pop() {
                Ok(Some(f)) => {
                    let s = f.payload().as_ptr() as usize;
                    assert!(
                        s >= data_start + FRAME_HEADER && s + f.payload().len() <= data_start + cap
                    );
                }
                _ => break,
            }
        }
    }
}

/// WebSocket frames: parsing never panics, a parsed payload lies inside the
/// input, word-wise unmasking equals the byte-wise one.
pub fn ws_frame(data: &[u8]) {
    let mut buf = data.to_vec();
    if let Ok(Some((head, range))) = ws::parse_frame(&mut buf, 1 << 16) {
        assert!(range.end <= buf.len() && range.start == head.header_len);
        if let Some(mask) = head.mask {
            let mut a = data[range.clone()].to_vec();
            let mut b = a.clone();
            ws::unmask(&mut a, mask);
            ws::unmask_bytewise(&mut b, mask);
            assert_eq!(a, b);
            assert_eq!(a, buf[range].to_vec());
        }
    }
}

/// What a [`ws::codec::Connection`] produced from a split input: each event
/// (as its `Debug` text) and the error that ended it, if any.
pub type WsLog = (Vec<String>, Option<ws::codec::ProtocolError>);

/// Feeds `pieces` in order to a new connection, draining the events after
/// each piece.
pub fn ws_feed<'a>(limits: ws::codec::Limits, pieces: impl IntoIterator<Item = &'a [u8]>) -> WsLog {
    let mut conn = ws::codec::Connection::new(limits);
    let mut events = Vec::new();
    for p in pieces {
        conn.feed(p);
        loop {
            match conn.next_event() {
                Ok(Some(ev)) => events.push(format!("{ev:?}")),
                Ok(None) => break,
                Err(e) => return (events, Some(e)),
            }
        }
    }
    (events, None)
}

/// A WebSocket byte stream in arbitrary splits: the connection never panics,
/// and gives the same events and the same error whether the bytes come at
/// once, one by one, or in the pieces the first byte's seed picks. Small
/// limits, so that the fuzzer reaches them.
pub fn ws_stream(data: &[u8]) {
    let Some((&seed, wire)) = data.split_first() else {
        return;
    };
    let limits = ws::codec::Limits {
        max_frame: 300,
        max_message: 1000,
    };
    let whole = ws_feed(limits, [wire]);
    let bytes = ws_feed(limits, wire.chunks(1));
    assert_eq!(whole, bytes, "one by one");
    let mut pieces = Vec::new();
    let mut rest = wire;
    let mut x = u32::from(seed) | 1;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x as usize % 40 + 1).min(rest.len());
        let (a, b) = rest.split_at(n);
        pieces.push(a);
        rest = b;
    }
    assert_eq!(whole, ws_feed(limits, pieces), "split with seed {seed}");
}

/// v2 commands from a plugin, driven by the input (an in-process plugin
/// turns bytes into calls of the host table): the phase ends with an outcome,
/// never a panic, and the response stays consistent.
pub fn v2_commands(data: &[u8]) {
    use crate::transport::{V2Plugin, V2};
    thread_local! {
        static PLUGIN: Arc<V2Plugin> = Arc::new(
            V2Plugin::from_static(crate::sdk::v2::table::<fuzz_plugin::Script>(), b"")
                .expect("the fuzz plugin loads"),
        );
    }
    fuzz_plugin::SCRIPT.with(|s| {
        s.borrow_mut().clear();
        s.borrow_mut().extend_from_slice(data);
    });
    let plugin = PLUGIN.with(Arc::clone);
    let v2 = V2::default();
    let mut ctx = context();
    let Ok(mut s) = v2.open(&plugin, "script", Default::default()) else {
        return;
    };
    for phase in Phase::ALL {
        match v2.run_phase(&mut s, phase, &mut ctx, Duration::from_secs(5)) {
            PhaseOutcome::Next | PhaseOutcome::End => {}
            _ => break,
        }
    }
    v2.close(s);
    let _ = ctx.response_status();
}

mod fuzz_plugin {
    use std::cell::RefCell;

    use crate::abi::v2::Str;
    use crate::sdk::v2::{Call, Handler, Plugin};
    use crate::sdk::{Flow, SdkError};

    thread_local! {
        pub(super) static SCRIPT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) struct Script;

    impl Plugin for Script {
        const NAME: &'static str = "fuzz";
        const ENTRIES: &'static [Str] = crate::entries!["script"];

        fn initialize(_config: &[u8]) -> Result<Self, String> {
            Ok(Script)
        }

        fn open(&self, _entry: u32) -> Option<Box<dyn Handler>> {
            Some(Box::new(Runner))
        }
    }

    struct Runner;

    impl Handler for Runner {
        fn request_filter(&mut self, cx: &mut Call<'_>) -> Result<Flow, SdkError> {
            let script = SCRIPT.with(|s| s.borrow().clone());
            let mut i = 0;
            while i + 2 < script.len() {
                let op = script[i] % 12;
                let n = usize::from(script[i + 1] % 16);
                let arg = &script[i + 2..(i + 2 + n).min(script.len())];
                let text = String::from_utf8_lossy(arg);
                match op {
                    0 => cx.set_header(&text, &text),
                    1 => cx.remove_header(&text),
                    2 => cx.set_status(u16::from_le_bytes([arg.first().copied().unwrap_or(0), 1])),
                    3 => cx.set_body(arg),
                    4 => cx.stream_write(arg),
                    5 => cx.ws_send_text(arg),
                    6 => cx.join_room(&text),
                    7 => cx.broadcast_binary(&text, arg),
                    8 => {
                        let _ = cx.header(&text);
                    }
                    9 => {
                        let _ = cx.headers().count();
                    }
                    10 => {
                        let _ = (cx.path(), cx.url(), cx.params_json(), cx.payload());
                    }
                    _ => {
                        return Ok(if arg.len().is_multiple_of(2) {
                            Flow::Next
                        } else {
                            Flow::End
                        })
                    }
                }
                i += 2 + n;
            }
            Ok(Flow::Next)
        }
    }
}

/// The isolated transport's frames (`transport::isolated::proto`): the
/// first byte picks a worker-to-host frame kind, the rest is its payload;
/// the host's decoder must refuse or accept it without panicking. The same
/// bytes then go through the worker's phase-start decoder, whose every span
/// must lie inside the frame, and an accepted phase end's commands (and an
/// accepted WebSocket command) must re-encode to the same bytes; the
/// worker's WebSocket event and upgrade reply decoders must not panic.
pub fn isolated_frames(data: &[u8]) {
    use crate::transport::isolated::proto;
    let Some((&kind, frame)) = data.split_first() else {
        return;
    };
    // A small slab area: blobs that point into it must lie inside it.
    let slabs = [0x5au8; 4096];
    let _ = proto::decode_from_worker(u32::from(kind) % proto::KINDS, frame, &slabs);
    // The host-to-worker frames a worker decodes besides phase starts.
    if let Ok((k, data)) = proto::decode_ws_event(frame) {
        assert!(data.len() < frame.len() && (k != proto::ws_event::CLOSED || data.is_empty()));
    }
    let _ = proto::decode_upgrade_reply(frame);
    if let Ok(c) = proto::decode_ws_command(frame) {
        let mut again = Vec::new();
        proto::write_ws_command(&mut again, c);
        assert_eq!(again, frame, "a WebSocket command re-encodes to its bytes");
    }
    let mut start = proto::Start::default();
    let names = proto::NameTable::new();
    if proto::decode_start(frame, &mut start, slabs.len(), &names).is_ok() {
        let headers = start.request.headers.iter().chain(&start.response_headers);
        for (name, _) in headers.clone() {
            if let proto::Name::Id(id) = name {
                assert!(names.get(*id).is_some(), "a header name id the table lacks");
            }
        }
        let spans = [start.request.entry, start.error]
            .into_iter()
            .chain(start.request.strings)
            .chain(start.request.params.iter().flat_map(|(k, v)| [*k, *v]))
            .chain(headers.flat_map(|(k, v)| {
                let k = match k {
                    proto::Name::Frame(span) => *span,
                    proto::Name::Id(_) => (0, 0),
                };
                [k, *v]
            }));
        for (o, n) in spans {
            assert!(
                o as usize + n as usize <= frame.len(),
                "span past the frame"
            );
        }
        for blob in [start.request.payload, start.body] {
            let (limit, (o, n)) = match blob {
                proto::Blob::Frame(span) => (frame.len(), span),
                proto::Blob::Slab(span) => (slabs.len(), span),
            };
            assert!(o as usize + n as usize <= limit, "blob past its area");
        }
    }
    let _ = proto::decode_read_reply(frame, slabs.len());
    let mut commands = Vec::new();
    if let Ok((code, message)) = proto::decode_end(frame, &slabs, |c| commands.push(c)) {
        // Re-encoded, each body or chunk where the decoder found it.
        let inside = |b: &[u8], area: &[u8]| {
            let (p, a) = (b.as_ptr() as usize, area.as_ptr() as usize);
            p >= a && p + b.len() <= a + area.len()
        };
        let mut again = Vec::new();
        proto::EndWriter::head(&mut again, code, message);
        for c in commands {
            match c {
                proto::Command::SetBody(b) | proto::Command::StreamData(b) if !inside(b, frame) => {
                    assert!(inside(b, &slabs), "a body outside the frame and the slabs");
                    let offset = b.as_ptr() as usize - slabs.as_ptr() as usize;
                    proto::write_slab_command(&mut again, c, offset as u32);
                }
                _ => proto::write_command(&mut again, c),
            }
        }
        assert_eq!(again, frame, "a phase end re-encodes differently");
    }
}
