//! Shared fixtures: the example plugins, built on demand, loaded once.

#[path = "../support/cc.rs"]
mod cc;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nylon_transport::abi::legacy::Phase;
use nylon_transport::host::context::{WsMessage, WsRecv};
use nylon_transport::host::driver::{run_request, RequestReport, RunOptions};
use nylon_transport::host::{HttpContext, LegacyPlugin, MemoryContext, RequestSpec};
use nylon_transport::transport::{
    Fast, FastConfig, OpenError, PhaseOutcome, ReplyMode, SessionOptions, TraceEntry, Transport,
};

/// Every transport the conformance suite runs on, in both forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Today's design.
    Baseline,
    /// The fast transport, replies inline.
    Fast,
    /// The fast transport, replies from the driver thread.
    FastDeferred,
    /// The baseline, every phase awaited ([`AsyncForm`]).
    AsyncBaseline,
    /// The fast transport, replies inline, every phase awaited.
    AsyncFast,
    /// The fast transport, replies from the polling thread, every phase awaited.
    AsyncFastDeferred,
}

/// All of them, in the order tests run them: each transport synchronous
/// (`run_phase`), then each asynchronous (`phase(..).await`).
pub(crate) const KINDS: [Kind; 6] = [
    Kind::Baseline,
    Kind::Fast,
    Kind::FastDeferred,
    Kind::AsyncBaseline,
    Kind::AsyncFast,
    Kind::AsyncFastDeferred,
];

/// The three transports, once each (for tests that drive the futures
/// themselves).
pub(crate) const TRANSPORTS: [Kind; 3] = [Kind::Baseline, Kind::Fast, Kind::FastDeferred];

impl Kind {
    /// The same transport in its synchronous form.
    pub(crate) fn sync_form(self) -> Kind {
        match self {
            Kind::Baseline | Kind::AsyncBaseline => Kind::Baseline,
            Kind::Fast | Kind::AsyncFast => Kind::Fast,
            Kind::FastDeferred | Kind::AsyncFastDeferred => Kind::FastDeferred,
        }
    }

    /// Messages the transport dropped so far that named session `sid`
    /// (unknown or closed when they arrived): counted per session, so tests
    /// running beside this one do not add to it.
    pub(crate) fn dropped_for(self, sid: u32) -> u64 {
        use nylon_transport::transport::{baseline, fast};
        match self.sync_form() {
            Kind::Baseline => baseline::dropped_messages_for(sid),
            _ => fast::dropped_messages_for(sid),
        }
    }
}

/// Runs `$body` with `$t` bound to a `&` transport of `$kind` (the transport
/// types differ, so a closure cannot take them).
macro_rules! on_transport {
    ($kind:expr, |$t:ident| $body:expr) => {{
        use nylon_transport::transport::{Baseline, ReplyMode};
        use $crate::api::common::{fast, AsyncForm, Kind};
        match $kind {
            Kind::Baseline => {
                let $t = &Baseline::new();
                $body
            }
            Kind::Fast => {
                let $t = &fast(ReplyMode::Inline);
                $body
            }
            Kind::FastDeferred => {
                let $t = &fast(ReplyMode::Deferred);
                $body
            }
            Kind::AsyncBaseline => {
                let $t = &AsyncForm(Baseline::new());
                $body
            }
            Kind::AsyncFast => {
                let $t = &AsyncForm(fast(ReplyMode::Inline));
                $body
            }
            Kind::AsyncFastDeferred => {
                let $t = &AsyncForm(fast(ReplyMode::Deferred));
                $body
            }
        }
    }};
}
pub(crate) use on_transport;

/// A transport whose `run_phase` is the asynchronous form, as a host on an
/// async runtime uses it: it awaits `phase(..)` on this thread's
/// current-thread tokio runtime, with a tokio timer as the phase timeout
/// (the future is dropped when it fires, which cancels the phase). Every
/// other method is the wrapped transport's.
///
/// In WebSocket mode a host wakes the task when the client sends; the
/// scripted client of [`MemoryContext`] has its messages at once, so when a
/// poll found the client idle the task is polled again 1 ms later.
#[derive(Debug)]
pub(crate) struct AsyncForm<T>(pub(crate) T);

impl<T: Transport> Transport for AsyncForm<T> {
    type Plugin = T::Plugin;
    type Session = T::Session;
    type PhaseFuture<'a>
        = T::PhaseFuture<'a>
    where
        Self: 'a;

    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn open(
        &self,
        plugin: &Arc<T::Plugin>,
        entry: &str,
        options: SessionOptions,
    ) -> Result<T::Session, OpenError> {
        self.0.open(plugin, entry, options)
    }

