//! Header names as interned ids on the host→worker ring.
//!
//! Every plugin has one [`HeaderNames`] table (`crate::intern`, `lasso`):
//! the well-known names have fixed ids (their index in `WELL_KNOWN`, which
//! the worker's [`proto::NameTable`] knows from the start) and other
//! lower-case names get the next ids, up to [`proto::DYNAMIC_NAMES`] of them
//! (a client cannot grow the table past that: later names go in place). A
//! name crosses as its bytes once per worker incarnation (an announcement:
//! id and bytes), then as its 4-byte id; values still cross in place.
//!
//! [`LinkNames`] is one incarnation's side of it: which ids its worker was
//! told, and a small direct-mapped cache from a name's bytes to its id, so
//! the usual name costs a short hash and a compare, not a lookup in the
//! shared table. It lives in the host's `Link` and is used under its lock,
//! in ring order, so announcements reach the worker before their ids.

use crate::intern::HeaderNames;

use super::proto::{self, CODE_ANNOUNCE, CODE_INLINE};

/// Cached names are at most this long (longer ones take the table lookup).
const CACHED: usize = 32;
/// Cache entries (a power of two).
const ENTRIES: usize = 256;

#[derive(Clone, Copy)]
struct Entry {
    /// 0: empty.
    len: u8,
    id: u32,
    name: [u8; CACHED],
}

/// One worker incarnation's announced ids and name cache.
pub(super) struct LinkNames {
    enabled: bool,
    /// Bit `id`: the worker knows `id`.
    announced: Box<[u64]>,
    cache: Box<[Entry]>,
}

impl std::fmt::Debug for LinkNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkNames")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

fn slot(name: &[u8]) -> usize {
    // FxHash-style word folding: names are short, this is a few multiplies.
    let mut h = name.len() as u64;
    for chunk in name.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    (h >> 56) as usize & (ENTRIES - 1)
}

impl LinkNames {
    /// A new incarnation's: its worker knows the well-known names. With
    /// `enabled` false every name is sent in place.
    pub(super) fn new(enabled: bool) -> Self {
        let mut announced = vec![0u64; proto::NAME_IDS.div_ceil(64)].into_boxed_slice();
        for id in 0..crate::intern::WELL_KNOWN.len() {
            announced[id / 64] |= 1 << (id % 64);
        }
        Self {
            enabled,
            announced,
            cache: vec![
                Entry {
                    len: 0,
                    id: 0,
                    name: [0; CACHED],
                };
                ENTRIES
            ]
            .into_boxed_slice(),
        }
    }

    /// The codes of a phase start's names as `proto::encode_start` meets
    /// them, each also pushed on `codes`. Ids not announced yet are marked
    /// announced now (undo with [`LinkNames::rollback`] if the frame is not
    /// sent).
    pub(super) fn coder<'a>(
        &'a mut self,
        table: &'a HeaderNames,
        codes: &'a mut Vec<u32>,
    ) -> Coder<'a> {
        codes.clear();
        Coder {
            names: self,
            table,
            codes,
        }
    }

    /// Forgets the announcements `codes` made: their frame was not sent.
    pub(super) fn rollback(&mut self, codes: &[u32]) {
        for &c in codes {
            if c != CODE_INLINE && c & CODE_ANNOUNCE != 0 {
                let id = (c & !CODE_ANNOUNCE) as usize;
                self.announced[id / 64] &= !(1 << (id % 64));
            }
        }
    }

    fn code(&mut self, table: &HeaderNames, name: &[u8]) -> u32 {
        let Some(id) = self.id(table, name) else {
            return CODE_INLINE;
        };
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if self.announced[word] & bit != 0 {
            id
        } else {
            self.announced[word] |= bit;
            id | CODE_ANNOUNCE
        }
    }

    /// The id of a lower-case name (`None`: sent in place: upper case, not a
    /// token, or the table is full).
    fn id(&mut self, table: &HeaderNames, name: &[u8]) -> Option<u32> {
        let cacheable = !name.is_empty() && name.len() <= CACHED;
        // Two ways: a name may sit in its slot or the slot's pair.
        let at = slot(name);
        if cacheable {
            for way in [at, at ^ 1] {
                let e = &self.cache[way];
                if usize::from(e.len) == name.len() && &e.name[..name.len()] == name {
                    return Some(e.id);
                }
            }
        }
        // Only names already in lower case: the worker then sees exactly the
        // bytes the context has.
        if name.iter().any(u8::is_ascii_uppercase) {
            return None;
        }
        let id = table.intern(std::str::from_utf8(name).ok()?).ok()?.index();
        if id as usize >= proto::NAME_IDS {
            return None;
        }
        if cacheable {
            let mut e = Entry {
                len: name.len() as u8,
                id,
                name: [0; CACHED],
            };
            e.name[..name.len()].copy_from_slice(name);
            // The empty way, else the pair's (the home slot stays with the
            // name that has it).
            let way = if self.cache[at].len == 0 { at } else { at ^ 1 };
            self.cache[way] = e;
        }
        Some(id)
    }
}

