//! Header-name interning with `lasso`: well-known names pre-interned, names
//! sent by clients bounded.
//!
//! A [`HeaderNames`] table maps lower-case header names to compact
//! [`HeaderId`]s, so contexts can store and compare a `u32` instead of a
//! string. The well-known names are interned at construction; any other name
//! (which a client controls) is interned only while fewer than the configured
//! number of dynamic names exist. Past the bound, [`HeaderNames::intern`]
//! returns [`InternError::Full`] and the caller keeps the name as a string: a
//! hostile client cannot grow the table without limit.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use lasso::{Spur, ThreadedRodeo};

/// Header names every proxy sees, interned up front (lower-case).
pub const WELL_KNOWN: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "access-control-allow-credentials",
    "access-control-allow-headers",
    "access-control-allow-methods",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "forwarded",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "last-modified",
    "link",
    "location",
    "origin",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "sec-websocket-accept",
    "sec-websocket-extensions",
    "sec-websocket-key",
    "sec-websocket-protocol",
    "sec-websocket-version",
    "server",
    "set-cookie",
    "strict-transport-security",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
];

/// The longest name [`HeaderNames::intern`] accepts.
pub const MAX_NAME: usize = 256;

/// An interned header name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HeaderId(Spur);

impl HeaderId {
    /// The id as a number: the well-known names are `0..WELL_KNOWN.len()`,
    /// in [`WELL_KNOWN`]'s order; other names follow in the order they were
    /// interned. Two tables agree on the well-known ones without talking.
    pub fn index(self) -> u32 {
        use lasso::Key;
        // Ids are bounded by the table's bound, far below u32::MAX.
        self.0.into_usize() as u32
    }
}

/// Why a name was not interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InternError {
    /// The bound on dynamic (client-sent) names is reached.
    Full,
    /// The name is empty, longer than [`MAX_NAME`], or not a header token.
    Invalid,
}

impl fmt::Display for InternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Full => "header name table is full",
            Self::Invalid => "not a valid header name",
        })
    }
}

impl std::error::Error for InternError {}

/// See the [module docs](self).
pub struct HeaderNames {
    rodeo: ThreadedRodeo,
    max_dynamic: usize,
    dynamic: AtomicUsize,
}

impl fmt::Debug for HeaderNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderNames")
            .field("len", &self.rodeo.len())
            .field("max_dynamic", &self.max_dynamic)
            .finish()
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl HeaderNames {
    /// Creates a table with the well-known names and room for `max_dynamic` others.
    #[must_use]
    pub fn new(max_dynamic: usize) -> Self {
        let rodeo = ThreadedRodeo::new();
        for name in WELL_KNOWN {
            rodeo.get_or_intern_static(name);
        }
        Self {
            rodeo,
            max_dynamic,
            dynamic: AtomicUsize::new(0),
        }
    }

    /// Looks a name up (any case) without interning it.
    pub fn get(&self, name: &str) -> Option<HeaderId> {
        let mut buf = [0u8; MAX_NAME];
        let lower = lowercase(name, &mut buf).ok()?;
        self.rodeo.get(lower).map(HeaderId)
    }

    /// Interns a name (any case; stored lower-case).
    ///
    /// # Errors
    ///
    /// [`InternError::Invalid`] for a name that is not a header token, and
    /// [`InternError::Full`] when a new name would pass the bound.
    pub fn intern(&self, name: &str) -> Result<HeaderId, InternError> {
        let mut buf = [0u8; MAX_NAME];
        let lower = lowercase(name, &mut buf)?;
        if let Some(id) = self.rodeo.get(lower) {
            return Ok(HeaderId(id));
        }
        // Reserve a dynamic slot first, so concurrent interns cannot overshoot.
        let reserved = self
            .dynamic
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_dynamic).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            return Err(InternError::Full);
        }
        let before = self.rodeo.len();
        let id = self.rodeo.get_or_intern(lower);
        if self.rodeo.len() == before {
            // Another thread interned it meanwhile: give the slot back.
            self.dynamic.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(HeaderId(id))
    }

    /// The lower-case name of an id.
    pub fn resolve(&self, id: HeaderId) -> &str {
        // A well-known name's id is its index in the list (see
        // `HeaderId::index`): no lookup, no lock.
        match WELL_KNOWN.get(id.index() as usize) {
            Some(name) => name,
            None => self.rodeo.resolve(&id.0),
        }
    }

    /// Names interned so far, well-known ones included.
    pub fn len(&self) -> usize {
        self.rodeo.len()
    }

    /// Whether the table is empty (never: the well-known names are in it).
    pub fn is_empty(&self) -> bool {
        self.rodeo.is_empty()
    }
}

fn lowercase<'b>(name: &str, buf: &'b mut [u8; MAX_NAME]) -> Result<&'b str, InternError> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() > MAX_NAME || !b.iter().all(|&c| is_token(c)) {
        return Err(InternError::Invalid);
    }
    let out = &mut buf[..b.len()];
    for (o, c) in out.iter_mut().zip(b) {
        *o = c.to_ascii_lowercase();
    }
    // Tokens are ASCII, so the lower-cased bytes are UTF-8.
    std::str::from_utf8(out).map_err(|_| InternError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_names_have_their_list_index() {
        let t = HeaderNames::new(1);
        for (i, name) in WELL_KNOWN.iter().enumerate() {
            assert_eq!(t.get(name).unwrap().index(), i as u32, "{name}");
        }
        assert_eq!(t.intern("x-new").unwrap().index(), WELL_KNOWN.len() as u32);
        // Resolving takes the list's name for a well-known id, the table's
        // for another.
        for name in WELL_KNOWN {
            assert_eq!(t.resolve(t.get(name).unwrap()), *name);
        }
        assert_eq!(t.resolve(t.get("x-new").unwrap()), "x-new");
    }

    #[test]
    fn well_known_names_need_no_room() {
        let t = HeaderNames::new(0);
        let id = t.intern("Content-Type").unwrap();
        assert_eq!(t.resolve(id), "content-type");
        assert_eq!(t.get("CONTENT-TYPE"), Some(id));
        assert_eq!(t.intern("x-custom"), Err(InternError::Full));
    }

    #[test]
    fn client_names_are_bounded() {
        let t = HeaderNames::new(3);
        let base = t.len();
        let ids: Vec<_> = (0..3)
            .map(|i| t.intern(&format!("x-{i}")).unwrap())
            .collect();
        assert_eq!(
            t.intern("X-0"),
            Ok(ids[0]),
            "an existing name needs no room"
        );
        for i in 3..1000 {
            assert_eq!(t.intern(&format!("x-{i}")), Err(InternError::Full));
        }
        assert_eq!(t.len(), base + 3);
    }

    #[test]
    fn invalid_names_are_refused() {
        let t = HeaderNames::new(10);
        for bad in ["", "a b", "é", "a:b", &"x".repeat(MAX_NAME + 1)] {
            assert_eq!(t.intern(bad), Err(InternError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn concurrent_interning_never_overshoots() {
        let t = HeaderNames::new(50);
        let base = t.len();
        std::thread::scope(|s| {
            for th in 0..4 {
                let t = &t;
                s.spawn(move || {
                    for i in 0..100 {
                        let _ = t.intern(&format!("x-{}", (i * 7 + th) % 80));
                    }
                });
            }
        });
        assert!(t.len() - base <= 50);
    }
}