    fn phase<'a>(
        &'a self,
        session: &'a mut T::Session,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> T::PhaseFuture<'a> {
        self.0.phase(session, phase, ctx)
    }

    fn run_phase(
        &self,
        session: &mut T::Session,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        await_phase(&self.0, session, phase, ctx, timeout)
    }

    fn close(&self, session: T::Session) {
        self.0.close(session);
    }

    fn take_trace(&self, session: &mut T::Session) -> Vec<TraceEntry> {
        self.0.take_trace(session)
    }
}

thread_local! {
    /// This thread's current-thread runtime, for [`await_phase`].
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread tokio runtime");
}

/// Awaits one phase on this thread's current-thread runtime (see
/// [`AsyncForm`]): `Timeout` when the tokio timer fires first.
pub(crate) fn await_phase<T: Transport>(
    t: &T,
    session: &mut T::Session,
    phase: Phase,
    ctx: &mut dyn HttpContext,
    timeout: Duration,
) -> PhaseOutcome {
    let idle = AtomicBool::new(false);
    let mut probe = Probe::new(ctx);
    probe.ws_idle = Some(&idle);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut fut = std::pin::pin!(t.phase(session, phase, &mut probe));
            let mut again = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
            let awaited = std::future::poll_fn(|cx| {
                let r = fut.as_mut().poll(cx);
                if r.is_pending() && idle.swap(false, Ordering::Relaxed) {
                    // The WebSocket client had nothing: look again in 1 ms,
                    // as a host woken by its client socket would.
                    again
                        .as_mut()
                        .reset(tokio::time::Instant::now() + Duration::from_millis(1));
                    let _ = again.as_mut().poll(cx);
                }
                r
            });
            within(timeout, awaited)
                .await
                .unwrap_or(PhaseOutcome::Timeout)
        })
    })
}

/// `fut`'s output, or `None` once `bound` has passed. Unlike
/// `tokio::time::timeout`, which polls the future once more when its timer
/// fires, the timer is looked at first: a phase whose end never woke its
/// task fails at the bound instead of being rescued by that last poll.
pub(crate) async fn within<F: Future>(bound: Duration, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = tokio::time::sleep(bound) => None,
        out = fut => Some(out),
    }
}

/// A context that watches its use: it flags a WebSocket poll that found the
/// client idle (for [`AsyncForm`]), and once declared dead (its phase future
/// was dropped, so as far as the host knows it is gone), counts and panics
/// on every use: a transport that still reaches it fails the test loudly.
pub(crate) struct Probe<'c> {
    inner: &'c mut dyn HttpContext,
    /// Set when `websocket_recv` found nothing.
    pub(crate) ws_idle: Option<&'c AtomicBool>,
    dead: Arc<AtomicBool>,
    violations: Arc<AtomicUsize>,
    uses: Arc<AtomicUsize>,
}

impl<'c> Probe<'c> {
    /// Watches `inner`.
    pub(crate) fn new(inner: &'c mut dyn HttpContext) -> Self {
        Self {
            inner,
            ws_idle: None,
            dead: Arc::new(AtomicBool::new(false)),
            violations: Arc::new(AtomicUsize::new(0)),
            uses: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many times it was used so far.
    pub(crate) fn uses(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.uses)
    }

    /// The switch that declares it dead, and the count of uses after that.
    pub(crate) fn tripwire(&self) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
        (Arc::clone(&self.dead), Arc::clone(&self.violations))
    }

    fn check(&self, what: &str) {
        self.uses.fetch_add(1, Ordering::SeqCst);
        if self.dead.load(Ordering::SeqCst) {
            self.violations.fetch_add(1, Ordering::SeqCst);
            panic!("the context was used after its phase future was dropped: {what}");
        }
    }
}

