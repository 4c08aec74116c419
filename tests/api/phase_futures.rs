//! Phases as futures, on their own terms: a phase that ends on a plugin
//! thread wakes its task (no busy polling), a dropped phase future revokes
//! the context and closes the session, and many sessions run as tasks on a
//! small multi-threaded runtime. (The conformance suite also runs every
//! legacy and v2 test through `phase(..).await`: see `common::AsyncForm`.)

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use nylon_transport::abi::legacy::Phase;
use nylon_transport::host::driver::{run_request, RunOptions};
use nylon_transport::host::{MemoryContext, RequestSpec};
use nylon_transport::transport::{
    Baseline, PhaseOutcome, ReplyMode, SessionError, SessionOptions, Transport, V2,
};

use super::common::{fast, on_transport, rust_plugin, within, Kind, Probe, LATE_LOCK, TRANSPORTS};

/// The generous bound of every wait below: a lost wake-up fails the test
/// after it, a slow machine does not.
const BOUND: Duration = Duration::from_secs(20);

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
}

/// Awaits `fut` on a current-thread runtime, counting its polls; panics when
/// it has not ended within [`BOUND`] (a lost wake-up).
fn await_counting(fut: impl Future<Output = PhaseOutcome>) -> (PhaseOutcome, usize) {
    let mut polls = 0;
    let mut fut = pin!(fut);
    let counted = std::future::poll_fn(|cx| {
        polls += 1;
        fut.as_mut().poll(cx)
    });
    let outcome = current_thread()
        .block_on(within(BOUND, counted))
        .expect("the plugin's end of the phase woke its task within the bound");
    (outcome, polls)
}

fn request(path: &str) -> MemoryContext {
    let spec = RequestSpec {
        path: path.into(),
        ..Default::default()
    };
    MemoryContext::new(spec, None)
}

fn header<'a>(ctx: &'a MemoryContext, name: &str) -> Option<&'a [u8]> {
    ctx.headers()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_slice())
}

/// The most polls a phase ended later on a plugin thread may take: the
/// first (pending), then about one per message that wakes the task (the
/// baseline queues every message; deferred mode queues reads). A future
/// that polls itself again, or an executor woken in a loop, takes thousands
/// in the plugin's 20-50 ms.
const FEW_POLLS: usize = 6;

