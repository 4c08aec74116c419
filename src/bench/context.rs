//! A request context for the benchmarks: the brief's scenario request, with
//! every buffer reused so a steady stream of requests allocates nothing.
//! Response header names are interned ([`crate::intern`]).
#![forbid(unsafe_code)]

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::host::context::{HttpContext, WsMessage, WsRecv};
use crate::intern::{HeaderId, HeaderNames};
use crate::ws;

/// The interner the benchmark contexts share (bounded: 64 dynamic names).
static NAMES: LazyLock<HeaderNames> = LazyLock::new(|| HeaderNames::new(64));

/// The scenario's middleware payload: two keys are read.
pub const PAYLOAD: &[u8] = br#"{"user":"alice","limit":10,"roles":["admin","ops"],"region":"eu-west-1","trace":true,"meta":{"a":1,"b":"two"}}"#;

/// How a benchmark context handles WebSocket bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsCodec {
    /// As today's host: a growing read buffer, a copy of each payload,
    /// byte-by-byte unmasking, `drain` from the front, a new Vec per frame out.
    Baseline,
    /// Parse in place, word-wise unmasking, reused buffers.
    Fast,
    /// No frame codec: each client message is the 13-byte text
    /// `/api/v1/items` handed over as is, and sends are only counted (the
    /// `event` row, which measures the transport alone).
    Raw,
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct BenchContext {
    headers: Vec<(String, String)>,
    status: Option<u16>,
    /// Response headers: the name's id, the name (resolved once, when
    /// set: reading it then takes no lookup in the shared interner), value.
    response: Vec<(HeaderId, &'static str, Vec<u8>)>,
    response_len: usize,
    body: Vec<u8>,
    body_set: bool,
    started: Instant,
    /// One masked 125-byte client text frame, as read from the socket.
    frame: Vec<u8>,
    ws_codec: WsCodec,
    ws_remaining: u64,
    rx: Vec<u8>,
    tx: Vec<u8>,
    /// Names this context interned lately, checked before the shared
    /// interner (a hash lookup in a concurrent map).
    recent: Vec<(&'static str, HeaderId)>,
    /// Frames written to the client (the last one is kept in `tx`).
    pub frames_out: u64,
}

impl BenchContext {
    /// The scenario request: eight headers, a path, a client IP.
    pub fn scenario(ws_codec: WsCodec) -> Self {
        let headers = [
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip"),
            ("authorization", "Bearer abc.def.ghi"),
            ("x-request-id", "4bf92f3577b34da6"),
            ("content-type", "application/json"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let frame = ws::client_frame(ws::opcode::TEXT, &[b'm'; 125], [0x37, 0xfa, 0x21, 0x3d]);
        Self {
            headers,
            status: None,
            response: Vec::with_capacity(16),
            response_len: 0,
            body: Vec::with_capacity(256),
            body_set: false,
            started: Instant::now(),
            frame,
            ws_codec,
            ws_remaining: 0,
            rx: Vec::with_capacity(256),
            tx: Vec::with_capacity(256),
            recent: Vec::with_capacity(8),
            frames_out: 0,
        }
    }

    /// Forgets the previous request's response, keeping every buffer.
    pub fn reset(&mut self) {
        self.status = None;
        self.response_len = 0;
        self.body.clear();
        self.body_set = false;
        self.ws_remaining = 0;
    }

    /// Queues `n` client messages for the next WebSocket phase.
    pub fn queue_ws_messages(&mut self, n: u64) {
        self.ws_remaining = n;
    }

    /// The response headers set so far.
    pub fn response_headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.response[..self.response_len]
            .iter()
            .map(|(_, n, v)| (*n, v.as_slice()))
    }

    fn recv_baseline(&mut self, buf: &mut Vec<u8>) -> Option<WsRecv> {
        // Today's host: read into a growing buffer, parse, copy the payload
        // out, unmask it byte by byte, then drain the frame from the front.
        self.rx.extend_from_slice(&self.frame);
        let head = ws::parse_head(&self.rx, 1 << 20).ok()??;
        let end = head.header_len + head.len as usize;
        let mut payload = self.rx[head.header_len..end].to_vec();
        if let Some(mask) = head.mask {
            ws::unmask_bytewise(&mut payload, mask);
        }
        self.rx.drain(..end);
        *buf = payload;
        Some(if head.opcode == ws::opcode::BINARY {
            WsRecv::Binary
        } else {
            WsRecv::Text
        })
    }

    fn recv_fast(&mut self, buf: &mut Vec<u8>) -> Option<WsRecv> {
        self.rx.clear();
        self.rx.extend_from_slice(&self.frame);
        let (head, range) = ws::parse_frame(&mut self.rx, 1 << 20).ok()??;
        buf.clear();
        buf.extend_from_slice(&self.rx[range]);
        Some(if head.opcode == ws::opcode::BINARY {
            WsRecv::Binary
        } else {
            WsRecv::Text
        })
    }
}

impl HttpContext for BenchContext {
    fn request_method(&self) -> &str {
        "GET"
    }

    fn request_path(&self) -> &str {
        "/api/v1/items"
    }

    fn request_query(&self) -> &str {
        "page=2"
    }

    fn request_host(&self) -> &str {
        "api.example.com"
    }

    fn request_url(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"https://api.example.com/api/v1/items?page=2");
    }

    fn client_ip(&self) -> &str {
        "203.0.113.7"
    }

    fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }

    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.headers
            .get(index)
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    fn request_body(&mut self) -> &[u8] {
        b""
    }

    fn request_params(&self) -> Option<&[(String, String)]> {
        None
    }

    fn request_content_length(&self) -> i64 {
        0
    }

    fn request_timestamp_ms(&self) -> u64 {
        1_764_000_000_000
    }

    fn payload(&self) -> Option<&[u8]> {
        Some(PAYLOAD)
    }

    fn response_status(&self) -> u16 {
        self.status.unwrap_or(200)
    }

    fn set_response_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        // Names usually arrive lower-case already: an exact compare first.
        let (id, resolved) = match self.recent.iter().find(|(n, _)| *n == name).or_else(|| {
            self.recent
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
        }) {
            Some(&(n, id)) => (id, n),
            None => {
                let Ok(id) = NAMES.intern(name) else {
                    // An invalid or overflowing name is dropped, as a proxy
                    // refusing a header would; the benchmark never sends one.
                    return;
                };
                if self.recent.len() == self.recent.capacity() {
                    self.recent.remove(0);
                }
                let resolved = NAMES.resolve(id);
                self.recent.push((resolved, id));
                (id, resolved)
            }
        };
        if let Some((_, _, v)) = self.response[..self.response_len]
            .iter_mut()
            .find(|(h, _, _)| *h == id)
        {
            v.clear();
            v.extend_from_slice(value.as_bytes());
            return;
        }
        if self.response_len < self.response.len() {
            let slot = &mut self.response[self.response_len];
            slot.0 = id;
            slot.1 = resolved;
            slot.2.clear();
            slot.2.extend_from_slice(value.as_bytes());
        } else {
            self.response
                .push((id, resolved, value.as_bytes().to_vec()));
        }
        self.response_len += 1;
    }

    fn remove_response_header(&mut self, name: &str) {
        let Some(id) = NAMES.get(name) else { return };
        if let Some(i) = self.response[..self.response_len]
            .iter()
            .position(|(h, _, _)| *h == id)
        {
            self.response[i..self.response_len].rotate_left(1);
            self.response_len -= 1;
        }
    }

    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.response[..self.response_len]
            .get(index)
            .map(|(_, n, v)| (n.as_bytes(), v.as_slice()))
    }

    fn set_response_body(&mut self, body: &[u8]) {
        self.body.clear();
        self.body.extend_from_slice(body);
        self.body_set = true;
    }

    fn response_body(&self) -> &[u8] {
        &self.body
    }

    fn response_stream_header(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn response_stream_data(&mut self, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }

    fn response_stream_end(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn response_duration_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn response_error(&self) -> &str {
        ""
    }

    fn websocket_upgrade(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String> {
        let (op, data) = match msg {
            WsMessage::Text(t) => (ws::opcode::TEXT, t),
            WsMessage::Binary(b) => (ws::opcode::BINARY, b),
        };
        match self.ws_codec {
            WsCodec::Baseline => {
                // Today's host: the payload copied into a new Vec, then a new frame.
                let payload = data.to_vec();
                let mut frame = Vec::new();
                ws::write_frame(&mut frame, op, &payload);
                self.tx = frame;
            }
            WsCodec::Fast => {
                self.tx.clear();
                ws::write_frame(&mut self.tx, op, data);
            }
            WsCodec::Raw => {}
        }
        self.frames_out += 1;
        Ok(())
    }

    fn websocket_close(&mut self) {}

    fn websocket_recv(&mut self, _wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        if self.ws_remaining == 0 {
            return WsRecv::Closed;
        }
        self.ws_remaining -= 1;
        let got = match self.ws_codec {
            WsCodec::Baseline => self.recv_baseline(buf),
            WsCodec::Fast => self.recv_fast(buf),
            WsCodec::Raw => {
                buf.clear();
                buf.extend_from_slice(b"/api/v1/items");
                Some(WsRecv::Text)
            }
        };
        got.unwrap_or(WsRecv::Closed)
    }

    fn websocket_join_room(&mut self, _room: &str) {}

    fn websocket_leave_room(&mut self, _room: &str) {}

    fn websocket_broadcast(&mut self, _room: &str, _msg: WsMessage<'_>) {}
}
