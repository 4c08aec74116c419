//! The worker protocol: the frames host and worker exchange over the two
//! rings, their encoders, and decoders that validate every length, count and
//! code (the peer is untrusted; see `docs/isolation.md`).
//!
//! A frame's ring header carries the session id (`session`) and the frame
//! kind (`method`); `flags` is unused (0). Integers are little-endian; a
//! string or byte field is a `u32` length and its bytes, in place (values
//! are read by offset into the frame, never copied on the host side).
//!
//! Host to worker: [`INIT`], [`CHECK_ENTRY`], [`PHASE_START`],
//! [`READ_REPLY`], [`CLOSE`], [`SHUTDOWN`], [`WS_EVENT`]. Worker to host:
//! [`HELLO`], [`LOAD_ERROR`], [`ENTRY`], [`PHASE_END`], [`READ`], [`WS`].
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::OnceLock;

use crate::host::context::{HttpContext, WsMessage};

/// Host to worker, first frame: the plugin config for `initialize`.
pub const INIT: u32 = 1;
/// Worker to host: loaded and initialized. `u8` ABI (0 legacy, 1 v2), `u32` pid.
pub const HELLO: u32 = 2;
/// Worker to host: the library could not be loaded; a message.
pub const LOAD_ERROR: u32 = 3;
/// Host to worker: does the plugin accept this entry? The entry name;
/// `session` is a token echoed in the answer.
pub const CHECK_ENTRY: u32 = 4;
/// Worker to host: the answer to [`CHECK_ENTRY`], `u8` (1 accepted).
pub const ENTRY: u32 = 5;
/// Host to worker: start a phase (see [`encode_start`]).
pub const PHASE_START: u32 = 6;
/// Worker to host: the phase ended (see [`EndWriter`]).
pub const PHASE_END: u32 = 7;
/// Worker to host: the plugin read something the phase start did not
/// carry; `u8` what ([`READ_REQUEST_BODY`]).
pub const READ: u32 = 8;
/// Host to worker: the answer to [`READ`], the bytes.
pub const READ_REPLY: u32 = 9;
/// Host to worker: close the session.
pub const CLOSE: u32 = 10;
/// Host to worker: call the plugin's shutdown and exit.
pub const SHUTDOWN: u32 = 11;
/// Worker to host: a WebSocket command of a session whose phase upgraded
/// (see [`WsCommand`]), applied by the host in the order sent, before the
/// phase's end.
pub const WS: u32 = 12;
/// Host to worker: the client's next WebSocket event for an upgraded
/// session: `u8` kind ([`ws_event`]), then the message's bytes to the end.
pub const WS_EVENT: u32 = 13;
/// One past the largest frame kind (the fuzz target's range).
pub const KINDS: u32 = 14;

/// [`READ`]: the whole request body.
pub const READ_REQUEST_BODY: u8 = 1;
/// [`READ`]: perform the WebSocket handshake. The [`READ_REPLY`] is `u8 0`
/// (upgraded: the phase now lasts as long as the connection), or `u8 1`
/// and the host's reason to the end (it answered the client itself).
pub const READ_WS_UPGRADE: u8 = 2;

/// [`WS_EVENT`] kinds.
pub mod ws_event {
    /// A text message (UTF-8 checked by the host's codec).
    pub const TEXT: u8 = 1;
    /// A binary message.
    pub const BINARY: u8 = 2;
    /// The client closed the connection (no bytes follow).
    pub const CLOSED: u8 = 3;
    /// A message the worker sent could not be sent to the client: the
    /// reason (UTF-8) to the end. The plugin's next send fails with it.
    pub const ERROR: u8 = 4;
}

/// [`WS`] command codes (the payload's first byte).
pub mod ws_op {
    /// Send a text message: its bytes to the end.
    pub const TEXT: u8 = 1;
    /// Send a binary message: its bytes to the end.
    pub const BINARY: u8 = 2;
    /// Close the connection.
    pub const CLOSE: u8 = 3;
    /// Join a room: its name to the end.
    pub const JOIN: u8 = 4;
    /// Leave a room: its name to the end.
    pub const LEAVE: u8 = 5;
    /// Broadcast a text message: the room (a field), then the bytes.
    pub const BROADCAST_TEXT: u8 = 6;
    /// Broadcast a binary message: the room (a field), then the bytes.
    pub const BROADCAST_BINARY: u8 = 7;
}

/// Phase start flag: open the session first; the entry name and the request
/// part follow (see [`encode_start`]).
pub const START_OPEN: u8 = 1;
/// Phase start flag: a middleware payload is present (only with
/// [`START_OPEN`]).
pub const START_PAYLOAD: u8 = 2;
/// Phase start flag: route params are present (only with [`START_OPEN`]).
pub const START_PARAMS: u8 = 4;

/// Phase end outcome codes.
pub mod outcome {
    /// `NEXT`.
    pub const NEXT: u8 = 0;
    /// `END`.
    pub const END: u8 = 1;
    /// The stream or the WebSocket ended.
    pub const STREAM_END: u8 = 2;
    /// The worker's own phase timeout.
    pub const TIMEOUT: u8 = 3;
    /// An error; the message follows.
    pub const ERROR: u8 = 4;
    /// The plugin refused to open the session for the entry.
    pub const REJECTED: u8 = 5;
    /// The session's queue overflowed in the worker.
    pub const QUEUE_FULL: u8 = 6;
    /// The session was closed in the worker.
    pub const CLOSED: u8 = 7;
    /// The plugin's SDK reported a handler error or panic (the message follows).
    pub const PLUGIN_REPORTED: u8 = 8;
}

/// Phase end command codes.
pub mod op {
    /// `u16` status.
    pub const STATUS: u8 = 1;
    /// Name, value.
    pub const SET_HEADER: u8 = 2;
    /// Name.
    pub const REMOVE_HEADER: u8 = 3;
    /// The body.
    pub const SET_BODY: u8 = 4;
    /// Write the streamed response's header now.
    pub const STREAM_HEADER: u8 = 5;
    /// One streamed chunk.
    pub const STREAM_DATA: u8 = 6;
    /// Finish the streamed response.
    pub const STREAM_END: u8 = 7;
}

/// Why a frame from the peer was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoError(pub &'static str);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "protocol violation: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

