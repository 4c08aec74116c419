//! The public anchor: `nylon-ring` / `nylon-ring-host` from crates.io, with
//! our own comparison plugin (`examples/ring_anchor_plugin.rs`), measured in
//! the same run on the same operations as our anchor rows: the host calls the
//! plugin (a) with nothing to do, (b) with one read and one reply, (c) with a
//! 13-byte payload and no reply. Entries are resolved to ids once
//! (`PluginHandle::entry`), and the plugin matches ids, not names.
//!
//! Each operation is measured twice: with the plugin loaded pinned (never
//! unloadable, nylon-ring's fastest setting) and unpinned (unloadable, like
//! our plugins, which pays an in-flight call tracker per call). The two hosts
//! load two copies of the library, so each has its own instance.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use nylon_ring_host::{NrStatus, NylonRingHost, PluginEntry};

use super::Variant;

/// The 13-byte payload of (b) and (c), the length of our request path.
pub const PAYLOAD: &[u8] = b"/api/v1/items";
/// The reply of (b).
const REPLY: &[u8] = b"x-anchor=1";

/// Polls a future to completion on this thread. The anchor's calls we use
/// complete on their first poll (the plugin answers inline), as in its own
/// benchmark; a pending one is polled again.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::hint::spin_loop();
    }
}

/// Which operation a variant times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// (a) `call(b"")` on `empty`: fire-and-forget, the plugin does nothing.
    Empty,
    /// (b) `call_response_fast(PAYLOAD)` on `read_reply`: the plugin reads
    /// the payload and replies.
    ReadReply,
    /// (c) `call(PAYLOAD)` on `sink`: fire-and-forget with a payload.
    Sink,
}

impl Op {
    fn entry(self) -> &'static str {
        match self {
            Op::Empty => "empty",
            Op::ReadReply => "read_reply",
            Op::Sink => "sink",
        }
    }
}

/// The anchor plugin loaded twice: pinned and unpinned.
pub struct Anchor {
    pinned: Arc<NylonRingHost>,
    unpinned: Arc<NylonRingHost>,
    copy: PathBuf,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor").finish_non_exhaustive()
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.copy);
    }
}

fn entry(host: &NylonRingHost, op: Op) -> Result<PluginEntry, String> {
    let handle = host.plugin("anchor").ok_or("nylon-ring lost the plugin")?;
    handle
        .entry(op.entry())
        .map_err(|e| format!("nylon-ring entry {}: {e}", op.entry()))
}

fn variant(host: Arc<NylonRingHost>, entry: PluginEntry, op: Op) -> Variant {
    Variant::new(1, move |iters| {
        let _keep = &host;
        let start = Instant::now();
        for _ in 0..iters {
            match op {
                Op::Empty | Op::Sink => {
                    let payload = if op == Op::Empty { &b""[..] } else { PAYLOAD };
                    let st = block_on(entry.call(std::hint::black_box(payload)))
                        .map_err(|e| format!("nylon-ring: {e}"))?;
                    if st != NrStatus::Ok {
                        return Err(format!("nylon-ring returned {st:?}"));
                    }
                }
                Op::ReadReply => {
                    let (st, reply) =
                        block_on(entry.call_response_fast(std::hint::black_box(PAYLOAD)))
                            .map_err(|e| format!("nylon-ring: {e}"))?;
                    if st != NrStatus::Ok || reply != REPLY {
                        return Err(format!("nylon-ring replied {st:?} {reply:?}"));
                    }
                }
            }
        }
        Ok(start.elapsed())
    })
}

impl Anchor {
    /// Loads the anchor plugin into two hosts: pinned, and (from a copy of
    /// the file, so it is a separate instance) unpinned.
    ///
    /// # Errors
    ///
    /// A message when nylon-ring refuses the library or an entry.
    pub fn load(path: &Path) -> Result<Self, String> {
        static COPIES: AtomicU64 = AtomicU64::new(0);
        let copy = std::env::temp_dir().join(format!(
            "nylon-bench-anchor-{}-{}.so",
            std::process::id(),
            COPIES.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::copy(path, &copy).map_err(|e| format!("copying the anchor plugin: {e}"))?;
        let as_str = |p: &Path| p.to_str().map(str::to_owned).ok_or("non-UTF-8 plugin path");
        let mut pinned = NylonRingHost::new();
        pinned
            .load_pinned("anchor", &as_str(path)?)
            .map_err(|e| format!("nylon-ring load_pinned: {e}"))?;
        let mut unpinned = NylonRingHost::new();
        unpinned
            .load("anchor", &as_str(&copy)?)
            .map_err(|e| format!("nylon-ring load: {e}"))?;
        Ok(Self {
            pinned: Arc::new(pinned),
            unpinned: Arc::new(unpinned),
            copy,
        })
    }

    /// The variant for `op`, pinned or not.
    ///
    /// # Errors
    ///
    /// A message when the entry does not resolve.
    pub fn variant(&self, op: Op, pinned: bool) -> Result<Variant, String> {
        let host = if pinned { &self.pinned } else { &self.unpinned };
        Ok(variant(Arc::clone(host), entry(host, op)?, op))
    }
}
