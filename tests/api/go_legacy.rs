//! The Go SDK's example plugins built for the legacy ABI (`-tags
//! nylon_legacy`) on the legacy transports, baseline and fast (replies
//! inline and from the driver thread): the behavioural suite of
//! `tests/api/go.rs`, which runs the same examples on v2, with the legacy
//! ABI's own answers where the two ABIs differ (noted at each assertion).
//!
//! Every test first checks for the Go toolchain (`go_or_skip`): outside CI a
//! machine without Go skips them loudly.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nylon_transport::host::driver::RequestReport;
use nylon_transport::host::{LegacyPlugin, RequestSpec};

use super::common::{full_request, run_with, Kind, KINDS};
use super::go_build::{go_library, go_or_skip};
use super::go_specs::{scenario_spec, spec, ws_spec};

const TAGS: &[&str] = &["nylon_legacy"];

/// Each Go example, built for the legacy ABI and loaded once per test
/// process.
fn plugin(example: &str) -> Arc<LegacyPlugin> {
    static LOADED: Mutex<Vec<(String, Arc<LegacyPlugin>)>> = Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = loaded.iter().find(|(n, _)| n == example) {
        return p.clone();
    }
    let config: &[u8] = if example == "middleware" {
        br#"{"prefix":"from-config"}"#
    } else {
        b""
    };
    let p = LegacyPlugin::load(go_library(example, TAGS))
        .unwrap_or_else(|e| panic!("load the legacy Go example {example}: {e}"));
    p.initialize(config)
        .unwrap_or_else(|e| panic!("initialize the legacy Go example {example}: {e}"));
    let p = Arc::new(p);
    loaded.push((example.to_string(), p.clone()));
    p
}

fn run(
    kind: Kind,
    example: &str,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
) -> RequestReport {
    run_with(
        kind,
        &plugin(example),
        entry,
        spec,
        payload,
        Duration::from_secs(20),
    )
}

#[test]
fn go_legacy_middleware_sets_headers_and_status_from_its_payload_and_rewrites_every_chunk() {
    if !go_or_skip("go_legacy_middleware") {
        return;
    }
    for kind in KINDS {
        let payload = br#"{"header":"x-mw","value":"on","status":203,"remove":"x-up"}"#;
        let r = run(
            kind,
            "middleware",
            "middleware",
            full_request(),
            Some(payload),
        );
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next", "next"],
            "{kind:?}: {:?}",
            r.phases
        );
        let h = |n| {
            r.header(n)
                .unwrap_or_else(|| panic!("{kind:?}: missing {n}: {r:?}"))
        };
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
            "{kind:?}: Response().Headers(): the response at phase start"
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
            "{kind:?}: every chunk read, rewritten and kept"
        );
        assert_eq!(h("x-mw-log"), "2;upstream reset;true");
        let payload = br#"{"suffix":"!"}"#;
        let r = run(
            kind,
            "middleware",
            "middleware",
            RequestSpec::default(),
            Some(payload),
        );
        assert_eq!(r.response.body, "!", "{kind:?}");
        assert_eq!(r.response.status, 200);
        assert_eq!(r.header("x-mw-prefix"), Some("from-config"));
    }
}

