//! A soak: many requests through the fast paths, with resident memory
//! sampled before and after, to show that nothing leaks.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::context::{BenchContext, WsCodec};
use crate::abi::legacy::Phase;
use crate::host::loader::LegacyPlugin;
use crate::transport::{Fast, FastConfig, PhaseOutcome, SessionOptions, Transport, V2Plugin, V2};

/// Resident memory of this process in KiB (`/proc/self/statm`), 0 if unknown.
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

/// What one soak run saw.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Which path.
    pub path: &'static str,
    /// Requests run (after the warm-up).
    pub requests: u64,
    /// Resident memory after the warm-up, KiB.
    pub rss_start_kib: u64,
    /// Resident memory at the end, KiB.
    pub rss_end_kib: u64,
    /// The largest sample during the run, KiB.
    pub rss_max_kib: u64,
    /// Wall time of the run.
    pub seconds: f64,
}

fn check(o: PhaseOutcome) -> Result<(), String> {
    match o {
        PhaseOutcome::Next => Ok(()),
        other => Err(format!("soak: unexpected outcome {other:?}")),
    }
}

fn sampled(
    path: &'static str,
    requests: u64,
    mut one: impl FnMut() -> Result<(), String>,
) -> Result<SoakReport, String> {
    for _ in 0..(requests / 100).clamp(100, 10_000) {
        one()?;
    }
    let rss_start_kib = rss_kib();
    let mut rss_max_kib = rss_start_kib;
    let start = Instant::now();
    for i in 0..requests {
        one()?;
        if i % 10_000 == 0 {
            rss_max_kib = rss_max_kib.max(rss_kib());
        }
    }
    let rss_end_kib = rss_kib();
    Ok(SoakReport {
        path,
        requests,
        rss_start_kib,
        rss_end_kib,
        rss_max_kib: rss_max_kib.max(rss_end_kib),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs `requests` scenario requests through the v2 plugin (a session
/// opened and closed per request).
///
/// # Errors
///
/// A message when a request does not complete.
pub fn v2(plugin: &Arc<V2Plugin>, requests: u64) -> Result<SoakReport, String> {
    let v2 = V2::default();
    let entry = plugin.entry_id("scenario").ok_or("no scenario entry")?;
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    sampled("fast, v2 plugin", requests, || {
        ctx.reset();
        let mut s = v2.open_entry(plugin, entry).map_err(|e| e.to_string())?;
        for phase in Phase::ALL {
            check(v2.run_phase(&mut s, phase, &mut ctx, Duration::from_secs(10)))?;
        }
        v2.close(s);
        Ok(())
    })
}

/// Runs `requests` scenario requests through the legacy plugin on the fast
/// host (a session opened and closed per request).
///
/// # Errors
///
/// A message when a request does not complete.
pub fn legacy(plugin: &Arc<LegacyPlugin>, requests: u64) -> Result<SoakReport, String> {
    let fast = Fast::new(FastConfig::default());
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    sampled("fast, legacy plugin", requests, || {
        ctx.reset();
        let mut s = fast
            .open(plugin, "scenario", SessionOptions::default())
            .map_err(|e| e.to_string())?;
        for phase in Phase::ALL {
            check(fast.run_phase(&mut s, phase, &mut ctx, Duration::from_secs(10)))?;
        }
        fast.close(s);
        Ok(())
    })
}
