//! The FlatBuffers header messages: `HeaderKeyValue` (method 100) and
//! `NylonHttpHeaders` (methods 110 and 202).
#![forbid(unsafe_code)]

use std::fmt;

use flatbuffers::{FlatBufferBuilder, InvalidFlatbuffer, WIPOffset};

use super::fbs::{HeaderKeyValue, HeaderKeyValueArgs, NylonHttpHeaders, NylonHttpHeadersArgs};

/// Why a header message from a plugin was rejected.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderCodecError {
    /// The buffer failed FlatBuffers verification.
    Invalid(InvalidFlatbuffer),
}

impl fmt::Display for HeaderCodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "malformed flatbuffer: {e}"),
        }
    }
}

impl std::error::Error for HeaderCodecError {}

impl From<InvalidFlatbuffer> for HeaderCodecError {
    fn from(e: InvalidFlatbuffer) -> Self {
        Self::Invalid(e)
    }
}

/// Encodes a `HeaderKeyValue` root (the payload of `SET_RESPONSE_HEADER`).
pub fn encode_header_kv(key: &str, value: &str) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(64 + key.len() + value.len());
    let key = fbb.create_string(key);
    let value = fbb.create_string(value);
    let root = HeaderKeyValue::create(
        &mut fbb,
        &HeaderKeyValueArgs {
            key: Some(key),
            value: Some(value),
        },
    );
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

/// Verifies and decodes a `HeaderKeyValue` root into `(key, value)`.
///
/// # Errors
///
/// [`HeaderCodecError::Invalid`] when the buffer does not verify (bad offsets,
/// missing required field, non-UTF-8 string).
pub fn decode_header_kv(buf: &[u8]) -> Result<(&str, &str), HeaderCodecError> {
    let kv = flatbuffers::root::<HeaderKeyValue<'_>>(buf)?;
    Ok((kv.key(), kv.value()))
}

/// Encodes a `NylonHttpHeaders` root from `(name, value)` pairs, in order.
///
/// A value that is not visible ASCII (or tab) is sent as `""`, as the original
/// host does; names are sent as given.
pub fn encode_headers<'a, I>(headers: I) -> Vec<u8>
where
    I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut fbb = FlatBufferBuilder::with_capacity(256);
    let mut items: Vec<WIPOffset<HeaderKeyValue<'_>>> = Vec::new();
    for (name, value) in headers {
        let name = fbb.create_string(&String::from_utf8_lossy(name));
        let value = fbb.create_string(visible_ascii(value));
        items.push(HeaderKeyValue::create(
            &mut fbb,
            &HeaderKeyValueArgs {
                key: Some(name),
                value: Some(value),
            },
        ));
    }
    let headers = fbb.create_vector(&items);
    let root = NylonHttpHeaders::create(
        &mut fbb,
        &NylonHttpHeadersArgs {
            headers: Some(headers),
        },
    );
    fbb.finish_minimal(root);
    fbb.finished_data().to_vec()
}

/// Verifies and decodes a `NylonHttpHeaders` root into `(name, value)` pairs.
///
/// # Errors
///
/// [`HeaderCodecError::Invalid`] when the buffer does not verify.
pub fn decode_headers(buf: &[u8]) -> Result<Vec<(&str, &str)>, HeaderCodecError> {
    let root = flatbuffers::root::<NylonHttpHeaders<'_>>(buf)?;
    Ok(root
        .headers()
        .iter()
        .map(|kv| (kv.key(), kv.value()))
        .collect())
}