/// [`LinkNames::coder`]'s: codes names as it meets them, and records them.
pub(super) struct Coder<'a> {
    names: &'a mut LinkNames,
    table: &'a HeaderNames,
    codes: &'a mut Vec<u32>,
}

impl proto::NameCodes for Coder<'_> {
    fn code(&mut self, name: &[u8]) -> u32 {
        let c = if self.names.enabled {
            self.names.code(self.table, name)
        } else {
            CODE_INLINE
        };
        self.codes.push(c);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{MemoryContext, RequestSpec};

    fn ctx(headers: &[(&str, &str)]) -> MemoryContext {
        let spec: RequestSpec = serde_json::from_value(serde_json::json!({ "headers": headers }))
            .expect("valid request spec");
        MemoryContext::new(spec, None)
    }

    /// The codes a phase start of `c` gets (with `open`: one that opens
    /// its session, so with request headers), into `codes`.
    fn encode(
        names: &mut LinkNames,
        table: &HeaderNames,
        c: &MemoryContext,
        open: bool,
        codes: &mut Vec<u32>,
    ) {
        let mut c = c.clone();
        proto::encode_start(
            &mut Vec::new(),
            1,
            open.then_some("e"),
            &mut c,
            b"",
            proto::Slabbed::default(),
            &mut names.coder(table, codes),
        );
    }

    #[test]
    fn a_name_is_announced_once_then_sent_as_its_id() {
        let table = HeaderNames::new(proto::DYNAMIC_NAMES);
        let mut names = LinkNames::new(true);
        let c = ctx(&[("accept", "*/*"), ("x-custom", "1"), ("x-custom", "2")]);
        let mut codes = Vec::new();
        encode(&mut names, &table, &c, true, &mut codes);
        let accept = table.get("accept").unwrap().index();
        let custom = table.get("x-custom").unwrap().index();
        // Well-known: an id at once. New: announced by its first occurrence,
        // an id in the same frame after that.
        assert_eq!(codes, [accept, custom | CODE_ANNOUNCE, custom]);
        encode(&mut names, &table, &c, true, &mut codes);
        assert_eq!(codes, [accept, custom, custom]);
        // A frame that was not sent takes its announcements back.
        let c2 = ctx(&[("x-other", "1")]);
        encode(&mut names, &table, &c2, true, &mut codes);
        let other = table.get("x-other").unwrap().index();
        assert_eq!(codes, [other | CODE_ANNOUNCE]);
        names.rollback(&codes);
        encode(&mut names, &table, &c2, true, &mut codes);
        assert_eq!(codes, [other | CODE_ANNOUNCE]);
        // Another incarnation's worker has not heard of it.
        let mut fresh = LinkNames::new(true);
        encode(&mut fresh, &table, &c, true, &mut codes);
        assert_eq!(codes, [accept, custom | CODE_ANNOUNCE, custom]);
        // A phase start that opens nothing has no request headers.
        encode(&mut fresh, &table, &c, false, &mut codes);
        assert!(codes.is_empty());
    }

    #[test]
    fn names_past_the_bound_or_not_lower_case_go_in_place() {
        let table = HeaderNames::new(2);
        let mut names = LinkNames::new(true);
        let mut codes = Vec::new();
        let abc = ctx(&[("x-a", ""), ("x-b", ""), ("x-c", "")]);
        encode(&mut names, &table, &abc, true, &mut codes);
        assert_ne!(codes[1], CODE_INLINE);
        assert_eq!(codes[2], CODE_INLINE, "the table is full");
        // MemoryContext lower-cases names, so call the code path directly.
        assert_eq!(names.code(&table, b"X-A"), CODE_INLINE);
        assert_eq!(names.code(&table, b"bad name"), CODE_INLINE);
        let mut off = LinkNames::new(false);
        encode(&mut off, &table, &ctx(&[("accept", "")]), true, &mut codes);
        assert_eq!(codes, [CODE_INLINE], "disabled: every name in place");
    }
}