#[test]
fn go_legacy_stream_service_streams_its_response() {
    if !go_or_skip("go_legacy_stream") {
        return;
    }
    for kind in KINDS {
        let r = run(kind, "stream", "stream", RequestSpec::default(), None);
        assert_eq!(
            r.outcomes(),
            ["stream_end", "next"],
            "{kind:?}: {:?}",
            r.phases
        );
        assert_eq!(r.response.streamed_chunks, ["one", "two", "three"]);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
        let r = run(
            kind,
            "stream",
            "stream",
            RequestSpec::default(),
            Some(br#"{"chunks":["a","bc","def"]}"#),
        );
        assert_eq!(r.response.streamed_chunks, ["a", "bc", "def"], "{kind:?}");
    }
}

#[test]
fn go_legacy_echo_answers_with_json_built_from_every_read() {
    if !go_or_skip("go_legacy_echo") {
        return;
    }
    for kind in KINDS {
        let r = run(
            kind,
            "echo",
            "echo",
            full_request(),
            Some(br#"{"key":"v"}"#),
        );
        assert_eq!(
            r.outcomes(),
            ["end", "next", "next", "next"],
            "{kind:?}: {:?}",
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
                // The legacy ABI's header list sends a value that is not
                // visible ASCII as "" (v2 passes the bytes).
                "headers": {"x-user": "alice", "content-length": "5", "accept": "text/html", "x-bin": ""},
                "body": "hello",
                "bytes": 5,
                "timestamp_ok": true,
                "payload": {"key": "v"},
                "status": 200,
            }),
            "{kind:?}"
        );
        let r = run(kind, "echo", "echo", RequestSpec::default(), None);
        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
        assert_eq!(
            (&v["payload"], &v["params"]),
            (&serde_json::Value::Null, &serde_json::Value::Null)
        );
        let r = run(
            kind,
            "echo",
            "echo",
            spec(r#"{"path":"/t","query":"format=text"}"#),
            None,
        );
        assert_eq!(r.response.body, "path=/t");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        let r = run(
            kind,
            "echo",
            "echo",
            spec(r#"{"path":"/h","query":"format=html"}"#),
            None,
        );
        assert_eq!(r.response.body, "<p>/h</p>");
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let r = run(
            kind,
            "echo",
            "echo",
            spec(r#"{"query":"redirect=/elsewhere"}"#),
            None,
        );
        assert_eq!(r.response.status, 307);
        assert_eq!(r.header("location"), Some("/elsewhere"));
        assert_eq!(r.response.body, "");
    }
}

#[test]
fn go_legacy_websocket_echo_with_a_room_delivers_events_in_order() {
    if !go_or_skip("go_legacy_ws") {
        return;
    }
    for kind in KINDS {
        let (s, want) = ws_spec(2);
        let r = run(kind, "ws", "ws", s, None);
        assert_eq!(
            r.outcomes(),
            ["stream_end", "next"],
            "{kind:?}: {:?}",
            r.phases
        );
        assert_eq!(r.response.websocket, want, "{kind:?}");
        // Many messages: one session's events run one at a time, in order,
        // so the per-connection counter numbers the echoes in the client's
        // order (a goroutine per event would reorder them).
        let (s, want) = ws_spec(200);
        let r = run(kind, "ws", "ws", s, None);
        assert_eq!(r.response.websocket, want, "{kind:?}");
        // Without a key the upgrade fails: the host answers 400 itself and
        // the later phases run as after END.
        let r = run(kind, "ws", "ws", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["end", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.response.status, 400);
    }
}

#[test]
fn go_legacy_handler_panic_is_a_phase_error_and_the_plugin_lives() {
    if !go_or_skip("go_legacy_panic") {
        return;
    }
    for kind in KINDS {
        let r = run(kind, "echo", "echo_panic", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["error"], "{kind:?}");
        assert_eq!(
            r.phases[0].message.as_deref(),
            Some("plugin error: handler panicked: boom"),
            "{kind:?}"
        );
        for _ in 0..3 {
            let r = run(kind, "echo", "echo", spec(r#"{"path":"/after"}"#), None);
            assert_eq!(r.outcomes()[0], "end", "{kind:?}");
            assert!(r.response.body.contains(r#""path":"/after""#));
        }
    }
}

/// The methods the plugin sent in a traced run.
fn sent_methods(r: &RequestReport) -> Vec<u32> {
    use nylon_transport::transport::Direction;
    r.trace
        .as_ref()
        .expect("a traced run")
        .iter()
        .filter(|e| e.direction == Direction::ToHost)
        .map(|e| e.method)
        .collect()
}

#[test]
fn go_legacy_header_reads_are_answered_from_the_header_list() {
    if !go_or_skip("go_legacy_header") {
        return;
    }
    for kind in KINDS {
        // echo reads Header("x-user") and the header list. Present with a
        // visible value: the list answers, READ_REQUEST_HEADER (201) is never
        // sent, and the list (202) is read once.
        let r = run(
            kind,
            "echo",
            "echo",
            spec(r#"{"headers":[["X-User","bob"]]}"#),
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
        assert_eq!(v["x_user"], "bob", "{kind:?}");
        let sent = sent_methods(&r);
        assert_eq!(
            sent.iter().filter(|&&m| m == 202).count(),
            1,
            "{kind:?}: {sent:?}"
        );
        assert!(!sent.contains(&201), "{kind:?}: {sent:?}");
        // Absent: "" without a read the original host would never answer.
        let r = run(kind, "echo", "echo", RequestSpec::default(), None);
        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
        assert_eq!(v["x_user"], "", "{kind:?}");
        assert!(!sent_methods(&r).contains(&201), "{kind:?}");
        // A value the list sends as "" (not visible ASCII): asked with 201,
        // which returns the bytes.
        let r = run(
            kind,
            "echo",
            "echo",
            spec(r#"{"headers":[["x-user","caf\u00e9"]]}"#),
            None,
        );
        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
        assert_eq!(v["x_user"], "caf\u{e9}", "{kind:?}");
        assert!(sent_methods(&r).contains(&201), "{kind:?}");
    }
}

#[test]
fn go_legacy_handler_set_by_a_handler_runs() {
    if !go_or_skip("go_legacy_dynamic") {
        return;
    }
    for kind in KINDS {
        // The response filter is set during the request filter: the SDK
        // looks the handlers up at each phase start, as upstream does.
        let r = run(kind, "echo", "echo_dynamic", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.header("x-dynamic"), Some("1"), "{kind:?}");
    }
}

#[test]
fn go_legacy_handler_that_finishes_on_another_goroutine() {
    if !go_or_skip("go_legacy_async") {
        return;
    }
    for kind in KINDS {
        let r = run(
            kind,
            "echo",
            "echo_async",
            spec(r#"{"path":"/later","headers":[["x-user","bob"]]}"#),
            None,
        );
        assert_eq!(
            r.outcomes(),
            ["end", "next", "next", "next"],
            "{kind:?}: {:?}",
            r.phases
        );
        assert_eq!(r.header("x-async"), Some("1"));
        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
        assert_eq!(
            v["path"], "/later",
            "{kind:?}: reads after the handler returned"
        );
        assert_eq!(v["x_user"], "bob");
    }
}

#[test]
fn go_legacy_eight_host_threads_at_once() {
    if !go_or_skip("go_legacy_threads") {
        return;
    }
    let p = plugin("echo");
    for kind in KINDS {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        // Half the threads finish their phase on a goroutine.
                        let entry = if t % 2 == 0 { "echo" } else { "echo_async" };
                        let path = format!("/t{t}/r{i}");
                        let s = spec(&format!(
                            r#"{{"path":"{path}","headers":[["x-user","u{t}"]]}}"#
                        ));
                        let r = run_with(kind, &p, entry, s, None, Duration::from_secs(20));
                        assert_eq!(
                            r.outcomes()[0],
                            "end",
                            "{kind:?} {entry} {path}: {:?}",
                            r.phases
                        );
                        let v: serde_json::Value = serde_json::from_str(&r.response.body).unwrap();
                        assert_eq!(v["path"], path.as_str(), "{kind:?}: another request's read");
                        assert_eq!(v["x_user"], format!("u{t}").as_str());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("a host thread failed");
        }
    }
}

/// The scenario library's test hooks, looked up in a second handle of the
/// already loaded library.
struct Hooks {
    _lib: libloading::Library,
    crossings: unsafe extern "C" fn(*mut u64, *mut u64),
    sessions: unsafe extern "C" fn() -> u64,
    mallocs: unsafe extern "C" fn() -> u64,
}

impl Hooks {
    fn open(path: &PathBuf) -> Hooks {
        // SAFETY: the library is already loaded (the same file): opening it
        // again runs no initialiser, and the symbols have the C signatures
        // written here (sdk/go/sdk/legacy.go).
        unsafe {
            let lib = libloading::Library::new(path).expect("open the scenario library");
            let crossings = *lib
                .get(b"nylon_go_crossings\0")
                .expect("nylon_go_crossings");
            let sessions = *lib.get(b"nylon_go_sessions\0").expect("nylon_go_sessions");
            let mallocs = *lib.get(b"nylon_go_mallocs\0").expect("nylon_go_mallocs");
            Hooks {
                _lib: lib,
                crossings,
                sessions,
                mallocs,
            }
        }
    }

    fn crossings(&self) -> (u64, u64) {
        let (mut go_to_c, mut c_to_go) = (0, 0);
        // SAFETY: two writable u64s.
        unsafe { (self.crossings)(&mut go_to_c, &mut c_to_go) };
        (go_to_c, c_to_go)
    }

    fn mallocs(&self) -> u64 {
        // SAFETY: the hook takes no argument.
        unsafe { (self.mallocs)() }
    }

    fn sessions(&self) -> u64 {
        // SAFETY: the hook takes no argument.
        unsafe { (self.sessions)() }
    }
}

#[test]
fn go_legacy_scenario_frees_its_sessions_and_reads_each_thing_once() {
    if !go_or_skip("go_legacy_scenario") {
        return;
    }
    // Only this test uses the legacy scenario library: its counters are its own.
    let p = plugin("scenario");
    let hooks = Hooks::open(&go_library("scenario", TAGS));
    const N: u64 = 200;
    for kind in KINDS {
        let (g0, c0) = hooks.crossings();
        let m0 = hooks.mallocs();
        for _ in 0..N {
            let r = run_with(
                kind,
                &p,
                "scenario",
                scenario_spec(),
                Some(br#"{"user":"alice","limit":10}"#),
                Duration::from_secs(20),
            );
            assert_eq!(
                r.outcomes(),
                ["next", "next", "next", "next"],
                "{kind:?}: {:?}",
                r.phases
            );
            assert_eq!(r.header("x-scenario"), Some("1"));
            assert_eq!(r.header("x-user"), Some("alice"));
            assert_eq!(r.header("x-status-class"), Some("ok"));
        }
        let (g1, c1) = hooks.crossings();
        let allocs = (hooks.mallocs() - m0) as f64 / N as f64;
        let (go_to_c, c_to_go) = ((g1 - g0) / N, (c1 - c0) / N);
        eprintln!(
            "Go scenario on legacy ({kind:?}), per request: {go_to_c} Go->C, {c_to_go} C->Go crossings, {allocs:.1} Go allocations"
        );
        // Go->C: phase 1: payload, path, the header list (which answers
        // the one header read too), two sets, next (6); phase 2: status, one
        // set, next (3); phase 3: next; phase 4: duration, client IP, next (3).
        assert_eq!((g1 - g0), 13 * N, "{kind:?}: Go->C crossings");
        // C->Go: open, close, four phase starts, one reply per read (6).
        assert_eq!((c1 - c0), 12 * N, "{kind:?}: C->Go crossings");
        // Closed sessions are gone (the upstream SDK keeps every one).
        assert_eq!(hooks.sessions(), 0, "{kind:?}: sessions left after close");
    }
}

#[test]
fn go_legacy_phase_the_host_gave_up_on() {
    if !go_or_skip("go_legacy_late") {
        return;
    }
    let p = plugin("echo");
    for kind in KINDS {
        // The goroutine waits for echo_release: the host's timeout passes
        // first, and the host closes the session.
        let r = run_with(
            kind,
            &p,
            "echo_late",
            spec(r#"{"path":"/late"}"#),
            None,
            Duration::from_millis(100),
        );
        assert_eq!(r.outcomes(), ["timeout"], "{kind:?}");
        // Now it reads and ends its phase, too late: the read answers
        // nothing (the session is closed; a reader is never left waiting),
        // the end is refused.
        let r = run(kind, "echo", "echo_release", RequestSpec::default(), None);
        assert_eq!(r.header("x-late"), Some(r#""";true"#), "{kind:?}");
        for _ in 0..3 {
            let r = run(
                kind,
                "echo",
                "echo",
                spec(r#"{"path":"/after-late"}"#),
                None,
            );
            assert!(
                r.response.body.contains(r#""path":"/after-late""#),
                "{kind:?}"
            );
        }
    }
}

/// The bench's today's-style Go plugin (`sdk/go/internal/todaystyle`, the
/// `request_go` row's baseline) runs the scenario correctly on the legacy
/// transports, built as the bench builds it.
#[test]
fn go_today_style_plugin_runs_the_scenario() {
    if !go_or_skip("go_today_style") {
        return;
    }
    let (go, _) = nylon_transport::bench::go::toolchain().expect("a Go toolchain");
    let path = nylon_transport::bench::go::build(&go, "internal/todaystyle", "", "go_todaystyle")
        .unwrap_or_else(|e| panic!("{e}"));
    let p = LegacyPlugin::load(path).expect("load the today's-style plugin");
    p.initialize(b"{}").expect("initialize");
    let p = Arc::new(p);
    for kind in KINDS {
        for _ in 0..20 {
            let r = run_with(
                kind,
                &p,
                "scenario",
                scenario_spec(),
                Some(br#"{"user":"alice","limit":10}"#),
                Duration::from_secs(20),
            );
            assert_eq!(
                r.outcomes(),
                ["next", "next", "next", "next"],
                "{kind:?}: {:?}",
                r.phases
            );
            assert_eq!(r.header("x-scenario"), Some("1"));
            assert_eq!(r.header("x-user"), Some("alice"));
            assert_eq!(r.header("x-status-class"), Some("ok"));
        }
    }
}
