//! The public anchor: `nylon-ring` / `nylon-ring-host` from crates.io, with
//! our own comparison plugin (`examples/ring_anchor_plugin.rs`), measured in
//! the same run on the closest equivalent of each row it supports.
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use nylon_ring_host::{NrStatus, NylonRingHost, PluginEntry};

use super::Variant;

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

/// The anchor's variants: (synchronous call, fire-and-forget, unary call).
pub struct Anchor {
    /// `call_response_fast` on the `read` entry.
    pub sync_call: Variant,
    /// `call` on the `fire` entry.
    pub fire: Variant,
    /// `call_response` on the async `unary` entry.
    pub unary: Variant,
}

impl std::fmt::Debug for Anchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchor").finish_non_exhaustive()
    }
}

fn entry_variant(host: std::sync::Arc<NylonRingHost>, entry: PluginEntry, mode: u8) -> Variant {
    Variant::new(1, move |iters| {
        let _keep = &host;
        let start = Instant::now();
        for _ in 0..iters {
            let status = match mode {
                0 => block_on(entry.call_response_fast(b"")).map(|(s, b)| {
                    std::hint::black_box(b);
                    s
                }),
                1 => block_on(entry.call(b"")),
                _ => block_on(entry.call_response(b"")).map(|(s, b)| {
                    std::hint::black_box(b);
                    s
                }),
            }
            .map_err(|e| format!("nylon-ring: {e}"))?;
            if status != NrStatus::Ok {
                return Err(format!("nylon-ring returned {status:?}"));
            }
        }
        Ok(start.elapsed())
    })
}

/// Loads the anchor plugin (unpinned: unloadable, like ours).
///
/// # Errors
///
/// A message when nylon-ring refuses the library or an entry.
pub fn load(path: &Path) -> Result<Anchor, String> {
    let mut host = NylonRingHost::new();
    let p = path.to_str().ok_or("non-UTF-8 plugin path")?;
    host.load("anchor", p)
        .map_err(|e| format!("nylon-ring load: {e}"))?;
    let handle = host.plugin("anchor").ok_or("nylon-ring lost the plugin")?;
    let entry = |name: &str| {
        handle
            .entry(name)
            .map_err(|e| format!("nylon-ring entry {name}: {e}"))
    };
    let (read, fire, unary) = (entry("read")?, entry("fire")?, entry("unary")?);
    let host = std::sync::Arc::new(host);
    Ok(Anchor {
        sync_call: entry_variant(host.clone(), read, 0),
        fire: entry_variant(host.clone(), fire, 1),
        unary: entry_variant(host, unary, 2),
    })
}