impl HttpContext for Probe<'_> {
    fn request_method(&self) -> &str {
        self.check("request_method");
        self.inner.request_method()
    }
    fn request_path(&self) -> &str {
        self.check("request_path");
        self.inner.request_path()
    }
    fn request_query(&self) -> &str {
        self.check("request_query");
        self.inner.request_query()
    }
    fn request_host(&self) -> &str {
        self.check("request_host");
        self.inner.request_host()
    }
    fn request_url(&self, out: &mut Vec<u8>) {
        self.check("request_url");
        self.inner.request_url(out);
    }
    fn client_ip(&self) -> &str {
        self.check("client_ip");
        self.inner.client_ip()
    }
    fn request_header(&self, name: &[u8]) -> Option<&[u8]> {
        self.check("request_header");
        self.inner.request_header(name)
    }
    fn request_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.check("request_header_at");
        self.inner.request_header_at(index)
    }
    fn for_each_request_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        self.check("for_each_request_header");
        self.inner.for_each_request_header(f);
    }
    fn request_body(&mut self) -> &[u8] {
        self.check("request_body");
        self.inner.request_body()
    }
    fn request_params(&self) -> Option<&[(String, String)]> {
        self.check("request_params");
        self.inner.request_params()
    }
    fn request_content_length(&self) -> i64 {
        self.check("request_content_length");
        self.inner.request_content_length()
    }
    fn request_timestamp_ms(&self) -> u64 {
        self.check("request_timestamp_ms");
        self.inner.request_timestamp_ms()
    }
    fn payload(&self) -> Option<&[u8]> {
        self.check("payload");
        self.inner.payload()
    }
    fn response_status(&self) -> u16 {
        self.check("response_status");
        self.inner.response_status()
    }
    fn set_response_status(&mut self, status: u16) {
        self.check("set_response_status");
        self.inner.set_response_status(status);
    }
    fn set_response_header(&mut self, name: &str, value: &str) {
        self.check("set_response_header");
        self.inner.set_response_header(name, value);
    }
    fn remove_response_header(&mut self, name: &str) {
        self.check("remove_response_header");
        self.inner.remove_response_header(name);
    }
    fn response_header_at(&self, index: usize) -> Option<(&[u8], &[u8])> {
        self.check("response_header_at");
        self.inner.response_header_at(index)
    }
    fn for_each_response_header(&self, f: &mut dyn FnMut(&[u8], &[u8])) {
        self.check("for_each_response_header");
        self.inner.for_each_response_header(f);
    }
    fn set_response_body(&mut self, body: &[u8]) {
        self.check("set_response_body");
        self.inner.set_response_body(body);
    }
    fn response_body(&self) -> &[u8] {
        self.check("response_body");
        self.inner.response_body()
    }
    fn response_stream_header(&mut self) -> Result<(), String> {
        self.check("response_stream_header");
        self.inner.response_stream_header()
    }
    fn response_stream_data(&mut self, data: &[u8]) -> Result<(), String> {
        self.check("response_stream_data");
        self.inner.response_stream_data(data)
    }
    fn response_stream_end(&mut self) -> Result<(), String> {
        self.check("response_stream_end");
        self.inner.response_stream_end()
    }
    fn response_duration_ms(&self) -> u64 {
        self.check("response_duration_ms");
        self.inner.response_duration_ms()
    }
    fn response_error(&self) -> &str {
        self.check("response_error");
        self.inner.response_error()
    }
    fn websocket_upgrade(&mut self) -> Result<(), String> {
        self.check("websocket_upgrade");
        self.inner.websocket_upgrade()
    }
    fn websocket_send(&mut self, msg: WsMessage<'_>) -> Result<(), String> {
        self.check("websocket_send");
        self.inner.websocket_send(msg)
    }
    fn websocket_close(&mut self) {
        self.check("websocket_close");
        self.inner.websocket_close();
    }
    fn websocket_recv(&mut self, wait: Duration, buf: &mut Vec<u8>) -> WsRecv {
        self.check("websocket_recv");
        let got = self.inner.websocket_recv(wait, buf);
        if let (WsRecv::Idle, Some(idle)) = (got, self.ws_idle) {
            idle.store(true, Ordering::Relaxed);
        }
        got
    }
    fn websocket_join_room(&mut self, room: &str) {
        self.check("websocket_join_room");
        self.inner.websocket_join_room(room);
    }
    fn websocket_leave_room(&mut self, room: &str) {
        self.check("websocket_leave_room");
        self.inner.websocket_leave_room(room);
    }
    fn websocket_broadcast(&mut self, room: &str, msg: WsMessage<'_>) {
        self.check("websocket_broadcast");
        self.inner.websocket_broadcast(room, msg);
    }
}

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
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    cc::c_library(
        repo,
        &repo.join("examples/c_plugin").join(format!("{name}.c")),
        &[],
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lib{name}.so")),
    )
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
    on_transport!(kind, |t| run_on(t, plugin, entry, spec, payload, timeout))
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

/// Held by the tests that use the v2 example's `silent_async` and
/// `late_report` entries: the plugin keeps the last `silent_async` thread in
/// one static, so two such tests must not interleave.
pub(crate) static LATE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
