//! [`RequestState`]: the host's [`HttpContext`] over one Pingora request.
//!
//! It is a snapshot of the request (taken once in `request_filter`) and the
//! response the plugins build, owned by Pingora's per-request `CTX`. It never
//! borrows Pingora's `Session`: while a phase is pending, the plugin's own
//! threads read and change this state through the transport (which lends it
//! to them under the session's lock), and the proxy task is suspended in a
//! `select!` between the phase future and the stream channel. Streaming
//! commands (104-106) therefore do not write to the socket themselves: they
//! push a [`StreamEvent`] into a bounded channel, and the proxy task writes
//! each event to the client as it comes.
//!
//! The channel never blocks the plugin: when [`STREAM_QUEUE`] events are
//! waiting because the client reads slower than the plugin writes, the next
//! stream command fails (the phase ends with an error and the response is cut
//! short). Blocking instead would be unsound here: a plugin thread calls in
//! while holding its session's lock, and the task that drains the channel
//! takes that same lock when it polls the phase, so a blocked sender could
//! stall the drainer. Memory is bounded by `STREAM_QUEUE` chunks.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use nylon_transport::host::context::ResponseHeaders;
use nylon_transport::host::{HttpContext, WsMessage, WsRecv};
use nylon_transport::ws::{opcode, write_frame};
use tokio::sync::mpsc;

use crate::ws::cluster::RoomMessage;
use crate::ws::conn::{Inbound, PushError, WsLink};
use crate::ws::handshake;
use crate::ws::rooms::Rooms;

/// Stream events that may wait for the client, per request, at most.
pub const STREAM_QUEUE: usize = 1024;

/// A streamed-response command, in the order the plugin sent them.
#[derive(Debug)]
pub enum StreamEvent {
    /// Write the response header: the status and headers as they were when
    /// the plugin started the stream.
    Header {
        /// Status.
        status: u16,
        /// Headers in order.
        headers: Vec<(String, Vec<u8>)>,
    },
    /// Write one body chunk.
    Data(Bytes),
    /// Finish the response.
    End,
}

/// One change a plugin made to the response headers, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderChange {
    /// Set (replacing every value of the name).
    Set(String, Vec<u8>),
    /// Remove every value of the name.
    Remove(String),
}

/// Which hook the phase running now belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Request filter (phase 1) and response filter (phase 2).
    Headers,
    /// The body filter (phase 3) of one chunk.
    Body,
    /// Logging (phase 4).
    Logging,
}

/// The request as the plugins see it, and the response they build.
#[derive(Debug)]
pub struct RequestState {
    method: String,
    path: String,
    query: String,
    /// Host without port.
    host: String,
    /// Port of the Host header, if any.
    port: Option<String>,
    scheme: &'static str,
    client_ip: String,
    /// Request headers in order, names lower-case.
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
    params: Option<Vec<(String, String)>>,
    /// The payload of the session whose phase runs now (swapped per session).
    payload: Option<Vec<u8>>,
    timestamp_ms: u64,
    started: Instant,

    status: Option<u16>,
    upstream_status: Option<u16>,
    /// Current response headers (upstream merged with the plugins' changes).
    resp_headers: ResponseHeaders,
    /// Changes not yet applied to Pingora's response header.
    changes: Vec<HeaderChange>,
    /// The body a plugin set outside the body filter (an END response).
    body_set: Option<Vec<u8>>,
    /// The body a plugin set in the current chunk's body filter phase.
    chunk_set: Option<Vec<u8>>,
    /// The chunk the body filter is looking at.
    chunk: Vec<u8>,
    stage: Stage,
    error: String,

    stream: Option<mpsc::Sender<StreamEvent>>,
    stream_started: bool,
    stream_ended: bool,
    /// Bytes of response body sent to the client (for the logging phase).
    bytes_sent: u64,

    /// A plugin service's request that asked for a WebSocket: its queues.
    ws: Option<WsLink>,
    rooms: Option<Arc<Rooms>>,
}

