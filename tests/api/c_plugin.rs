//! The C example plugin, compiled by the test with the system C compiler
//! against `include/nylon_legacy.h`, and libraries with broken exports.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nylon_transport::host::{inspect, LegacyPlugin, LoadError, RequestSpec};

use super::common::{c_library, run_with, Kind, KINDS};

fn c_plugin() -> Arc<LegacyPlugin> {
    static P: OnceLock<Arc<LegacyPlugin>> = OnceLock::new();
    P.get_or_init(|| {
        let p = LegacyPlugin::load(c_library("plugin")).expect("load C plugin");
        p.initialize(b"").expect("initialize");
        Arc::new(p)
    })
    .clone()
}

fn run_c(
    kind: Kind,
    entry: &str,
    spec: RequestSpec,
    timeout_ms: u64,
) -> nylon_transport::host::driver::RequestReport {
    run_with(
        kind,
        &c_plugin(),
        entry,
        spec,
        None,
        Duration::from_millis(timeout_ms),
    )
}

#[test]
fn c_plugin_reads_and_answers() {
    for kind in KINDS {
        let spec = RequestSpec {
            path: "/c".into(),
            headers: vec![("X-User".into(), "bob".into())],
            ..Default::default()
        };
        let r = run_c(kind, "c_basic", spec, 10_000);
        assert_eq!(
            r.outcomes(),
            ["end", "next", "next", "next"],
            "{:?}",
            r.phases
        );
        assert_eq!(r.response.status, 202);
        assert_eq!(r.header("x-c-path"), Some("/c"));
        assert_eq!(r.header("x-c-user"), Some("bob"));
        assert_eq!(r.response.body, "from C");
    }
}

#[test]
fn c_plugin_absent_header_gets_an_empty_reply() {
    for kind in KINDS {
        let r = run_c(kind, "c_basic", RequestSpec::default(), 10_000);
        assert_eq!(r.outcomes()[0], "end", "no hang on an absent header");
        assert_eq!(r.header("x-c-user"), Some(""));
    }
}

#[test]
fn c_plugin_threads_call_back_concurrently() {
    for kind in KINDS {
        let r = run_c(kind, "c_threads", RequestSpec::default(), 10_000);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
        for t in 0..4 {
            assert_eq!(r.header(&format!("x-t{t}")), Some("99"));
        }
    }
}

#[test]
fn c_plugin_hostile_entries_fail_their_session_only() {
    for kind in KINDS {
        assert_eq!(
            run_c(kind, "c_silent", RequestSpec::default(), 100).outcomes(),
            ["timeout"]
        );
        let r = run_c(kind, "c_unknown", RequestSpec::default(), 5_000);
        assert_eq!(r.phases[0].message.as_deref(), Some("unknown method 4242"));
        let r = run_c(kind, "c_malformed", RequestSpec::default(), 5_000);
        assert_eq!(r.outcomes(), ["error"]);
        assert_eq!(
            run_c(kind, "c_next", RequestSpec::default(), 5_000).outcomes(),
            ["next"; 4]
        );
    }
}

#[test]
fn a_symbol_resolving_to_libc_is_refused() {
    let path = c_library("missing_shutdown");
    match LegacyPlugin::load(&path) {
        Err(LoadError::ForeignSymbol { symbol, object }) => {
            assert_eq!(symbol, "shutdown");
            assert!(object.contains("libc"), "{object}");
        }
        other => panic!("expected ForeignSymbol, got {other:?}"),
    }
    let report = inspect(&path).unwrap();
    assert_eq!(report.abi, "unknown");
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].contains("`shutdown` resolves outside the plugin"));
}

#[test]
fn a_missing_symbol_is_an_error_not_a_panic() {
    let path = c_library("missing_symbol");
    let err = LegacyPlugin::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin does not export the symbol `event_stream`"
    );
    let report = inspect(&path).unwrap();
    assert_eq!(report.problems, ["missing symbol `event_stream`"]);
}

#[test]
fn a_file_that_is_not_a_library_is_an_error() {
    let err = LegacyPlugin::load(file!()).unwrap_err();
    assert!(
        matches!(err, LoadError::Open(..) | LoadError::Path(..)),
        "{err}"
    );
    assert!(LegacyPlugin::load("/no/such/plugin.so").is_err());
}

