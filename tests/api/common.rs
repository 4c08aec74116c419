//! Shared fixtures: the example plugins, built on demand, loaded once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nylon_transport::host::driver::{run_request, RequestReport, RunOptions};
use nylon_transport::host::{LegacyPlugin, MemoryContext, RequestSpec};
use nylon_transport::transport::{Baseline, Fast, FastConfig, ReplyMode, Transport};

/// Every transport the conformance suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Today's design.
    Baseline,
    /// The fast transport, replies inline.
    Fast,
    /// The fast transport, replies from the driver thread.
    FastDeferred,
}

/// All of them, in the order tests run them.
pub(crate) const KINDS: [Kind; 3] = [Kind::Baseline, Kind::Fast, Kind::FastDeferred];

impl Kind {
    /// Messages the transport dropped so far that named session `sid`
    /// (unknown or closed when they arrived): counted per session, so tests
    /// running beside this one do not add to it.
    pub(crate) fn dropped_for(self, sid: u32) -> u64 {
        use nylon_transport::transport::{baseline, fast};
        match self {
            Kind::Baseline => baseline::dropped_messages_for(sid),
            Kind::Fast | Kind::FastDeferred => fast::dropped_messages_for(sid),
        }
    }
}

/// Runs `$body` with `$t` bound to a `&` transport of `$kind` (the transport
/// types differ, so a closure cannot take them).
macro_rules! on_transport {
    ($kind:expr, |$t:ident| $body:expr) => {
        match $kind {
            $crate::api::common::Kind::Baseline => {
                let $t = &nylon_transport::transport::Baseline::new();
                $body
            }
            $crate::api::common::Kind::Fast => {
                let $t = &$crate::api::common::fast(nylon_transport::transport::ReplyMode::Inline);
                $body
            }
            $crate::api::common::Kind::FastDeferred => {
                let $t =
                    &$crate::api::common::fast(nylon_transport::transport::ReplyMode::Deferred);
                $body
            }
        }
    };
}
pub(crate) use on_transport;

/// The fast transport with `mode`.
pub(crate) fn fast(mode: ReplyMode) -> Fast {
    Fast::new(FastConfig {
        reply_mode: mode,
        ..FastConfig::default()
    })
}

/// `target/<profile>/`, derived from this test binary's own path.
pub(crate) fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/api-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// An example plugin `.so`, built (or found up to date) by cargo once per
/// test process, so `cargo test --test api` never loads a stale plugin.
pub(crate) fn example_path(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let path = profile_dir().join("examples").join(format!("lib{name}.so"));
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --example");
        assert!(
            status.success(),
            "building the example plugin {name} failed"
        );
        built.push(name.to_string());
    }
    path
}

/// The Rust legacy example plugin.
pub(crate) fn rust_plugin_path() -> PathBuf {
    example_path("rust_plugin")
}

/// The Rust example plugin, loaded and initialised once per test process (the
/// SDK's state is per library, so every test shares one load).
pub(crate) fn rust_plugin() -> Arc<LegacyPlugin> {
    static PLUGIN: OnceLock<Arc<LegacyPlugin>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            let p = LegacyPlugin::load(rust_plugin_path()).expect("load example plugin");
            p.initialize(br#"{"greeting":"hi from config"}"#)
                .expect("initialize");
            Arc::new(p)
        })
        .clone()
}

/// Compiles one C file of `examples/c_plugin/` into a shared library, once.
pub(crate) fn c_library(name: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lib{name}.so"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/c_plugin")
        .join(format!("{name}.c"));
    let fresh = out.exists()
        && out.metadata().and_then(|m| m.modified()).ok()
            >= src.metadata().and_then(|m| m.modified()).ok();
    if !fresh {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(cc)
            .args([
                "-shared", "-fPIC", "-O2", "-pthread", "-Wall", "-Werror", "-std=c11",
            ])
            .arg("-I")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status()
            .expect("run the system C compiler");
        assert!(status.success(), "compiling {} failed", src.display());
    }
    out
}

/// A request with every field set, used by the conformance tests.
pub(crate) fn full_request() -> RequestSpec {
    serde_json::from_str(
        r#"{"method":"POST","path":"/users/7","query":"a=1&b=2","host":"example.com:8080",
            "client_ip":"10.0.0.1","scheme":"https",
            "headers":[["X-User","alice"],["Content-Length","5"],["accept","*/*"],["accept","text/html"],["x-bin","caf\u00e9"]],
            "body":"hello","params":{"id":"7"},"error":"upstream reset",
            "upstream":{"status":200,"headers":[["content-type","text/html"],["x-up","1"]],"body_chunks":["ab","cd"]}}"#,
    )
    .expect("valid request spec")
}

/// Runs one request through the Rust example plugin on `kind`.
pub(crate) fn run(
    kind: Kind,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
) -> RequestReport {
    run_with(
        kind,
        &rust_plugin(),
        entry,
        spec,
        payload,
        Duration::from_secs(10),
    )
}

/// Runs one request through `plugin` on `kind`, tracing.
pub(crate) fn run_with(
    kind: Kind,
    plugin: &Arc<LegacyPlugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> RequestReport {
    match kind {
        Kind::Baseline => run_on(&Baseline::new(), plugin, entry, spec, payload, timeout),
        Kind::Fast => run_on(
            &fast(ReplyMode::Inline),
            plugin,
            entry,
            spec,
            payload,
            timeout,
        ),
        Kind::FastDeferred => run_on(
            &fast(ReplyMode::Deferred),
            plugin,
            entry,
            spec,
            payload,
            timeout,
        ),
    }
}

fn run_on<T: Transport<Plugin = LegacyPlugin>>(
    transport: &T,
    plugin: &Arc<LegacyPlugin>,
    entry: &str,
    spec: RequestSpec,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> RequestReport {
    let upstream = spec.upstream.clone();
    let mut ctx = MemoryContext::new(spec, payload.map(<[u8]>::to_vec));
    run_request(
        transport,
        plugin,
        entry,
        &mut ctx,
        upstream.as_ref(),
        RunOptions {
            timeout,
            trace: true,
        },
    )
    .expect("session opens")
}
