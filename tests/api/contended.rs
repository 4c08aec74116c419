//! Phases that finish on the plugin's own threads: the driver's wait (spin,
//! yield, park) must be woken by the plugin, on every transport, one session
//! at a time and with more sessions than cores.
//!
//! Every wait here has a phase timeout (30 s) longer than the bound it is
//! checked against (10 s): a lost wake-up leaves the driver parked until the
//! timeout and fails the bound, instead of passing slowly.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nylon_transport::abi::legacy::Phase;
use nylon_transport::abi::v2::{self, CallHandle, PluginTable, Status};
use nylon_transport::bench::context::{BenchContext, WsCodec};
use nylon_transport::host::driver::{run_request, RunOptions};
use nylon_transport::host::{LegacyPlugin, MemoryContext, RequestSpec};
use nylon_transport::transport::{
    Baseline, Fast, FastConfig, PhaseOutcome, ReplyMode, SessionOptions, Transport, V2Plugin, V2,
};

use super::common::{rust_plugin, AsyncForm, Kind, KINDS};

/// Longer than any bound below: a parked driver that nobody wakes sleeps
/// this long.
const PHASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Generous: the delayed phase takes 20 ms.
const BOUND: Duration = Duration::from_secs(10);

fn on_kind<R>(kind: Kind, f: impl FnOnce(&dyn LegacyRunner) -> R) -> R {
    let deferred = || {
        Fast::new(FastConfig {
            reply_mode: ReplyMode::Deferred,
            ..FastConfig::default()
        })
    };
    match kind {
        Kind::Baseline => f(&Baseline::new()),
        Kind::Fast => f(&Fast::new(FastConfig::default())),
        Kind::FastDeferred => f(&deferred()),
        Kind::AsyncBaseline => f(&AsyncForm(Baseline::new())),
        Kind::AsyncFast => f(&AsyncForm(Fast::new(FastConfig::default()))),
        Kind::AsyncFastDeferred => f(&AsyncForm(deferred())),
    }
}

/// What the tests need of a legacy transport, object-safe.
trait LegacyRunner: Sync {
    /// Opens `entry`, runs `phases` with `ctx`, closes; the outcomes.
    fn request(
        &self,
        plugin: &Arc<LegacyPlugin>,
        entry: &str,
        phases: &[Phase],
        ctx: &mut dyn nylon_transport::host::HttpContext,
    ) -> Vec<PhaseOutcome>;
}

impl<T: Transport<Plugin = LegacyPlugin>> LegacyRunner for T {
    fn request(
        &self,
        plugin: &Arc<LegacyPlugin>,
        entry: &str,
        phases: &[Phase],
        ctx: &mut dyn nylon_transport::host::HttpContext,
    ) -> Vec<PhaseOutcome> {
        let mut s = self
            .open(plugin, entry, SessionOptions::default())
            .expect("session opens");
        let outcomes = phases
            .iter()
            .map(|&p| self.run_phase(&mut s, p, ctx, PHASE_TIMEOUT))
            .collect();
        self.close(s);
        outcomes
    }
}

#[test]
fn a_phase_finished_late_on_a_plugin_thread_wakes_the_legacy_driver() {
    let plugin = rust_plugin();
    for kind in KINDS {
        on_kind(kind, |t| {
            // Several times: the first wait learns a latency, later ones use it.
            for _ in 0..3 {
                let spec = RequestSpec {
                    path: "/late".into(),
                    ..Default::default()
                };
                let mut ctx = MemoryContext::new(spec, None);
                let start = Instant::now();
                let outcomes = t.request(&plugin, "delayed", &[Phase::RequestFilter], &mut ctx);
                let took = start.elapsed();
                assert_eq!(outcomes, [PhaseOutcome::Next], "{kind:?}");
                assert!(
                    took < BOUND,
                    "{kind:?}: the plugin's NEXT did not wake the driver ({took:?})"
                );
                let headers = ctx.headers();
                assert!(
                    headers
                        .iter()
                        .any(|(n, v)| n == "x-delayed-path" && v == b"/late"),
                    "{kind:?}: {headers:?}"
                );
            }
        });
    }
}