fn c_v2() -> Arc<nylon_transport::transport::V2Plugin> {
    static P: OnceLock<Arc<nylon_transport::transport::V2Plugin>> = OnceLock::new();
    P.get_or_init(|| {
        Arc::new(
            nylon_transport::transport::V2Plugin::load(c_library("v2_plugin"), b"")
                .expect("load C v2 plugin"),
        )
    })
    .clone()
}

fn run_c_v2(entry: &str, spec: RequestSpec) -> nylon_transport::host::driver::RequestReport {
    let upstream = spec.upstream.clone();
    let mut ctx = nylon_transport::host::MemoryContext::new(spec, None);
    nylon_transport::host::driver::run_request(
        &nylon_transport::transport::V2::default(),
        &c_v2(),
        entry,
        &mut ctx,
        upstream.as_ref(),
        Default::default(),
    )
    .expect("session opens")
}

#[test]
fn a_c_v2_plugin_answers_through_the_v2_header() {
    let spec = RequestSpec {
        path: "/hi".into(),
        headers: vec![("X-User".into(), "bob".into())],
        ..Default::default()
    };
    let r = run_c_v2("c_hello", spec.clone());
    assert_eq!(
        r.outcomes(),
        ["end", "next", "next", "next"],
        "{:?}",
        r.phases
    );
    assert_eq!(r.response.status, 202);
    assert_eq!(r.header("x-c-path"), Some("/hi"));
    assert_eq!(r.header("x-c-user"), Some("bob"));
    assert_eq!(r.response.body, "hello from C v2");
    let r = run_c_v2("c_async", spec);
    assert_eq!(
        r.outcomes(),
        ["next", "next", "next", "next"],
        "{:?}",
        r.phases
    );
    assert_eq!(r.header("x-c-async"), Some("/hi"));
}

#[test]
fn a_c_v2_plugin_of_another_version_is_refused() {
    let path = c_library("v2_bad_version");
    let err = nylon_transport::transport::V2Plugin::load(&path, b"").unwrap_err();
    assert_eq!(
        err.to_string(),
        "v2 plugin refused: plugin speaks v2 ABI version 2, this host speaks 1"
    );
    let report = inspect(&path).unwrap();
    assert_eq!(report.abi, "unknown");
    assert_eq!(
        report.problems,
        ["v2 plugin refused: plugin speaks v2 ABI version 2, this host speaks 1"]
    );
}

#[test]
fn the_registry_loads_each_file_once_and_knows_its_abi() {
    use nylon_transport::host::registry::{Loaded, Registry, RegistryError};
    let mut reg = Registry::new();
    // A private copy: dropping the registry shuts the plugin down, which must
    // not touch the library image the other tests share.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("registry");
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = dir.join("librust_copy.so");
    std::fs::copy(super::common::rust_plugin_path(), &legacy).unwrap();
    let a = reg.register("auth", &legacy, b"{}").unwrap();
    let b = reg
        .register("auth2", &legacy, br#"{"greeting":"hi from config"}"#)
        .unwrap();
    match (a, b) {
        (Loaded::Legacy(a), Loaded::Legacy(b)) => assert!(Arc::ptr_eq(&a, &b), "one load per file"),
        other => panic!("expected two legacy handles, got {other:?}"),
    }
    assert!(matches!(
        reg.register("auth", &legacy, b""),
        Err(RegistryError::Duplicate(_))
    ));
    let v2 = reg
        .register("v2", super::common::example_path("v2_plugin"), b"")
        .unwrap();
    assert!(matches!(v2, Loaded::V2(_)));
    let err = reg
        .register("bad", c_library("missing_symbol"), b"")
        .unwrap_err();
    assert!(
        err.to_string().contains("missing symbol `event_stream`"),
        "{err}"
    );
    assert!(reg.remove("auth").is_some());
    assert!(reg.get("auth2").is_some());
    let mut names: Vec<_> = reg.names().collect();
    names.sort_unstable();
    assert_eq!(names, ["auth2", "v2"]);
}
