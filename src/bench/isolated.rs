//! The `request_isolated` row: the `request` scenario through a worker
//! process (the process-isolated transport), beside the in-process
//! transports of the same run, and a throughput variant with several
//! requests in flight per worker.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::context::{BenchContext, WsCodec};
use super::rows::{legacy_request, v2_request, Plugins};
use super::{Row, Variant};
use crate::abi::legacy::Phase;
use crate::host::context::HttpContext;
use crate::transport::isolated::{IsolatedConfig, IsolatedPlugin};
use crate::transport::{Fast, Isolated, PhaseOutcome, SessionOptions, Transport, WaitPolicy};

const PHASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight at once in the throughput variant (one worker).
pub const CONCURRENT: usize = 16;

/// The response body of the `isolated_body_64k` variants.
pub const BODY: usize = 64 << 10;

fn start_with(
    path: &Path,
    config: &[u8],
    cfg: IsolatedConfig,
) -> Result<Arc<IsolatedPlugin>, String> {
    let bin = super::ring_rows::find_binary()?;
    IsolatedPlugin::start(
        path,
        config,
        IsolatedConfig {
            worker_command: vec![OsString::from(bin), OsString::from("worker")],
            ..cfg
        },
    )
    .map_err(|e| e.to_string())
}

fn start(path: &Path, config: &[u8], workers: usize) -> Result<Arc<IsolatedPlugin>, String> {
    start_with(
        path,
        config,
        IsolatedConfig {
            workers,
            ..IsolatedConfig::default()
        },
    )
}

/// One body-filter phase per iteration on a new session of `body_rewrite`
/// with a [`BODY`]-byte chunk: the plugin reads it and sets it back with
/// two bytes more (open, one phase, close).
fn body_rewrite(plugin: Arc<IsolatedPlugin>) -> Variant {
    let t = Isolated::new();
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let chunk = vec![b'b'; BODY];
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            ctx.set_response_body(&chunk);
            let mut s = t
                .open(&plugin, "body_rewrite", SessionOptions::default())
                .map_err(|e| e.to_string())?;
            expect_next(t.run_phase(&mut s, Phase::ResponseBodyFilter, &mut ctx, PHASE_TIMEOUT))?;
            t.close(s);
            if ctx.response_body().len() != BODY + 2 {
                return Err("body_rewrite through a worker: wrong body".into());
            }
        }
        Ok(start.elapsed())
    })
}

/// The `isolated` variant of the `websocket` row: per iteration a session
/// of the v2 plugin's `ws_echo` in a worker, upgraded, `messages` masked
/// 125-byte text frames from the client (parsed and unmasked by the host,
/// streamed to the worker), each echoed by the plugin and framed by the
/// host, then the client's close (per message).
///
/// # Errors
///
/// A message when the worker cannot be started.
pub fn websocket(plugins: &Plugins, messages: u64) -> Result<Variant, String> {
    let plugin = start(&plugins.v2_path, b"{}", 1)?;
    let t = Isolated::new();
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    Ok(Variant::new(messages, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            ctx.queue_ws_messages(messages);
            let before = ctx.frames_out;
            let mut s = t
                .open(&plugin, "ws_echo", SessionOptions::default())
                .map_err(|e| e.to_string())?;
            expect_next(t.run_phase(&mut s, Phase::RequestFilter, &mut ctx, PHASE_TIMEOUT))?;
            t.close(s);
            if ctx.frames_out - before != messages {
                return Err("ws_echo through a worker: an echo is missing".into());
            }
        }
        Ok(start.elapsed())
    }))
}

fn expect_next(o: PhaseOutcome) -> Result<(), String> {
    match o {
        PhaseOutcome::Next | PhaseOutcome::StreamEnd => Ok(()),
        o => Err(format!(
            "scenario through a worker: unexpected outcome {o:?}"
        )),
    }
}

/// One request of the scenario per iteration: open, four phases, close.
fn sequential(plugin: Arc<IsolatedPlugin>, t: Isolated) -> Variant {
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    Variant::new(1, move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            ctx.reset();
            let mut s = t
                .open(&plugin, "scenario", SessionOptions::default())
                .map_err(|e| e.to_string())?;
            for phase in Phase::ALL {
                expect_next(t.run_phase(&mut s, phase, &mut ctx, PHASE_TIMEOUT))?;
            }
            t.close(s);
        }
        Ok(start.elapsed())
    })
}

