//! The process-isolated transport: requests through worker processes match
//! the in-process transports, and a worker that crashes, hangs or writes
//! garbage fails only its in-flight sessions, is restarted, and later
//! requests succeed.

#[path = "support/cc.rs"]
mod cc;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use nylon_transport::abi::legacy::Phase;
use nylon_transport::host::driver::{run_request, RequestReport, RunOptions};
use nylon_transport::host::{HttpContext, LegacyPlugin, MemoryContext, RequestSpec};
use nylon_transport::transport::isolated::{Abi, InnerKind};
use nylon_transport::transport::{
    Fast, Isolated, IsolatedConfig, IsolatedPlugin, OpenError, PhaseOutcome, SessionError,
    SessionOptions, Transport, V2Plugin, V2,
};

const BOUND: Duration = Duration::from_secs(30);

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// An example plugin `.so`, built by cargo once per test process.
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().expect("cargo build").success());
        built.push(name.to_string());
    }
    profile_dir().join("examples").join(format!("lib{name}.so"))
}

/// `examples/c_plugin/crash.c`, compiled once.
fn crash_plugin() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    cc::c_library(
        repo,
        &repo.join("examples/c_plugin/crash.c"),
        &[],
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libcrash.so"),
    )
}

fn config(workers: usize) -> IsolatedConfig {
    IsolatedConfig {
        workers,
        worker_command: vec![
            OsString::from(env!("CARGO_BIN_EXE_nylon-transport")),
            OsString::from("worker"),
        ],
        restart_backoff: (Duration::from_millis(5), Duration::from_millis(200)),
        ..IsolatedConfig::default()
    }
}

/// One worker with a 300 ms phase timeout (the watchdog's tests).
fn start_impatient(path: &Path, plugin_config: &[u8]) -> Arc<IsolatedPlugin> {
    IsolatedPlugin::start(
        path,
        plugin_config,
        IsolatedConfig {
            phase_timeout: Duration::from_millis(300),
            ..config(1)
        },
    )
    .unwrap()
}

fn full_request() -> RequestSpec {
    serde_json::from_str(
        r#"{"method":"POST","path":"/users/7","query":"a=1&b=2","host":"example.com:8080",
            "client_ip":"10.0.0.1","scheme":"https",
            "headers":[["X-User","alice"],["Content-Length","5"],["accept","*/*"],["accept","text/html"]],
            "body":"hello","params":{"id":"7"},"error":"upstream reset",
            "upstream":{"status":200,"headers":[["content-type","text/html"],["x-up","1"]],"body_chunks":["ab","cd"]}}"#,
    )
    .expect("valid request spec")
}

fn run<T: Transport>(t: &T, plugin: &Arc<T::Plugin>, entry: &str) -> RequestReport {
    let payload = br#"{"user":"alice"}"#.to_vec();
    run_spec(t, plugin, entry, full_request(), payload)
}

/// Runs the whole request `spec` (upstream included) with `payload`.
fn run_spec<T: Transport>(
    t: &T,
    plugin: &Arc<T::Plugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Vec<u8>,
) -> RequestReport {
    let upstream = spec.upstream.clone();
    let mut ctx = MemoryContext::new(spec, Some(payload));
    run_request(
        t,
        plugin,
        entry,
        &mut ctx,
        upstream.as_ref(),
        RunOptions {
            timeout: BOUND,
            trace: false,
        },
    )
    .expect("session opens")
}

/// Held by a test that loads the legacy example plugin in this process: the
/// library is loaded once per process, and its `initialize` resets the
/// SDK's state under another test's sessions.
fn in_process_plugin() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a client sees: the outcomes and the response.
fn seen(r: &RequestReport) -> String {
    format!(
        "{:?} {}",
        r.outcomes(),
        serde_json::to_string(&r.response).unwrap()
    )
}

#[test]
fn legacy_requests_through_a_worker_match_the_in_process_fast_transport() {
    let _alone = in_process_plugin();
    let path = example("rust_plugin");
    let cfg = br#"{"greeting":"hi from config"}"#;
    let local = Arc::new(LegacyPlugin::load(&path).unwrap());
    local.initialize(cfg).unwrap();
    let remote = IsolatedPlugin::start(&path, cfg, config(2)).unwrap();
    assert_eq!(remote.abi(), Abi::Legacy);
    for entry in [
        "all_methods",
        "end",
        "stream",
        "reads",
        "commands",
        "body_rewrite",
        "scenario",
        "read_command",
    ] {
        let want = run(&Fast::default(), &local, entry);
        let got = run(&Isolated::new(), &remote, entry);
        assert_eq!(seen(&got), seen(&want), "entry {entry}");
    }
    // The config reached the plugin's initialize in the worker.
    assert!(seen(&run(&Isolated::new(), &remote, "end")).contains("hi from config"));
    let failed = run(&Isolated::new(), &remote, "error");
    assert_eq!(failed.outcomes(), ["error"]);
    assert_eq!(remote.stats().deaths, 0);
}

