//! A sans-IO, server-side RFC 6455 connection: bytes read from the client go
//! in with [`Connection::feed`], whole messages and control frames come out of
//! [`Connection::next_event`], and the `encode_*` functions build the server's
//! frames.
//!
//! No socket, no runtime: the host owns the I/O and the timers. The codec
//! enforces every rule of RFC 6455 §5 that a server must check on client
//! frames (masking, reserved bits, opcodes, control-frame rules,
//! fragmentation, UTF-8 of text, close payloads) and the two size limits of
//! [`Limits`]. A violation is a [`ProtocolError`], whose
//! [`close_code`](ProtocolError::close_code) is the code the server closes
//! with ([`close_for`] writes that close frame).
//!
//! # Buffers
//!
//! Input is appended to one buffer that is compacted on the next `feed`, so
//! its capacity is reused; a frame is unmasked in place there. An unfragmented
//! message (the common case) is handed out borrowed from that buffer, without
//! a copy. Fragments are appended to a second, reused buffer and handed out
//! from it once the final fragment arrived. Control frames are handed out
//! borrowed from the input buffer, also when they arrive in the middle of a
//! fragmented message.
//!
//! # Examples
//!
//! ```
//! use nylon_transport::ws::{self, codec::{Connection, Event, Limits}};
//!
//! let mut conn = Connection::new(Limits::default());
//! let mut wire = ws::client_frame_fragment(false, ws::opcode::TEXT, "hé".as_bytes(), [1, 2, 3, 4]);
//! wire.extend(ws::client_frame(ws::opcode::PING, b"p", [5, 6, 7, 8]));
//! wire.extend(ws::client_frame(ws::opcode::CONTINUATION, "llo".as_bytes(), [9, 9, 9, 9]));
//! conn.feed(&wire);
//! assert_eq!(conn.next_event()?, Some(Event::Ping(b"p")));
//! assert_eq!(conn.next_event()?, Some(Event::Text("héllo")));
//! assert_eq!(conn.next_event()?, None);
//! # Ok::<(), ws::codec::ProtocolError>(())
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

use super::{opcode, parse_head, unmask, write_frame_head, FrameError};

/// The size limits of a [`Connection`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame payload accepted (a larger one closes with 1009).
    /// Bounds the input buffer: a frame is buffered whole before it is
    /// handed out.
    pub max_frame: usize,
    /// The largest message accepted, all its fragments together (a larger
    /// one closes with 1009, as soon as a frame header announces it).
    pub max_message: usize,
}

impl Default for Limits {
    /// 1 MiB frames, 4 MiB messages.
    fn default() -> Self {
        Self {
            max_frame: 1 << 20,
            max_message: 4 << 20,
        }
    }
}

/// What the client sent: a whole message or a control frame. Borrowed from
/// the [`Connection`] until the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A text message, all fragments together, valid UTF-8.
    Text(&'a str),
    /// A binary message, all fragments together.
    Binary(&'a [u8]),
    /// A ping; the server answers with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong(&'a [u8]),
    /// The client's close. `code` is `None` for an empty close payload
    /// (the server replies with an empty close, or echoes the code). Nothing
    /// is read after it.
    Close {
        /// The status code, already validated.
        code: Option<u16>,
        /// The reason, valid UTF-8, at most 123 bytes.
        reason: &'a str,
    },
}

/// Why the connection fails. Each has the close code the server sends
/// ([`close_code`](Self::close_code)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame header is invalid (reserved bits, opcode, control frame
    /// rules, length encoding) or the frame is over the limit (1009).
    Frame(FrameError),
    /// A client frame without a mask (1002).
    Unmasked,
    /// A continuation frame with no message in progress (1002).
    UnexpectedContinuation,
    /// A text or binary frame while a fragmented message is in progress (1002).
    ExpectedContinuation,
    /// A message whose fragments add up to more than the limit (1009).
    MessageTooLong(u64),
    /// A text message that is not UTF-8, detected at the first fragment that
    /// makes it certain (1007).
    InvalidUtf8,
    /// A close frame with a 1-byte payload (1002).
    BadClosePayload,
    /// A close code that may not be sent on the wire (1002).
    BadCloseCode(u16),
    /// A close reason that is not UTF-8 (1007).
    BadCloseReason,
}

