//! The Go SDK's example plugins (`sdk/go/examples/`) on the v2 transport: the
//! behavioural suite the Rust and C examples run, plus what the Go SDK
//! promises on top (no Go allocation and no Go->C crossing per request in
//! steady state, one C->Go crossing per phase that has a Go handler).
//!
//! Every test first checks for the Go toolchain (`go_or_skip`): outside CI a
//! machine without Go skips them loudly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nylon_transport::host::driver::{run_request, RequestReport, RunOptions};
use nylon_transport::host::{MemoryContext, RequestSpec};
use nylon_transport::transport::{Transport, V2Plugin, V2};

use super::common::full_request;
use super::go_build::{go_in_sdk, go_library, go_or_skip};
use super::go_specs::{scenario_spec, spec, ws_spec};

/// Each Go example, built and loaded once per test process.
fn plugin(example: &str) -> Arc<V2Plugin> {
    static LOADED: Mutex<Vec<(String, Arc<V2Plugin>)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = loaded.iter().find(|(n, _)| n == example) {
        return p.clone();
    }
    let config: &[u8] = if example == "middleware" {
        br#"{"prefix":"from-config"}"#
    } else {
        b""
    };
    let p = Arc::new(
        V2Plugin::load(go_library(example, &[]), config)
            .unwrap_or_else(|e| panic!("load the Go example {example}: {e}")),
    );
    loaded.push((example.to_string(), p.clone()));
    p
}

fn run_on(
    p: &Arc<V2Plugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
) -> RequestReport {
    run_within(
        &V2::default(),
        p,
        entry,
        spec,
        payload,
        Duration::from_secs(20),
    )
}

fn run_within<T: Transport>(
    t: &T,
    p: &Arc<T::Plugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> RequestReport {
    let upstream = spec.upstream.clone();
    let mut ctx = MemoryContext::new(spec, payload.map(<[u8]>::to_vec));
    run_request(
        t,
        p,
        entry,
        &mut ctx,
        upstream.as_ref(),
        RunOptions {
            timeout,
            trace: false,
        },
    )
    .expect("session opens")
}

fn run(example: &str, entry: &str, spec: RequestSpec, payload: Option<&[u8]>) -> RequestReport {
    run_on(&plugin(example), entry, spec, payload)
}

#[test]
fn go_headers_of_the_copy_in_the_sdk_match_include() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let a = std::fs::read(root.join("include/nylon_v2.h")).unwrap();
    let b = std::fs::read(root.join("sdk/go/sdk/nylon_v2.h")).unwrap();
    assert!(
        a == b,
        "sdk/go/sdk/nylon_v2.h must be a copy of include/nylon_v2.h"
    );
}

#[test]
fn go_middleware_sets_headers_and_status_from_its_payload_and_rewrites_every_chunk() {
    if !go_or_skip("go_middleware") {
        return;
    }
    let payload = br#"{"header":"x-mw","value":"on","status":203,"remove":"x-up"}"#;
    let r = run("middleware", "middleware", full_request(), Some(payload));
    assert_eq!(
        r.outcomes(),
        ["next", "next", "next", "next", "next"],
        "{:?}",
        r.phases
    );
    let h = |n| r.header(n).unwrap_or_else(|| panic!("missing {n}: {r:?}"));
    assert_eq!(
        h("x-mw-prefix"),
        "from-config",
        "NewInitializer decoded the config"
    );
    assert_eq!(
        h("x-mw-user"),
        "alice",
        "Request().Header is case-insensitive"
    );
    assert_eq!(h("x-mw"), "on", "a header named by the payload");
    assert_eq!(r.response.status, 203, "the status from the payload");
    assert_eq!(r.header("x-up"), None, "RemoveResponseHeader");
    assert_eq!(
        h("x-mw-upstream-headers"),
        "content-type,x-mw,x-mw-prefix,x-mw-session,x-mw-user,x-up",
        "Response().Headers(): the response at phase start"
    );
    assert_eq!(h("x-mw-upstream-status"), "200");
    assert_eq!(
        h("x-mw-accept"),
        "text/html",
        "GetRequestHeader: the last value"
    );
    assert_eq!(
        h("x-mw-request-headers"),
        "4",
        "GetRequestHeaders: one per name"
    );
    assert_eq!(
        r.response.body, "ABCD",
        "every chunk read, rewritten and kept"
    );
    assert_eq!(h("x-mw-log"), "2;upstream reset;true");
    // No upstream body: the end-of-stream call, where the suffix goes.
    let payload = br#"{"suffix":"!"}"#;
    let r = run(
        "middleware",
        "middleware",
        RequestSpec::default(),
        Some(payload),
    );
    assert_eq!(r.response.body, "!");
    assert_eq!(r.response.status, 200);
    assert_eq!(r.header("x-mw-prefix"), Some("from-config"));
    // A second instance with a configuration that is not JSON: as upstream,
    // NewInitializer's function gets the zero Config. (Both instances share
    // the library's globals; only this test uses this library.)
    let bad =
        Arc::new(V2Plugin::load(go_library("middleware", &[]), b"not json").expect("load again"));
    let r = run_on(&bad, "middleware", RequestSpec::default(), None);
    assert_eq!(r.header("x-mw-prefix"), Some(""));
    // Dropping it runs the Shutdown function.
    drop(bad);
    let r = run("middleware", "middleware", RequestSpec::default(), None);
    assert_eq!(r.header("x-mw-prefix"), Some("after-shutdown"));
}