#[test]
fn v2_requests_through_a_worker_match_the_in_process_v2_transport() {
    let path = example("v2_plugin");
    let local = Arc::new(V2Plugin::load(&path, b"{}").unwrap());
    let remote = IsolatedPlugin::start(&path, b"{}", config(2)).unwrap();
    assert_eq!(remote.abi(), Abi::V2);
    for entry in [
        "scenario",
        "all",
        "end",
        "stream",
        "async",
        "reads",
        "commands",
        "body_rewrite",
        "read_command",
        "e2e_headers",
        "e2e_payload",
        "e2e_append",
        "request_later",
    ] {
        let want = run(&V2::default(), &local, entry);
        let got = run(&Isolated::new(), &remote, entry);
        assert_eq!(seen(&got), seen(&want), "entry {entry}");
    }
}

#[test]
fn legacy_requests_match_on_every_inner_transport() {
    let _alone = in_process_plugin();
    let path = example("rust_plugin");
    let local = Arc::new(LegacyPlugin::load(&path).unwrap());
    local.initialize(b"{}").unwrap();
    for inner in [InnerKind::FastDeferred, InnerKind::Baseline] {
        let remote = IsolatedPlugin::start(
            &path,
            b"{}",
            IsolatedConfig {
                legacy_transport: inner,
                ..config(1)
            },
        )
        .unwrap();
        for entry in ["all_methods", "scenario", "reads"] {
            let want = run(&Fast::default(), &local, entry);
            let got = run(&Isolated::new(), &remote, entry);
            assert_eq!(seen(&got), seen(&want), "{inner:?} entry {entry}");
        }
    }
}

/// A request whose bodies and payload are large enough for slabs: a
/// 300 KB request body (read back with `READ`), a 9 KB payload, upstream
/// chunks of 70 KB, 5 KB and 4 bytes.
fn large_run<T: Transport>(t: &T, plugin: &Arc<T::Plugin>, entry: &str) -> RequestReport {
    let big = |c: &str, n: usize| c.repeat(n);
    let spec: RequestSpec = serde_json::from_value(serde_json::json!({
        "method": "POST", "path": "/big", "host": "example.com", "client_ip": "10.0.0.1",
        "headers": [["content-type", "text/plain"], ["X-User", "alice"]],
        "body": big("q", 300_000),
        "upstream": {"status": 200, "headers": [["content-type", "text/plain"]],
                     "body_chunks": [big("a", 70_000), big("b", 5_000), "tiny"]},
    }))
    .expect("valid request spec");
    let payload = format!(
        r#"{{"user":"alice","key":"k","pad":"{}"}}"#,
        big("p", 9_000)
    );
    run_spec(t, plugin, entry, spec, payload.into_bytes())
}

#[test]
fn large_bodies_cross_in_slabs_and_match_the_in_process_transports() {
    let _alone = in_process_plugin();
    let path = example("rust_plugin");
    let local = Arc::new(LegacyPlugin::load(&path).unwrap());
    local.initialize(b"{}").unwrap();
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    for entry in ["all_methods", "body_rewrite", "reads"] {
        let want = large_run(&Fast::default(), &local, entry);
        let got = large_run(&Isolated::new(), &remote, entry);
        assert_eq!(seen(&got), seen(&want), "legacy entry {entry}");
    }
    let legacy = remote.stats();
    let path = example("v2_plugin");
    let local = Arc::new(V2Plugin::load(&path, b"{}").unwrap());
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    for entry in [
        "all",
        "body_rewrite",
        "reads",
        "e2e_payload",
        "request_later",
    ] {
        let want = large_run(&V2::default(), &local, entry);
        let got = large_run(&Isolated::new(), &remote, entry);
        assert_eq!(seen(&got), seen(&want), "v2 entry {entry}");
    }
    for stats in [legacy, remote.stats()] {
        // Request bodies, payloads and chunks went out in host slabs; the
        // rewritten chunks came back in worker slabs.
        assert!(stats.slabs_sent >= 10, "{stats:?}");
        assert!(stats.slabs_received >= 2, "{stats:?}");
        assert_eq!(stats.deaths, 0, "{stats:?}");
    }
}

/// A WebSocket request whose scripted client sends `messages` (JSON),
/// then hangs up once the plugin has been quiet a while.
fn ws_spec(messages: &str) -> RequestSpec {
    serde_json::from_str(&format!(
        r#"{{"headers":[["Sec-WebSocket-Key","dGhlIHNhbXBsZSBub25jZQ=="]],"query":"room=lobby",
            "websocket":{messages}}}"#
    ))
    .expect("valid request spec")
}