#[test]
fn a_phase_ended_later_on_a_plugin_thread_wakes_its_task_without_busy_polling() {
    let plugin = rust_plugin();
    for kind in TRANSPORTS {
        on_transport!(kind, |t| {
            let mut s = t
                .open(&plugin, "delayed", SessionOptions::default())
                .unwrap();
            let mut ctx = request("/woken");
            // The `delayed` entry ends its request filter 20 ms later on one
            // of the plugin's threads, after reading the path from there.
            let (outcome, polls) = await_counting(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
            t.close(s);
            assert_eq!(outcome, PhaseOutcome::Next, "{kind:?}");
            assert!(
                (2..=FEW_POLLS).contains(&polls),
                "{kind:?}: the phase was polled {polls} times"
            );
            assert_eq!(
                header(&ctx, "x-delayed-path"),
                Some(&b"/woken"[..]),
                "{kind:?}: the plugin thread's read and command reached the suspended task's context"
            );
        });
    }
    let t = V2::default();
    let mut s = t
        .open(
            &super::v2::plugin(),
            "async_late",
            SessionOptions::default(),
        )
        .unwrap();
    let mut ctx = request("/woken");
    // Detaches; its thread reads the path, sets a header and completes 50 ms later.
    let (outcome, polls) = await_counting(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
    t.close(s);
    assert_eq!(outcome, PhaseOutcome::Next, "v2");
    assert_eq!(polls, 2, "v2: pending, then woken once by `complete`");
    assert_eq!(header(&ctx, "x-async-path"), Some(&b"/woken"[..]));
}

/// Waits until `kind` dropped `n` messages for `sid`, or the context was
/// touched (a violation, which the caller reports), within [`BOUND`].
fn wait_for_drops(kind: Kind, sid: u32, n: u64, violations: &AtomicUsize) -> u64 {
    let start = Instant::now();
    loop {
        let dropped = kind.dropped_for(sid);
        if dropped >= n || violations.load(Ordering::SeqCst) > 0 {
            return dropped;
        }
        assert!(
            start.elapsed() < BOUND,
            "{kind:?}: {dropped} of {n} late messages for session {sid} dropped after {BOUND:?} \
             ({} uses of the dead context)",
            violations.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls a phase until the plugin has used the context once (its handler
/// ran: the phase start may go through another thread), checks that the
/// phase is still pending, declares the context dead, and drops the future
/// (from the drop on, nothing may touch the context; the handlers used here
/// touch it only before the first use is seen, or after the session closed).
fn start_and_drop(
    fut: impl Future<Output = PhaseOutcome>,
    uses: &AtomicUsize,
    dead: &AtomicBool,
    what: &str,
) {
    let mut fut = pin!(fut);
    let start = Instant::now();
    loop {
        let polled = fut.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(polled.is_pending(), "{what}: the phase must be pending");
        if uses.load(Ordering::SeqCst) > 0 {
            dead.store(true, Ordering::SeqCst);
            return;
        }
        assert!(start.elapsed() < BOUND, "{what}: the handler never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_dropped_phase_future_revokes_the_context_and_closes_the_session() {
    let plugin = rust_plugin();
    for kind in TRANSPORTS {
        on_transport!(kind, |t| {
            let mut s = t
                .open(&plugin, "late_read", SessionOptions::default())
                .unwrap();
            let sid = s.sid();
            let mut mem = request("/gone");
            let mut probe = Probe::new(&mut mem);
            let (dead, violations) = probe.tripwire();
            let uses = probe.uses();
            // The client went away: the host drops the pending phase.
            start_and_drop(
                t.phase(&mut s, Phase::RequestFilter, &mut probe),
                &uses,
                &dead,
                &format!("{kind:?}"),
            );
            // The plugin's thread, told by the session's close, now reads the
            // path, sets a header and says NEXT: all three must be dropped.
            let dropped = wait_for_drops(kind, sid, 3, &violations);
            assert_eq!(
                violations.load(Ordering::SeqCst),
                0,
                "{kind:?}: a callback reached the context after its future was dropped"
            );
            assert_eq!(dropped, 3, "{kind:?}");
            drop(probe);
            assert_eq!(header(&mem, "x-late"), None, "{kind:?}");
            // The session is closed: a later phase ends at once.
            let mut ctx = request("/after");
            let later =
                current_thread().block_on(within(BOUND, t.phase(&mut s, Phase::Logging, &mut ctx)));
            assert_eq!(
                later.expect("no hang"),
                PhaseOutcome::Error(SessionError::Closed),
                "{kind:?}"
            );
            t.close(s);
        });
    }
}

#[test]
fn a_dropped_v2_phase_future_revokes_the_context_from_the_plugins_thread() {
    let _late = LATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let plugin = super::v2::plugin();
    let t = V2::default();
    let mut s = t
        .open(&plugin, "silent_async", SessionOptions::default())
        .unwrap();
    let mut mem = request("/gone");
    let mut probe = Probe::new(&mut mem);
    let (dead, violations) = probe.tripwire();
    // The v2 handler detaches without using the context: one poll starts it.
    let uses = AtomicUsize::new(1);
    start_and_drop(
        t.phase(&mut s, Phase::RequestFilter, &mut probe),
        &uses,
        &dead,
        "v2",
    );
    // The detached call's thread now reads the path and completes; the
    // plugin joins it and reports what both calls returned.
    let mut ctx = MemoryContext::new(RequestSpec::default(), None);
    let r = run_request(
        &V2::default(),
        &plugin,
        "late_report",
        &mut ctx,
        None,
        RunOptions {
            timeout: BOUND,
            trace: false,
        },
    )
    .unwrap();
    assert_eq!(
        violations.load(Ordering::SeqCst),
        0,
        "the plugin's thread reached the context after its future was dropped"
    );
    assert_eq!(
        r.header("x-late-read"),
        Some("[]"),
        "the late read got nothing"
    );
    assert_eq!(r.header("x-late-complete"), Some("refused"));
    drop(probe);
    let mut ctx = request("/after");
    let later = futures::executor::block_on(t.phase(&mut s, Phase::Logging, &mut ctx));
    assert_eq!(later, PhaseOutcome::Error(SessionError::Closed));
    t.close(s);
}

/// Runs one request's four phases as a host task would; the outcomes and
/// the context.
async fn one_request<T: Transport>(
    t: &T,
    plugin: &Arc<T::Plugin>,
    entry: &str,
    path: String,
) -> (Vec<PhaseOutcome>, MemoryContext) {
    let mut s = t
        .open(plugin, entry, SessionOptions::default())
        .expect("session opens");
    let mut ctx = request(&path);
    let mut outcomes = Vec::new();
    for phase in Phase::ALL {
        let o = within(BOUND, t.phase(&mut s, phase, &mut ctx))
            .await
            .unwrap_or(PhaseOutcome::Timeout);
        outcomes.push(o);
    }
    t.close(s);
    (outcomes, ctx)
}

/// How many sessions run at once as tasks.
const TASKS: usize = 64;

/// Runs [`TASKS`] requests of `entry` as tasks on `rt`, each with its own
/// path, which the plugin's thread reads and sends back as `header`.
fn many_tasks<T>(
    rt: &tokio::runtime::Runtime,
    t: T,
    plugin: Arc<T::Plugin>,
    entry: &'static str,
    header_name: &'static str,
) where
    T: Transport + 'static,
    T::Plugin: Send + Sync + 'static,
{
    let name = t.name();
    let t = Arc::new(t);
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (t, plugin) = (Arc::clone(&t), Arc::clone(&plugin));
            rt.spawn(async move {
                let path = format!("/task/{i}");
                let (outcomes, ctx) = one_request(&*t, &plugin, entry, path.clone()).await;
                (path, outcomes, ctx)
            })
        })
        .collect();
    rt.block_on(async {
        for task in tasks {
            let (path, outcomes, ctx) = within(2 * BOUND, task)
                .await
                .expect("every task ends within the bound")
                .expect("no task panics");
            assert_eq!(outcomes, vec![PhaseOutcome::Next; 4], "{name}: {path}");
            assert_eq!(
                header(&ctx, header_name),
                Some(path.as_bytes()),
                "{name}: each request sees its own context"
            );
        }
    });
}

#[test]
fn many_sessions_as_tasks_on_two_worker_threads_all_complete() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a 2-worker runtime");
    let legacy = rust_plugin();
    // `delayed`: each request filter ends 20 ms later on one of the plugin's
    // four threads, after reading the path from there.
    many_tasks(
        &rt,
        Baseline::new(),
        Arc::clone(&legacy),
        "delayed",
        "x-delayed-path",
    );
    many_tasks(
        &rt,
        fast(ReplyMode::Inline),
        Arc::clone(&legacy),
        "delayed",
        "x-delayed-path",
    );
    many_tasks(
        &rt,
        fast(ReplyMode::Deferred),
        legacy,
        "delayed",
        "x-delayed-path",
    );
    // `async`: a detached call completed 5 ms later on the plugin's thread.
    many_tasks(
        &rt,
        V2::default(),
        super::v2::plugin(),
        "async",
        "x-async-path",
    );
}