/// The request fields `request_filter` copies out of Pingora's header.
#[derive(Debug, Default)]
pub struct RequestSnapshot {
    /// Method token.
    pub method: String,
    /// URI path.
    pub path: String,
    /// Raw query without `?`.
    pub query: String,
    /// The Host header (or URI authority), possibly with a port.
    pub authority: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Peer IP without port.
    pub client_ip: String,
    /// Headers in order; names are lower-cased here.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RequestState {
    /// A state for `req`; the clock of `response_duration_ms` starts now.
    pub fn new(req: RequestSnapshot) -> Self {
        let RequestSnapshot {
            method,
            path,
            query,
            authority,
            scheme,
            client_ip,
            mut headers,
        } = req;
        for (n, _) in &mut headers {
            n.make_ascii_lowercase();
        }
        let (host, port) = split_authority(&authority);
        Self {
            method,
            path,
            query,
            host,
            port,
            scheme,
            client_ip,
            headers,
            body: Vec::new(),
            params: None,
            payload: None,
            timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started: Instant::now(),
            status: None,
            upstream_status: None,
            resp_headers: ResponseHeaders::default(),
            changes: Vec::new(),
            body_set: None,
            chunk_set: None,
            chunk: Vec::new(),
            stage: Stage::Headers,
            error: String::new(),
            stream: None,
            stream_started: false,
            stream_ended: false,
            bytes_sent: 0,
            ws: None,
            rooms: None,
        }
    }

    /// Lets the plugin service accept a WebSocket on this request: the
    /// handshake's queues and this node's rooms.
    pub fn enable_websocket(&mut self, link: WsLink, rooms: Arc<Rooms>) {
        self.ws = Some(link);
        self.rooms = Some(rooms);
    }

    /// Whether the request's headers ask for an upgrade (any `Upgrade`
    /// header): only then are a WebSocket's queues set up.
    pub fn asks_upgrade(&self) -> bool {
        self.request_header(b"upgrade").is_some()
    }

    /// The connection's id, once the handshake was accepted.
    pub fn websocket_id(&self) -> Option<&crate::ws::cluster::ConnId> {
        self.ws.as_ref().filter(|l| l.upgraded).map(|l| &l.id)
    }

    /// The open link and the rooms, when the connection is upgraded and the
    /// plugin has not closed it.
    fn open_ws(&mut self) -> Option<(&mut WsLink, Option<&Arc<Rooms>>)> {
        match self.ws.as_mut() {
            Some(l) if l.upgraded && !l.closed => Some((l, self.rooms.as_ref())),
            _ => None,
        }
    }

    /// Sets the route params.
    pub fn set_params(&mut self, params: Vec<(String, String)>) {
        self.params = Some(params);
    }

    /// Applies built-in request header changes (a header-modifier middleware).
    pub fn apply_request_changes(&mut self, changes: &[HeaderChange]) {
        for c in changes {
            match c {
                HeaderChange::Set(n, v) => {
                    self.headers
                        .retain(|(h, _)| !h.eq_ignore_ascii_case(n.as_bytes()));
                    self.headers
                        .push((n.to_ascii_lowercase().into_bytes(), v.clone()));
                }
                HeaderChange::Remove(n) => self
                    .headers
                    .retain(|(h, _)| !h.eq_ignore_ascii_case(n.as_bytes())),
            }
        }
    }

    /// Stores the request body read from the client.
    pub fn set_request_body(&mut self, body: Vec<u8>) {
        self.body = body;
    }

    /// Swaps in the payload of the session whose phase runs next; returns the
    /// previous one (so the caller can keep its buffer).
    pub fn swap_payload(&mut self, payload: Option<Vec<u8>>) -> Option<Vec<u8>> {
        std::mem::replace(&mut self.payload, payload)
    }

    /// Lets the plugin service stream its response through `tx`.
    pub fn enable_stream(&mut self, tx: mpsc::Sender<StreamEvent>) {
        self.stream = Some(tx);
    }

    /// Ends streaming (after the service's request filter).
    pub fn disable_stream(&mut self) {
        self.stream = None;
    }

    /// Whether a streamed response was started / finished.
    pub fn stream_state(&self) -> (bool, bool) {
        (self.stream_started, self.stream_ended)
    }