const WS_SCRIPTS: [&str; 4] = [
    r#"[{"text":"hi"},{"binary":[1,2,0]},{"text":"again"}]"#,
    r#"[{"text":"bye"},{"text":"never"}]"#,
    r#"[]"#,
    r#"[{"text":"one"},{"text":"two"},{"text":"three"},{"binary":[]},{"text":"four"}]"#,
];

/// Runs every WebSocket entry over every script in process (`t`, `local`)
/// and through `remote`, and compares what the client and the rooms saw;
/// the number of sessions that upgraded.
fn same_websockets<T: Transport>(
    t: &T,
    local: &Arc<T::Plugin>,
    remote: &Arc<IsolatedPlugin>,
    abi: &str,
) -> usize {
    let mut upgraded = 0;
    for entry in ["ws", "ws_echo", "ws_room", "ws_sink"] {
        for script in WS_SCRIPTS {
            let payload = br#"{"user":"alice"}"#.to_vec();
            let want = run_spec(t, local, entry, ws_spec(script), payload.clone());
            let got = run_spec(&Isolated::new(), remote, entry, ws_spec(script), payload);
            assert_eq!(seen(&got), seen(&want), "{abi} entry {entry} {script}");
            upgraded += usize::from(!got.response.websocket.is_empty());
        }
    }
    assert_eq!(remote.stats().deaths, 0);
    upgraded
}

#[test]
fn websocket_sessions_through_a_worker_match_the_in_process_transports() {
    let _alone = in_process_plugin();
    let path = example("rust_plugin");
    let local = Arc::new(LegacyPlugin::load(&path).unwrap());
    local.initialize(b"{}").unwrap();
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    let mut upgraded = same_websockets(&Fast::default(), &local, &remote, "legacy");
    let path = example("v2_plugin");
    let local = Arc::new(V2Plugin::load(&path, b"{}").unwrap());
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    upgraded += same_websockets(&V2::default(), &local, &remote, "v2");
    // Not a comparison of two refusals: most of them went through.
    assert!(upgraded >= 24, "{upgraded} upgraded sessions");
}

