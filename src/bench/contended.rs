//! The `request_contended` row: more requests in flight than cores, each
//! phase finishing on the plugin's own threads, as a Go plugin's do.
//!
//! [`THREADS`] host threads each drive whole requests (open, the four phases,
//! close) of the example plugin's `threaded` entry: the `scenario` entry's
//! reads and commands, every phase run on a fixed pool of plugin threads,
//! reads as requests through the host callback followed by a wait for the
//! reply, and the phase ended by `NEXT` sent from that thread. The figure is
//! wall time over all threads divided by the requests done, so a ratio of two
//! figures is a throughput ratio. The host threads live as long as the
//! variant and wait for work between batches, so no batch pays for thread
//! creation.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::context::{BenchContext, WsCodec};
use super::{Row, Variant};
use crate::abi::legacy::Phase;
use crate::host::loader::LegacyPlugin;
use crate::transport::{
    Baseline, Fast, FastConfig, PhaseOutcome, ReplyMode, SessionOptions, Transport, WaitPolicy,
};

/// Host threads driving requests at once (the machine this suite was tuned
/// on has 2 cores).
pub const THREADS: usize = 8;
/// The example plugin's entry: the request scenario on the plugin's threads.
pub const ENTRY: &str = "threaded";
const PHASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Host threads that run batches of requests on one transport.
struct Crew {
    work: Vec<Sender<u64>>,
    done: Receiver<Result<(), String>>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Crew {
    fn drop(&mut self) {
        // Closing the work channels ends the threads.
        self.work.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One request: open, the four phases (each must end `next`), close; the
/// response must carry the scenario's header.
fn request<T: Transport<Plugin = LegacyPlugin>>(
    t: &T,
    plugin: &Arc<LegacyPlugin>,
    ctx: &mut BenchContext,
) -> Result<(), String> {
    ctx.reset();
    let mut s = t
        .open(plugin, ENTRY, SessionOptions::default())
        .map_err(|e| e.to_string())?;
    for phase in Phase::ALL {
        match t.run_phase(&mut s, phase, ctx, PHASE_TIMEOUT) {
            PhaseOutcome::Next => {}
            other => {
                t.close(s);
                return Err(format!("{ENTRY} {phase:?}: unexpected outcome {other:?}"));
            }
        }
    }
    t.close(s);
    if !ctx
        .response_headers()
        .any(|(n, v)| n == "x-scenario" && v == b"1")
    {
        return Err(format!("{ENTRY}: the response lacks x-scenario: 1"));
    }
    Ok(())
}

/// [`THREADS`] host threads sharing `t`; `iters` requests per timing, split
/// evenly; one operation is one request.
pub fn variant<T: Transport<Plugin = LegacyPlugin> + 'static>(
    t: T,
    plugin: Arc<LegacyPlugin>,
) -> Variant {
    let t = Arc::new(t);
    let (done_tx, done) = unbounded();
    let mut work = Vec::with_capacity(THREADS);
    let mut threads = Vec::with_capacity(THREADS);
    for _ in 0..THREADS {
        let (tx, rx) = bounded::<u64>(1);
        let (t, plugin, done_tx) = (Arc::clone(&t), Arc::clone(&plugin), done_tx.clone());
        threads.push(std::thread::spawn(move || {
            let mut ctx = BenchContext::scenario(WsCodec::Fast);
            while let Ok(n) = rx.recv() {
                let r = (0..n).try_for_each(|_| request(&*t, &plugin, &mut ctx));
                if done_tx.send(r).is_err() {
                    return;
                }
            }
        }));
        work.push(tx);
    }
    let crew = Crew {
        work,
        done,
        threads,
    };
    Variant::new(1, move |iters| {
        let share = iters / THREADS as u64;
        let extra = iters % THREADS as u64;
        let start = Instant::now();
        for (i, w) in crew.work.iter().enumerate() {
            let n = share + u64::from((i as u64) < extra);
            w.send(n).map_err(|_| "a host thread has stopped")?;
        }
        let mut result = Ok(());
        for _ in 0..THREADS {
            let r = crew
                .done
                .recv()
                .map_err(|_| "a host thread has stopped".to_string())?;
            result = result.and(r);
        }
        let elapsed = start.elapsed();
        result.map(|()| elapsed)
    })
}

/// The fast transport in deferred-reply mode (`--deferred-replies`).
pub fn deferred(wait: WaitPolicy) -> Fast {
    Fast::new(FastConfig {
        reply_mode: ReplyMode::Deferred,
        wait,
    })
}

/// The row: baseline, fast (inline replies) and fast with deferred replies,
/// all on the same plugin and entry.
pub fn row(plugin: &Arc<LegacyPlugin>) -> Row {
    let mut row = Row::new(
        "request_contended",
        "-",
        "-",
        variant(Baseline::new(), Arc::clone(plugin)),
        variant(Fast::new(FastConfig::default()), Arc::clone(plugin)),
    );
    row.extra.push((
        "fast_deferred",
        variant(deferred(WaitPolicy::Adaptive), Arc::clone(plugin)),
    ));
    row
}