/// A checked reader over a frame's payload: every read is bounds-checked.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The offset of the next byte.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(ProtoError("field past the end of the frame"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }

    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16, ProtoError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, ProtoError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64, ProtoError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed byte field.
    pub fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// A length-prefixed byte field, as its offset range in the frame.
    pub fn range(&mut self) -> Result<(u32, u32), ProtoError> {
        let n = self.u32()? as usize;
        let start = self.pos;
        self.take(n)?;
        Ok((start as u32, n as u32))
    }

    /// A blob: its bytes in the frame, or a range of the sender's slab
    /// area (`slab_len` bytes), checked to lie inside it.
    pub fn blob(&mut self, slab_len: usize) -> Result<Blob, ProtoError> {
        let word = self.u32()?;
        if word & IN_SLAB == 0 {
            let start = self.pos;
            self.take(word as usize)?;
            return Ok(Blob::Frame((start as u32, word)));
        }
        let len = word & !IN_SLAB;
        let offset = self.u32()?;
        if u64::from(offset) + u64::from(len) > slab_len as u64 {
            return Err(ProtoError("slab range outside the sender's slab area"));
        }
        Ok(Blob::Slab((offset, len)))
    }

    /// A header name: bytes in the frame, or an interned id the worker's
    /// `names` know (or learn here, from an announcement).
    pub fn name(&mut self, names: &NameTable) -> Result<Name, ProtoError> {
        let word = self.u32()?;
        if word & NAME_REF == 0 {
            let start = self.pos;
            self.take(word as usize)?;
            return Ok(Name::Frame((start as u32, word)));
        }
        let low = word & (NAME_NEW - 1);
        if word & NAME_NEW == 0 {
            return match names.get(low) {
                Some(_) => Ok(Name::Id(low)),
                None => Err(ProtoError("unknown header name id")),
            };
        }
        let id = self.u32()?;
        let bytes = self.take(low as usize)?;
        names.learn(id, bytes)?;
        Ok(Name::Id(id))
    }

    /// A length-prefixed UTF-8 field.
    pub fn str(&mut self) -> Result<&'a str, ProtoError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| ProtoError("string is not UTF-8"))
    }

    /// A count of items that are each at least `min_item` bytes: refused
    /// when the rest of the frame cannot hold them (no huge preallocation).
    pub fn count(&mut self, min_item: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.buf.len() - self.pos {
            return Err(ProtoError("count larger than the frame"));
        }
        Ok(n)
    }
}

/// Where an encoder writes: a length counter or a byte slice.
pub trait Out {
    /// Appends bytes.
    fn put(&mut self, b: &[u8]);
    /// Bytes written so far (where the next [`Out::put`] goes).
    fn mark(&self) -> usize;
    /// Overwrites the `u32` written at `at` (a count that is known only
    /// once what it counts is written).
    fn patch_u32(&mut self, at: usize, n: u32);
    /// Appends a length-prefixed field.
    fn field(&mut self, b: &[u8]) {
        self.put(&(b.len() as u32).to_le_bytes());
        self.put(b);
    }
    /// Appends a blob: `b` in place, or (with `slab`, where the sender
    /// already copied `b` into its slab area) the slab's offset.
    fn blob(&mut self, b: &[u8], slab: Option<u32>) {
        match slab {
            None => self.field(b),
            Some(offset) => {
                self.put(&(b.len() as u32 | IN_SLAB).to_le_bytes());
                self.put(&offset.to_le_bytes());
            }
        }
    }
}

/// The bit of a header name's word that says it is an interned id (the
/// word's low 30 bits), not a length and bytes.
pub const NAME_REF: u32 = 1 << 31;
/// With [`NAME_REF`]: an announcement: the low 30 bits are a length, then
/// come the `u32` id and the name's bytes (a lower-case header token), which
/// the worker keeps under that id for every later frame.
pub const NAME_NEW: u32 = 1 << 30;
/// Names a worker's table holds beyond the well-known ones.
pub const DYNAMIC_NAMES: usize = 1024;
/// Ids a worker's table holds: the well-known names
/// ([`crate::intern::WELL_KNOWN`], ids in its order) and [`DYNAMIC_NAMES`].
pub const NAME_IDS: usize = crate::intern::WELL_KNOWN.len() + DYNAMIC_NAMES;
/// Gives each header name of a phase start its code, in the order the
/// encoder meets them (request headers, then response headers):
/// [`CODE_INLINE`], an id, or an id with [`CODE_ANNOUNCE`].
pub trait NameCodes {
    /// The code of the next name.
    fn code(&mut self, name: &[u8]) -> u32;
}

/// Every name in place.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inline;

impl NameCodes for Inline {
    fn code(&mut self, _name: &[u8]) -> u32 {
        CODE_INLINE
    }
}

/// Codes decided before (by an earlier pass over the same context), in
/// order; names past them go in place.
impl NameCodes for std::slice::Iter<'_, u32> {
    fn code(&mut self, _name: &[u8]) -> u32 {
        self.next().copied().unwrap_or(CODE_INLINE)
    }
}

/// How the host sends a header name ([`NameCodes`]): in place.
pub const CODE_INLINE: u32 = u32::MAX;
/// Set in a name's code (an id): announce the id with the name's bytes.
pub const CODE_ANNOUNCE: u32 = 1 << 31;

/// A header name of a phase start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name {
    /// In the frame.
    Frame(Span),
    /// An interned id.
    Id(u32),
}

impl Name {
    /// Its bytes (empty for an unknown id, which a decoded name never is).
    pub fn get<'a>(self, frame: &'a [u8], names: &'a NameTable) -> &'a [u8] {
        match self {
            Self::Frame(span) => at(frame, span),
            Self::Id(id) => names.get(id).unwrap_or(&[]),
        }
    }
}

/// The worker's header names by id: the well-known ones from the start,
/// others as the host announces them. Each id is set once and then read
/// without a lock from any thread (a plugin's own threads read headers too).
pub struct NameTable {
    slots: Box<[OnceLock<Box<[u8]>>]>,
}

impl fmt::Debug for NameTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self.slots.iter().filter(|s| s.get().is_some()).count();
        f.debug_struct("NameTable").field("known", &known).finish()
    }
}

impl Default for NameTable {
    fn default() -> Self {
        Self::new()
    }
}

impl NameTable {
    /// A table that knows the well-known names.
    #[must_use]
    pub fn new() -> Self {
        let slots: Box<[OnceLock<Box<[u8]>>]> = (0..NAME_IDS).map(|_| OnceLock::new()).collect();
        for (slot, name) in slots.iter().zip(crate::intern::WELL_KNOWN) {
            let _ = slot.set(name.as_bytes().into());
        }
        Self { slots }
    }