#[test]
fn a_refused_websocket_handshake_is_answered_by_the_host_as_in_process() {
    let path = example("v2_plugin");
    let local = Arc::new(V2Plugin::load(&path, b"{}").unwrap());
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    // No Sec-WebSocket-Key: the host's context refuses with a 400.
    let spec: RequestSpec = serde_json::from_str(r#"{"websocket":[{"text":"hi"}]}"#).unwrap();
    let want = run_spec(&V2::default(), &local, "ws_echo", spec.clone(), Vec::new());
    let got = run_spec(&Isolated::new(), &remote, "ws_echo", spec, Vec::new());
    assert_eq!(seen(&got), seen(&want));
    assert_eq!(got.response.status, 400, "{}", seen(&got));
    // The session after it on the same worker is served.
    let ok = run_spec(
        &Isolated::new(),
        &remote,
        "ws_echo",
        ws_spec(WS_SCRIPTS[0]),
        Vec::new(),
    );
    assert!(!ok.response.websocket.is_empty(), "{}", seen(&ok));
}

/// A WebSocket connection outlives the phase timeout: the worker's phase
/// deadline and the host's stall watchdog leave an upgraded phase alone.
#[test]
fn a_websocket_phase_outlives_the_phase_timeout() {
    let path = example("v2_plugin");
    let remote = start_impatient(&path, b"{}");
    // A client quiet for three timeouts (300 ms each) before it hangs up.
    let mut spec = ws_spec(r#"[{"text":"hi"}]"#);
    spec.websocket_linger_ms = Some(900);
    let r = run_spec(&Isolated::new(), &remote, "ws_echo", spec, Vec::new());
    assert_eq!(r.outcomes()[0], "stream_end", "{}", seen(&r));
    assert_eq!(remote.stats().deaths, 0, "{:?}", remote.stats());
}

/// A send the host cannot make (the client broke after one frame) fails
/// in the host; the session goes on and ends as it does in process.
#[test]
fn a_send_that_fails_in_the_host_leaves_the_session_as_in_process() {
    let _alone = in_process_plugin();
    let path = example("rust_plugin");
    let local = Arc::new(LegacyPlugin::load(&path).unwrap());
    local.initialize(b"{}").unwrap();
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    let mut spec = ws_spec(r#"[{"text":"a"},{"text":"b"},{"text":"c"}]"#);
    spec.websocket_send_limit = Some(1);
    let want = run_spec(&Fast::default(), &local, "ws", spec.clone(), Vec::new());
    let got = run_spec(&Isolated::new(), &remote, "ws", spec, Vec::new());
    assert_eq!(seen(&got), seen(&want));
    assert_eq!(got.outcomes(), ["stream_end", "next"]);
    assert_eq!(remote.stats().deaths, 0);
}

/// A worker killed while a WebSocket connection runs in it fails that
/// phase with the reason, and the next connection is served.
#[test]
fn a_worker_killed_during_a_websocket_fails_its_phase_and_comes_back() {
    let path = example("v2_plugin");
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    let pid = remote.worker_pids()[0];
    let in_flight = {
        let remote = Arc::clone(&remote);
        std::thread::spawn(move || {
            let t = Isolated::new();
            let mut s = t
                .open(&remote, "ws_echo", SessionOptions::default())
                .unwrap();
            let mut spec = ws_spec(r#"[{"text":"hi"}]"#);
            spec.websocket_linger_ms = Some(BOUND.as_millis() as u64);
            let mut ctx = MemoryContext::new(spec, None);
            t.run_phase(&mut s, Phase::RequestFilter, &mut ctx, BOUND)
        })
    };
    // Long after the upgrade (a few ms), and long before the client would
    // hang up.
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on the worker's pid, which this test's host spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let o = in_flight.join().unwrap();
    let r = worker_error(&o);
    assert!(r.contains("killed by signal 9"), "{r}");
    await_workers(&remote, 1);
    let r = run_spec(
        &Isolated::new(),
        &remote,
        "ws_echo",
        ws_spec(WS_SCRIPTS[0]),
        Vec::new(),
    );
    assert_eq!(r.outcomes()[0], "stream_end", "{}", seen(&r));
    assert!(!r.response.websocket.is_empty());
}

#[test]
fn slabs_come_back_to_the_pool_after_many_requests_and_cancellations() {
    // One worker, so every request shares one pool of 37 host slabs and 37
    // worker slabs: a slab lost per request would exhaust it within the
    // loop, and the bodies would then travel in frames (counted apart).
    let path = example("v2_plugin");
    let remote = IsolatedPlugin::start(&path, b"{}", config(1)).unwrap();
    let t = Isolated::new();
    for i in 0..300 {
        let before = remote.stats();
        let r = large_run(&t, &remote, "body_rewrite");
        assert_eq!(r.outcomes()[0], "next", "request {i}");
        let after = remote.stats();
        // Two chunks of the three are large: out in host slabs, rewritten
        // back in worker slabs; the 9 KB payload goes out once, with the
        // phase that opens the session (the worker keeps a copy).
        assert_eq!(after.slabs_sent - before.slabs_sent, 2 + 1, "request {i}");
        assert_eq!(
            after.slabs_received - before.slabs_received,
            2,
            "request {i}"
        );
        // And a phase cancelled while the worker runs it: its slabs come
        // back when its late end arrives, whether that end finds the
        // session's slot still open, freed, or taken by the next session.
        let mut s = t.open(&remote, "async", SessionOptions::default()).unwrap();
        let mut ctx = MemoryContext::new(RequestSpec::default(), Some(vec![b'x'; 8192]));
        let mut f = t.phase(&mut s, Phase::RequestFilter, &mut ctx);
        let _ = poll_once(&mut f);
        drop(f);
        t.close(s);
    }
    assert_eq!(remote.stats().deaths, 0);
}

/// Runs phase 1 of `entry` on a new session; the outcome and the worker pid
/// the `ok` entry reports.
fn phase1(t: &Isolated, p: &Arc<IsolatedPlugin>, entry: &str) -> (PhaseOutcome, Option<String>) {
    let mut s = t.open(p, entry, SessionOptions::default()).unwrap();
    let mut ctx = MemoryContext::new(RequestSpec::default(), None);
    let o = t.run_phase(&mut s, Phase::RequestFilter, &mut ctx, BOUND);
    let pid = ctx
        .headers()
        .iter()
        .find(|(n, _)| n == "x-worker-pid")
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    t.close(s);
    (o, pid)
}

/// Waits until the plugin has `n` live workers again.
fn await_workers(p: &IsolatedPlugin, n: usize) {
    let end = Instant::now() + BOUND;
    while p.worker_pids().len() < n {
        assert!(
            Instant::now() < end,
            "workers not restarted: {:?}",
            p.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn worker_error(o: &PhaseOutcome) -> &str {
    match o {
        PhaseOutcome::Error(SessionError::Worker(r)) => r,
        other => panic!("expected a worker error, got {other:?}"),
    }
}

#[test]
fn every_kind_of_crash_fails_only_in_flight_sessions_and_the_worker_comes_back() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"cfg-1", config(1)).unwrap();
    let (o, first) = phase1(&t, &p, "ok");
    assert_eq!(o, PhaseOutcome::End);
    let mut pid = first.expect("the ok entry reports its pid");
    for (entry, reason) in [
        ("crash_segv", "killed by signal 11 (SIGSEGV)"),
        ("crash_abort", "killed by signal 6 (SIGABRT)"),
        ("crash_exit", "exited with status 7"),
        ("crash_fatal", "exited with status 2"),
    ] {
        let deaths = p.stats().deaths;
        // A session opened before the crash, idle during it.
        let mut idle = t.open(&p, "ok", SessionOptions::default()).unwrap();
        let (o, _) = phase1(&t, &p, entry);
        let r = worker_error(&o);
        assert!(r.contains(reason), "{entry}: {r}");
        assert!(r.contains(&pid), "{entry}: the reason names the pid: {r}");
        assert_eq!(p.stats().deaths, deaths + 1);
        // The idle session's worker state is gone: its next phase fails.
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let o = t.run_phase(&mut idle, Phase::RequestFilter, &mut ctx, BOUND);
        assert!(
            matches!(o, PhaseOutcome::Error(SessionError::Worker(_))),
            "{o:?}"
        );
        t.close(idle);
        await_workers(&p, 1);
        let (o, now) = phase1(&t, &p, "ok");
        assert_eq!(o, PhaseOutcome::End, "after {entry}");
        let now = now.unwrap();
        assert_ne!(now, pid, "a new worker answers after {entry}");
        pid = now;
    }
    let s = p.stats();
    assert_eq!(s.deaths, 4);
    assert_eq!(s.started, 5);
    assert_eq!(s.restarts, 4);
    assert!(s.last_death.unwrap().contains("status 2"));
}

/// Polls `f` once with a no-op waker.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    std::pin::Pin::new(f).poll(&mut Context::from_waker(std::task::Waker::noop()))
}

#[test]
fn a_crash_fails_the_sessions_queued_behind_it_and_spares_the_other_worker() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(2)).unwrap();
    await_workers(&p, 2);
    // Sessions alternate between the two workers.
    let mut sessions: Vec<_> = (0..4)
        .map(|_| t.open(&p, "ok", SessionOptions::default()).unwrap())
        .collect();
    let mut crash = t.open(&p, "crash_segv", SessionOptions::default()).unwrap();
    let victim_pid = crash.worker_pid();
    let (same, other): (Vec<_>, Vec<_>) = sessions
        .iter_mut()
        .partition(|s| s.worker_pid() == victim_pid);
    assert!(!same.is_empty() && !other.is_empty());
    let mut ctxs: Vec<_> = (0..5)
        .map(|_| MemoryContext::new(RequestSpec::default(), None))
        .collect();
    let (c0, rest) = ctxs.split_first_mut().unwrap();
    // The crash goes first; the others queue behind it in the same worker.
    let mut crash_phase = t.phase(&mut crash, Phase::RequestFilter, c0);
    assert!(poll_once(&mut crash_phase).is_pending());
    let mut queued: Vec<_> = same
        .into_iter()
        .zip(rest.iter_mut())
        .map(|(s, c)| t.phase(s, Phase::RequestFilter, c))
        .collect();
    for q in &mut queued {
        let _ = poll_once(q);
    }
    let end = Instant::now() + BOUND;
    let crash_o = loop {
        if let Poll::Ready(o) = poll_once(&mut crash_phase) {
            break o;
        }
        assert!(Instant::now() < end, "the crash was never reported");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert!(worker_error(&crash_o).contains("SIGSEGV"));
    for q in &mut queued {
        let o = loop {
            if let Poll::Ready(o) = poll_once(q) {
                break o;
            }
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(worker_error(&o).contains("SIGSEGV"), "{o:?}");
    }
    drop(queued);
    drop(crash_phase);
    // The other worker's sessions never noticed.
    for s in other {
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        assert_eq!(
            t.run_phase(s, Phase::RequestFilter, &mut ctx, BOUND),
            PhaseOutcome::End
        );
    }
    assert_eq!(p.stats().deaths, 1);
}

#[test]
fn a_worker_that_stops_answering_is_killed_after_the_phase_timeout() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = start_impatient(&path, b"");
    let (o, _) = phase1(&t, &p, "crash_loop");
    let r = worker_error(&o);
    assert!(r.contains("no answer within"), "{r}");
    assert_eq!(p.stats().deaths, 1);
    await_workers(&p, 1);
    assert_eq!(phase1(&t, &p, "ok").0, PhaseOutcome::End);
}

#[test]
fn a_phase_the_plugin_completes_later_does_not_hold_up_the_worker() {
    // `pair`'s first phase ends only when a second session's phase reaches
    // the plugin: a worker that ran one phase at a time would never deliver
    // the second (until the watchdog killed it).
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(1)).unwrap();
    let mut a = t.open(&p, "pair", SessionOptions::default()).unwrap();
    let mut b = t.open(&p, "pair", SessionOptions::default()).unwrap();
    let mut ctx_a = MemoryContext::new(RequestSpec::default(), None);
    let mut ctx_b = MemoryContext::new(RequestSpec::default(), None);
    {
        let mut first = pin!(t.phase(&mut a, Phase::RequestFilter, &mut ctx_a));
        assert!(poll_once(&mut first).is_pending());
        let o = t.run_phase(&mut b, Phase::RequestFilter, &mut ctx_b, BOUND);
        assert_eq!(o, PhaseOutcome::Next);
        assert_eq!(futures::executor::block_on(first), PhaseOutcome::Next);
    }
    let paired = |ctx: &MemoryContext| ctx.headers().iter().any(|(n, _)| n == "x-paired-with");
    assert!(paired(&ctx_a) && paired(&ctx_b));
    t.close(a);
    t.close(b);
    assert_eq!(p.stats().deaths, 0);
}

#[test]
fn a_phase_that_runs_out_its_time_ends_with_a_timeout_and_the_worker_lives() {
    // `silent` holds its phase for good. The worker's main thread is free,
    // so the worker answers the phase with a timeout at `phase_timeout`
    // itself; the watchdog (a tick later) is for a worker that cannot.
    let path = example("rust_plugin");
    let t = Isolated::new();
    let p = start_impatient(&path, b"{}");
    for _ in 0..3 {
        let mut s = t.open(&p, "silent", SessionOptions::default()).unwrap();
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let o = t.run_phase(&mut s, Phase::RequestFilter, &mut ctx, BOUND);
        assert_eq!(o, PhaseOutcome::Timeout);
        t.close(s);
    }
    assert_eq!(p.stats().deaths, 0, "{:?}", p.stats());
    assert_eq!(run(&t, &p, "all_methods").outcomes()[0], "next");
}

#[test]
fn a_worker_stuck_in_a_phase_the_host_gave_up_on_is_killed_too() {
    // The host drops the phase (its own timeout, a client gone): nothing
    // waits on the worker any more, but it is just as stuck, and every later
    // request sent to it would wait behind the loop.
    let path = crash_plugin();
    let t = Isolated::new();
    let p = start_impatient(&path, b"");
    let mut s = t.open(&p, "crash_loop", SessionOptions::default()).unwrap();
    let mut ctx = MemoryContext::new(RequestSpec::default(), None);
    {
        let mut f = pin!(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
        assert!(poll_once(&mut f).is_pending());
    }
    t.close(s);
    let end = Instant::now() + BOUND;
    while p.stats().deaths == 0 {
        assert!(
            Instant::now() < end,
            "the stuck worker lives on: {:?}",
            p.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(p.stats().last_death.unwrap().contains("no answer within"));
    await_workers(&p, 1);
    assert_eq!(phase1(&t, &p, "ok").0, PhaseOutcome::End);
    // An idle worker owes nothing: it is not killed.
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(p.stats().deaths, 1);
}

#[test]
fn a_phase_cancelled_while_its_read_is_unanswered_ends_and_the_worker_lives() {
    // The request body is not shipped with the phase start: the worker asks
    // for it and waits. The host drops the phase instead of answering; its
    // CLOSE must end that wait (an empty read), or the worker would sit on
    // it, owing an answer, until the watchdog killed it.
    let path = example("rust_plugin");
    let t = Isolated::new();
    let p = start_impatient(&path, b"{}");
    let mut s = t
        .open(&p, "all_methods", SessionOptions::default())
        .unwrap();
    let mut ctx = MemoryContext::new(full_request(), Some(br#"{"key":"v"}"#.to_vec()));
    {
        let mut f = pin!(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
        assert!(poll_once(&mut f).is_pending());
        std::thread::sleep(Duration::from_millis(200));
    }
    t.close(s);
    // Four phase timeouts: a worker still waiting would be dead by then.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(p.stats().deaths, 0, "{:?}", p.stats());
    let r = run(&t, &p, "all_methods");
    assert_eq!(r.outcomes()[0], "next");
}

#[test]
fn a_worker_that_writes_garbage_is_killed() {
    let path = crash_plugin();
    let t = Isolated::new();
    for fault in ["garbage-end", "bad-sid", "corrupt-ring", "bad-slab"] {
        let mut cfg = config(1);
        cfg.worker_command
            .extend([OsString::from("--fault"), OsString::from(fault)]);
        let p = IsolatedPlugin::start(&path, b"", cfg).unwrap();
        let (o, _) = phase1(&t, &p, "ok");
        let r = worker_error(&o);
        assert!(
            r.contains("protocol violation") || r.contains("corrupt ring"),
            "{fault}: {r}"
        );
        assert!(
            r.contains("SIGKILL") || r.contains("killed"),
            "{fault}: {r}"
        );
        assert_eq!(p.stats().deaths, 1, "{fault}");
    }
}

#[test]
fn a_full_plugin_refuses_new_sessions_fast() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(
        &path,
        b"",
        IsolatedConfig {
            queue: 2,
            ..config(1)
        },
    )
    .unwrap();
    let a = t.open(&p, "ok", SessionOptions::default()).unwrap();
    let b = t.open(&p, "ok", SessionOptions::default()).unwrap();
    assert_eq!(
        t.open(&p, "ok", SessionOptions::default()).unwrap_err(),
        OpenError::Overloaded
    );
    assert_eq!(p.stats().rejected, 1);
    assert_eq!(p.stats().in_flight, 2);
    t.close(a);
    let c = t.open(&p, "ok", SessionOptions::default()).unwrap();
    drop((b, c));
    assert_eq!(
        t.open(&p, "nope", SessionOptions::default()).unwrap_err(),
        OpenError::Rejected("nope".into())
    );
    assert!(p.check_entry("crash_loop").unwrap());
    assert!(!p.check_entry("nope").unwrap());
}

#[test]
fn a_full_ring_fails_a_phase_at_once_with_busy_and_the_worker_recovers() {
    // The worker is stuck in a plugin call (a 2 s sleep), so nobody drains
    // its ring; phase starts with 200 KB of headers fill its 4 MiB in about
    // twenty. The next one must not wait for room: Busy on the first poll.
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(1)).unwrap();
    // Known before the worker is stuck: opening an unchecked entry would ask
    // the stuck worker, and wait out its sleep.
    assert!(p.check_entry("ok").unwrap());
    let mut stuck = t.open(&p, "sleep_2s", SessionOptions::default()).unwrap();
    let mut stuck_ctx = MemoryContext::new(RequestSpec::default(), None);
    let mut stuck_phase = Box::pin(t.phase(&mut stuck, Phase::RequestFilter, &mut stuck_ctx));
    assert!(poll_once(&mut stuck_phase).is_pending());
    let spec: RequestSpec = serde_json::from_value(serde_json::json!({
        "headers": [["x-big", "h".repeat(200_000)]],
    }))
    .unwrap();
    let mut queued = Vec::new();
    let busy = loop {
        assert!(queued.len() < 100, "a 4 MiB ring took 100 frames of 200 KB");
        let mut s = t.open(&p, "ok", SessionOptions::default()).unwrap();
        let mut ctx = MemoryContext::new(spec.clone(), None);
        let mut f = t.phase(&mut s, Phase::RequestFilter, &mut ctx);
        let first = poll_once(&mut f);
        drop(f);
        match first {
            // The phase was cancelled by the drop; its frame stays queued.
            Poll::Pending => queued.push(s),
            Poll::Ready(o) => break o,
        }
    };
    assert!(
        matches!(&busy, PhaseOutcome::Error(SessionError::Busy(m)) if m.contains("ring is full")),
        "{busy:?}"
    );
    assert!(queued.len() >= 15, "{} frames fit", queued.len());
    assert_eq!(p.stats().rejected, 1);
    drop(queued);
    drop(stuck_phase);
    t.close(stuck);
    // Once the worker is back, the ring drains and phases run again.
    let end = Instant::now() + BOUND;
    loop {
        let (o, pid) = phase1(&t, &p, "ok");
        if o == PhaseOutcome::End {
            assert!(pid.is_some());
            break;
        }
        assert!(Instant::now() < end, "still {o:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(p.stats().deaths, 0);
}

#[test]
fn an_entry_checked_once_opens_without_asking_a_worker_again() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(1)).unwrap();
    assert!(p.check_entry("ok").unwrap());
    // The only worker is now stuck in a loop: asking it anything would wait
    // until the watchdog kills it, and fail.
    let mut stuck = t.open(&p, "crash_loop", SessionOptions::default()).unwrap();
    let mut ctx = MemoryContext::new(RequestSpec::default(), None);
    let mut f = pin!(t.phase(&mut stuck, Phase::RequestFilter, &mut ctx));
    assert!(poll_once(&mut f).is_pending());
    let s = t.open(&p, "ok", SessionOptions::default());
    assert!(s.is_ok(), "{:?}", s.err());
    assert!(p.check_entry("ok").unwrap());
}

#[test]
fn shutdown_runs_the_plugins_shutdown_once_per_worker_and_later_opens_fail() {
    let path = crash_plugin();
    let t = Isolated::new();
    // The crash plugin appends a line to the file its config names when
    // its shutdown runs.
    let marker = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("isolated-shutdown-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let cfg = marker.to_str().unwrap().as_bytes();
    let p = IsolatedPlugin::start(&path, cfg, config(2)).unwrap();
    await_workers(&p, 2);
    let (_, _) = phase1(&t, &p, "ok");
    let pids = p.worker_pids();
    p.shutdown(BOUND);
    let lines = std::fs::read_to_string(&marker).unwrap_or_default();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(lines, "shutdown\nshutdown\n", "one shutdown per worker");
    p.shutdown(BOUND);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} still runs"
        );
    }
    assert_eq!(p.stats().deaths, 0, "a clean exit is not a death");
    assert_eq!(
        t.open(&p, "ok", SessionOptions::default()).unwrap_err(),
        OpenError::Overloaded
    );
}

#[test]
fn asynchronous_phases_finish_while_a_synchronous_caller_reads_the_ring() {
    // A synchronous caller reads the worker's answers itself and keeps the
    // dispatcher asleep meanwhile: answers it takes for other sessions must
    // wake their tasks, and when it leaves while answers are owed it arms
    // the doorbell. A lost wake-up costs a phase the dispatcher's one-second
    // nap or the caller's next phase: 5,000 phases take about a second, and
    // without the arm they did not finish in 10 s (2,000 of them failed 2
    // runs of 3).
    let bound = Duration::from_secs(10);
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(1)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let start = Instant::now();
    let synchronous = std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (o, _) = phase1(&t, &p, "ok");
                assert_eq!(o, PhaseOutcome::End);
                n += 1;
            }
            n
        });
        // Stops the caller however this loop ends (the scope joins it).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop_caller = Stop(&stop);
        for i in 0..5000 {
            let mut s = t.open(&p, "ok", SessionOptions::default()).unwrap();
            let mut ctx = MemoryContext::new(RequestSpec::default(), None);
            let o = futures::executor::block_on(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
            assert_eq!(o, PhaseOutcome::End);
            t.close(s);
            assert!(start.elapsed() < bound, "only {i} phases within {bound:?}");
        }
        drop(stop_caller);
        caller.join().expect("synchronous caller")
    });
    assert!(synchronous > 0);
    assert_eq!(p.stats().deaths, 0);
}

