//! The trait through which a transport reads and changes one request and its
//! response, and an in-memory implementation for the CLI and the tests.
//!
//! An embedding proxy implements [`HttpContext`] over its own request and
//! response types (Pingora's session, in Nylon).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A WebSocket message, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsMessage<'a> {
    /// A text frame (payload not UTF-8 validated, as in the legacy host).
    Text(&'a [u8]),
    /// A binary frame.
    Binary(&'a [u8]),
}

/// What [`HttpContext::websocket_recv`] found; the payload is in the
/// caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsRecv {
    /// A complete client text message.
    Text,
    /// A complete client binary message.
    Binary,
    /// The client closed, hit EOF or a read error.
    Closed,
    /// Nothing arrived within the wait.
    Idle,
}

/// Access to one request and its response, as a host gives it to the transport.
///
/// Reads return borrowed data; commands take effect on the response the host
/// will send. Header names are matched case-insensitively.
///
/// # The response body in the body filter
///
/// The body filter (phase 3) runs once per body chunk, and a plugin rewrites
/// a chunk by reading the body and setting it. So, in that phase:
///
/// - [`HttpContext::response_body`] returns the body set (by
///   [`HttpContext::set_response_body`], method 103) during **this chunk's**
///   phase, if one was set, else the current chunk;
/// - a body set during one chunk's phase replaces that chunk, and only that
///   chunk, in what the client receives; it does not leak into the next
///   chunk's phase, which starts with its own chunk and no set body.
///
/// A host implements this by forgetting the set body when it starts the
/// phase of the next chunk. A handler that reads the body, appends to it and
/// sets it on every chunk thus sends every chunk once, each with its
/// addition. (Before the body filter, a set body is the response body: an
/// `END` in the request filter, or a body set in the response filter,
/// replaces the upstream body, and the body filter sees it as one chunk.)
pub trait HttpContext: Send {
    /// The request method token.
    fn request_method(&self) -> &str;
    /// The URI path.
    fn request_path(&self) -> &str;
    /// The raw query, without `?` (empty if none).
    fn request_query(&self) -> &str;
    /// The host, without port.
    fn request_host(&self) -> &str;
    /// `scheme://host[:port]path[?query]`, appended to `out`.
    fn request_url(&self, out: &mut Vec<u8>);
    /// The peer IP, without port.
    fn client_ip(&self) -> &str;
    /// The first value of a request header, `None` if absent.
    fn request_header(&self, name: &[u8]) -> Option<&[u8]>;
    /// The request header at `index`, in order, repeated names repeated;
    /// `None` past the end. Names are lower-case.
    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])>;
    /// Calls `f` for every request header, in order.
    fn for_each_request_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        let mut i = 0;
        while let Some((n, v)) = self.request_header_at(i) {
            f(n, v);
            i += 1;
        }
    }
    /// The whole request body (read on first use by a streaming host).
    fn request_body(&mut self) -> &[u8];
    /// Route params, `None` if never set.
    fn request_params(&self) -> Option<&[(String, String)]>;
    /// The `Content-Length` value, 0 if missing or invalid.
    fn request_content_length(&self) -> i64 {
        self.request_header(b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v >= 0)
            .unwrap_or(0)
    }
    /// When the request started, in ms since the Unix epoch.
    fn request_timestamp_ms(&self) -> u64;
    /// The middleware's JSON payload, `None` if none is configured.
    fn payload(&self) -> Option<&[u8]>;

    /// The current response status (set by a plugin, else upstream, else 200).
    fn response_status(&self) -> u16;
    /// Sets the response status.
    fn set_response_status(&mut self, status: u16);
    /// Sets a response header, replacing every value of that name.
    fn set_response_header(&mut self, name: &str, value: &str);
    /// Removes every value of a response header.
    fn remove_response_header(&mut self, name: &str);
    /// The current response header at `index`, in order; `None` past the end.
    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])>;
    /// Calls `f` for every current response header, in order.
    fn for_each_response_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        let mut i = 0;
        while let Some((n, v)) = self.response_header_at(i) {
            f(n, v);
            i += 1;
        }
    }
    /// Replaces the response body (in the body filter: the current chunk; see
    /// [the trait docs](HttpContext#the-response-body-in-the-body-filter)).
    fn set_response_body(&mut self, body: &[u8]);
    /// The response body as a plugin sees it: the body a plugin set (in the
    /// body filter: during this chunk's phase), else the current body chunk
    /// (in the body filter phase), else empty.
    fn response_body(&self) -> &[u8];
    /// Writes the response header of a streamed response now.
    ///
    /// # Errors
    ///
    /// A message when the downstream cannot be written.
    fn response_stream_header(&mut self) -> Result<(), String>;
    /// Writes one body chunk downstream now.
    ///
    /// # Errors
    ///
    /// A message when the downstream cannot be written.
    fn response_stream_data(&mut self, data: &[u8]) -> Result<(), String>;
    /// Finishes a streamed response.
    ///
    /// # Errors
    ///
    /// A message when the downstream cannot be written.
    fn response_stream_end(&mut self) -> Result<(), String>;
    /// The response byte count a plugin reads (legacy 109, v2
    /// `RESPONSE_BYTES`). By default the length of [`response_body`]
    /// (the original host's rule: the body set, else the current chunk); a
    /// host that knows how many body bytes it sent downstream returns those
    /// in the logging phase.
    ///
    /// [`response_body`]: HttpContext::response_body
    fn response_bytes(&self) -> u64 {
        self.response_body().len() as u64
    }
    /// Milliseconds since the request started.
    fn response_duration_ms(&self) -> u64;
    /// The proxy error message, empty if none.
    fn response_error(&self) -> &str;

    /// Performs the WebSocket handshake.
    ///
    /// # Errors
    ///
    /// A message (the host has answered the client itself, e.g. with a 400).
    fn websocket_upgrade(&mut self) -> Result<(), String>;
    /// Sends a frame to the client.
    ///
    /// # Errors
    ///
    /// A message when the connection cannot be written.
    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String>;
    /// Closes the WebSocket (close frame, then done).
    fn websocket_close(&mut self);
    /// Waits up to `wait` for the next client message; its payload replaces
    /// the contents of `buf` (whose memory the transport reuses).
    fn websocket_recv(&mut self, wait: Duration, buf: &mut Vec<u8>) -> WsRecv;
    /// Joins a room.
    fn websocket_join_room(&mut self, room: &str);
    /// Leaves a room.
    fn websocket_leave_room(&mut self, room: &str);
    /// Broadcasts to every member of a room, the sender included.
    fn websocket_broadcast(&mut self, room: &str, msg: WsMessage<'_>);
}

