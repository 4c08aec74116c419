//! Looking up top-level keys of a JSON object without parsing it into a tree
//! and without allocating.
//!
//! Serde and sonic-rs both allocate per parse (sonic-rs for its parser
//! state), which is most of the cost of reading two keys of a small
//! middleware payload on every request. [`lookup`] walks the object once,
//! skipping values by their structure (strings with escapes, nested
//! containers by depth), and returns the raw bytes of the value. It checks
//! the structure it walks (quotes, colons, commas, balanced brackets, a depth
//! limit) and returns an error for anything else; it does not validate number
//! formats or string escapes inside values it skips. Keys are compared as raw
//! bytes (a key written with escapes does not match its unescaped form).
//! Full parsing, when a plugin needs it, goes through sonic-rs.
#![forbid(unsafe_code)]

use std::fmt;

/// Nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 128;

/// Why a payload could not be walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonError {
    /// The input is not an object.
    NotAnObject,
    /// Unexpected byte at this offset.
    Unexpected(usize),
    /// The input ended inside a value.
    Truncated,
    /// Nesting beyond [`MAX_DEPTH`].
    TooDeep,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnObject => f.write_str("payload is not a JSON object"),
            Self::Unexpected(at) => write!(f, "unexpected byte at offset {at}"),
            Self::Truncated => f.write_str("payload ends inside a value"),
            Self::TooDeep => f.write_str("payload nests too deeply"),
        }
    }
}

impl std::error::Error for JsonError {}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Returns the index just past the string starting at `i` (which is `"`).
fn skip_string(b: &[u8], mut i: usize) -> Result<usize, JsonError> {
    debug_assert_eq!(b.get(i), Some(&b'"'));
    i += 1;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok(i + 1),
            b'\\' => i += 2,
            c if c < 0x20 => return Err(JsonError::Unexpected(i)),
            _ => i += 1,
        }
    }
    Err(JsonError::Truncated)
}

/// Returns the index just past the value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Result<usize, JsonError> {
    match b.get(i) {
        None => Err(JsonError::Truncated),
        Some(b'"') => skip_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(JsonError::TooDeep);
                        }
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(JsonError::Truncated)
        }
        Some(c) if c.is_ascii_digit() || *c == b'-' || c.is_ascii_alphabetic() => {
            let mut j = i;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || matches!(b[j], b'-' | b'+' | b'.'))
            {
                j += 1;
            }
            Ok(j)
        }
        Some(_) => Err(JsonError::Unexpected(i)),
    }
}

/// The raw bytes of the value of top-level `key` in the object `json`
/// (a string value keeps its quotes); `Ok(None)` if the key is absent.
///
/// # Errors
///
/// A [`JsonError`] when the object's structure is broken before the key is
/// found.
///
/// # Examples
///
/// ```
/// use nylon_transport::codec::json::lookup;
/// let p = br#"{"user":"alice","limit":10}"#;
/// assert_eq!(lookup(p, b"limit")?, Some(&b"10"[..]));
/// assert_eq!(lookup(p, b"user")?, Some(&b"\"alice\""[..]));
/// assert_eq!(lookup(p, b"none")?, None);
/// # Ok::<(), nylon_transport::codec::json::JsonError>(())
/// ```
pub fn lookup<'a>(json: &'a [u8], key: &[u8]) -> Result<Option<&'a [u8]>, JsonError> {
    let b = json;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(JsonError::NotAnObject);
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(if i >= b.len() {
                JsonError::Truncated
            } else {
                JsonError::Unexpected(i)
            });
        }
        let key_end = skip_string(b, i)?;
        let this_key = &b[i + 1..key_end - 1];
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(if i >= b.len() {
                JsonError::Truncated
            } else {
                JsonError::Unexpected(i)
            });
        }
        let start = skip_ws(b, i + 1);
        let end = skip_value(b, start)?;
        if this_key == key {
            return Ok(Some(&b[start..end]));
        }
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(None),
            Some(_) => return Err(JsonError::Unexpected(i)),
            None => return Err(JsonError::Truncated),
        }
    }
}

/// The value of top-level `key` as a string without quotes, when it is a
/// string without escapes.
pub fn lookup_str<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let v = lookup(json, key).ok()??;
    let inner = v.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_of_every_kind_and_skips_nested_ones() {
        let p = br#" { "a" : {"x":[1,{"y":"}"}]}, "b":[ "]", 2 ], "c":"q\"uo\\te", "d":-1.5e3, "e":true, "f":null } "#;
        assert_eq!(
            lookup(p, b"a").unwrap(),
            Some(&br#"{"x":[1,{"y":"}"}]}"#[..])
        );
        assert_eq!(lookup(p, b"b").unwrap(), Some(&br#"[ "]", 2 ]"#[..]));
        assert_eq!(lookup(p, b"c").unwrap(), Some(&br#""q\"uo\\te""#[..]));
        assert_eq!(lookup(p, b"d").unwrap(), Some(&b"-1.5e3"[..]));
        assert_eq!(lookup(p, b"e").unwrap(), Some(&b"true"[..]));
        assert_eq!(lookup(p, b"f").unwrap(), Some(&b"null"[..]));
        assert_eq!(lookup(p, b"x").unwrap(), None, "only top-level keys");
        assert_eq!(lookup_str(br#"{"u":"alice"}"#, b"u"), Some("alice"));
        assert_eq!(lookup_str(br#"{"u":"a\"b"}"#, b"u"), None);
    }

    #[test]
    fn agrees_with_serde_json_on_valid_objects() {
        let cases = [
            r#"{"user":"alice","limit":10}"#,
            r#"{"limit":[1,2,{"user":3}],"user":{"n":"}"}}"#,
            r#"{}"#,
            r#"{"user":""}"#,
        ];
        for c in cases {
            let v: serde_json::Value = serde_json::from_str(c).unwrap();
            for key in ["user", "limit"] {
                let ours = lookup(c.as_bytes(), key.as_bytes()).unwrap();
                let theirs = v.get(key);
                assert_eq!(ours.is_some(), theirs.is_some(), "{c} {key}");
                if let (Some(o), Some(t)) = (ours, theirs) {
                    let reparsed: serde_json::Value = serde_json::from_slice(o).unwrap();
                    assert_eq!(&reparsed, t, "{c} {key}");
                }
            }
        }
    }

    #[test]
    fn broken_input_is_an_error_never_a_panic() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        let cases: [&[u8]; 10] = [
            b"",
            b"[]",
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\" 1}",
            b"{a:1}",
            b"{\"a\":\"x",
            deep.as_bytes(),
        ];
        for c in cases {
            assert!(
                lookup(c, b"zzz").is_err(),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        assert_eq!(lookup(deep.as_bytes(), b"a"), Err(JsonError::TooDeep));
    }
}
