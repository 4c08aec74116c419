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
