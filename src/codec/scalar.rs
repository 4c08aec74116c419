//! Small payload encodings: big-endian status, ASCII decimals, `room\0payload`
//! and the JSON params object.
#![forbid(unsafe_code)]

use serde::ser::{Serialize, SerializeMap, Serializer};

/// Decodes a `SET_RESPONSE_STATUS` payload: the first two bytes, big-endian.
///
/// Fewer than two bytes is `None` (the command is ignored); extra bytes are ignored.
pub fn decode_status(payload: &[u8]) -> Option<u16> {
    match payload {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Encodes a status as the two big-endian bytes of `SET_RESPONSE_STATUS`.
pub fn encode_status(status: u16) -> [u8; 2] {
    status.to_be_bytes()
}

/// Parses an unsigned ASCII decimal as the host sends it: digits only, no sign.
pub fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &b in bytes {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        v = v.checked_mul(10)?.checked_add(u64::from(d))?;
    }
    Some(v)
}

/// Parses a signed ASCII decimal (an optional leading `-`, then digits).
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    match bytes {
        [b'-', rest @ ..] => {
            let v = parse_u64(rest)?;
            if v == i64::MIN.unsigned_abs() {
                Some(i64::MIN)
            } else {
                i64::try_from(v).ok().map(|v| -v)
            }
        }
        _ => i64::try_from(parse_u64(bytes)?).ok(),
    }
}

/// Splits a broadcast payload at the first NUL into `(room, message)`.
///
/// `None` when there is no NUL or the room is empty (the command is ignored).
pub fn split_room(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = payload.iter().position(|&b| b == 0)?;
    if nul == 0 {
        return None;
    }
    Some((&payload[..nul], &payload[nul + 1..]))
}

/// Builds a broadcast payload `room\0message`.
pub fn join_room_payload(room: &[u8], message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(room.len() + 1 + message.len());
    v.extend_from_slice(room);
    v.push(0);
    v.extend_from_slice(message);
    v
}

/// Route params serialised as the legacy host does: a JSON object of string
/// values in the given order, or `null` when params were never set.
pub fn encode_params(params: Option<&[(String, String)]>) -> Vec<u8> {
    struct Params<'a>(&'a [(String, String)]);
    impl Serialize for Params<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in self.0 {
                map.serialize_entry(k, v)?;
            }
            map.end()
        }
    }
    match params {
        // Serialising strings into a Vec cannot fail.
        Some(p) => serde_json::to_vec(&Params(p)).unwrap_or_else(|_| b"null".to_vec()),
        None => b"null".to_vec(),
    }
}

/// Decodes a params reply: a JSON object of strings, or `null` (`None`).
///
/// # Errors
///
/// The JSON error when the bytes are not `null` or an object of strings.
pub fn decode_params(bytes: &[u8]) -> Result<Option<Vec<(String, String)>>, serde_json::Error> {
    let v: Option<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(bytes)?;
    Ok(v.map(|m| {
        m.into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_big_endian_and_lenient_on_length() {
        assert_eq!(encode_status(418), [0x01, 0xa2]);
        assert_eq!(decode_status(&[0x01, 0xa2]), Some(418));
        assert_eq!(decode_status(&[0x01, 0xa2, 0xff]), Some(418));
        assert_eq!(decode_status(&[0x01]), None);
        assert_eq!(decode_status(&[]), None);
    }

    #[test]
    fn decimals_are_strict() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1a",
            b"123456789012345678901",
        ] {
            assert_eq!(parse_u64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"-"), None);
    }

    #[test]
    fn rooms_split_at_the_first_nul() {
        assert_eq!(
            split_room(b"lobby\0hi\0there"),
            Some((&b"lobby"[..], &b"hi\0there"[..]))
        );
        assert_eq!(split_room(b"lobby\0"), Some((&b"lobby"[..], &b""[..])));
        assert_eq!(split_room(b"\0hi"), None);
        assert_eq!(split_room(b"lobby"), None);
        assert_eq!(join_room_payload(b"r", b"m"), b"r\0m");
    }

    #[test]
    fn params_are_an_object_or_null() {
        assert_eq!(encode_params(None), b"null");
        let p = vec![
            ("id".to_string(), "7".to_string()),
            ("a".into(), "\"".into()),
        ];
        assert_eq!(encode_params(Some(&p)), br#"{"id":"7","a":"\""}"#);
        assert_eq!(decode_params(b"null").unwrap(), None);
        let back = decode_params(&encode_params(Some(&p))).unwrap().unwrap();
        assert!(back.contains(&("id".to_string(), "7".to_string())));
        assert!(decode_params(b"[1]").is_err());
    }
}