    /// Merges the upstream response under the plugins' earlier changes (a
    /// plugin's set or remove wins over upstream), as the response filter
    /// starts.
    pub fn apply_upstream<'h>(
        &mut self,
        status: u16,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    ) {
        self.upstream_status = Some(status);
        self.resp_headers.apply_upstream(headers);
    }

    /// Takes the header changes made since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<HeaderChange> {
        std::mem::take(&mut self.changes)
    }

    /// The status a plugin set, if any.
    pub fn status_override(&self) -> Option<u16> {
        self.status
    }

    /// The current response headers (upstream merged with the plugins').
    pub fn response_headers(&self) -> &[(String, Vec<u8>)] {
        self.resp_headers.as_slice()
    }

    /// Takes the body a plugin set outside the body filter.
    pub fn take_body(&mut self) -> Option<Vec<u8>> {
        self.body_set.take()
    }

    /// Starts the body filter phase of one chunk: `response_body` returns
    /// this chunk until a plugin sets a body in this chunk's phase.
    pub fn begin_chunk(&mut self, chunk: &[u8]) {
        self.stage = Stage::Body;
        self.chunk.clear();
        self.chunk.extend_from_slice(chunk);
        self.chunk_set = None;
    }

    /// The body set in this chunk's phase, if any.
    pub fn take_chunk_body(&mut self) -> Option<Vec<u8>> {
        self.chunk_set.take()
    }

    /// Switches to the logging phase, with the bytes sent and the error.
    pub fn begin_logging(&mut self, bytes_sent: u64, error: Option<String>) {
        self.stage = Stage::Logging;
        self.bytes_sent = bytes_sent;
        if let Some(e) = error {
            self.error = e;
        }
        self.chunk.clear();
        self.chunk_set = None;
    }

    /// Records a proxy error for the logging phase.
    pub fn set_error(&mut self, error: String) {
        self.error = error;
    }

    /// Body bytes sent to the client, as `begin_logging` recorded them.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    fn send(&mut self, ev: StreamEvent) -> Result<(), String> {
        let Some(tx) = self.stream.as_ref() else {
            return Err("streaming is only available to a plugin service's request filter".into());
        };
        tx.try_send(ev).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => format!(
                "stream queue full: {STREAM_QUEUE} events wait for a client that reads slower \
                 than the plugin writes"
            ),
            mpsc::error::TrySendError::Closed(_) => "the client is gone".to_string(),
        })
    }

    fn start_stream(&mut self) -> Result<(), String> {
        if self.stream_ended {
            return Err("response already finished".into());
        }
        if !self.stream_started {
            let ev = StreamEvent::Header {
                status: self.response_status(),
                headers: self.resp_headers.as_slice().to_vec(),
            };
            self.send(ev)?;
            self.stream_started = true;
        }
        Ok(())
    }
}

impl Drop for RequestState {
    /// A connection that ended without the proxy's cleanup (a dropped
    /// request task) still leaves its rooms.
    fn drop(&mut self) {
        if let (Some(link), Some(rooms)) = (&self.ws, &self.rooms) {
            if link.upgraded {
                rooms.close(&link.id);
            }
        }
    }
}

fn split_authority(authority: &str) -> (String, Option<String>) {
    // [v6]:port, host:port, host
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = p.strip_prefix(':').map(str::to_string);
            return (h.to_string(), port);
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p.to_string())),
        _ => (authority.to_string(), None),
    }
}

impl HttpContext for RequestState {
    fn request_method(&self) -> &str {
        &self.method
    }

    fn request_path(&self) -> &str {
        &self.path
    }

    fn request_query(&self) -> &str {
        &self.query
    }

    fn request_host(&self) -> &str {
        &self.host
    }

    fn request_url(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.scheme.as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(self.host.as_bytes());
        if let Some(port) = &self.port {
            let default = if self.scheme == "https" { "443" } else { "80" };
            if port != default {
                out.push(b':');
                out.extend_from_slice(port.as_bytes());
            }
        }
        out.extend_from_slice(self.path.as_bytes());
        if !self.query.is_empty() {
            out.push(b'?');
            out.extend_from_slice(self.query.as_bytes());
        }
    }

    fn client_ip(&self) -> &str {
        &self.client_ip
    }

    fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.headers
            .get(index)
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
    }

    fn request_body(&mut self) -> &[u8] {
        &self.body
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
        self.resp_headers.set(name, value.as_bytes());
        self.changes.push(HeaderChange::Set(
            name.to_ascii_lowercase(),
            value.as_bytes().to_vec(),
        ));
    }

    fn remove_response_header(&mut self, name: &str) {
        self.resp_headers.remove(name);
        self.changes
            .push(HeaderChange::Remove(name.to_ascii_lowercase()));
    }

    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.resp_headers.at(index)
    }

    fn set_response_body(&mut self, body: &[u8]) {
        let slot = match self.stage {
            Stage::Body => &mut self.chunk_set,
            Stage::Headers | Stage::Logging => &mut self.body_set,
        };
        match slot {
            Some(b) => {
                b.clear();
                b.extend_from_slice(body);
            }
            None => *slot = Some(body.to_vec()),
        }
    }

    /// In the body filter: the body set in THIS chunk's phase if any, else the
    /// chunk (so a handler that reads, appends and sets on every chunk sees
    /// each chunk once). Elsewhere: the body a plugin set, else empty.
    fn response_body(&self) -> &[u8] {
        match self.stage {
            Stage::Body => self.chunk_set.as_deref().unwrap_or(&self.chunk),
            Stage::Headers | Stage::Logging => self.body_set.as_deref().unwrap_or(&[]),
        }
    }

    /// In the logging phase, the body bytes sent to the client (what upstream
    /// Nylon logs); before it, the original host's rule (the body set, else
    /// the current chunk).
    fn response_bytes(&self) -> u64 {
        match self.stage {
            Stage::Logging => self.bytes_sent,
            Stage::Headers | Stage::Body => self.response_body().len() as u64,
        }
    }

    fn response_stream_header(&mut self) -> Result<(), String> {
        self.start_stream()
    }

    fn response_stream_data(&mut self, data: &[u8]) -> Result<(), String> {
        self.start_stream()?;
        self.send(StreamEvent::Data(Bytes::copy_from_slice(data)))?;
        self.bytes_sent += data.len() as u64;
        Ok(())
    }

    fn response_stream_end(&mut self) -> Result<(), String> {
        if self.stream_ended {
            return Ok(());
        }
        self.start_stream()?;
        self.send(StreamEvent::End)?;
        self.stream_ended = true;
        Ok(())
    }

    fn response_duration_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn response_error(&self) -> &str {
        &self.error
    }

    /// Checks the opening handshake. A good one is accepted (the proxy task
    /// writes the 101 and runs the connection); a bad one is answered by the
    /// host (400, or 426 with `Sec-WebSocket-Version: 13`) and the phase
    /// ends as END.
    fn websocket_upgrade(&mut self) -> Result<(), String> {
        if self.ws.as_ref().is_some_and(|l| l.upgraded) {
            return Ok(());
        }
        let checked = handshake::check(
            &self.method,
            self.headers
                .iter()
                .map(|(n, v)| (n.as_slice(), v.as_slice())),
        );
        let refusal = match (checked, self.ws.as_mut()) {
            (Ok(accept), Some(link)) => {
                link.upgraded = true;
                link.outbox.accept(accept);
                if let Some(rooms) = &self.rooms {
                    rooms.open(&link.id, Arc::clone(&link.outbox));
                }
                return Ok(());
            }
            (Ok(_), None) => handshake::Refusal::BadRequest(
                "a WebSocket upgrade is only available to a plugin service",
            ),
            (Err(r), _) => r,
        };
        self.status = Some(refusal.status());
        if refusal == handshake::Refusal::Version {
            self.set_response_header("sec-websocket-version", "13");
        }
        self.set_response_header("content-type", "text/plain");
        self.body_set = Some(refusal.reason().as_bytes().to_vec());
        Err(refusal.reason().to_string())
    }

    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String> {
        let Some((link, _)) = self.open_ws() else {
            return Err("websocket is not open".into());
        };
        let (op, data) = match msg {
            WsMessage::Text(t) => {
                if std::str::from_utf8(t).is_err() {
                    return Err("a text message must be UTF-8".into());
                }
                (opcode::TEXT, t)
            }
            WsMessage::Binary(b) => (opcode::BINARY, b),
        };
        let mut out = Vec::with_capacity(data.len() + 10);
        write_frame(&mut out, op, data);
        link.outbox.push(Bytes::from(out)).map_err(|e| match e {
            PushError::Full => "the client reads too slowly: outgoing queue full, \
                                connection dropped (1013)"
                .to_string(),
            PushError::Closed => "websocket is closing".to_string(),
        })
    }

    fn websocket_close(&mut self) {
        if let Some(link) = self.ws.as_mut() {
            if link.upgraded && !link.closed {
                link.closed = true;
                link.outbox.request_close(1000);
            }
        }
    }

    fn websocket_recv(&mut self, _wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        buf.clear();
        let Some(link) = self.ws.as_mut().filter(|l| l.upgraded) else {
            return WsRecv::Closed;
        };
        // The permit goes back to the inbound budget as the message is taken.
        match link.inbound.try_recv().map(|(m, _permit)| m) {
            Ok(Inbound::Text(b)) => {
                buf.extend_from_slice(&b);
                WsRecv::Text
            }
            Ok(Inbound::Binary(b)) => {
                buf.extend_from_slice(&b);
                WsRecv::Binary
            }
            Ok(Inbound::Closed) | Err(mpsc::error::TryRecvError::Disconnected) => WsRecv::Closed,
            Err(mpsc::error::TryRecvError::Empty) => WsRecv::Idle,
        }
    }

    fn websocket_join_room(&mut self, room: &str) {
        if let Some((link, Some(rooms))) = self.open_ws() {
            rooms.join(&link.id, room);
        }
    }

    fn websocket_leave_room(&mut self, room: &str) {
        if let Some((link, Some(rooms))) = self.open_ws() {
            rooms.leave(&link.id, room);
        }
    }

    /// Every member of the room gets it, the sender included. A text that is
    /// not UTF-8 is not sent (the command has no way to report an error).
    fn websocket_broadcast(&mut self, room: &str, msg: WsMessage<'_>) {
        let Some((_, Some(rooms))) = self.open_ws() else {
            return;
        };
        let msg = match msg {
            WsMessage::Text(t) if std::str::from_utf8(t).is_ok() => {
                RoomMessage::Text(Bytes::copy_from_slice(t))
            }
            WsMessage::Text(_) => return,
            WsMessage::Binary(b) => RoomMessage::Binary(Bytes::copy_from_slice(b)),
        };
        rooms.broadcast(room, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RequestState {
        RequestState::new(RequestSnapshot {
            method: "GET".into(),
            path: "/a".into(),
            authority: "example.com:8080".into(),
            scheme: "http",
            ..RequestSnapshot::default()
        })
    }

    #[test]
    fn body_filter_reads_each_chunk_and_its_own_set_body_only() {
        let mut s = state();
        let mut out = Vec::new();
        for chunk in [&b"ab"[..], b"cd", b"ef"] {
            s.begin_chunk(chunk);
            // read (107), append, set (103): the pattern of upstream plugins
            let mut b = s.response_body().to_vec();
            b.extend_from_slice(b"+");
            s.set_response_body(&b);
            assert_eq!(s.response_body(), &b[..]);
            out.extend(s.take_chunk_body().expect("set in this phase"));
        }
        assert_eq!(out, b"ab+cd+ef+");
    }

    #[test]
    fn url_drops_the_default_port_only() {
        let s = state();
        let mut out = Vec::new();
        s.request_url(&mut out);
        assert_eq!(out, b"http://example.com:8080/a");
        assert_eq!(s.request_host(), "example.com");
        let s = RequestState::new(RequestSnapshot {
            path: "/b".into(),
            query: "q=1".into(),
            authority: "example.com:80".into(),
            scheme: "http",
            ..RequestSnapshot::default()
        });
        out.clear();
        s.request_url(&mut out);
        assert_eq!(out, b"http://example.com/b?q=1");
    }

    #[test]
    fn a_full_stream_queue_is_an_error_not_growth() {
        let mut s = state();
        let (tx, _rx) = mpsc::channel(2);
        s.enable_stream(tx);
        // header + one chunk fill it
        s.response_stream_data(b"1").expect("room");
        assert!(s.response_stream_data(b"2").is_err());
    }

    #[test]
    fn logging_reads_the_bytes_sent_downstream() {
        let mut s = state();
        s.begin_chunk(b"abc");
        assert_eq!(s.response_bytes(), 3, "before logging: the chunk's length");
        s.begin_logging(12_345, None);
        assert_eq!(s.response_bytes(), 12_345);
        // The reply a legacy plugin gets for method 109.
        let mut reply = Vec::new();
        let step = nylon_transport::host::dispatch::dispatch(
            109,
            &[],
            &mut s,
            &mut Default::default(),
            &mut nylon_transport::transport::fast::FastEncoding::default(),
            &mut reply,
        );
        assert!(step.is_ok());
        assert_eq!(reply, b"12345");
    }
}