impl ProtocolError {
    /// Returns the close code a server answers this error with: 1009 for the
    /// size limits, 1007 for invalid UTF-8, 1002 for every other violation.
    #[must_use]
    pub fn close_code(self) -> u16 {
        match self {
            Self::Frame(FrameError::TooLong(_)) | Self::MessageTooLong(_) => 1009,
            Self::InvalidUtf8 | Self::BadCloseReason => 1007,
            _ => 1002,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => e.fmt(f),
            Self::Unmasked => f.write_str("unmasked client frame"),
            Self::UnexpectedContinuation => f.write_str("continuation without a message"),
            Self::ExpectedContinuation => f.write_str("new message inside a fragmented one"),
            Self::MessageTooLong(n) => write!(f, "message of {n} bytes exceeds the limit"),
            Self::InvalidUtf8 => f.write_str("invalid utf-8 in a text message"),
            Self::BadClosePayload => f.write_str("close payload of 1 byte"),
            Self::BadCloseCode(c) => write!(f, "invalid close code {c}"),
            Self::BadCloseReason => f.write_str("invalid utf-8 in a close reason"),
        }
    }
}

impl std::error::Error for ProtocolError {}

impl From<FrameError> for ProtocolError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

/// Returns whether a close code may be received on the wire (RFC 6455
/// §7.4.1 and §7.4.2, and the IANA registry): 1000-1003, 1007-1014 and
/// 3000-4999. 1004 (reserved), 1005, 1006 and 1015 (never on the wire), other
/// codes under 3000 (unassigned) and codes from 5000 are refused.
#[must_use]
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Open,
    Closed,
    Failed(ProtocolError),
}

/// What one step decoded, as ranges (no borrow of the connection).
enum Step {
    NeedMore,
    Continue,
    Text(Range<usize>),
    Binary(Range<usize>),
    Ping(Range<usize>),
    Pong(Range<usize>),
    /// The reassembled message in `msg`.
    Message(u8),
    Close(Option<u16>, Range<usize>),
}

/// The server side of one WebSocket connection, without I/O.
///
/// Feed it the bytes read from the client, then call
/// [`next_event`](Self::next_event) until it returns `Ok(None)`. After a
/// close it reads nothing more; after an error every call returns the same
/// error.
#[derive(Debug)]
pub struct Connection {
    limits: Limits,
    /// Input; `buf[pos..]` is not consumed yet.
    buf: Vec<u8>,
    pos: usize,
    /// The fragmented message being reassembled.
    msg: Vec<u8>,
    /// The opcode of the fragmented message in progress.
    fragmented: Option<u8>,
    /// `msg[..utf8_ok]` is known to be complete, valid UTF-8.
    utf8_ok: usize,
    /// `msg` was handed out; clear it on the next call.
    msg_taken: bool,
    state: State,
}