    /// The name of `id`, if known.
    pub fn get(&self, id: u32) -> Option<&[u8]> {
        self.slots.get(id as usize)?.get().map(|b| &**b)
    }

    fn learn(&self, id: u32, name: &[u8]) -> Result<(), ProtoError> {
        let token =
            |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > crate::intern::MAX_NAME || !name.iter().all(token) {
            return Err(ProtoError(
                "announced header name is not a lower-case token",
            ));
        }
        let slot = self
            .slots
            .get(id as usize)
            .ok_or(ProtoError("header name id out of range"))?;
        slot.set(name.into())
            .map_err(|_| ProtoError("header name id announced twice"))
    }
}

/// Appends a header name as its `code` says ([`CODE_INLINE`], an id, or an
/// id with [`CODE_ANNOUNCE`]).
fn put_name<O: Out + ?Sized>(out: &mut O, name: &[u8], code: u32) {
    if code == CODE_INLINE {
        out.field(name);
    } else if code & CODE_ANNOUNCE != 0 {
        out.put(&(name.len() as u32 | NAME_REF | NAME_NEW).to_le_bytes());
        out.put(&(code & !CODE_ANNOUNCE).to_le_bytes());
        out.put(name);
    } else {
        out.put(&(code | NAME_REF).to_le_bytes());
    }
}

/// The bit of a blob's length word that says its bytes are in a slab: the
/// word's other bits are the length, a `u32` offset into the sender's slab
/// area follows.
pub const IN_SLAB: u32 = 1 << 31;

/// Where a blob's bytes are: a range of the frame, or of the sender's slab
/// area (both validated by the decoder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// In the frame.
    Frame(Span),
    /// In the sender's slab area.
    Slab(Span),
}

impl Default for Blob {
    fn default() -> Self {
        Self::Frame((0, 0))
    }
}

impl Blob {
    /// Its bytes: in `frame` or in `slabs` (the sender's slab area; empty
    /// if out of range, which a decoded blob never is).
    pub fn get<'a>(self, frame: &'a [u8], slabs: &'a [u8]) -> &'a [u8] {
        match self {
            Self::Frame(span) => at(frame, span),
            Self::Slab(span) => at(slabs, span),
        }
    }
}

/// Where the sender put the large fields of a phase start: offsets into its
/// slab area (`None`: in the frame).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slabbed {
    /// The middleware payload.
    pub payload: Option<u32>,
    /// The response body.
    pub body: Option<u32>,
}

/// Counts the bytes an encoding takes.
#[derive(Debug, Default)]
pub struct Counter(pub usize);

impl Out for Counter {
    fn put(&mut self, b: &[u8]) {
        self.0 += b.len();
    }

    fn mark(&self) -> usize {
        self.0
    }

    fn patch_u32(&mut self, _at: usize, _n: u32) {}
}

/// Writes into a slice of exactly the counted length.
#[derive(Debug)]
pub struct SliceOut<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceOut<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written.
    pub fn written(&self) -> usize {
        self.pos
    }
}

impl Out for SliceOut<'_> {
    fn put(&mut self, b: &[u8]) {
        // The caller sized the slice with a `Counter` over the same context
        // (which does not change in between): an overflow is a bug, and it
        // truncates rather than panics; the peer refuses the frame.
        let end = (self.pos + b.len()).min(self.buf.len());
        let n = end - self.pos;
        self.buf[self.pos..end].copy_from_slice(&b[..n]);
        self.pos = end;
    }

    fn mark(&self) -> usize {
        self.pos
    }

    fn patch_u32(&mut self, at: usize, n: u32) {
        if let Some(w) = self.buf.get_mut(at..at + 4) {
            w.copy_from_slice(&n.to_le_bytes());
        }
    }
}

impl Out for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }

    fn mark(&self) -> usize {
        self.len()
    }

    fn patch_u32(&mut self, at: usize, n: u32) {
        if let Some(w) = self.get_mut(at..at + 4) {
            w.copy_from_slice(&n.to_le_bytes());
        }
    }
}

/// Encodes a phase start from the host's context: everything a plugin is
/// likely to read, so that most reads are answered in the worker.
///
/// Layout: `u8 phase, u8 flags, u16 status, u64 duration_ms,
/// u64 response_bytes`; then, with [`START_OPEN`] only, the request part:
/// `entry, u64 timestamp_ms, method, path, query, host, url, client_ip`,
/// `payload` (with [`START_PAYLOAD`]), `u32 n` params as name, value (with
/// [`START_PARAMS`]) and `u32 n` request headers as name, value; then
/// `error`, `u32 n` response headers as name, value, and the response body
/// the plugin sees.
///
/// The request part goes once per session, with the phase that opens it:
/// the request side of a context and a session's payload do not change
/// while the session runs (the host applies its own request changes before
/// it opens any session), and the worker keeps them for the session's later
/// phases.
///
/// The payload and the body are blobs: in the frame, or where `slabbed`
/// says the caller copied them in its slab area. `names` says how each
/// header name goes (in place, as an id, as an announcement); a counting
/// pass and a later writing pass over the same context must get the same
/// codes (the second can replay the first's: `codes.iter()`). The context
/// is walked once: a header count is written before its headers and
/// patched after them.
pub fn encode_start<O: Out>(
    out: &mut O,
    phase: u8,
    open_entry: Option<&str>,
    ctx: &mut dyn HttpContext,
    url: &[u8],
    slabbed: Slabbed,
    names: &mut impl NameCodes,
) {
    let ctx: &dyn HttpContext = ctx;
    let mut flags = 0;
    let payload = open_entry.and(ctx.payload());
    let params = open_entry.and(ctx.request_params());
    if open_entry.is_some() {
        flags |= START_OPEN;
    }
    if payload.is_some() {
        flags |= START_PAYLOAD;
    }
    if params.is_some() {
        flags |= START_PARAMS;
    }
    out.put(&[phase, flags]);
    out.put(&ctx.response_status().to_le_bytes());
    out.put(&ctx.response_duration_ms().to_le_bytes());
    out.put(&ctx.response_bytes().to_le_bytes());
    // A header count goes before its headers, and is patched after them:
    // one walk over the context's headers.
    let mut headers = |out: &mut O, request: bool| {
        let at = out.mark();
        out.put(&0u32.to_le_bytes());
        let mut n = 0u32;
        let f = &mut |k: &[u8], v: &[u8]| {
            put_name(out, k, names.code(k));
            out.field(v);
            n += 1;
        };
        if request {
            ctx.for_each_request_header(f);
        } else {
            ctx.for_each_response_header(f);
        }
        out.patch_u32(at, n);
    };
    if let Some(e) = open_entry {
        out.field(e.as_bytes());
        out.put(&ctx.request_timestamp_ms().to_le_bytes());
        out.field(ctx.request_method().as_bytes());
        out.field(ctx.request_path().as_bytes());
        out.field(ctx.request_query().as_bytes());
        out.field(ctx.request_host().as_bytes());
        out.field(url);
        out.field(ctx.client_ip().as_bytes());
        if let Some(p) = payload {
            out.blob(p, slabbed.payload);
        }
        if let Some(params) = params {
            out.put(&(params.len() as u32).to_le_bytes());
            for (k, v) in params {
                out.field(k.as_bytes());
                out.field(v.as_bytes());
            }
        }
        headers(out, true);
    }
    out.field(ctx.response_error().as_bytes());
    headers(out, false);
    out.blob(ctx.response_body(), slabbed.body);
}