#[test]
fn go_stream_service_streams_its_response() {
    if !go_or_skip("go_stream") {
        return;
    }
    let r = run("stream", "stream", RequestSpec::default(), None);
    assert_eq!(r.outcomes(), ["stream_end", "next"], "{:?}", r.phases);
    assert_eq!(r.response.streamed_chunks, ["one", "two", "three"]);
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let r = run(
        "stream",
        "stream",
        RequestSpec::default(),
        Some(br#"{"chunks":["a","bc","def"]}"#),
    );
    assert_eq!(r.response.streamed_chunks, ["a", "bc", "def"]);
}

#[test]
fn go_echo_answers_with_json_built_from_every_read() {
    if !go_or_skip("go_echo") {
        return;
    }
    let r = run("echo", "echo", full_request(), Some(br#"{"key":"v"}"#));
    assert_eq!(
        r.outcomes(),
        ["end", "next", "next", "next"],
        "{:?}",
        r.phases
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v: serde_json::Value = serde_json::from_str(&r.response.body).expect("JSON body");
    assert_eq!(
        v,
        serde_json::json!({
            "method": "POST",
            "url": "https://example.com:8080/users/7?a=1&b=2",
            "path": "/users/7",
            "query": "a=1&b=2",
            "params": {"id": "7"},
            "host": "example.com",
            "client_ip": "10.0.0.1",
            "x_user": "alice",
            "accept": "text/html",
            "headers": {"x-user": "alice", "content-length": "5", "accept": "text/html", "x-bin": "caf\u{e9}"},
            "body": "hello",
            "bytes": 5,
            "timestamp_ok": true,
            "payload": {"key": "v"},
            "status": 200,
        })
    );
    // No payload, no params.
    let r = run("echo", "echo", RequestSpec::default(), None);
    let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
    assert_eq!(
        (&v["payload"], &v["params"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    // BodyText, BodyHTML, Redirect.
    let r = run(
        "echo",
        "echo",
        spec(r#"{"path":"/t","query":"format=text"}"#),
        None,
    );
    assert_eq!(r.response.body, "path=/t");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let r = run(
        "echo",
        "echo",
        spec(r#"{"path":"/h","query":"format=html"}"#),
        None,
    );
    assert_eq!(r.response.body, "<p>/h</p>");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = run(
        "echo",
        "echo",
        spec(r#"{"query":"redirect=/elsewhere"}"#),
        None,
    );
    assert_eq!(r.response.status, 307);
    assert_eq!(r.header("location"), Some("/elsewhere"));
    assert_eq!(r.response.body, "");
}

#[test]
fn go_websocket_echo_with_a_room_delivers_events_in_order() {
    if !go_or_skip("go_ws") {
        return;
    }
    let (spec, want) = ws_spec(2);
    let r = run("ws", "ws", spec, None);
    assert_eq!(r.outcomes(), ["stream_end", "next"], "{:?}", r.phases);
    assert_eq!(r.response.websocket, want);
    // Many messages: each event is handled after the previous one, so the
    // per-connection counter numbers the echoes in the client's order.
    let (spec, want) = ws_spec(200);
    let r = run("ws", "ws", spec, None);
    assert_eq!(r.response.websocket, want);
    // Without a key the upgrade fails: the host answers 400 itself.
    let r = run("ws", "ws", RequestSpec::default(), None);
    assert_eq!(r.outcomes(), ["end", "next", "next", "next"]);
    assert_eq!(r.response.status, 400);
}

/// The same Go WebSocket plugin in a worker process: its handlers run on
/// Go's threads there, its upgrade asks the host, and the client sees the
/// same events in the same order.
#[test]
fn go_websocket_through_a_worker_process_matches_in_process() {
    use nylon_transport::transport::{Isolated, IsolatedConfig, IsolatedPlugin};
    if !go_or_skip("go_ws_isolated") {
        return;
    }
    let remote = IsolatedPlugin::start(
        &go_library("ws", &[]),
        b"",
        IsolatedConfig {
            workers: 1,
            worker_command: vec![
                env!("CARGO_BIN_EXE_nylon-transport").into(),
                "worker".into(),
            ],
            ..IsolatedConfig::default()
        },
    )
    .expect("start a worker for the Go example ws");
    for n in [2, 200] {
        let (spec, want) = ws_spec(n);
        let r = run_within(
            &Isolated::new(),
            &remote,
            "ws",
            spec,
            None,
            Duration::from_secs(20),
        );
        assert_eq!(r.outcomes(), ["stream_end", "next"], "{:?}", r.phases);
        assert_eq!(r.response.websocket, want);
    }
    assert_eq!(remote.stats().deaths, 0);
}

#[test]
fn go_handler_panic_is_a_phase_error_and_the_plugin_lives() {
    if !go_or_skip("go_panic") {
        return;
    }
    let r = run("echo", "echo_panic", RequestSpec::default(), None);
    assert_eq!(r.outcomes(), ["error"]);
    assert_eq!(
        r.phases[0].message.as_deref(),
        Some("plugin error: handler panicked: boom")
    );
    assert_eq!(
        r.header("x-never"),
        None,
        "a failed phase's commands are dropped"
    );
    // The same library still serves, the same session pool included.
    for _ in 0..3 {
        let r = run("echo", "echo", spec(r#"{"path":"/after"}"#), None);
        assert_eq!(r.outcomes()[0], "end");
        assert!(r.response.body.contains(r#""path":"/after""#));
    }
}

#[test]
fn go_handler_set_by_another_handler_runs() {
    if !go_or_skip("go_dynamic") {
        return;
    }
    // The response filter is set during the request filter, after the
    // session opened: it must still run.
    let r = run("echo", "echo_dynamic", RequestSpec::default(), None);
    assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
    assert_eq!(r.header("x-dynamic"), Some("1"));
}

#[test]
fn go_handler_that_finishes_on_another_goroutine() {
    if !go_or_skip("go_async") {
        return;
    }
    let r = run(
        "echo",
        "echo_async",
        spec(r#"{"path":"/later","headers":[["x-user","bob"]]}"#),
        None,
    );
    assert_eq!(
        r.outcomes(),
        ["end", "next", "next", "next"],
        "{:?}",
        r.phases
    );
    assert_eq!(r.header("x-async"), Some("1"));
    let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
    assert_eq!(v["path"], "/later", "reads through the detached call");
    assert_eq!(v["x_user"], "bob");
}

#[test]
fn go_phase_the_host_gave_up_on() {
    if !go_or_skip("go_late") {
        return;
    }
    let p = plugin("echo");
    // The goroutine waits for echo_release: the host's timeout passes first.
    let r = run_within(
        &V2::default(),
        &p,
        "echo_late",
        spec(r#"{"path":"/late"}"#),
        None,
        Duration::from_millis(100),
    );
    assert_eq!(r.outcomes(), ["timeout"]);
    // Now it reads and ends its phase, too late: the read answers nothing
    // (not a view of the finished request), the end is refused.
    let r = run_on(&p, "echo_release", RequestSpec::default(), None);
    assert_eq!(r.header("x-late"), Some(r#""";true"#));
    // The plugin still serves, and the late goroutine's session went back to
    // the pool without disturbing anything.
    for _ in 0..3 {
        let r = run_on(&p, "echo", spec(r#"{"path":"/after-late"}"#), None);
        assert!(r.response.body.contains(r#""path":"/after-late""#));
    }
}

#[test]
fn go_sdk_vets_and_passes_its_own_tests() {
    if !go_or_skip("go_sdk") {
        return;
    }
    // `go vet` type-checks sdk/api_test.go, which pins every signature of the
    // upstream API; `go test` runs the package's own tests.
    go_in_sdk(&["vet", "./..."]);
    go_in_sdk(&["test", "./sdk/"]);
}

#[test]
fn go_eight_host_threads_at_once() {
    if !go_or_skip("go_threads") {
        return;
    }
    let p = plugin("echo");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    // Half the threads finish their phase on a goroutine.
                    let entry = if t % 2 == 0 { "echo" } else { "echo_async" };
                    let path = format!("/t{t}/r{i}");
                    let s = spec(&format!(
                        r#"{{"path":"{path}","headers":[["x-user","u{t}"]]}}"#
                    ));
                    let r = run_on(&p, entry, s, None);
                    assert_eq!(r.outcomes()[0], "end", "{entry} {path}: {:?}", r.phases);
                    let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
                    assert_eq!(v["path"], path.as_str());
                    assert_eq!(v["x_user"], format!("u{t}").as_str());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a host thread failed");
    }
}

const SCENARIO_PAYLOAD: &[u8] = br#"{"user":"alice","limit":10}"#;

/// The scenario library's test hooks (the library is loaded once; this opens
/// it again to look the hooks up).
struct Hooks {
    _lib: libloading::Library,
    mallocs: unsafe extern "C" fn() -> u64,
    crossings: unsafe extern "C" fn(*mut u64, *mut u64),
    sessions: unsafe extern "C" fn() -> u64,
}

impl Hooks {
    fn open(path: &PathBuf) -> Hooks {
        // SAFETY: the library is already loaded (the same file): opening it
        // again runs no initialiser, and the three symbols have the C
        // signatures written here (sdk/go/sdk/testhooks.go, v2_glue.c).
        unsafe {
            let lib = libloading::Library::new(path).expect("open the scenario library");
            let mallocs = *lib.get(b"nylon_go_mallocs\0").expect("nylon_go_mallocs");
            let crossings = *lib
                .get(b"nylon_go_crossings\0")
                .expect("nylon_go_crossings");
            let sessions = *lib.get(b"nylon_go_sessions\0").expect("nylon_go_sessions");
            Hooks {
                _lib: lib,
                mallocs,
                crossings,
                sessions,
            }
        }
    }

    fn crossings(&self) -> (u64, u64) {
        let (mut go_to_c, mut c_to_go) = (0, 0);
        // SAFETY: two writable u64s.
        unsafe { (self.crossings)(&mut go_to_c, &mut c_to_go) };
        (go_to_c, c_to_go)
    }
}

#[test]
fn go_scenario_allocates_nothing_and_crosses_once_per_phase_with_a_handler() {
    if !go_or_skip("go_scenario") {
        return;
    }
    // Only this test uses the scenario library: its counters are its own.
    let p = plugin("scenario");
    let hooks = Hooks::open(&go_library("scenario", &[]));
    let request = || {
        let r = run_on(&p, "scenario", scenario_spec(), Some(SCENARIO_PAYLOAD));
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next"],
            "{:?}",
            r.phases
        );
        assert_eq!(r.header("x-scenario"), Some("1"));
        assert_eq!(r.header("x-status-class"), Some("ok"));
    };
    // Warm up: the session pool, the learnt reads, the payload cache.
    for _ in 0..500 {
        request();
    }
    const N: u64 = 2000;
    // SAFETY: the hook takes no argument.
    let m0 = unsafe { (hooks.mallocs)() };
    let (g0, c0) = hooks.crossings();
    for _ in 0..N {
        request();
    }
    let (g1, c1) = hooks.crossings();
    // SAFETY: as above.
    let m1 = unsafe { (hooks.mallocs)() };
    let allocs = m1 - m0;
    eprintln!(
        "Go scenario on v2, per request: {:.3} Go allocations, {} Go->C and {} C->Go crossings",
        allocs as f64 / N as f64,
        (g1 - g0) as f64 / N as f64,
        (c1 - c0) as f64 / N as f64
    );
    // Zero per request: a single allocation per request would be N.
    assert!(
        allocs < N / 100,
        "{allocs} Go allocations over {N} requests"
    );
    // Phases 1, 2 and 4 have a Go handler (one C->Go call each); phase 3 is
    // answered in C. Every read is in the snapshot C takes before entering Go.
    assert_eq!(c1 - c0, 3 * N, "C->Go crossings");
    assert_eq!(g1 - g0, 0, "Go->C crossings");
    // Closed sessions are reused, not kept: one request at a time needs one.
    // SAFETY: the hook takes no argument.
    let sessions = unsafe { (hooks.sessions)() };
    assert!(
        sessions <= 2,
        "{sessions} Go sessions for sequential requests"
    );
}