#[test]
fn requests_after_a_synchronous_phase_still_wake_the_dispatcher() {
    // A synchronous caller that leaves with nothing owed leaves the doorbell
    // quiet (the dispatcher asleep, not armed). The next request sent while
    // nobody reads the ring must arm it, or its answer waits for the
    // dispatcher's one-second nap (in about one round of six, when the
    // dispatcher was asleep): 300 rounds would take about a minute.
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(1)).unwrap();
    let start = Instant::now();
    for i in 0..300 {
        let (o, _) = phase1(&t, &p, "ok");
        assert_eq!(o, PhaseOutcome::End);
        // An asynchronous phase, nobody else reading.
        let mut s = t.open(&p, "ok", SessionOptions::default()).unwrap();
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let o = futures::executor::block_on(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
        assert_eq!(o, PhaseOutcome::End);
        t.close(s);
        // An entry check (an unknown entry: a round trip, answered through
        // the dispatcher too).
        let (o, _) = phase1(&t, &p, "ok");
        assert_eq!(o, PhaseOutcome::End);
        assert!(!p.check_entry(&format!("unknown{i}")).unwrap());
        assert!(start.elapsed() < BOUND, "only {i} rounds within {BOUND:?}");
    }
    assert_eq!(p.stats().deaths, 0);
}

