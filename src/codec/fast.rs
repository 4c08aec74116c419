//! Reply encodings without per-call allocation: a reused FlatBuffers builder,
//! `itoa` decimals and a hand-written JSON writer for params.
#![forbid(unsafe_code)]

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::fbs::{HeaderKeyValue, HeaderKeyValueArgs, NylonHttpHeaders, NylonHttpHeadersArgs};
use super::headers::visible_ascii;

/// Encodes `NylonHttpHeaders` replies into a builder that keeps its memory
/// between calls, so steady-state encoding does not allocate.
pub struct HeaderEncoder {
    fbb: FlatBufferBuilder<'static>,
    items: Vec<WIPOffset<HeaderKeyValue<'static>>>,
}

impl Default for HeaderEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HeaderEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEncoder").finish_non_exhaustive()
    }
}

impl HeaderEncoder {
    /// Creates an encoder with room for a typical header block.
    pub fn new() -> Self {
        Self {
            fbb: FlatBufferBuilder::with_capacity(1024),
            items: Vec::with_capacity(32),
        }
    }

    /// Appends the `NylonHttpHeaders` encoding of the pairs `each` yields to `out`.
    ///
    /// Same output as [`encode_headers`](super::encode_headers): names that are
    /// not UTF-8 become `""`, values that are not visible ASCII become `""`.
    pub fn encode(&mut self, each: impl FnOnce(&mut dyn FnMut(&[u8], &[u8])), out: &mut Vec<u8>) {
        self.fbb.reset();
        self.items.clear();
        let fbb = &mut self.fbb;
        let items = &mut self.items;
        each(&mut |name: &[u8], value: &[u8]| {
            let name = fbb.create_string(std::str::from_utf8(name).unwrap_or(""));
            let value = fbb.create_string(visible_ascii(value));
            items.push(HeaderKeyValue::create(
                fbb,
                &HeaderKeyValueArgs {
                    key: Some(name),
                    value: Some(value),
                },
            ));
        });
        let headers = self.fbb.create_vector(&self.items);
        let root = NylonHttpHeaders::create(
            &mut self.fbb,
            &NylonHttpHeadersArgs {
                headers: Some(headers),
            },
        );
        self.fbb.finish_minimal(root);
        out.extend_from_slice(self.fbb.finished_data());
    }
}

/// Appends an unsigned decimal without allocating.
pub fn write_u64(v: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends a signed decimal without allocating.
pub fn write_i64(v: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Appends the params JSON (`{"k":"v",...}` or `null`) without allocating,
/// byte-identical to [`encode_params`](super::scalar::encode_params).
pub fn write_params(params: Option<&[(String, String)]>, out: &mut Vec<u8>) {
    let Some(params) = params else {
        out.extend_from_slice(b"null");
        return;
    };
    out.push(b'{');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(k, out);
        out.push(b':');
        write_json_str(v, out);
    }
    out.push(b'}');
}

/// Appends `s` as a JSON string, escaped as serde_json does.
pub fn write_json_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode_headers, scalar::encode_params};

    #[test]
    fn header_encoder_matches_the_baseline_encoding_and_reuses_memory() {
        let hs: Vec<(&[u8], &[u8])> = vec![(b"a", b"1"), (b"b", b"caf\xc3\xa9"), (b"a", b"3")];
        let mut enc = HeaderEncoder::new();
        for _ in 0..3 {
            let mut out = Vec::new();
            enc.encode(
                |f| {
                    for (n, v) in &hs {
                        f(n, v)
                    }
                },
                &mut out,
            );
            assert_eq!(out, encode_headers(hs.iter().copied()));
        }
    }

    #[test]
    fn params_match_serde_json_byte_for_byte() {
        let cases: Vec<Vec<(String, String)>> = vec![
            vec![],
            vec![("id".into(), "7".into())],
            vec![
                ("q\"uote".into(), "back\\slash\n\t\u{1}\u{7f}é".into()),
                ("b".into(), "".into()),
            ],
        ];
        for p in &cases {
            let mut out = Vec::new();
            write_params(Some(p), &mut out);
            assert_eq!(out, encode_params(Some(p)), "{p:?}");
        }
        let mut out = Vec::new();
        write_params(None, &mut out);
        assert_eq!(out, b"null");
    }

    #[test]
    fn decimals() {
        let mut out = Vec::new();
        write_u64(u64::MAX, &mut out);
        out.push(b' ');
        write_i64(i64::MIN, &mut out);
        assert_eq!(out, b"18446744073709551615 -9223372036854775808");
    }
}
