//! The server side of the opening handshake (RFC 6455 §4.2): the checks on
//! the client's request and the `Sec-WebSocket-Accept` value.
#![forbid(unsafe_code)]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID every server appends to the client's key (RFC 6455 §1.3).
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A request that is not a WebSocket opening handshake: 400 with this
    /// reason.
    BadRequest(&'static str),
    /// `Sec-WebSocket-Version` is not 13: 426 with
    /// `Sec-WebSocket-Version: 13` (RFC 6455 §4.4).
    Version,
}

impl Refusal {
    /// The HTTP status the client gets.
    #[must_use]
    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Version => 426,
        }
    }

    /// The reason, for the response body.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::BadRequest(r) => r,
            Self::Version => "Sec-WebSocket-Version must be 13",
        }
    }
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks an opening handshake and returns its `Sec-WebSocket-Accept`.
///
/// `headers` yields every request header (names in any case, a name may
/// repeat). The request must be a GET with `Upgrade: websocket`, a
/// `Connection` holding the `upgrade` token, `Sec-WebSocket-Version: 13` and
/// a `Sec-WebSocket-Key` that is base64 of 16 bytes.
///
/// # Errors
///
/// The [`Refusal`] to answer with.
pub fn check<'a>(
    method: &str,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
) -> Result<String, Refusal> {
    if method != "GET" {
        return Err(Refusal::BadRequest("a WebSocket upgrade must be a GET"));
    }
    let all = |name: &'static str| {
        headers
            .clone()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    };
    if !all("upgrade").any(|v| has_token(v, "websocket")) {
        return Err(Refusal::BadRequest("missing `Upgrade: websocket`"));
    }
    if !all("connection").any(|v| has_token(v, "upgrade")) {
        return Err(Refusal::BadRequest(
            "missing the `upgrade` token in `Connection`",
        ));
    }
    let mut keys = all("sec-websocket-key");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(Refusal::BadRequest(
            "exactly one Sec-WebSocket-Key is required",
        ));
    };
    let key = key.trim_ascii();
    match STANDARD.decode(key) {
        Ok(k) if k.len() == 16 => {}
        _ => {
            return Err(Refusal::BadRequest(
                "Sec-WebSocket-Key is not base64 of 16 bytes",
            ))
        }
    }
    let mut versions = all("sec-websocket-version");
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.trim_ascii() == b"13" => {}
        _ => return Err(Refusal::Version),
    }
    Ok(accept(key))
}

/// `Sec-WebSocket-Accept` for a client's key: base64(SHA-1(key + GUID)).
#[must_use]
pub fn accept(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    STANDARD.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(h: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone {
        h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
    }

    const GOOD: &[(&str, &str)] = &[
        ("Upgrade", "WebSocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    #[test]
    fn the_rfc_example_key() {
        // RFC 6455 §1.3.
        assert_eq!(
            check("GET", req(GOOD)),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_string())
        );
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            check("POST", req(GOOD)),
            Err(Refusal::BadRequest(_))
        ));
        for (drop, want) in [
            ("Upgrade", 400),
            ("Connection", 400),
            ("Sec-WebSocket-Key", 400),
            ("Sec-WebSocket-Version", 426),
        ] {
            let h: Vec<_> = GOOD.iter().copied().filter(|(n, _)| *n != drop).collect();
            let got = check("GET", req(&h)).expect_err(drop);
            assert_eq!(got.status(), want, "without {drop}");
        }
        let mut h = GOOD.to_vec();
        h[2].1 = "c2hvcnQ="; // "short"
        assert!(matches!(check("GET", req(&h)), Err(Refusal::BadRequest(_))));
        let mut h = GOOD.to_vec();
        h[3].1 = "8";
        assert_eq!(check("GET", req(&h)), Err(Refusal::Version));
    }
}