/// Returns `value` as text if every byte is visible ASCII or tab, else `""`.
pub(crate) fn visible_ascii(value: &[u8]) -> &str {
    if value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        // Visible ASCII is valid UTF-8, so this never takes the `unwrap_or` arm.
        std::str::from_utf8(value).unwrap_or("")
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_kv_round_trips() {
        let buf = encode_header_kv("X-Id", "42");
        assert_eq!(decode_header_kv(&buf), Ok(("X-Id", "42")));
    }

    #[test]
    fn header_kv_layout_matches_the_legacy_schema() {
        // Root offset, then a vtable with key at voffset 4 and value at voffset 6.
        let buf = encode_header_kv("k", "v");
        let kv = flatbuffers::root::<HeaderKeyValue<'_>>(&buf).unwrap();
        assert_eq!(HeaderKeyValue::VT_KEY, 4);
        assert_eq!(HeaderKeyValue::VT_VALUE, 6);
        assert_eq!((kv.key(), kv.value()), ("k", "v"));
    }

    #[test]
    fn headers_round_trip_in_order_with_repeats() {
        let hs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")];
        let buf = encode_headers(hs);
        assert_eq!(
            decode_headers(&buf).unwrap(),
            vec![("a", "1"), ("b", "2"), ("a", "3")]
        );
    }

    #[test]
    fn non_visible_values_become_empty() {
        let hs: [(&[u8], &[u8]); 2] = [(b"x", b"caf\xc3\xa9"), (b"y", b"a\tb")];
        let buf = encode_headers(hs);
        assert_eq!(
            decode_headers(&buf).unwrap(),
            vec![("x", ""), ("y", "a\tb")]
        );
    }

    /// The cases of the Go codec's golden file: `(key, value)` pairs for
    /// `HeaderKeyValue`, header lists for `NylonHttpHeaders`. The lengths
    /// cover every padding (0 to 3 bytes) and the vtable deduplication.
    type Pairs = Vec<(String, String)>;

    fn golden_cases() -> (Pairs, Vec<Pairs>) {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        let kv = vec![
            s("", ""),
            s("k", "v"),
            s("X-Id", "42"),
            s("ab", "abc"),
            s("abc", "abcd"),
            s("content-type", "application/json"),
            s("x-caf\u{e9}", "\u{1f600}"),
            s(&"k".repeat(300), &"v".repeat(1000)),
        ];
        let scenario = [
            ("host", "api.example.com"),
            ("user-agent", "bench/1.0"),
            ("accept", "application/json"),
            ("accept-encoding", "gzip"),
            ("authorization", "Bearer abc.def.ghi"),
            ("x-request-id", "4bf92f3577b34da6"),
            ("content-type", "application/json"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let headers = vec![
            vec![],
            vec![s("a", "1")],
            vec![s("", "")],
            vec![s("a", "1"), s("b", "22"), s("a", "333"), s("dddd", "")],
            scenario.iter().map(|(k, v)| s(k, v)).collect(),
            (0..40)
                .map(|i| s(&format!("x-h{i}"), &"v".repeat(i)))
                .collect(),
        ];
        (kv, headers)
    }

    fn hex(b: &[u8]) -> String {
        if b.is_empty() {
            return "-".into();
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The golden file the Go codec is tested against (`go test` in
    /// sdk/go/internal/fbs) holds what this codec encodes, byte for byte.
    /// `NYLON_BLESS=1 cargo test --lib go_golden` rewrites it.
    #[test]
    fn go_golden_file_is_what_this_codec_encodes() {
        let (kv, headers) = golden_cases();
        let mut text = String::from(
            "# Written by src/codec/headers.rs (NYLON_BLESS=1 cargo test --lib go_golden).\n\
             # kv KEY VALUE MESSAGE | headers N KEY VALUE ... MESSAGE; hex, `-` for empty.\n",
        );
        for (k, v) in &kv {
            let buf = encode_header_kv(k, v);
            assert_eq!(decode_header_kv(&buf), Ok((k.as_str(), v.as_str())));
            text += &format!(
                "kv {} {} {}\n",
                hex(k.as_bytes()),
                hex(v.as_bytes()),
                hex(&buf)
            );
        }
        for hs in &headers {
            let buf = encode_headers(hs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
            text += &format!("headers {}", hs.len());
            for (k, v) in hs {
                text += &format!(" {} {}", hex(k.as_bytes()), hex(v.as_bytes()));
            }
            text += &format!(" {}\n", hex(&buf));
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("sdk/go/internal/fbs/testdata/golden.txt");
        if std::env::var_os("NYLON_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} differs from the Rust codec's output: run NYLON_BLESS=1 cargo test --lib go_golden",
            path.display()
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x01",
            b"\xff\xff\xff\xff",
            b"\x04\0\0\0\0\0\0\0",
        ] {
            assert!(decode_header_kv(bad).is_err());
            assert!(decode_headers(bad).is_err());
        }
        // A NylonHttpHeaders root is not a valid HeaderKeyValue (its required
        // value field is missing).
        let hs: [(&[u8], &[u8]); 0] = [];
        assert!(decode_header_kv(&encode_headers(hs)).is_err());
    }
}