/// A request as the CLI's `--request` file describes it.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestSpec {
    /// Method token (default `GET`).
    pub method: String,
    /// URI path (default `/`).
    pub path: String,
    /// Raw query without `?`.
    pub query: String,
    /// Host, optionally with `:port`.
    pub host: String,
    /// Client IP.
    pub client_ip: String,
    /// `https` or `http` (default `http`).
    pub scheme: String,
    /// Headers as `[name, value]` pairs, in order.
    pub headers: Vec<(String, String)>,
    /// Request body (UTF-8 text).
    pub body: String,
    /// Route params; absent means never set (`null` on the wire).
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// The upstream response for the response phases, if the request gets that far.
    pub upstream: Option<UpstreamSpec>,
    /// Client WebSocket messages delivered after an upgrade, then the client closes.
    pub websocket: Vec<WsSpec>,
    /// The proxy error reported to the logging phase.
    pub error: String,
    /// After this many frames sent to the client, the connection breaks and
    /// every later send fails (to exercise error handling).
    pub websocket_send_limit: Option<usize>,
    /// How long the scripted client stays, after the last message either
    /// way, before it closes (default [`MemoryContext::WS_LINGER`]).
    pub websocket_linger_ms: Option<u64>,
}

/// The upstream response of a [`RequestSpec`].
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Status (default 200).
    pub status: Option<u16>,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body chunks, each a separate body filter phase.
    pub body_chunks: Vec<String>,
}

/// One client WebSocket message of a [`RequestSpec`].
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WsSpec {
    /// A text message.
    Text(String),
    /// A binary message, as a list of byte values.
    Binary(Vec<u8>),
}

/// What the in-memory host sent to the client over a WebSocket, or did with rooms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WsEffect {
    /// A text frame sent to this client.
    Text(String),
    /// A binary frame sent to this client.
    Binary(Vec<u8>),
    /// Joined a room.
    Join(String),
    /// Left a room.
    Leave(String),
    /// Broadcast text to a room.
    BroadcastText {
        /// The room.
        room: String,
        /// The message.
        text: String,
    },
    /// Broadcast binary to a room.
    BroadcastBinary {
        /// The room.
        room: String,
        /// The payload.
        data: Vec<u8>,
    },
    /// The plugin closed the connection.
    Close,
}

