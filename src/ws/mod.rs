//! WebSocket frames (RFC 6455): header parsing with limits, unmasking, and
//! building outgoing frames.
//!
//! Every length and flag comes from the network, so [`parse_head`] checks
//! them all (reserved bits, control-frame rules, a maximum payload) and returns
//! a typed error. [`unmask`] works a machine word at a time; the byte-by-byte
//! version the legacy host uses is kept as [`unmask_bytewise`] for the
//! baseline and for differential tests.
//!
//! [`codec`] builds the whole protocol on these: a sans-IO server-side
//! connection (fragmentation, control frames, UTF-8, close codes, limits) and
//! the encoder of server frames.
#![forbid(unsafe_code)]

use std::fmt;

pub mod codec;

/// Frame opcodes.
pub mod opcode {
    /// Continuation.
    pub const CONTINUATION: u8 = 0x0;
    /// Text.
    pub const TEXT: u8 = 0x1;
    /// Binary.
    pub const BINARY: u8 = 0x2;
    /// Close.
    pub const CLOSE: u8 = 0x8;
    /// Ping.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// Final fragment.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// The masking key, if masked.
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes of the header (2 to 14).
    pub header_len: usize,
}

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// A reserved bit is set (no extension was negotiated).
    Reserved,
    /// An opcode RFC 6455 does not define.
    BadOpcode(u8),
    /// A control frame that is fragmented or longer than 125 bytes.
    BadControl,
    /// A payload longer than the limit.
    TooLong(u64),
    /// A 16- or 64-bit length that should have used a shorter form, or a
    /// 64-bit length with the top bit set.
    BadLength,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reserved => f.write_str("reserved bits set"),
            Self::BadOpcode(o) => write!(f, "unknown opcode {o:#x}"),
            Self::BadControl => f.write_str("invalid control frame"),
            Self::TooLong(n) => write!(f, "payload of {n} bytes exceeds the limit"),
            Self::BadLength => f.write_str("non-minimal or invalid payload length"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Parses a frame header from the start of `buf`.
///
/// `Ok(None)` means more bytes are needed. `max_payload` bounds the payload.
///
/// # Errors
///
/// A [`FrameError`] for anything RFC 6455 forbids or the limit refuses.
pub fn parse_head(buf: &[u8], max_payload: u64) -> Result<Option<FrameHead>, FrameError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let fin = b0 & 0x80 != 0;
    let op = b0 & 0x0F;
    match op {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || b1 & 0x7F > 125 {
                return Err(FrameError::BadControl);
            }
        }
        other => return Err(FrameError::BadOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    let (len, ext) = match b1 & 0x7F {
        126 => {
            let [a, b, ..] = rest else { return Ok(None) };
            let len = u64::from(u16::from_be_bytes([*a, *b]));
            if len < 126 {
                return Err(FrameError::BadLength);
            }
            (len, 2)
        }
        127 => {
            let Some(bytes) = rest.get(..8) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(bytes);
            let len = u64::from_be_bytes(be);
            if len <= 0xFFFF || len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        n => (u64::from(n), 0),
    };
    if len > max_payload {
        return Err(FrameError::TooLong(len));
    }
    let mask = if masked {
        let Some(m) = rest.get(ext..ext + 4) else {
            return Ok(None);
        };
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(FrameHead {
        fin,
        opcode: op,
        mask,
        len,
        header_len: 2 + ext + if masked { 4 } else { 0 },
    }))
}

/// Unmasks `data` in place, eight bytes at a time.
///
/// The mask repeats every four bytes, so an 8-byte word holding it twice
/// applies to every 8-byte chunk; the compiler turns the loop into vector
/// XORs. The tail (under 8 bytes) continues the same mask phase. (A 16-byte
/// `u128` word measured slower: `cargo run --release --example ws_unmask`.)
pub fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u64::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Unmasks one byte at a time, as the legacy host does.
pub fn unmask_bytewise(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends an unmasked server frame (FIN set) to `out`.
pub fn write_frame(out: &mut Vec<u8>, op: u8, payload: &[u8]) {
    write_frame_head(out, true, op, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Appends the header of an unmasked frame of `len` payload bytes, with the
/// shortest length encoding.
pub fn write_frame_head(out: &mut Vec<u8>, fin: bool, op: u8, len: u64) {
    out.push(if fin { 0x80 } else { 0 } | (op & 0x0F));
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Builds a masked client frame with FIN set (tests and benchmarks).
pub fn client_frame(op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    client_frame_fragment(true, op, payload, mask)
}

/// Builds a masked client frame, FIN as given (tests and benchmarks).
pub fn client_frame_fragment(fin: bool, op: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    write_frame_head(&mut out, fin, op, payload.len() as u64);
    out[1] |= 0x80;
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask_bytewise(&mut out[start..], mask);
    out
}

/// Parses the first complete frame of `buf`, unmasking its payload in place.
///
/// Returns the header and the payload range within `buf`, or `Ok(None)` when
/// the frame is incomplete.
///
/// # Errors
///
/// As [`parse_head`].
pub fn parse_frame(
    buf: &mut [u8],
    max_payload: u64,
) -> Result<Option<(FrameHead, std::ops::Range<usize>)>, FrameError> {
    let Some(head) = parse_head(buf, max_payload)? else {
        return Ok(None);
    };
    let start = head.header_len;
    let Some(end) = usize::try_from(head.len)
        .ok()
        .and_then(|l| start.checked_add(l))
    else {
        return Err(FrameError::TooLong(head.len));
    };
    if end > buf.len() {
        return Ok(None);
    }
    if let Some(mask) = head.mask {
        unmask(&mut buf[start..end], mask);
    }
    Ok(Some((head, start..end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_masked_text_frame_round_trips() {
        let msg = vec![b'a'; 125];
        let mut f = client_frame(opcode::TEXT, &msg, [1, 2, 3, 4]);
        let (head, range) = parse_frame(&mut f, 1 << 20).unwrap().unwrap();
        assert_eq!(
            (head.fin, head.opcode, head.len, head.header_len),
            (true, 1, 125, 6)
        );
        assert_eq!(&f[range], &msg[..]);
    }

    #[test]
    fn lengths_16_and_64_bit() {
        for n in [126usize, 65_535, 65_536, 100_000] {
            let msg = vec![7u8; n];
            let mut f = client_frame(opcode::BINARY, &msg, [9, 8, 7, 6]);
            let (head, range) = parse_frame(&mut f, 1 << 20).unwrap().unwrap();
            assert_eq!(head.len as usize, n);
            assert!(f[range].iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn word_unmask_matches_bytewise_for_every_length_and_offset() {
        for len in 0..80 {
            let data: Vec<u8> = (0..len as u8).collect();
            let (mut a, mut b) = (data.clone(), data);
            unmask(&mut a, [0xde, 0xad, 0xbe, 0xef]);
            unmask_bytewise(&mut b, [0xde, 0xad, 0xbe, 0xef]);
            assert_eq!(a, b);
        }
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let f = client_frame(opcode::TEXT, &[1; 300], [1, 1, 1, 1]);
        for cut in 0..f.len() {
            let mut part = f[..cut].to_vec();
            assert_eq!(
                parse_frame(&mut part, 1 << 20).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(parse_head(&[0xC1, 0x00], 10), Err(FrameError::Reserved));
        assert_eq!(parse_head(&[0x83, 0x00], 10), Err(FrameError::BadOpcode(3)));
        assert_eq!(
            parse_head(&[0x09, 0x00], 10),
            Err(FrameError::BadControl),
            "fragmented ping"
        );
        assert_eq!(
            parse_head(&[0x89, 126, 0, 200], 1000),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse_head(&[0x81, 126, 0, 5], 1000),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            parse_head(&[0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], u64::MAX),
            Err(FrameError::BadLength)
        );
        assert_eq!(parse_head(&[0x81, 100], 50), Err(FrameError::TooLong(100)));
    }
}