#[test]
fn a_cancelled_phase_closes_the_session_and_the_plugin_stays_usable() {
    let path = example("rust_plugin");
    let t = Isolated::new();
    let p = start_impatient(&path, b"{}");
    let mut s = t.open(&p, "silent", SessionOptions::default()).unwrap();
    let mut ctx = MemoryContext::new(RequestSpec::default(), None);
    {
        let mut f = pin!(t.phase(&mut s, Phase::RequestFilter, &mut ctx));
        assert!(f
            .as_mut()
            .poll(&mut Context::from_waker(std::task::Waker::noop()))
            .is_pending());
    }
    let o = t.run_phase(&mut s, Phase::ResponseFilter, &mut ctx, BOUND);
    assert_eq!(o, PhaseOutcome::Error(SessionError::Closed));
    t.close(s);
    // `silent` holds its phase for good; the host's CLOSE cancels it in the
    // worker, which answers (the answer is dropped) and owes nothing: the
    // watchdog leaves it alone, and it serves the next request.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(p.stats().deaths, 0, "{:?}", p.stats());
    let r = run(&t, &p, "all_methods");
    assert_eq!(r.outcomes()[0], "next");
    let _ = ctx.request_method();
}

#[test]
fn many_threads_opening_a_new_entry_at_once_all_get_a_session() {
    let path = crash_plugin();
    let t = Isolated::new();
    let p = IsolatedPlugin::start(&path, b"", config(2)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let (o, _) = phase1(&t, &p, "ok");
                assert_eq!(o, PhaseOutcome::End);
            });
        }
    });
    assert_eq!(p.stats().rejected, 0);
}