/// A response's headers as plugins change them, in order, names lower-case.
///
/// Before the upstream response arrives, a plugin's removal is remembered so
/// that [`apply_upstream`](Self::apply_upstream) does not bring the header
/// back; after it, the list is the response. Both the in-memory context and
/// the proxy's context keep their headers in one.
#[derive(Clone, Debug, Default)]
pub struct ResponseHeaders {
    list: Vec<(String, Vec<u8>)>,
    /// Names removed before the upstream response arrived.
    removed: Vec<String>,
    upstream: bool,
}

impl ResponseHeaders {
    /// The headers, in order.
    pub fn as_slice(&self) -> &[(String, Vec<u8>)] {
        &self.list
    }

    /// The header at `index`.
    pub fn at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.list
            .get(index)
            .map(|(n, v)| (n.as_bytes(), v.as_slice()))
    }

    /// Sets `name`, replacing every value of it (the first keeps its place;
    /// its value buffer is reused).
    pub fn set(&mut self, name: &str, value: &[u8]) {
        self.removed.retain(|r| !r.eq_ignore_ascii_case(name));
        match self
            .list
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(i) => {
                self.list[i].1.clear();
                self.list[i].1.extend_from_slice(value);
                let mut j = i + 1;
                while j < self.list.len() {
                    if self.list[j].0.eq_ignore_ascii_case(name) {
                        self.list.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => self.list.push((name.to_ascii_lowercase(), value.to_vec())),
        }
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: &str) {
        self.list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        if !self.upstream && !self.removed.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            self.removed.push(name.to_ascii_lowercase());
        }
    }

    /// Merges the upstream response's headers under the plugins' changes: a
    /// name a plugin set or removed keeps the plugin's version.
    pub fn apply_upstream<'h>(&mut self, headers: impl Iterator<Item = (&'h str, &'h [u8])>) {
        self.upstream = true;
        let mut merged: Vec<(String, Vec<u8>)> = headers
            .filter(|(n, _)| {
                !self.list.iter().any(|(h, _)| h.eq_ignore_ascii_case(n))
                    && !self.removed.iter().any(|r| r.eq_ignore_ascii_case(n))
            })
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
            .collect();
        merged.append(&mut self.list);
        self.list = merged;
    }
}

/// An in-memory [`HttpContext`]: a request from a [`RequestSpec`], and a
/// response built up by the plugin's commands.
#[derive(Clone, Debug)]
pub struct MemoryContext {
    spec: RequestSpec,
    params: Option<Vec<(String, String)>>,
    payload: Option<Vec<u8>>,
    timestamp_ms: u64,
    started: std::time::Instant,
    status: Option<u16>,
    upstream_status: Option<u16>,
    headers: ResponseHeaders,
    body: Option<Vec<u8>>,
    current_chunk: Vec<u8>,
    streamed: Vec<Vec<u8>>,
    stream_header_sent: bool,
    stream_ended: bool,
    ws_open: bool,
    ws_inbound: VecDeque<WsSpec>,
    ws_effects: Vec<WsEffect>,
    ws_last_activity: std::time::Instant,
}

impl MemoryContext {
    /// How long the scripted WebSocket client waits, after the last message
    /// either way, before it closes, unless its spec says otherwise.
    pub const WS_LINGER: Duration = Duration::from_millis(150);

