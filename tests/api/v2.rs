//! The v2 ABI through the real example plugin (`examples/v2_plugin.rs`).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nylon_transport::abi::v2::{self, PluginTable, Status, Str, TableError};
use nylon_transport::host::driver::{run_request, RequestReport, RunOptions};
use nylon_transport::host::{inspect, LoadError, MemoryContext, RequestSpec};
use nylon_transport::transport::{Transport, V2Plugin, V2};

use super::common::{example_path, full_request, AsyncForm, LATE_LOCK};

/// The timeout of the tests that do not test timeouts.
const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn plugin() -> Arc<V2Plugin> {
    static P: OnceLock<Arc<V2Plugin>> = OnceLock::new();
    P.get_or_init(|| {
        Arc::new(V2Plugin::load(example_path("v2_plugin"), b"{}").expect("load v2 plugin"))
    })
    .clone()
}

/// The synchronous form (`run_phase`), then the asynchronous one
/// (`phase(..).await`, see [`AsyncForm`]): every test runs both.
const FORMS: [Form; 2] = [Form::Sync, Form::Async];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Sync,
    Async,
}

/// Runs one request through `plugin` on the v2 transport in `form`.
fn run_on(
    form: Form,
    plugin: &Arc<V2Plugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> RequestReport {
    let upstream = spec.upstream.clone();
    let mut ctx = MemoryContext::new(spec, payload.map(<[u8]>::to_vec));
    let options = RunOptions {
        timeout,
        trace: false,
    };
    match form {
        Form::Sync => run_request(
            &V2::default(),
            plugin,
            entry,
            &mut ctx,
            upstream.as_ref(),
            options,
        ),
        Form::Async => run_request(
            &AsyncForm(V2::default()),
            plugin,
            entry,
            &mut ctx,
            upstream.as_ref(),
            options,
        ),
    }
    .expect("session opens")
}

fn run(
    form: Form,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
    timeout_ms: u64,
) -> RequestReport {
    run_on(
        form,
        &plugin(),
        entry,
        spec,
        payload,
        Duration::from_millis(timeout_ms),
    )
}

#[test]
fn every_read_is_zero_copy_and_commands_apply_in_order() {
    for form in FORMS {
        let r = run(form, "all", full_request(), Some(br#"{"key":"v"}"#), 5_000);
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next", "next"],
            "{form:?}: {:?}",
            r.phases
        );
        let h = |n| r.header(n).unwrap_or_else(|| panic!("missing {n}"));
        assert_eq!(h("x-method"), "POST");
        assert_eq!(h("x-path"), "/users/7");
        assert_eq!(h("x-query"), "a=1&b=2");
        assert_eq!(h("x-host"), "example.com");
        assert_eq!(h("x-client-ip"), "10.0.0.1");
        assert_eq!(h("x-url"), "https://example.com:8080/users/7?a=1&b=2");
        assert_eq!(h("x-request-body"), "hello");
        assert_eq!(h("x-payload"), r#"{"key":"v"}"#);
        assert_eq!(h("x-payload-key"), "v", "sonic-rs parse");
        assert_eq!(h("x-payload-raw"), r#""v""#, "zero-copy key lookup");
        assert_eq!(h("x-params"), r#"{"id":"7"}"#);
        assert_eq!(h("x-error"), "upstream reset");
        assert_eq!(h("x-user"), "alice");
        assert_eq!(h("x-absent"), "none");
        assert_eq!(
            h("x-headers"),
            "x-user=alice;content-length=5;accept=*/*;accept=text/html;x-bin=caf\u{e9}"
        );
        assert_eq!(h("x-bytes"), "5");
        assert_eq!(h("x-ts-positive"), "true");
        assert_eq!(r.header("x-remove-me"), None);
        assert_eq!(h("x-status-seen"), "200", "reads see the phase-start state");
        assert_eq!(r.response.status, 201);
        assert_eq!(h("x-upstream-status"), "201");
        assert!(h("x-response-headers").starts_with("content-type;x-up;x-method"));
        assert_eq!(h("x-chunk-ab"), "2");
        assert_eq!(h("x-chunk-cd"), "2");
        assert_eq!(h("x-duration-read"), "true");
        assert_eq!(r.response.body, "abcd");
    }
}

#[test]
fn the_scenario_entry_runs_all_four_phases() {
    for form in FORMS {
        let spec: RequestSpec = serde_json::from_str(
            r#"{"path":"/api/items","headers":[["host","a"],["user-agent","t"],["accept","*/*"],
                ["a","1"],["b","2"],["c","3"],["d","4"],["e","5"]],"client_ip":"1.2.3.4"}"#,
        )
        .unwrap();
        let r = run(
            form,
            "scenario",
            spec,
            Some(br#"{"user":"alice","limit":10}"#),
            5_000,
        );
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next"],
            "{form:?}: {:?}",
            r.phases
        );
        assert_eq!(r.header("x-scenario"), Some("1"));
        assert_eq!(r.header("x-status-class"), Some("ok"));
    }
}

#[test]
fn end_stream_and_websocket() {
    for form in FORMS {
        let r = run(form, "end", RequestSpec::default(), None, 5_000);
        assert_eq!(r.outcomes(), ["end", "next", "next", "next"]);
        assert_eq!(
            (r.response.status, r.response.body.as_str()),
            (403, "denied by v2")
        );

        let r = run(form, "stream", RequestSpec::default(), None, 5_000);
        assert_eq!(r.outcomes(), ["stream_end", "next"]);
        assert_eq!(r.response.streamed_chunks, ["one", "two"]);

        use nylon_transport::host::context::WsEffect::*;
        let spec: RequestSpec = serde_json::from_str(
            r#"{"headers":[["Sec-WebSocket-Key","k"]],"websocket":[{"text":"hi"},{"binary":[1,2]},{"text":"bye"},{"text":"never"}]}"#,
        )
        .unwrap();
        let r = run(form, "ws", spec, None, 5_000);
        assert_eq!(r.outcomes(), ["stream_end", "next"]);
        assert_eq!(
            r.response.websocket,
            [
                Join("lobby".into()),
                Text("hi".into()),
                BroadcastText {
                    room: "lobby".into(),
                    text: "hi".into()
                },
                Binary(vec![1, 2]),
                BroadcastBinary {
                    room: "lobby".into(),
                    data: vec![1, 2]
                },
                Leave("lobby".into()),
                Close,
            ]
        );
        let r = run(form, "ws", RequestSpec::default(), None, 5_000);
        assert_eq!(r.outcomes(), ["end", "next", "next", "next"], "no key: 400");
        assert_eq!(r.response.status, 400);
    }
}

#[test]
fn a_phase_completed_on_another_thread() {
    for form in FORMS {
        let spec = RequestSpec {
            path: "/later".into(),
            ..Default::default()
        };
        let r = run(form, "async", spec, None, 5_000);
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next"],
            "{form:?}: {:?}",
            r.phases
        );
        assert_eq!(r.header("x-async-path"), Some("/later"));
    }
}

#[test]
fn errors_panics_timeouts_and_floods_are_contained() {
    // The example plugin keeps the last `silent_async` thread in one static.
    let _late = LATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for form in FORMS {
        let r = run(form, "error", RequestSpec::default(), None, 5_000);
        assert_eq!(r.outcomes(), ["error"]);
        assert_eq!(
            r.phases[0].message.as_deref(),
            Some("plugin error: database unavailable")
        );
        let r = run(form, "panic", RequestSpec::default(), None, 5_000);
        assert_eq!(
            r.phases[0].message.as_deref(),
            Some("plugin error: handler panicked: boom")
        );
        let spec = RequestSpec {
            path: "/late".into(),
            ..Default::default()
        };
        let r = run(form, "silent_async", spec, None, 100);
        assert_eq!(r.outcomes(), ["timeout"]);
        // Now the detached thread reads and completes, too late; the plugin
        // joins it and reports what both calls returned (or its panic).
        let r = run(form, "late_report", RequestSpec::default(), None, 30_000);
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next"],
            "{form:?}: {:?}",
            r.phases
        );
        assert_eq!(
            r.header("x-late-read"),
            Some("[]"),
            "a late read sees nothing"
        );
        assert_eq!(
            r.header("x-late-complete"),
            Some("refused"),
            "a late completion is refused"
        );
        // The plugin still serves.
        let r = run(form, "flood", RequestSpec::default(), None, 5_000);
        assert_eq!(r.outcomes(), ["error"]);
        assert!(r.phases[0]
            .message
            .as_ref()
            .unwrap()
            .contains("queue is full"));
        assert_eq!(
            run(form, "end", RequestSpec::default(), None, 5_000)
                .response
                .status,
            403
        );
    }
}

#[test]
fn a_body_filter_that_rewrites_every_chunk_sends_every_chunk_once_with_its_addition() {
    let spec: RequestSpec = serde_json::from_str(
        r#"{"upstream":{"status":200,"body_chunks":["one,","two,","three"]}}"#,
    )
    .unwrap();
    for form in FORMS {
        let r = run(form, "body_rewrite", spec.clone(), None, 5_000);
        assert_eq!(r.outcomes(), ["next"; 6], "{form:?}: {:?}", r.phases);
        assert_eq!(r.response.body, "one,+xtwo,+xthree+x", "{form:?}");
    }
}

#[test]
fn unknown_entries_are_refused() {
    let err = V2::default()
        .open(&plugin(), "nope", Default::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin refused to open a session for entry `nope`"
    );
    assert_eq!(plugin().entry_id("scenario").map(|e| e.0), Some(0));
}

#[test]
fn inspect_lists_the_v2_entries() {
    let report = inspect(example_path("v2_plugin")).unwrap();
    assert_eq!(report.abi, "v2");
    assert_eq!(report.name.as_deref(), Some("example-v2"));
    assert_eq!(report.entries[..3], ["scenario", "all", "end"]);
    assert!(report.problems.is_empty());
}

unsafe extern "C" fn never_init(
    _: *const v2::HostTable,
    _: Str,
    _: *mut *mut std::ffi::c_void,
) -> i32 {
    Status::ERROR.0
}

#[test]
fn a_table_of_another_version_or_layout_is_refused() {
    let good: PluginTable = *nylon_transport::sdk::v2::table::<super::v2_example::Example>();
    let leak = |t: PluginTable| -> &'static PluginTable { Box::leak(Box::new(t)) };
    let err = V2Plugin::from_static(
        leak(PluginTable {
            abi_version: 2,
            ..good
        }),
        b"",
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            LoadError::V2(TableError::Version {
                found: 2,
                expected: 1
            })
        ),
        "{err}"
    );
    let err = V2Plugin::from_static(leak(PluginTable { size: 64, ..good }), b"").unwrap_err();
    assert!(
        matches!(err, LoadError::V2(TableError::PluginLayout { .. })),
        "{err}"
    );
    let err = V2Plugin::from_static(
        leak(PluginTable {
            host_size: 8,
            ..good
        }),
        b"",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "v2 plugin refused: plugin was built against a 8-byte host table, this host has 160"
    );
    let err = V2Plugin::from_static(
        leak(PluginTable {
            init: never_init,
            ..good
        }),
        b"",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "v2 plugin init failed with status -1 (error)"
    );
    // The genuine table works in-process too.
    let p = Arc::new(V2Plugin::from_static(leak(good), b"").unwrap());
    for form in FORMS {
        let r = run_on(form, &p, "end", RequestSpec::default(), None, TIMEOUT);
        assert_eq!(r.response.status, 403, "{form:?}");
    }
}

unsafe extern "C" fn detach_then_ok(
    _state: *mut std::ffi::c_void,
    _phase: u32,
    call: *mut v2::CallHandle,
    flow: *mut u32,
) -> i32 {
    // SAFETY: the live handle of this phase call; flow is writable.
    unsafe {
        (nylon_transport::transport::v2::HOST_TABLE.detach)(call);
        flow.write(v2::Flow::Next as u32);
    }
    Status::OK.0
}

#[test]
fn a_detached_call_answered_at_once_is_a_protocol_error() {
    let good: PluginTable = *nylon_transport::sdk::v2::table::<super::v2_example::Example>();
    let table: &'static PluginTable = Box::leak(Box::new(PluginTable {
        phase: detach_then_ok,
        ..good
    }));
    let p = Arc::new(V2Plugin::from_static(table, b"").unwrap());
    for form in FORMS {
        let r = run_on(form, &p, "end", RequestSpec::default(), None, TIMEOUT);
        assert_eq!(r.outcomes(), ["error"], "{form:?}");
        assert!(r.phases[0]
            .message
            .as_ref()
            .unwrap()
            .contains("instead of PENDING"));
    }
}