impl Connection {
    /// Creates a connection in the open state (after the handshake).
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buf: Vec::new(),
            pos: 0,
            msg: Vec::new(),
            fragmented: None,
            utf8_ok: 0,
            msg_taken: false,
            state: State::Open,
        }
    }

    /// Returns the limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Returns whether the client's close was received.
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Returns the bytes buffered and not yet decoded.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends bytes read from the client. Ignored after a close or an error.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.state != State::Open {
            return;
        }
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Decodes the next message or control frame.
    ///
    /// `Ok(None)` means more bytes are needed (or the client closed).
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] for a violation of RFC 6455 or of the limits; the
    /// connection then stays failed.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, ProtocolError> {
        match self.state {
            State::Open => {}
            State::Closed => return Ok(None),
            State::Failed(e) => return Err(e),
        }
        if self.msg_taken {
            self.msg.clear();
            self.utf8_ok = 0;
            self.msg_taken = false;
        }
        let step = loop {
            match self.step() {
                Ok(Step::Continue) => {}
                Ok(step) => break step,
                Err(e) => {
                    self.state = State::Failed(e);
                    return Err(e);
                }
            }
        };
        Ok(Some(match step {
            Step::NeedMore | Step::Continue => return Ok(None),
            Step::Ping(r) => Event::Ping(&self.buf[r]),
            Step::Pong(r) => Event::Pong(&self.buf[r]),
            Step::Binary(r) => Event::Binary(&self.buf[r]),
            Step::Text(r) => match std::str::from_utf8(&self.buf[r]) {
                Ok(s) => Event::Text(s),
                Err(_) => {
                    self.state = State::Failed(ProtocolError::InvalidUtf8);
                    return Err(ProtocolError::InvalidUtf8);
                }
            },
            Step::Message(op) => {
                self.msg_taken = true;
                if op == opcode::BINARY {
                    Event::Binary(&self.msg)
                } else {
                    // Validated fragment by fragment already; the second pass
                    // gives a `&str` without unsafe code.
                    match std::str::from_utf8(&self.msg) {
                        Ok(s) => Event::Text(s),
                        Err(_) => {
                            self.state = State::Failed(ProtocolError::InvalidUtf8);
                            return Err(ProtocolError::InvalidUtf8);
                        }
                    }
                }
            }
            Step::Close(code, r) => match std::str::from_utf8(&self.buf[r]) {
                Ok(reason) => {
                    self.state = State::Closed;
                    Event::Close { code, reason }
                }
                Err(_) => {
                    self.state = State::Failed(ProtocolError::BadCloseReason);
                    return Err(ProtocolError::BadCloseReason);
                }
            },
        }))
    }

    /// Decodes one frame if it is complete.
    fn step(&mut self) -> Result<Step, ProtocolError> {
        let avail = &self.buf[self.pos..];
        let max_frame = u64::try_from(self.limits.max_frame).unwrap_or(u64::MAX);
        // Control frames (at most 125 bytes, checked by parse_head) are
        // allowed whatever the limit.
        let Some(head) = parse_head(avail, max_frame.max(125))? else {
            return Ok(Step::NeedMore);
        };
        let control = head.opcode & 0x8 != 0;
        if !control && head.len > max_frame {
            return Err(FrameError::TooLong(head.len).into());
        }
        let Some(mask) = head.mask else {
            return Err(ProtocolError::Unmasked);
        };
        if !control {
            match (head.opcode, self.fragmented) {
                (opcode::CONTINUATION, None) => return Err(ProtocolError::UnexpectedContinuation),
                (opcode::TEXT | opcode::BINARY, Some(_)) => {
                    return Err(ProtocolError::ExpectedContinuation)
                }
                _ => {}
            }
            let total = (self.msg.len() as u64).saturating_add(head.len);
            if total > self.limits.max_message as u64 {
                return Err(ProtocolError::MessageTooLong(total));
            }
        }
        // head.len <= max_frame, which is a usize.
        let len = usize::try_from(head.len).map_err(|_| FrameError::TooLong(head.len))?;
        if avail.len() - head.header_len < len {
            return Ok(Step::NeedMore);
        }
        let start = self.pos + head.header_len;
        let range = start..start + len;
        unmask(&mut self.buf[range.clone()], mask);
        self.pos = range.end;
        match head.opcode {
            opcode::PING => Ok(Step::Ping(range)),
            opcode::PONG => Ok(Step::Pong(range)),
            opcode::CLOSE => match self.buf[range.clone()] {
                [] => Ok(Step::Close(None, range)),
                [_] => Err(ProtocolError::BadClosePayload),
                [a, b, ..] => {
                    let code = u16::from_be_bytes([a, b]);
                    if !is_valid_close_code(code) {
                        return Err(ProtocolError::BadCloseCode(code));
                    }
                    Ok(Step::Close(Some(code), range.start + 2..range.end))
                }
            },
            op @ (opcode::TEXT | opcode::BINARY) if head.fin => Ok(if op == opcode::TEXT {
                Step::Text(range)
            } else {
                Step::Binary(range)
            }),
            op => {
                let op = self.fragmented.unwrap_or(op);
                self.msg.extend_from_slice(&self.buf[range]);
                if op == opcode::TEXT {
                    self.check_utf8(head.fin)?;
                }
                if head.fin {
                    self.fragmented = None;
                    Ok(Step::Message(op))
                } else {
                    self.fragmented = Some(op);
                    Ok(Step::Continue)
                }
            }
        }
    }

    /// Validates the new bytes of a fragmented text message. An incomplete
    /// character at the end is fine unless the message ends there; a
    /// sequence no continuation can make valid fails at once.
    fn check_utf8(&mut self, fin: bool) -> Result<(), ProtocolError> {
        match std::str::from_utf8(&self.msg[self.utf8_ok..]) {
            Ok(_) => {
                self.utf8_ok = self.msg.len();
                Ok(())
            }
            Err(e) if e.error_len().is_none() && !fin => {
                self.utf8_ok += e.valid_up_to();
                Ok(())
            }
            Err(_) => Err(ProtocolError::InvalidUtf8),
        }
    }
}

/// A control frame payload over 125 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlTooLong;

impl fmt::Display for ControlTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("control frame payload over 125 bytes")
    }
}

impl std::error::Error for ControlTooLong {}

/// Appends a text message as server frames (unmasked): one frame, or
/// fragments of `fragment` bytes when `fragment` is `Some(n)` with `n > 0`
/// (a fragment may end inside a character; the message stays valid).
pub fn encode_text(out: &mut Vec<u8>, text: &str, fragment: Option<usize>) {
    encode_message(out, opcode::TEXT, text.as_bytes(), fragment);
}

/// Appends a binary message as server frames, fragmented as [`encode_text`].
pub fn encode_binary(out: &mut Vec<u8>, data: &[u8], fragment: Option<usize>) {
    encode_message(out, opcode::BINARY, data, fragment);
}