    /// Creates a context for `spec`, with an optional middleware payload.
    pub fn new(mut spec: RequestSpec, payload: Option<Vec<u8>>) -> Self {
        for (n, _) in &mut spec.headers {
            n.make_ascii_lowercase();
        }
        let params = spec.params.as_ref().map(|m| {
            m.iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => (k.clone(), s.clone()),
                    other => (k.clone(), other.to_string()),
                })
                .collect()
        });
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let ws_inbound = spec.websocket.iter().cloned().collect();
        Self {
            spec,
            params,
            payload,
            timestamp_ms,
            started: std::time::Instant::now(),
            status: None,
            upstream_status: None,
            headers: ResponseHeaders::default(),
            body: None,
            current_chunk: Vec::new(),
            streamed: Vec::new(),
            stream_header_sent: false,
            stream_ended: false,
            ws_open: false,
            ws_inbound,
            ws_effects: Vec::new(),
            ws_last_activity: std::time::Instant::now(),
        }
    }

    /// Applies the upstream response: its status and its headers under the ones
    /// plugins already set (a plugin's set or remove wins over upstream).
    pub fn apply_upstream(&mut self, status: u16, headers: &[(String, String)]) {
        self.upstream_status = Some(status);
        self.headers
            .apply_upstream(headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())));
    }

    /// Starts the body filter phase of the next chunk: sets the chunk it looks
    /// at, and forgets a body set during the previous chunk's phase (see
    /// [`HttpContext`]'s rule for the body filter).
    pub fn set_current_chunk(&mut self, chunk: &[u8]) {
        self.current_chunk.clear();
        self.current_chunk.extend_from_slice(chunk);
        self.body = None;
    }

    /// The body a plugin set, if any (in the body filter, during the current
    /// chunk's phase: what replaces that chunk).
    pub fn body_override(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The current response headers.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        self.headers.as_slice()
    }

    /// Chunks written by `SET_RESPONSE_STREAM_DATA`, in order.
    pub fn streamed(&self) -> &[Vec<u8>] {
        &self.streamed
    }

    /// Whether a streamed response was started / finished.
    pub fn stream_state(&self) -> (bool, bool) {
        (self.stream_header_sent, self.stream_ended)
    }

    fn ws_effect(&mut self, effect: WsEffect) {
        self.ws_last_activity = std::time::Instant::now();
        self.ws_effects.push(effect);
    }

    /// Whether a WebSocket upgrade happened.
    pub fn websocket_open(&self) -> bool {
        self.ws_open
    }

    /// Everything the plugin did over the WebSocket, in order.
    pub fn ws_effects(&self) -> &[WsEffect] {
        &self.ws_effects
    }

    /// The status set by a plugin, if any.
    pub fn status_override(&self) -> Option<u16> {
        self.status
    }
}

impl HttpContext for MemoryContext {
    fn request_method(&self) -> &str {
        if self.spec.method.is_empty() {
            "GET"
        } else {
            &self.spec.method
        }
    }

    fn request_path(&self) -> &str {
        if self.spec.path.is_empty() {
            "/"
        } else {
            &self.spec.path
        }
    }

    fn request_query(&self) -> &str {
        &self.spec.query
    }

    fn request_host(&self) -> &str {
        self.spec.host.split(':').next().unwrap_or("")
    }

    fn request_url(&self, out: &mut Vec<u8>) {
        let scheme = if self.spec.scheme.is_empty() {
            "http"
        } else {
            &self.spec.scheme
        };
        out.extend_from_slice(scheme.as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(self.request_host().as_bytes());
        if let Some((_, port)) = self.spec.host.split_once(':') {
            if port != "80" && port != "443" {
                out.push(b':');
                out.extend_from_slice(port.as_bytes());
            }
        }
        out.extend_from_slice(self.request_path().as_bytes());
        if !self.spec.query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(self.spec.query.as_bytes());
        }
    }

    fn client_ip(&self) -> &str {
        &self.spec.client_ip
    }

    fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.spec
            .headers
            .iter()
            .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_bytes())
    }

    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        // Names were lower-cased once, in `new`.
        self.spec
            .headers
            .get(index)
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    fn request_body(&mut self) -> &[u8] {
        self.spec.body.as_bytes()
    }

    fn request_params(&self) -> Option<&[(String, String)]> {
        self.params.as_deref()
    }

    fn request_timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }

    fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }

    fn response_status(&self) -> u16 {
        self.status.or(self.upstream_status).unwrap_or(200)
    }

    fn set_response_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        self.headers.set(name, value.as_bytes());
    }

    fn remove_response_header(&mut self, name: &str) {
        self.headers.remove(name);
    }

    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.headers.at(index)
    }

    fn set_response_body(&mut self, body: &[u8]) {
        self.body = Some(body.to_vec());
    }

    fn response_body(&self) -> &[u8] {
        self.body.as_deref().unwrap_or(&self.current_chunk)
    }

    fn response_stream_header(&mut self) -> Result<(), String> {
        if self.stream_ended {
            return Err("response already finished".into());
        }
        self.stream_header_sent = true;
        Ok(())
    }

    fn response_stream_data(&mut self, data: &[u8]) -> Result<(), String> {
        if self.stream_ended {
            return Err("response already finished".into());
        }
        self.stream_header_sent = true;
        self.streamed.push(data.to_vec());
        Ok(())
    }

    fn response_stream_end(&mut self) -> Result<(), String> {
        self.stream_header_sent = true;
        self.stream_ended = true;
        Ok(())
    }

    fn response_duration_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn response_error(&self) -> &str {
        &self.spec.error
    }

    fn websocket_upgrade(&mut self) -> Result<(), String> {
        if self.request_header(b"sec-websocket-key").is_none() {
            self.status = Some(400);
            self.body = Some(b"Missing Sec-WebSocket-Key".to_vec());
            return Err("missing Sec-WebSocket-Key".into());
        }
        self.ws_open = true;
        self.ws_last_activity = std::time::Instant::now();
        self.status = Some(101);
        Ok(())
    }

    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String> {
        if !self.ws_open {
            return Err("websocket is not open".into());
        }
        if let Some(limit) = self.spec.websocket_send_limit {
            let sent = self
                .ws_effects
                .iter()
                .filter(|e| matches!(e, WsEffect::Text(_) | WsEffect::Binary(_)))
                .count();
            if sent >= limit {
                return Err("connection reset by peer".into());
            }
        }
        self.ws_effect(match msg {
            WsMessage::Text(t) => WsEffect::Text(String::from_utf8_lossy(t).into_owned()),
            WsMessage::Binary(b) => WsEffect::Binary(b.to_vec()),
        });
        Ok(())
    }

    fn websocket_close(&mut self) {
        if self.ws_open {
            self.ws_effect(WsEffect::Close);
            self.ws_open = false;
        }
    }

    fn websocket_recv(&mut self, _wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        if !self.ws_open {
            return WsRecv::Closed;
        }
        buf.clear();
        match self.ws_inbound.pop_front() {
            Some(WsSpec::Text(t)) => {
                self.ws_last_activity = std::time::Instant::now();
                buf.extend_from_slice(t.as_bytes());
                WsRecv::Text
            }
            Some(WsSpec::Binary(b)) => {
                self.ws_last_activity = std::time::Instant::now();
                buf.extend_from_slice(&b);
                WsRecv::Binary
            }
            // The scripted client stays connected until the plugin has been
            // quiet for a while, then closes, like a client that hangs up
            // once it has its answers.
            None if self.ws_last_activity.elapsed()
                < self
                    .spec
                    .websocket_linger_ms
                    .map_or(Self::WS_LINGER, Duration::from_millis) =>
            {
                WsRecv::Idle
            }
            None => WsRecv::Closed,
        }
    }

    fn websocket_join_room(&mut self, room: &str) {
        self.ws_effect(WsEffect::Join(room.to_string()));
    }

    fn websocket_leave_room(&mut self, room: &str) {
        self.ws_effect(WsEffect::Leave(room.to_string()));
    }

    fn websocket_broadcast(&mut self, room: &str, msg: WsMessage<'_>) {
        self.ws_effect(match msg {
            WsMessage::Text(t) => WsEffect::BroadcastText {
                room: room.to_string(),
                text: String::from_utf8_lossy(t).into_owned(),
            },
            WsMessage::Binary(b) => WsEffect::BroadcastBinary {
                room: room.to_string(),
                data: b.to_vec(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_before_upstream_survives_the_merge_and_a_later_set_wins() {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        ctx.remove_response_header("Server");
        ctx.remove_response_header("x-a");
        ctx.set_response_header("X-A", "plugin");
        ctx.apply_upstream(
            200,
            &[
                ("server".into(), "up".into()),
                ("x-a".into(), "up".into()),
                ("x-b".into(), "up".into()),
            ],
        );
        let names: Vec<_> = ctx
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(names, [("x-b", &b"up"[..]), ("x-a", &b"plugin"[..])]);
    }

    #[test]
    fn a_body_set_for_one_chunk_replaces_that_chunk_only() {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        ctx.set_current_chunk(b"one");
        assert_eq!(ctx.response_body(), b"one");
        ctx.set_response_body(b"one+x");
        assert_eq!(ctx.response_body(), b"one+x", "this chunk's set body");
        ctx.set_current_chunk(b"two");
        assert_eq!(ctx.response_body(), b"two", "the next chunk starts afresh");
        assert_eq!(ctx.body_override(), None);
    }

    #[test]
    fn set_header_replaces_every_value_case_insensitively() {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        ctx.apply_upstream(
            200,
            &[
                ("A".into(), "1".into()),
                ("b".into(), "2".into()),
                ("a".into(), "3".into()),
            ],
        );
        ctx.set_response_header("a", "x");
        let hs: Vec<_> = ctx
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .collect();
        assert_eq!(hs, [("a", &b"x"[..]), ("b", &b"2"[..])]);
    }
}
