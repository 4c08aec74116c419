//! Counts of plugin messages a transport dropped because their session was
//! unknown or already closed: a process-wide total, and a count per session
//! id, so that one session's drops can be told from another's (the tests of
//! stale, late and forged messages run beside each other).
//!
//! Only the drop path touches this: a message that reaches its session never
//! does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// How many distinct session ids the per-session counts remember; past that
/// they start again from empty (the total keeps counting).
const MAX_TRACKED: usize = 4096;

/// The drop counts of one transport.
#[derive(Debug)]
pub(crate) struct Drops {
    total: AtomicU64,
    by_sid: Mutex<Option<HashMap<u32, u64>>>,
}

impl Drops {
    /// No drops yet.
    pub(crate) const fn new() -> Self {
        Self {
            total: AtomicU64::new(0),
            by_sid: Mutex::new(None),
        }
    }

    fn map(&self) -> MutexGuard<'_, Option<HashMap<u32, u64>>> {
        self.by_sid.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One message dropped that named no session at all (a NULL buffer).
    pub(crate) fn count_anonymous(&self) {
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// One message for session `sid` dropped.
    pub(crate) fn count(&self, sid: u32) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut g = self.map();
        let map = g.get_or_insert_with(HashMap::new);
        if map.len() >= MAX_TRACKED && !map.contains_key(&sid) {
            map.clear();
        }
        *map.entry(sid).or_insert(0) += 1;
    }

    /// Every message dropped so far.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Messages dropped so far that named session `sid` (one of the last
    /// [`MAX_TRACKED`] session ids that had drops).
    pub(crate) fn for_sid(&self, sid: u32) -> u64 {
        self.map()
            .as_ref()
            .and_then(|m| m.get(&sid).copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_session_and_in_total() {
        let d = Drops::new();
        d.count(7);
        d.count(7);
        d.count(9);
        d.count_anonymous();
        assert_eq!((d.for_sid(7), d.for_sid(9), d.for_sid(8)), (2, 1, 0));
        assert_eq!(d.total(), 4);
    }

    #[test]
    fn the_per_session_counts_stay_bounded() {
        let d = Drops::new();
        for sid in 0..MAX_TRACKED as u32 {
            d.count(sid);
        }
        d.count(0);
        assert_eq!(d.for_sid(0), 2, "a known sid keeps counting");
        d.count(u32::MAX);
        assert_eq!(d.for_sid(u32::MAX), 1);
        assert_eq!(d.for_sid(0), 0, "a new sid past the bound starts afresh");
        assert_eq!(d.total(), MAX_TRACKED as u64 + 2);
    }
}