#[test]
fn many_sessions_on_the_plugin_threads_all_complete_on_every_transport() {
    const THREADS: usize = 16;
    const REQUESTS: usize = 8;
    let plugin = rust_plugin();
    for kind in KINDS {
        on_kind(kind, |t| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|_| {
                        let plugin = &plugin;
                        s.spawn(move || {
                            let mut ctx = BenchContext::scenario(WsCodec::Fast);
                            for _ in 0..REQUESTS {
                                ctx.reset();
                                let start = Instant::now();
                                let outcomes = t.request(plugin, "threaded", &Phase::ALL, &mut ctx);
                                let took = start.elapsed();
                                assert!(
                                    outcomes.iter().all(|o| *o == PhaseOutcome::Next),
                                    "{kind:?}: {outcomes:?}"
                                );
                                assert!(took < BOUND, "{kind:?}: a request took {took:?}");
                                let headers: Vec<(String, Vec<u8>)> = ctx
                                    .response_headers()
                                    .map(|(n, v)| (n.to_string(), v.to_vec()))
                                    .collect();
                                for (name, value) in [
                                    ("x-scenario", &b"1"[..]),
                                    ("x-user", b"alice"),
                                    ("x-status-class", b"ok"),
                                ] {
                                    assert!(
                                        headers.iter().any(|(n, v)| n == name && v == value),
                                        "{kind:?}: {name} missing in {headers:?}"
                                    );
                                }
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    if let Err(p) = w.join() {
                        std::panic::resume_unwind(p);
                    }
                }
            });
        });
    }
}

/// The plugin threads of [`detach_then_complete_later`], joined by the test.
static LATE_THREADS: Mutex<Vec<JoinHandle<i32>>> = Mutex::new(Vec::new());

/// A v2 phase that detaches its call and completes it 20 ms later from a
/// thread of its own.
unsafe extern "C" fn detach_then_complete_later(
    _state: *mut c_void,
    _phase: u32,
    call: *mut CallHandle,
    _flow: *mut u32,
) -> i32 {
    let host = &nylon_transport::transport::v2::HOST_TABLE;
    // SAFETY: the live handle of this phase call.
    let st = unsafe { (host.detach)(call) };
    if st != Status::OK.0 {
        return st;
    }
    let call = call as usize;
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        // SAFETY: the host keeps a detached call alive until it completes or
        // the phase times out (30 s, far beyond 20 ms).
        unsafe { (host.complete)(call as *mut CallHandle, Status::OK.0, v2::Flow::Next as u32) }
    });
    LATE_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(t);
    Status::PENDING.0
}

#[test]
fn a_detached_call_completed_late_wakes_the_v2_driver() {
    let good: PluginTable = *nylon_transport::sdk::v2::table::<super::v2_example::Example>();
    let table: &'static PluginTable = Box::leak(Box::new(PluginTable {
        phase: detach_then_complete_later,
        ..good
    }));
    let p = Arc::new(V2Plugin::from_static(table, b"").expect("in-process plugin"));
    let v2 = V2::default();
    for _ in 0..3 {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let start = Instant::now();
        let r = run_request(
            &v2,
            &p,
            "end",
            &mut ctx,
            None,
            RunOptions {
                timeout: PHASE_TIMEOUT,
                trace: false,
            },
        )
        .expect("session opens");
        let took = start.elapsed();
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
        assert!(
            took < BOUND,
            "complete did not wake the v2 driver ({took:?})"
        );
    }
    let threads: Vec<_> = LATE_THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain(..)
        .collect();
    assert_eq!(threads.len(), 12, "one plugin thread per phase");
    for t in threads {
        match t.join() {
            Ok(st) => assert_eq!(st, Status::OK.0, "complete refused"),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}