/// A byte range of a frame: offset and length.
pub type Span = (u32, u32);

/// The request part of a session's opening phase start (every range is of
/// that frame, which the worker keeps for the session's later phases).
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The entry to open.
    pub entry: Span,
    /// When the request started (ms since the epoch).
    pub timestamp_ms: u64,
    /// Method, path, query, host, url, client IP ([`S_METHOD`] and the
    /// others).
    pub strings: [Span; 6],
    /// The payload (with [`START_PAYLOAD`]; a slab blob is valid only
    /// while its phase runs).
    pub payload: Blob,
    /// Params (with [`START_PARAMS`]).
    pub params: Vec<(Span, Span)>,
    /// Request headers.
    pub headers: Vec<(Name, Span)>,
}

/// A decoded phase start: the scalars, and every field as a range of the
/// frame (checked to lie inside it; strings checked to be UTF-8).
#[derive(Clone, Debug, Default)]
pub struct Start {
    /// The phase byte.
    pub phase: u8,
    /// [`START_OPEN`] and the others.
    pub flags: u8,
    /// The response status.
    pub status: u16,
    /// Milliseconds since the request started.
    pub duration_ms: u64,
    /// The response byte count.
    pub response_bytes: u64,
    /// The request part (with [`START_OPEN`]; else left empty).
    pub request: Request,
    /// The proxy's error.
    pub error: Span,
    /// Response headers.
    pub response_headers: Vec<(Name, Span)>,
    /// The response body the plugin sees.
    pub body: Blob,
}

/// Index of the method in [`Request::strings`].
pub const S_METHOD: usize = 0;
/// Path.
pub const S_PATH: usize = 1;
/// Query.
pub const S_QUERY: usize = 2;
/// Host.
pub const S_HOST: usize = 3;
/// URL.
pub const S_URL: usize = 4;
/// Client IP.
pub const S_CLIENT_IP: usize = 5;

/// Decodes a phase start into `into` (its vectors reused); `slab_len` is the
/// size of the sender's slab area; header names announced in the frame are
/// added to `names`.
///
/// # Errors
///
/// A [`ProtoError`] for any field outside the frame or a blob outside the
/// slab area, a string that is not UTF-8, a bad phase or unknown flags
/// ([`START_PAYLOAD`] or [`START_PARAMS`] without [`START_OPEN`] too), or
/// trailing bytes.
pub fn decode_start(
    frame: &[u8],
    into: &mut Start,
    slab_len: usize,
    names: &NameTable,
) -> Result<(), ProtoError> {
    let mut r = Reader::new(frame);
    into.phase = r.u8()?;
    if into.phase > 4 {
        return Err(ProtoError("bad phase"));
    }
    into.flags = r.u8()?;
    if into.flags & !(START_OPEN | START_PAYLOAD | START_PARAMS) != 0 {
        return Err(ProtoError("unknown phase start flags"));
    }
    let open = into.flags & START_OPEN != 0;
    if !open && into.flags & (START_PARAMS | START_PAYLOAD) != 0 {
        return Err(ProtoError(
            "a request part in a phase start that opens nothing",
        ));
    }
    into.status = r.u16()?;
    into.duration_ms = r.u64()?;
    into.response_bytes = r.u64()?;
    let utf8 = |r: &mut Reader<'_>| -> Result<Span, ProtoError> {
        let before = r.clone();
        let span = r.range()?;
        before.clone().str()?;
        Ok(span)
    };
    let req = &mut into.request;
    req.params.clear();
    req.headers.clear();
    if open {
        req.entry = utf8(&mut r)?;
        req.timestamp_ms = r.u64()?;
        for s in &mut req.strings {
            *s = utf8(&mut r)?;
        }
        req.payload = if into.flags & START_PAYLOAD != 0 {
            r.blob(slab_len)?
        } else {
            Blob::default()
        };
        if into.flags & START_PARAMS != 0 {
            let n = r.count(8)?;
            for _ in 0..n {
                let k = utf8(&mut r)?;
                let v = utf8(&mut r)?;
                req.params.push((k, v));
            }
        }
        let n = r.count(8)?;
        for _ in 0..n {
            let k = r.name(names)?;
            let v = r.range()?;
            req.headers.push((k, v));
        }
    } else {
        req.entry = (0, 0);
        req.timestamp_ms = 0;
        req.strings = Default::default();
        req.payload = Blob::default();
    }
    into.error = utf8(&mut r)?;
    into.response_headers.clear();
    let n = r.count(8)?;
    for _ in 0..n {
        let k = r.name(names)?;
        let v = r.range()?;
        into.response_headers.push((k, v));
    }
    into.body = r.blob(slab_len)?;
    if !r.is_done() {
        return Err(ProtoError("trailing bytes after the phase start"));
    }
    Ok(())
}

/// The bytes of `span` in `frame` (empty if out of range, which a decoded
/// span never is).
pub fn at(frame: &[u8], span: Span) -> &[u8] {
    let (o, n) = (span.0 as usize, span.1 as usize);
    frame.get(o..o + n).unwrap_or(&[])
}

/// A phase end's head: the outcome code, then the error message.
///
/// Layout: `u8 outcome, u8 0, u16 0`, the message (empty unless an error),
/// then commands until the end: `u8 op` and its arguments ([`op`]).
#[derive(Debug, Default)]
pub struct EndWriter;