fn encode_message(out: &mut Vec<u8>, op: u8, payload: &[u8], fragment: Option<usize>) {
    let size = match fragment {
        Some(n) if n > 0 && n < payload.len() => n,
        _ => payload.len().max(1),
    };
    out.reserve(payload.len() + 10 * payload.len().div_ceil(size).max(1));
    let mut chunks = payload.chunks(size).peekable();
    let mut first = true;
    if chunks.peek().is_none() {
        write_frame_head(out, true, op, 0);
        return;
    }
    while let Some(c) = chunks.next() {
        let fin = chunks.peek().is_none();
        let o = if first { op } else { opcode::CONTINUATION };
        write_frame_head(out, fin, o, c.len() as u64);
        out.extend_from_slice(c);
        first = false;
    }
}

/// Appends a ping.
///
/// # Errors
///
/// [`ControlTooLong`] when `payload` is over 125 bytes.
pub fn encode_ping(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), ControlTooLong> {
    encode_control(out, opcode::PING, payload)
}

/// Appends a pong (the answer to a ping carries the ping's payload).
///
/// # Errors
///
/// [`ControlTooLong`] when `payload` is over 125 bytes.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), ControlTooLong> {
    encode_control(out, opcode::PONG, payload)
}

fn encode_control(out: &mut Vec<u8>, op: u8, payload: &[u8]) -> Result<(), ControlTooLong> {
    if payload.len() > 125 {
        return Err(ControlTooLong);
    }
    write_frame_head(out, true, op, payload.len() as u64);
    out.extend_from_slice(payload);
    Ok(())
}

/// Appends a close frame: empty when `code` is `None`, else the code and the
/// reason, cut at a character boundary to fit 125 bytes.
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    let Some(code) = code else {
        write_frame_head(out, true, opcode::CLOSE, 0);
        return;
    };
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    write_frame_head(out, true, opcode::CLOSE, 2 + reason.len() as u64);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// Appends the close frame a server sends when the client broke the
/// protocol: [`ProtocolError::close_code`] and the error as the reason.
pub fn close_for(out: &mut Vec<u8>, error: ProtocolError) {
    encode_close(out, Some(error.close_code()), &error.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{client_frame, client_frame_fragment};

    const M: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    fn first_error(wire: &[u8]) -> ProtocolError {
        let mut c = Connection::new(Limits::default());
        c.feed(wire);
        loop {
            match c.next_event() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("no error"),
                Err(e) => return e,
            }
        }
    }

    #[test]
    fn an_unmasked_client_frame_fails_with_1002() {
        let e = first_error(&[0x81, 0x01, b'a']);
        assert_eq!(e, ProtocolError::Unmasked);
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn after_a_close_nothing_more_is_read() {
        let mut wire = client_frame(opcode::CLOSE, &[0x03, 0xE8, b'b', b'y', b'e'], M);
        wire.extend(client_frame(opcode::TEXT, b"late", M));
        let mut c = Connection::new(Limits::default());
        c.feed(&wire);
        assert_eq!(
            c.next_event().unwrap(),
            Some(Event::Close {
                code: Some(1000),
                reason: "bye"
            })
        );
        assert_eq!(c.next_event().unwrap(), None);
        c.feed(&client_frame(opcode::TEXT, b"later", M));
        assert_eq!(c.next_event().unwrap(), None);
        assert!(c.is_closed());
    }

    #[test]
    fn an_error_is_sticky() {
        let mut c = Connection::new(Limits::default());
        c.feed(&client_frame(opcode::CONTINUATION, b"x", M));
        assert_eq!(c.next_event(), Err(ProtocolError::UnexpectedContinuation));
        c.feed(&client_frame(opcode::TEXT, b"ok", M));
        assert_eq!(c.next_event(), Err(ProtocolError::UnexpectedContinuation));
    }

    #[test]
    fn encoded_close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let mut out = Vec::new();
        encode_close(&mut out, Some(1000), &reason);
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert_eq!(out.len() - 4, 122, "61 two-byte characters");
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }

    #[test]
    fn encoded_fragments_reassemble() {
        let text = "héllo wörld ".repeat(20);
        let mut out = Vec::new();
        encode_text(&mut out, &text, Some(7));
        // Re-mask the server frames as a client would send them.
        let mut wire = Vec::new();
        let mut rest = &mut out[..];
        let mut frames = 0;
        while let Ok(Some((h, r))) = crate::ws::parse_frame(rest, 1 << 20) {
            let p = rest[r.clone()].to_vec();
            wire.extend(client_frame_fragment(h.fin, h.opcode, &p, M));
            rest = &mut rest[r.end..];
            frames += 1;
        }
        assert_eq!(frames, text.len().div_ceil(7));
        let mut c = Connection::new(Limits::default());
        c.feed(&wire);
        assert_eq!(c.next_event().unwrap(), Some(Event::Text(&text)));
    }

    #[test]
    fn close_for_uses_the_error_code() {
        let mut out = Vec::new();
        close_for(&mut out, ProtocolError::InvalidUtf8);
        assert_eq!(u16::from_be_bytes([out[2], out[3]]), 1007);
    }
}