/// Unparks the benchmark thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// [`CONCURRENT`] requests in flight at once on one worker, each phase's
/// futures polled together from this thread: ns per request.
fn concurrent(plugin: Arc<IsolatedPlugin>) -> Variant {
    let t = Isolated::new();
    let mut ctxs: Vec<BenchContext> = (0..CONCURRENT)
        .map(|_| BenchContext::scenario(WsCodec::Fast))
        .collect();
    Variant::new(CONCURRENT as u64, move |iters| {
        let start = Instant::now();
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        for _ in 0..iters {
            let mut sessions = Vec::with_capacity(CONCURRENT);
            for c in &mut ctxs {
                c.reset();
                sessions.push(
                    t.open(&plugin, "scenario", SessionOptions::default())
                        .map_err(|e| e.to_string())?,
                );
            }
            for phase in Phase::ALL {
                let mut futs: Vec<_> = sessions
                    .iter_mut()
                    .zip(ctxs.iter_mut())
                    .map(|(s, c)| Some(t.phase(s, phase, c)))
                    .collect();
                let deadline = Instant::now() + PHASE_TIMEOUT;
                let mut left = futs.len();
                while left > 0 {
                    for f in futs.iter_mut() {
                        if let Some(fut) = f {
                            if let Poll::Ready(o) = Pin::new(fut).poll(&mut cx) {
                                expect_next(o)?;
                                *f = None;
                                left -= 1;
                            }
                        }
                    }
                    if left == 0 {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err("concurrent requests timed out".into());
                    }
                    // Woken by the dispatcher when a phase end arrives.
                    std::thread::park_timeout(Duration::from_millis(1));
                }
            }
            for s in sessions {
                t.close(s);
            }
        }
        Ok(start.elapsed())
    })
}

/// The row: baseline = the legacy plugin on the in-process fast host,
/// fast = the v2 plugin through a worker; `isolated_legacy` the legacy
/// plugin through a worker; `v2` the v2 plugin in process;
/// `isolated_parked` the fast variant with the caller parking at once (the
/// dispatcher hands it every answer, as it does for an asynchronous task);
/// `isolated_concurrent` [`CONCURRENT`] v2 requests in flight on one worker;
/// `isolated_names_inline` the fast variant with header names sent as bytes
/// (not interned ids); `isolated_body_64k` and `isolated_body_64k_inline` a
/// 64 KiB chunk rewritten by the v2 plugin, in slabs and inside frames.
///
/// # Errors
///
/// A message when a worker cannot be started.
pub fn row(plugins: &Plugins) -> Result<Row, String> {
    let v2 = start(&plugins.v2_path, b"{}", 1)?;
    let legacy = start(&plugins.legacy_path, b"{}", 1)?;
    // The parked variant has its own worker: sharing one with the fast
    // variant left its dispatcher awake in the fast variant's samples.
    let v2_parked = start(&plugins.v2_path, b"{}", 1)?;
    let v2_many = start(&plugins.v2_path, b"{}", 1)?;
    // The body variants each have their own worker, as the parked one does.
    let v2_body = start(&plugins.v2_path, b"{}", 1)?;
    let one = || IsolatedConfig {
        workers: 1,
        ..IsolatedConfig::default()
    };
    let v2_names_inline = start_with(
        &plugins.v2_path,
        b"{}",
        IsolatedConfig {
            intern_names: false,
            ..one()
        },
    )?;
    let v2_inline = start_with(
        &plugins.v2_path,
        b"{}",
        IsolatedConfig {
            slabs: false,
            ..one()
        },
    )?;
    Ok(Row::new(
        "request_isolated",
        "-",
        "< 5 µs",
        legacy_request(Fast::default(), plugins.legacy.clone(), "scenario"),
        sequential(v2, Isolated::new()),
    )
    .with("isolated_legacy", sequential(legacy, Isolated::new()))
    .with(
        "isolated_parked",
        sequential(
            v2_parked,
            Isolated::with_wait(WaitPolicy::Spin(Duration::ZERO)),
        ),
    )
    .with("v2", v2_request(plugins.v2.clone())?)
    .with("isolated_concurrent", concurrent(v2_many))
    .with(
        "isolated_names_inline",
        sequential(v2_names_inline, Isolated::new()),
    )
    .with("isolated_body_64k", body_rewrite(v2_body))
    .with("isolated_body_64k_inline", body_rewrite(v2_inline)))
}