impl EndWriter {
    /// Writes the head of a phase end into `out`.
    pub fn head(out: &mut Vec<u8>, code: u8, message: &str) {
        out.extend_from_slice(&[code, 0, 0, 0]);
        out.field(message.as_bytes());
    }
}

/// One command of a phase end, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Set the status.
    Status(u16),
    /// Set a header.
    SetHeader(&'a str, &'a str),
    /// Remove a header.
    RemoveHeader(&'a str),
    /// Set the body.
    SetBody(&'a [u8]),
    /// Write the streamed response's header.
    StreamHeader,
    /// Write a streamed chunk.
    StreamData(&'a [u8]),
    /// Finish the streamed response.
    StreamEnd,
}

/// Appends a [`Command::SetBody`] or [`Command::StreamData`] whose bytes the
/// sender copied into its slab area at `offset`.
///
/// # Panics
///
/// For any other command.
pub fn write_slab_command(out: &mut Vec<u8>, c: Command<'_>, offset: u32) {
    let (code, b) = match c {
        Command::SetBody(b) => (op::SET_BODY, b),
        Command::StreamData(b) => (op::STREAM_DATA, b),
        _ => panic!("only bodies and chunks go in slabs"),
    };
    out.push(code);
    out.blob(b, Some(offset));
}

/// Appends one command to a phase end being built.
pub fn write_command(out: &mut Vec<u8>, c: Command<'_>) {
    match c {
        Command::Status(s) => {
            out.push(op::STATUS);
            out.extend_from_slice(&s.to_le_bytes());
        }
        Command::SetHeader(n, v) => {
            out.push(op::SET_HEADER);
            out.field(n.as_bytes());
            out.field(v.as_bytes());
        }
        Command::RemoveHeader(n) => {
            out.push(op::REMOVE_HEADER);
            out.field(n.as_bytes());
        }
        Command::SetBody(b) => {
            out.push(op::SET_BODY);
            out.field(b);
        }
        Command::StreamHeader => out.push(op::STREAM_HEADER),
        Command::StreamData(b) => {
            out.push(op::STREAM_DATA);
            out.field(b);
        }
        Command::StreamEnd => out.push(op::STREAM_END),
    }
}

/// Decodes a phase end: returns the outcome code and message, and calls `f`
/// with each command in order. A body or chunk may be in `slabs` (the
/// sender's slab area). Run it once with a no-op `f` to validate a frame
/// before applying anything.
///
/// # Errors
///
/// A [`ProtoError`] for an unknown outcome or command, a field outside the
/// frame or the slab area, or a name or value that is not UTF-8.
pub fn decode_end<'a>(
    frame: &'a [u8],
    slabs: &'a [u8],
    mut f: impl FnMut(Command<'a>),
) -> Result<(u8, &'a str), ProtoError> {
    let mut r = Reader::new(frame);
    let code = r.u8()?;
    if code > outcome::PLUGIN_REPORTED {
        return Err(ProtoError("unknown phase outcome"));
    }
    if r.u8()? != 0 || r.u16()? != 0 {
        return Err(ProtoError("reserved phase end bytes are not zero"));
    }
    let message = r.str()?;
    while !r.is_done() {
        let c = match r.u8()? {
            op::STATUS => Command::Status(r.u16()?),
            op::SET_HEADER => Command::SetHeader(r.str()?, r.str()?),
            op::REMOVE_HEADER => Command::RemoveHeader(r.str()?),
            op::SET_BODY => Command::SetBody(r.blob(slabs.len())?.get(frame, slabs)),
            op::STREAM_HEADER => Command::StreamHeader,
            op::STREAM_DATA => Command::StreamData(r.blob(slabs.len())?.get(frame, slabs)),
            op::STREAM_END => Command::StreamEnd,
            _ => return Err(ProtoError("unknown command")),
        };
        f(c);
    }
    Ok((code, message))
}

/// Decodes a [`READ_REPLY`]: one blob (in the frame, or in the host's slab
/// area of `slab_len` bytes).
///
/// # Errors
///
/// A [`ProtoError`] for a blob outside the frame or the slab area, or
/// trailing bytes.
pub fn decode_read_reply(frame: &[u8], slab_len: usize) -> Result<Blob, ProtoError> {
    let mut r = Reader::new(frame);
    let b = r.blob(slab_len)?;
    if !r.is_done() {
        return Err(ProtoError("trailing bytes after the read reply"));
    }
    Ok(b)
}

/// Decodes a [`HELLO`]: the ABI code and the worker's pid.
///
/// # Errors
///
/// A [`ProtoError`] for a short frame or an unknown ABI.
pub fn decode_hello(frame: &[u8]) -> Result<(u8, u32), ProtoError> {
    let mut r = Reader::new(frame);
    let abi = r.u8()?;
    let pid = r.u32()?;
    if abi > 1 || !r.is_done() {
        return Err(ProtoError("bad hello"));
    }
    Ok((abi, pid))
}

/// Decodes any worker-to-host frame of kind `method` as the host would
/// (the fuzz target's entry), `slabs` being the worker's slab area: `Ok`
/// when the host would accept it.
///
/// # Errors
///
/// A [`ProtoError`] for anything the host refuses.
pub fn decode_from_worker(method: u32, frame: &[u8], slabs: &[u8]) -> Result<(), ProtoError> {
    match method {
        HELLO => decode_hello(frame).map(drop),
        LOAD_ERROR => std::str::from_utf8(frame)
            .map(drop)
            .map_err(|_| ProtoError("load error is not UTF-8")),
        ENTRY => match frame {
            [0 | 1] => Ok(()),
            _ => Err(ProtoError("bad entry answer")),
        },
        PHASE_END => decode_end(frame, slabs, |_| {}).map(drop),
        READ => match frame {
            [READ_REQUEST_BODY | READ_WS_UPGRADE] => Ok(()),
            _ => Err(ProtoError("bad read request")),
        },
        WS => decode_ws_command(frame).map(drop),
        _ => Err(ProtoError("unknown frame kind")),
    }
}

/// One WebSocket command of a [`WS`] frame, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsCommand<'a> {
    /// Send a message to the client.
    Send(WsMessage<'a>),
    /// Close the connection.
    Close,
    /// Join a room.
    Join(&'a str),
    /// Leave a room.
    Leave(&'a str),
    /// Send a message to every member of a room.
    Broadcast(&'a str, WsMessage<'a>),
}

/// Writes the payload of a [`WS`] frame.
pub fn write_ws_command(out: &mut Vec<u8>, c: WsCommand<'_>) {
    match c {
        WsCommand::Send(m) => {
            let (op, b) = message(m, ws_op::TEXT, ws_op::BINARY);
            out.push(op);
            out.extend_from_slice(b);
        }
        WsCommand::Close => out.push(ws_op::CLOSE),
        WsCommand::Join(room) => {
            out.push(ws_op::JOIN);
            out.extend_from_slice(room.as_bytes());
        }
        WsCommand::Leave(room) => {
            out.push(ws_op::LEAVE);
            out.extend_from_slice(room.as_bytes());
        }
        WsCommand::Broadcast(room, m) => {
            let (op, b) = message(m, ws_op::BROADCAST_TEXT, ws_op::BROADCAST_BINARY);
            out.push(op);
            out.field(room.as_bytes());
            out.extend_from_slice(b);
        }
    }
}

fn message(m: WsMessage<'_>, text: u8, binary: u8) -> (u8, &[u8]) {
    match m {
        WsMessage::Text(t) => (text, t),
        WsMessage::Binary(b) => (binary, b),
    }
}

/// Decodes the payload of a [`WS`] frame. A text message's bytes are not
/// checked here (the host's context refuses a text that is not UTF-8, as
/// it does for an in-process plugin); room names must be UTF-8.
///
/// # Errors
///
/// A [`ProtoError`] for an empty frame, an unknown command, trailing bytes
/// after a close, or a room name outside the frame or not UTF-8.
pub fn decode_ws_command(frame: &[u8]) -> Result<WsCommand<'_>, ProtoError> {
    fn room(b: &[u8]) -> Result<&str, ProtoError> {
        std::str::from_utf8(b).map_err(|_| ProtoError("room is not UTF-8"))
    }
    let (&op, rest) = frame
        .split_first()
        .ok_or(ProtoError("empty WebSocket command"))?;
    Ok(match op {
        ws_op::TEXT => WsCommand::Send(WsMessage::Text(rest)),
        ws_op::BINARY => WsCommand::Send(WsMessage::Binary(rest)),
        ws_op::CLOSE if rest.is_empty() => WsCommand::Close,
        ws_op::JOIN => WsCommand::Join(room(rest)?),
        ws_op::LEAVE => WsCommand::Leave(room(rest)?),
        ws_op::BROADCAST_TEXT | ws_op::BROADCAST_BINARY => {
            let mut r = Reader::new(rest);
            let name = room(r.bytes()?)?;
            let data = &rest[r.pos()..];
            let m = if op == ws_op::BROADCAST_TEXT {
                WsMessage::Text(data)
            } else {
                WsMessage::Binary(data)
            };
            WsCommand::Broadcast(name, m)
        }
        _ => return Err(ProtoError("unknown WebSocket command")),
    })
}

/// Decodes the [`READ_REPLY`] to a [`READ_WS_UPGRADE`]: `Ok(())` upgraded,
/// `Err(reason)` refused.
///
/// # Errors
///
/// A [`ProtoError`] for an empty frame, an unknown code or a reason that is
/// not UTF-8.
pub fn decode_upgrade_reply(frame: &[u8]) -> Result<Result<(), &str>, ProtoError> {
    match frame.split_first() {
        Some((0, [])) => Ok(Ok(())),
        Some((1, reason)) => std::str::from_utf8(reason)
            .map(Err)
            .map_err(|_| ProtoError("upgrade refusal is not UTF-8")),
        _ => Err(ProtoError("bad upgrade reply")),
    }
}

/// Decodes a [`WS_EVENT`]: the kind ([`ws_event`]) and the message's bytes.
///
/// # Errors
///
/// A [`ProtoError`] for an empty frame, an unknown kind, bytes after a
/// close, or an error reason that is not UTF-8.
pub fn decode_ws_event(frame: &[u8]) -> Result<(u8, &[u8]), ProtoError> {
    match frame.split_first() {
        Some((&k @ (ws_event::TEXT | ws_event::BINARY), data)) => Ok((k, data)),
        Some((&ws_event::CLOSED, [])) => Ok((ws_event::CLOSED, &[])),
        Some((&ws_event::ERROR, reason)) if std::str::from_utf8(reason).is_ok() => {
            Ok((ws_event::ERROR, reason))
        }
        _ => Err(ProtoError("bad WebSocket event")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{MemoryContext, RequestSpec};

    fn sample() -> MemoryContext {
        let spec: RequestSpec = serde_json::from_value(serde_json::json!({
            "method": "POST", "path": "/a", "query": "x=1", "host": "h:8080",
            "client_ip": "10.0.0.1",
            "headers": [["X-A", "1"], ["x-b", "2"]],
            "params": {"id": "7"},
        }))
        .unwrap();
        let mut ctx = MemoryContext::new(spec, Some(b"{\"p\":1}".to_vec()));
        ctx.set_response_header("x-r", "v");
        ctx
    }

    #[test]
    fn a_phase_start_round_trips_and_its_counter_matches() {
        let mut ctx = sample();
        let mut url = Vec::new();
        ctx.request_url(&mut url);
        let mut c = Counter::default();
        encode_start(
            &mut c,
            2,
            Some("e"),
            &mut ctx,
            &url,
            Slabbed::default(),
            &mut Inline,
        );
        let mut buf = vec![0; c.0];
        let mut w = SliceOut::new(&mut buf);
        encode_start(
            &mut w,
            2,
            Some("e"),
            &mut ctx,
            &url,
            Slabbed::default(),
            &mut Inline,
        );
        assert_eq!(w.written(), c.0);
        let mut v = Vec::new();
        encode_start(
            &mut v,
            2,
            Some("e"),
            &mut ctx,
            &url,
            Slabbed::default(),
            &mut Inline,
        );
        assert_eq!(v, buf, "a buffer and a counted slice get the same bytes");
        let mut s = Start::default();
        decode_start(&buf, &mut s, 0, &NameTable::new()).unwrap();
        assert_eq!(s.phase, 2);
        assert_eq!(at(&buf, s.request.entry), b"e");
        assert_eq!(at(&buf, s.request.strings[S_METHOD]), b"POST");
        assert_eq!(at(&buf, s.request.strings[S_URL]), b"http://h:8080/a?x=1");
        assert_eq!(s.request.payload.get(&buf, &[]), b"{\"p\":1}");
        assert_eq!(s.request.params.len(), 1);
        assert_eq!(s.request.headers.len(), 2);
        assert_eq!(s.request.headers[0].0.get(&buf, &NameTable::new()), b"x-a");
        assert_eq!(at(&buf, s.response_headers[0].1), b"v");

        // A later phase of the session: no request part, and what was
        // decoded of one before is cleared.
        let mut c = Counter::default();
        encode_start(
            &mut c,
            3,
            None,
            &mut ctx,
            &url,
            Slabbed::default(),
            &mut Inline,
        );
        let mut small = Vec::new();
        encode_start(
            &mut small,
            3,
            None,
            &mut ctx,
            &url,
            Slabbed::default(),
            &mut Inline,
        );
        assert_eq!(small.len(), c.0);
        assert!(small.len() < buf.len());
        decode_start(&small, &mut s, 0, &NameTable::new()).unwrap();
        assert_eq!(s.flags, 0, "no open, no payload, no params");
        assert!(s.request.headers.is_empty() && s.request.params.is_empty());
        assert_eq!(s.request.strings, [(0, 0); 6]);
        assert_eq!(s.request.payload, Blob::default());
        assert_eq!(at(&small, s.response_headers[0].1), b"v");
        // A payload or params without an open are refused.
        for flag in [START_PAYLOAD, START_PARAMS] {
            let mut bad = small.clone();
            bad[1] |= flag;
            assert_eq!(
                decode_start(&bad, &mut s, 0, &NameTable::new()),
                Err(ProtoError(
                    "a request part in a phase start that opens nothing"
                ))
            );
        }
    }

    #[test]
    fn every_truncation_of_a_phase_start_is_refused() {
        let mut ctx = sample();
        let mut buf = Vec::new();
        // With an announcement and an id among the names.
        let id = NAME_IDS as u32 - 1;
        encode_start(
            &mut buf,
            1,
            Some("entry"),
            &mut ctx,
            b"u",
            Slabbed::default(),
            &mut [id | CODE_ANNOUNCE, id].iter(),
        );
        let mut s = Start::default();
        for n in 0..buf.len() {
            assert!(
                decode_start(&buf[..n], &mut s, 0, &NameTable::new()).is_err(),
                "prefix {n}"
            );
        }
        let mut longer = buf.clone();
        longer.push(0);
        assert!(decode_start(&longer, &mut s, 0, &NameTable::new()).is_err());
    }

    #[test]
    fn a_huge_count_is_refused_without_allocating_for_it() {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let mut buf = Vec::new();
        encode_start(
            &mut buf,
            1,
            None,
            &mut ctx,
            b"",
            Slabbed::default(),
            &mut Inline,
        );
        // The response header count sits right after the error string.
        let mut r = Reader::new(&buf);
        r.take(20).unwrap();
        r.bytes().unwrap();
        let at = r.pos();
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut s = Start::default();
        assert_eq!(
            decode_start(&buf, &mut s, 0, &NameTable::new()),
            Err(ProtoError("count larger than the frame"))
        );
    }

    #[test]
    fn a_phase_end_round_trips_and_garbage_is_refused() {
        let mut out = Vec::new();
        EndWriter::head(&mut out, outcome::END, "");
        write_command(&mut out, Command::Status(201));
        write_command(&mut out, Command::SetHeader("x", "y"));
        write_command(&mut out, Command::SetBody(b"body"));
        write_command(&mut out, Command::StreamEnd);
        let mut got = Vec::new();
        let (code, msg) = decode_end(&out, &[], |c| got.push(format!("{c:?}"))).unwrap();
        assert_eq!((code, msg), (outcome::END, ""));
        assert_eq!(got.len(), 4);
        for n in 0..out.len() {
            // A cut inside the head or a command is refused; a cut between
            // commands is a shorter valid frame.
            let _ = decode_end(&out[..n], &[], |_| {});
        }
        let mut bad = out.clone();
        bad.push(99);
        assert!(decode_end(&bad, &[], |_| {}).is_err());
        let mut bad = out.clone();
        bad[0] = 42;
        assert!(decode_end(&bad, &[], |_| {}).is_err());
        // A header length that points past the end.
        let mut bad = Vec::new();
        EndWriter::head(&mut bad, outcome::NEXT, "");
        bad.push(op::SET_HEADER);
        bad.extend_from_slice(&1000u32.to_le_bytes());
        assert!(decode_end(&bad, &[], |_| {}).is_err());
    }

    #[test]
    fn blobs_in_slabs_are_offsets_checked_against_the_slab_area() {
        let mut ctx = sample();
        ctx.set_response_body(b"a large body");
        let slabbed = Slabbed {
            payload: Some(0),
            body: Some(100),
        };
        let mut buf = Vec::new();
        encode_start(&mut buf, 3, Some("e"), &mut ctx, b"u", slabbed, &mut Inline);
        let mut slabs = vec![0u8; 112];
        slabs[..7].copy_from_slice(b"{\"p\":1}");
        slabs[100..112].copy_from_slice(b"a large body");
        let mut s = Start::default();
        decode_start(&buf, &mut s, slabs.len(), &NameTable::new()).unwrap();
        assert_eq!(s.request.payload, Blob::Slab((0, 7)));
        assert_eq!(s.body.get(&buf, &slabs), b"a large body");
        // One byte short of the body's end: refused.
        assert_eq!(
            decode_start(&buf, &mut s, 111, &NameTable::new()),
            Err(ProtoError("slab range outside the sender's slab area"))
        );

        let mut out = Vec::new();
        EndWriter::head(&mut out, outcome::NEXT, "");
        write_slab_command(&mut out, Command::SetBody(b"a large body"), 100);
        write_command(&mut out, Command::StreamData(b"inline"));
        write_slab_command(&mut out, Command::StreamData(b"{\"p\":1}"), 0);
        let mut got = Vec::new();
        decode_end(&out, &slabs, |c| got.push(c)).unwrap();
        assert_eq!(
            got,
            [
                Command::SetBody(b"a large body"),
                Command::StreamData(b"inline"),
                Command::StreamData(b"{\"p\":1}"),
            ]
        );
        assert_eq!(
            decode_from_worker(PHASE_END, &out, &slabs[..111]),
            Err(ProtoError("slab range outside the sender's slab area"))
        );
        // An offset near u32::MAX must not wrap around the check.
        let mut bad = Vec::new();
        EndWriter::head(&mut bad, outcome::NEXT, "");
        write_slab_command(&mut bad, Command::SetBody(&[0; 16]), u32::MAX - 8);
        assert!(decode_end(&bad, &slabs, |_| {}).is_err());

        let mut reply = Vec::new();
        reply.blob(b"{\"p\":1}", Some(0));
        assert_eq!(decode_read_reply(&reply, 7), Ok(Blob::Slab((0, 7))));
        assert!(decode_read_reply(&reply, 6).is_err());
        reply.clear();
        reply.blob(b"in frame", None);
        assert_eq!(decode_read_reply(&reply, 0), Ok(Blob::Frame((4, 8))));
        reply.push(0);
        assert!(decode_read_reply(&reply, 0).is_err());
    }

    /// An opening phase-1 start of `ctx` with these name codes.
    fn opening(ctx: &mut MemoryContext, codes: &[u32]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_start(
            &mut buf,
            1,
            Some("e"),
            ctx,
            b"u",
            Slabbed::default(),
            &mut codes.iter(),
        );
        buf
    }

    #[test]
    fn header_names_cross_in_place_as_announcements_and_as_ids() {
        let mut ctx = sample();
        // Request headers x-a, x-b; response header x-r.
        let accept = crate::intern::WELL_KNOWN
            .iter()
            .position(|n| *n == "accept")
            .unwrap() as u32;
        let new_id = NAME_IDS as u32 - 1;
        let codes = [new_id | CODE_ANNOUNCE, new_id, CODE_INLINE];
        let buf = opening(&mut ctx, &codes);
        let mut c = Counter::default();
        encode_start(
            &mut c,
            1,
            Some("e"),
            &mut ctx,
            b"u",
            Slabbed::default(),
            &mut codes.iter(),
        );
        assert_eq!(c.0, buf.len(), "the counting pass agrees");
        let names = NameTable::new();
        let mut s = Start::default();
        decode_start(&buf, &mut s, 0, &names).unwrap();
        // The announcement taught the worker the name; the second header
        // used only its id.
        assert_eq!(s.request.headers[0].0, Name::Id(new_id));
        assert_eq!(s.request.headers[1].0, Name::Id(new_id));
        assert_eq!(names.get(new_id), Some(&b"x-a"[..]));
        assert!(matches!(s.response_headers[0].0, Name::Frame(_)));
        assert_eq!(s.response_headers[0].0.get(&buf, &names), b"x-r");
        assert_eq!(names.get(accept), Some(&b"accept"[..]), "well-known");
        // A second announcement of a known id, an id nobody announced, an
        // id out of range: refused.
        assert_eq!(
            decode_start(&buf, &mut s, 0, &names),
            Err(ProtoError("header name id announced twice"))
        );
        let buf = opening(&mut ctx, &[new_id - 1, new_id - 1, CODE_INLINE]);
        assert_eq!(
            decode_start(&buf, &mut s, 0, &NameTable::new()),
            Err(ProtoError("unknown header name id"))
        );
        let buf = opening(&mut ctx, &[NAME_IDS as u32 | CODE_ANNOUNCE]);
        assert_eq!(
            decode_start(&buf, &mut s, 0, &NameTable::new()),
            Err(ProtoError("header name id out of range"))
        );
        // Only lower-case tokens are learned.
        let mut upper = MemoryContext::new(RequestSpec::default(), None);
        upper.set_response_header("x up", "1");
        let buf = opening(&mut upper, &[new_id | CODE_ANNOUNCE]);
        assert_eq!(
            decode_start(&buf, &mut s, 0, &NameTable::new()),
            Err(ProtoError(
                "announced header name is not a lower-case token"
            ))
        );
    }

    #[test]
    fn websocket_frames_round_trip_and_bad_ones_are_refused() {
        let cases = [
            WsCommand::Send(WsMessage::Text(b"hi")),
            WsCommand::Send(WsMessage::Binary(&[0, 1, 255])),
            WsCommand::Send(WsMessage::Binary(&[])),
            WsCommand::Close,
            WsCommand::Join("lobby"),
            WsCommand::Leave(""),
            WsCommand::Broadcast("r\u{e9}", WsMessage::Text(b"x")),
            WsCommand::Broadcast("r", WsMessage::Binary(&[7, 8])),
        ];
        for c in cases {
            let mut buf = Vec::new();
            write_ws_command(&mut buf, c);
            assert_eq!(decode_ws_command(&buf), Ok(c));
            assert_eq!(decode_from_worker(WS, &buf, &[]), Ok(()));
        }
        let bad: [&[u8]; 6] = [
            &[],
            &[0],
            &[ws_op::BROADCAST_BINARY + 1],
            &[ws_op::CLOSE, 0],
            &[ws_op::JOIN, 0xff],
            // A room field longer than the frame.
            &[ws_op::BROADCAST_TEXT, 9, 0, 0, 0, b'a'],
        ];
        for b in bad {
            assert!(decode_ws_command(b).is_err(), "{b:?}");
            assert!(decode_from_worker(WS, b, &[]).is_err(), "{b:?}");
        }
        // The upgrade's read and its answer.
        assert_eq!(decode_from_worker(READ, &[READ_WS_UPGRADE], &[]), Ok(()));
        assert!(decode_from_worker(READ, &[READ_WS_UPGRADE + 1], &[]).is_err());
        assert_eq!(decode_upgrade_reply(&[0]), Ok(Ok(())));
        assert_eq!(decode_upgrade_reply(b"\x01no key"), Ok(Err("no key")));
        for b in [&[][..], &[0, 0], &[2], &[1, 0xff]] {
            assert!(decode_upgrade_reply(b).is_err(), "{b:?}");
        }
        // The client's events.
        assert_eq!(decode_ws_event(b"\x01hi"), Ok((ws_event::TEXT, &b"hi"[..])));
        assert_eq!(
            decode_ws_event(&[ws_event::BINARY]),
            Ok((ws_event::BINARY, &[][..]))
        );
        assert_eq!(
            decode_ws_event(&[ws_event::CLOSED]),
            Ok((ws_event::CLOSED, &[][..]))
        );
        assert_eq!(
            decode_ws_event(b"\x04gone"),
            Ok((ws_event::ERROR, &b"gone"[..]))
        );
        for b in [
            &[][..],
            &[0],
            &[5],
            &[ws_event::CLOSED, 1],
            &[ws_event::ERROR, 0xff],
        ] {
            assert!(decode_ws_event(b).is_err(), "{b:?}");
        }
    }
}
