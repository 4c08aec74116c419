//! The proxy: Pingora's [`ProxyHttp`] hooks driving the plugin phases.
//!
//! - `request_filter` snapshots the request into a [`RequestState`], matches
//!   the route, reads the request body (for routes with plugins, so that a
//!   plugin can read it and the upstream still gets it), runs phase 1 of every
//!   middleware in order and serves plugin-service routes: the service's
//!   phase 1 builds the response (END: the status, headers and body it set;
//!   104-106: the header and each chunk written to the client as they come).
//! - `upstream_peer` picks the http service's endpoint (round robin).
//! - `response_filter` merges the upstream response into the state, runs
//!   phase 2 and applies every header and status change to the response.
//! - `response_body_filter` runs phase 3 per chunk. Pingora's body hook is not
//!   async: the phase future is polled once inline (a phase that ends inside
//!   the call, the common case, costs nothing more); if it is still pending
//!   the hook falls back to a bounded blocking wait on this worker thread (up
//!   to the plugin's phase timeout), counted in [`Stats::body_blocking_waits`].
//! - `logging` runs phase 4 with the real duration and byte count, and
//!   closes every session (a request dropped before it closes them in `Drop`).
//!
//! Every other phase awaits the phase future inside `select!` with the
//! plugin's timeout and, for a plugin service, the stream channel: the worker
//! thread is never blocked by a plugin (except by the body-filter fallback, or
//! in `--phase-wait block`, the thread-blocking mode kept for comparison).
//!
//! Faults stay per request: a phase timeout gives 504, a plugin error 502, a
//! plugin whose `max_sessions` are all in flight a fast 503 (a semaphore's
//! `try_acquire`: no queue). With `isolation: process`, a worker that dies
//! mid-phase gives its in-flight requests 502 `plugin_crashed` (the reason is
//! logged once per death), and a plugin whose every worker queue is full a
//! fast 503 `plugin_busy`.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use nylon_transport::abi::legacy::Phase;
use nylon_transport::host::HttpContext;
use nylon_transport::transport::{OpenError, PhaseOutcome, SessionError};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::ctx::{HeaderChange, RequestSnapshot, RequestState, StreamEvent, STREAM_QUEUE};
use crate::transport::{HostSession, HostTransport, PluginHandle};
use crate::ws::conn::{self, WsConfig, WsIo};
use crate::ws::pump::{self, Ended};
use crate::ws::rooms::Rooms;

/// How a phase that does not end inside the call is waited for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PhaseWait {
    /// As a future: the task is suspended and the plugin's completion wakes
    /// it (the default).
    #[default]
    Future,
    /// The synchronous `run_phase` on the worker thread, which blocks it
    /// until the plugin ends the phase (for comparison only).
    Block,
}

/// Counters of the host, for tests and the load test.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests that reached `request_filter`.
    pub requests: AtomicU64,
    /// Requests refused with 503 (a plugin's sessions all in flight).
    pub rejected: AtomicU64,
    /// Phases that timed out (504 when the response was not yet sent).
    pub timeouts: AtomicU64,
    /// Phases that failed (502 when the response was not yet sent).
    pub errors: AtomicU64,
    /// Body-filter phases that did not end on the first poll and were waited
    /// for by blocking the worker thread.
    pub body_blocking_waits: AtomicU64,
    /// Sessions opened / closed.
    pub sessions_opened: AtomicU64,
    /// Sessions closed.
    pub sessions_closed: AtomicU64,
    /// WebSocket handshakes accepted (101 sent).
    pub ws_upgrades: AtomicU64,
    /// WebSocket connections dropped by the slow-client policy (1013).
    pub ws_dropped_slow: AtomicU64,
    /// WebSocket connections closed for a protocol error (1002, 1007, 1009).
    pub ws_protocol_errors: AtomicU64,
    /// WebSocket connections closed by the idle timeout (1001).
    pub ws_idle_timeouts: AtomicU64,
}

impl Stats {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "requests": l(&self.requests),
            "rejected_503": l(&self.rejected),
            "timeouts": l(&self.timeouts),
            "errors": l(&self.errors),
            "body_blocking_waits": l(&self.body_blocking_waits),
            "sessions_opened": l(&self.sessions_opened),
            "sessions_closed": l(&self.sessions_closed),
            "ws_upgrades": l(&self.ws_upgrades),
            "ws_dropped_slow": l(&self.ws_dropped_slow),
            "ws_protocol_errors": l(&self.ws_protocol_errors),
            "ws_idle_timeouts": l(&self.ws_idle_timeouts),
        })
    }
}

/// A loaded plugin with its transport and limits.
#[derive(Debug)]
pub struct LoadedPlugin {
    /// The config's name.
    pub name: String,
    /// The library.
    pub handle: PluginHandle,
    /// The transport that drives it.
    pub transport: HostTransport,
    /// Sessions in flight, when bounded.
    pub sessions: Option<Arc<Semaphore>>,
    /// Per-phase timeout.
    pub timeout: Duration,
    /// Whether its body filter may change a body's length: then a response
    /// through it drops the upstream's `Content-Length` and goes out chunked.
    /// When false, the upstream's framing is kept (no extra terminating chunk
    /// per response), and a body filter that changes a chunk's length anyway
    /// cuts that response short instead of sending a wrong length.
    pub rewrites_body: bool,
    /// The last worker failure logged (isolated plugins): each death is
    /// logged once, not once per request it failed.
    pub last_worker_failure: Mutex<String>,
}

impl LoadedPlugin {
    /// Logs a worker failure `reason` unless it is the one logged last.
    fn log_worker_failure(&self, reason: &str, phase: Phase) {
        let mut last = self
            .last_worker_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if *last != reason {
            eprintln!(
                "nylon-serve: plugin `{}`: {reason} (during {}); its requests in flight on \
                 that worker get 502",
                self.name,
                phase.name()
            );
            reason.clone_into(&mut last);
        }
    }
}

/// One open session of a request.
#[derive(Debug)]
struct ActiveSession {
    plugin: Arc<LoadedPlugin>,
    session: Option<HostSession>,
    /// The rendered payload (swapped into the state while its phases run).
    payload: Option<Vec<u8>>,
    /// Whether a phase failed (the transport closed the session): later
    /// phases are skipped.
    failed: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl ActiveSession {
    fn close(&mut self, stats: &Stats) {
        if let Some(s) = self.session.take() {
            self.plugin.transport.close(s);
            stats.sessions_closed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Per-request state, Pingora's `CTX`.
#[derive(Debug)]
pub struct RequestCtx {
    state: Option<RequestState>,
    // `Mutex` only to make the CTX `Sync` as Pingora requires; it is never
    // locked (`get_mut` through `&mut`).
    sessions: Mutex<Vec<ActiveSession>>,
    /// The upstream for an http service.
    peer: Option<std::net::SocketAddr>,
    /// The response was already written (by a plugin or the host).
    responded: bool,
    /// The upstream's `Content-Length` was kept (no session may rewrite).
    kept_length: bool,
    stats: Option<Arc<Stats>>,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some(stats) = self.stats.take() {
            let sessions = self.sessions.get_mut().unwrap_or_else(|e| e.into_inner());
            for s in sessions.iter_mut() {
                s.close(&stats);
            }
        }
    }
}

/// What the routing of one request needs from the host's configuration.
pub trait Routes: Send + Sync + 'static {
    /// Matches a request; an error is the status and message to answer with
    /// (404, 405).
    ///
    /// # Errors
    ///
    /// No route, or a route that does not take this method.
    fn route(
        &self,
        req: &RequestSnapshot,
    ) -> std::result::Result<RoutePlan<'_>, (u16, &'static str)>;
}

/// The plan for one matched request.
#[derive(Debug)]
pub struct RoutePlan<'a> {
    /// Route params in order.
    pub params: Vec<(String, String)>,
    /// The path's plugin middleware, in order.
    pub middleware: Vec<PluginStep<'a>>,
    /// Built-in request header changes (sent upstream, seen by plugins).
    pub request_headers: Vec<HeaderChange>,
    /// Built-in response header changes (applied like a plugin's, first).
    pub response_headers: Vec<HeaderChange>,
    /// What serves the request.
    pub service: ServiceStep<'a>,
}

/// A plugin entry to call, with its rendered payload.
#[derive(Debug)]
pub struct PluginStep<'a> {
    /// The plugin.
    pub plugin: &'a Arc<LoadedPlugin>,
    /// The entry.
    pub entry: &'a str,
    /// The payload, rendered for this request.
    pub payload: Option<Vec<u8>>,
}

/// What serves a matched request.
#[derive(Debug)]
pub enum ServiceStep<'a> {
    /// Proxied to this upstream.
    Http(std::net::SocketAddr),
    /// Served by a plugin entry.
    Plugin(PluginStep<'a>),
    /// Something this host does not serve (answered with 501 and this text).
    Unsupported(&'static str),
}

/// The host: configuration, plugins, options and counters.
pub struct Host<R: Routes> {
    /// The routes.
    pub routes: R,
    /// How pending phases are waited for.
    pub phase_wait: PhaseWait,
    /// Counters.
    pub stats: Arc<Stats>,
    /// WebSocket settings.
    pub ws: WsConfig,
    /// This node's WebSocket rooms (a cluster adapter is set on them with
    /// [`Rooms::set_cluster`]).
    pub rooms: Arc<Rooms>,
}

impl<R: Routes> std::fmt::Debug for Host<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("phase_wait", &self.phase_wait)
            .finish_non_exhaustive()
    }
}

/// Pingora's proxy over a [`Host`].
#[derive(Debug)]
pub struct NylonProxy<R: Routes> {
    host: Arc<Host<R>>,
}

impl<R: Routes> NylonProxy<R> {
    /// A proxy over `host`.
    pub fn new(host: Arc<Host<R>>) -> Self {
        Self { host }
    }
}

/// A round-robin counter for a service's endpoints.
#[derive(Debug, Default)]
pub struct RoundRobin(AtomicUsize);

impl RoundRobin {
    /// The next index below `n` (`n > 0`).
    pub fn next(&self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.0.fetch_add(1, Ordering::Relaxed) % n
        }
    }
}

fn snapshot(session: &Session) -> RequestSnapshot {
    let req = session.req_header();
    let authority = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.as_str().to_string()))
        .unwrap_or_default();
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let headers = req
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    RequestSnapshot {
        method: req.method.as_str().to_string(),
        path: req.uri.path().to_string(),
        query: req.uri.query().unwrap_or("").to_string(),
        authority,
        scheme: "http",
        client_ip,
        headers,
    }
}

/// A JSON error body, as the legacy host answers a failed phase.
fn error_body(code: u16, error: &str, message: &str) -> Bytes {
    Bytes::from(
        serde_json::json!({"status": code, "error": error, "message": message})
            .to_string()
            .into_bytes(),
    )
}

async fn respond_json(session: &mut Session, code: u16, error: &str, message: &str) -> Result<()> {
    let body = error_body(code, error, message);
    let mut resp = ResponseHeader::build(code, Some(2))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

impl LoadedPlugin {
    /// The phase timeout the config gave (an isolated plugin's `timeout`
    /// field holds the host's backstop, a multiple of it).
    pub fn configured_timeout(&self) -> Duration {
        match self.handle {
            PluginHandle::Isolated(_) => self.timeout / crate::serve::ISOLATED_BACKSTOP,
            _ => self.timeout,
        }
    }
}

/// The status and message of a failed phase.
fn fault(
    outcome: &PhaseOutcome,
    plugin: &LoadedPlugin,
    phase: Phase,
) -> (u16, &'static str, String) {
    match outcome {
        PhaseOutcome::Timeout => (
            504,
            "plugin_timeout",
            format!(
                "plugin `{}` did not end the {} phase within {} ms",
                plugin.name,
                phase.name(),
                plugin.configured_timeout().as_millis()
            ),
        ),
        PhaseOutcome::Error(SessionError::Busy(reason)) => (
            503,
            "plugin_busy",
            format!(
                "plugin `{}` is busy in {}: {reason}",
                plugin.name,
                phase.name()
            ),
        ),
        PhaseOutcome::Error(SessionError::Worker(reason)) => (
            502,
            "plugin_crashed",
            format!(
                "plugin `{}` failed in {}: {reason}",
                plugin.name,
                phase.name()
            ),
        ),
        PhaseOutcome::Error(e) => (
            502,
            "plugin_error",
            format!("plugin `{}` failed in {}: {e}", plugin.name, phase.name()),
        ),
        _ => (500, "internal", String::new()),
    }
}

fn is_fault(o: &PhaseOutcome) -> bool {
    matches!(o, PhaseOutcome::Timeout | PhaseOutcome::Error(_))
}

fn append_headers(resp: &mut ResponseHeader, headers: &[(String, Vec<u8>)]) {
    for (n, v) in headers {
        // A name or value a plugin set that HTTP cannot carry is dropped.
        let Ok(value) = http::HeaderValue::from_bytes(v) else {
            continue;
        };
        let Ok(name) = http::HeaderName::from_bytes(n.as_bytes()) else {
            continue;
        };
        let _ = resp.append_header(name, value);
    }
}

fn apply_changes(resp: &mut ResponseHeader, changes: Vec<HeaderChange>) {
    for c in changes {
        match c {
            HeaderChange::Set(n, v) => {
                let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(n.as_bytes()),
                    http::HeaderValue::from_bytes(&v),
                ) else {
                    continue;
                };
                let _ = resp.insert_header(name, value);
            }
            HeaderChange::Remove(n) => {
                let _ = resp.remove_header(n.as_str());
            }
        }
    }
}

async fn write_event(session: &mut Session, ev: StreamEvent) -> Result<()> {
    match ev {
        StreamEvent::Header { status, headers } => {
            let mut resp = ResponseHeader::build(status, Some(headers.len() + 1))?;
            append_headers(&mut resp, &headers);
            resp.remove_header(&http::header::CONTENT_LENGTH);
            if resp.headers.get(http::header::TRANSFER_ENCODING).is_none() {
                resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
            session.write_response_header(Box::new(resp), false).await
        }
        StreamEvent::Data(b) => session.write_response_body(Some(b), false).await,
        StreamEvent::End => session.write_response_body(None, true).await,
    }
}

/// A waker that unparks the thread that made it.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits on this thread for a phase future that did not end on its first
/// poll: parks until the plugin's completion unparks the thread or `timeout`
/// passes (then the caller drops the future, which cancels the phase).
///
/// On Pingora's multi-thread runtime the wait runs inside
/// `tokio::task::block_in_place`, which hands this worker's other tasks to
/// another thread first: without it, a transport that answers a plugin's
/// reads from the phase's task (baseline) stalls, because the tasks that
/// would answer sit behind the blocked workers while the plugin's threads
/// wait for those answers.
fn wait_blocking<F: Future<Output = PhaseOutcome> + ?Sized>(
    mut fut: std::pin::Pin<&mut F>,
    timeout: Duration,
) -> PhaseOutcome {
    let mut wait = || {
        let deadline = Instant::now() + timeout;
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        loop {
            if let Poll::Ready(o) = fut.as_mut().poll(&mut cx) {
                return o;
            }
            let now = Instant::now();
            if now >= deadline {
                return PhaseOutcome::Timeout;
            }
            std::thread::park_timeout(deadline - now);
        }
    };
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
        _ => wait(),
    }
}

impl<R: Routes> NylonProxy<R> {
    /// Runs one phase of `s`, awaiting it with the plugin's timeout; for a
    /// plugin service's request filter, writes stream events to the client as
    /// they come.
    async fn run_phase(
        &self,
        s: &mut ActiveSession,
        phase: Phase,
        state: &mut RequestState,
        mut stream: Option<(&mut Session, &mut mpsc::Receiver<StreamEvent>)>,
    ) -> PhaseOutcome {
        let Some(hs) = s.session.as_mut() else {
            return PhaseOutcome::Error(nylon_transport::transport::SessionError::Closed);
        };
        let plugin = &*s.plugin;
        let previous = state.swap_payload(s.payload.take());
        let timeout = plugin.timeout;
        let outcome = match self.host.phase_wait {
            PhaseWait::Block => plugin
                .transport
                .run_phase_blocking(hs, phase, state, timeout),
            PhaseWait::Future => {
                let fut = plugin.transport.phase(hs, phase, state);
                let mut fut = pin!(fut);
                // Most phases end inside the first poll: no timer is armed for them.
                match futures_poll_once(fut.as_mut()) {
                    Some(o) => o,
                    None => {
                        let sleep = tokio::time::sleep(timeout);
                        let mut sleep = pin!(sleep);
                        let mut write_failed = false;
                        loop {
                            let rx = stream.as_mut().map(|(_, rx)| &mut **rx);
                            tokio::select! {
                                biased;
                                Some(ev) = recv(rx) => {
                                    if let (false, Some((session, _))) = (write_failed, stream.as_mut()) {
                                        write_failed = write_event(session, ev).await.is_err();
                                    }
                                }
                                o = fut.as_mut() => break o,
                                () = sleep.as_mut() => break PhaseOutcome::Timeout,
                            }
                        }
                    }
                }
            }
        };
        s.payload = state.swap_payload(previous);
        if is_fault(&outcome) {
            s.failed = true;
            if let PhaseOutcome::Error(SessionError::Worker(reason)) = &outcome {
                plugin.log_worker_failure(reason, phase);
            }
            let counter = match outcome {
                PhaseOutcome::Timeout => &self.host.stats.timeouts,
                PhaseOutcome::Error(SessionError::Busy(_)) => &self.host.stats.rejected,
                _ => &self.host.stats.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Runs a plugin service's request filter on a request that asked for an
    /// upgrade: the phase and, once the plugin accepts the handshake, the
    /// WebSocket connection (see [`pump`]).
    async fn run_ws_phase(
        &self,
        session: &mut Session,
        s: &mut ActiveSession,
        state: &mut RequestState,
        io: &mut WsIo,
    ) -> Ended {
        let Some(hs) = s.session.as_mut() else {
            return Ended::NotUpgraded(PhaseOutcome::Error(
                nylon_transport::transport::SessionError::Closed,
            ));
        };
        let plugin = &*s.plugin;
        let previous = state.swap_payload(s.payload.take());
        let ended = {
            let fut = plugin.transport.phase(hs, Phase::RequestFilter, state);
            let fut = pin!(fut);
            pump::run(
                session,
                fut,
                io,
                &self.host.ws,
                plugin.timeout,
                &self.host.stats,
            )
            .await
        };
        s.payload = state.swap_payload(previous);
        let outcome = match &ended {
            Ended::NotUpgraded(o) | Ended::Upgraded(o) => o,
        };
        if is_fault(outcome) {
            s.failed = true;
            // An isolated plugin's worker that died under a connection, or
            // whose ring could not take a client message.
            if let PhaseOutcome::Error(SessionError::Worker(reason)) = outcome {
                plugin.log_worker_failure(reason, Phase::RequestFilter);
            }
            let counter = match outcome {
                PhaseOutcome::Timeout => &self.host.stats.timeouts,
                PhaseOutcome::Error(SessionError::Busy(_)) => &self.host.stats.rejected,
                _ => &self.host.stats.errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        ended
    }

    /// Runs the body filter of every session over one chunk, synchronously
    /// (Pingora's hook is not async).
    fn body_phase(&self, ctx: &mut RequestCtx, body: &mut Option<Bytes>) -> Result<()> {
        let Some(state) = ctx.state.as_mut() else {
            return Ok(());
        };
        let sessions = ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner());
        if sessions.is_empty() {
            return Ok(());
        }
        let mut chunk = body.take().unwrap_or_default();
        for s in sessions.iter_mut() {
            if s.failed {
                continue;
            }
            let Some(hs) = s.session.as_mut() else {
                continue;
            };
            let plugin = &*s.plugin;
            state.begin_chunk(&chunk);
            let previous = state.swap_payload(s.payload.take());
            let outcome = match self.host.phase_wait {
                PhaseWait::Block => plugin.transport.run_phase_blocking(
                    hs,
                    Phase::ResponseBodyFilter,
                    state,
                    plugin.timeout,
                ),
                PhaseWait::Future => {
                    let fut = plugin.transport.phase(hs, Phase::ResponseBodyFilter, state);
                    let mut fut = pin!(fut);
                    match futures_poll_once(fut.as_mut()) {
                        Some(o) => o,
                        None => {
                            self.host
                                .stats
                                .body_blocking_waits
                                .fetch_add(1, Ordering::Relaxed);
                            wait_blocking(fut.as_mut(), plugin.timeout)
                        }
                    }
                }
            };
            s.payload = state.swap_payload(previous);
            if let Some(set) = state.take_chunk_body() {
                if ctx.kept_length && set.len() != chunk.len() {
                    s.failed = true;
                    let message = format!(
                        "plugin `{}` changed a body's length, but is configured not to \
                         (the upstream's Content-Length was kept)",
                        plugin.name
                    );
                    state.set_error(message.clone());
                    self.host.stats.errors.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::explain(HTTPStatus(502), message));
                }
                chunk = Bytes::from(set);
            }
            if is_fault(&outcome) {
                s.failed = true;
                if let PhaseOutcome::Error(SessionError::Worker(reason)) = &outcome {
                    plugin.log_worker_failure(reason, Phase::ResponseBodyFilter);
                }
                let (code, _, message) = fault(&outcome, plugin, Phase::ResponseBodyFilter);
                state.set_error(message.clone());
                let counter = if code == 504 {
                    &self.host.stats.timeouts
                } else {
                    &self.host.stats.errors
                };
                counter.fetch_add(1, Ordering::Relaxed);
                // The header is out: the response can only be cut short.
                return Err(Error::explain(HTTPStatus(code), message));
            }
        }
        if !chunk.is_empty() {
            *body = Some(chunk);
        }
        Ok(())
    }

    /// Opens a session of `step` (503 when the plugin's sessions are all in
    /// flight).
    fn open(&self, step: PluginStep<'_>) -> std::result::Result<ActiveSession, (u16, String)> {
        let plugin = step.plugin;
        let permit = match &plugin.sessions {
            Some(sem) => match Arc::clone(sem).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    self.host.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err((
                        503,
                        format!("plugin `{}` has all its sessions in flight", plugin.name),
                    ));
                }
            },
            None => None,
        };
        match plugin.transport.open(&plugin.handle, step.entry) {
            Ok(session) => {
                self.host
                    .stats
                    .sessions_opened
                    .fetch_add(1, Ordering::Relaxed);
                Ok(ActiveSession {
                    plugin: Arc::clone(plugin),
                    session: Some(session),
                    payload: step.payload,
                    failed: false,
                    _permit: permit,
                })
            }
            Err(OpenError::Overloaded) => {
                self.host.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err((
                    503,
                    format!("plugin `{}`: every worker's queue is full", plugin.name),
                ))
            }
            Err(e) => {
                self.host.stats.errors.fetch_add(1, Ordering::Relaxed);
                Err((502, format!("plugin `{}`: {e}", plugin.name)))
            }
        }
    }

    /// Answers with the response the plugins built (an END): runs phases 2
    /// and 3 of the sessions first, as for an upstream response.
    async fn respond_from_state(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        let Some(mut state) = ctx.state.take() else {
            return Ok(());
        };
        let mut sessions =
            std::mem::take(ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner()));
        let mut failure = None;
        for s in sessions.iter_mut().filter(|s| !s.failed) {
            let o = self
                .run_phase(s, Phase::ResponseFilter, &mut state, None)
                .await;
            if is_fault(&o) {
                failure = Some(fault(&o, &s.plugin, Phase::ResponseFilter));
                break;
            }
        }
        let mut body = state.take_body().unwrap_or_default();
        if failure.is_none() {
            for s in sessions.iter_mut().filter(|s| !s.failed) {
                state.begin_chunk(&body);
                let o = self
                    .run_phase(s, Phase::ResponseBodyFilter, &mut state, None)
                    .await;
                if let Some(set) = state.take_chunk_body() {
                    body = set;
                }
                if is_fault(&o) {
                    failure = Some(fault(&o, &s.plugin, Phase::ResponseBodyFilter));
                    break;
                }
            }
        }
        *ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner()) = sessions;
        ctx.responded = true;
        if let Some((code, error, message)) = failure {
            state.set_error(message.clone());
            ctx.state = Some(state);
            return respond_json(session, code, error, &message).await;
        }
        let mut resp = ResponseHeader::build(
            state.response_status(),
            Some(state.response_headers().len() + 1),
        )?;
        append_headers(&mut resp, state.response_headers());
        resp.remove_header(&http::header::TRANSFER_ENCODING);
        resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        ctx.state = Some(state);
        let empty = body.is_empty();
        session.write_response_header(Box::new(resp), empty).await?;
        if !empty {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(())
    }

    /// Answers with a JSON error and records it for the logging phase.
    async fn fail(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: u16,
        error: &str,
        message: String,
    ) -> Result<bool> {
        if let Some(state) = ctx.state.as_mut() {
            state.set_error(message.clone());
        }
        ctx.responded = true;
        respond_json(session, code, error, &message).await?;
        Ok(true)
    }

    /// Serves a plugin-service route: the service's request filter builds the
    /// response, streamed or whole.
    async fn serve_plugin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mut s: ActiveSession,
    ) -> Result<bool> {
        let Some(mut state) = ctx.state.take() else {
            return Ok(true);
        };
        if state.asks_upgrade() {
            let (link, mut io) = conn::link(&self.host.ws);
            state.enable_websocket(link, Arc::clone(&self.host.rooms));
            match self
                .run_ws_phase(session, &mut s, &mut state, &mut io)
                .await
            {
                Ended::NotUpgraded(outcome) => {
                    return self
                        .after_service_phase(session, ctx, s, state, None, outcome)
                        .await;
                }
                Ended::Upgraded(_) => {
                    if let Some(id) = state.websocket_id() {
                        self.host.rooms.close(id);
                    }
                    ctx.state = Some(state);
                    ctx.sessions
                        .get_mut()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(s);
                    ctx.responded = true;
                    return Ok(true);
                }
            }
        }
        let (tx, mut rx) = mpsc::channel(STREAM_QUEUE);
        state.enable_stream(tx);
        let outcome = self
            .run_phase(
                &mut s,
                Phase::RequestFilter,
                &mut state,
                Some((&mut *session, &mut rx)),
            )
            .await;
        state.disable_stream();
        self.after_service_phase(session, ctx, s, state, Some(rx), outcome)
            .await
    }

    /// Answers after a plugin service's request filter: the stream events
    /// still queued, a fault, or the response the plugin set.
    async fn after_service_phase(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        s: ActiveSession,
        state: RequestState,
        rx: Option<mpsc::Receiver<StreamEvent>>,
        outcome: PhaseOutcome,
    ) -> Result<bool> {
        // Events sent before the phase ended (all of them, for a phase that
        // ended inside the call).
        let mut write_error = None;
        if let Some(mut rx) = rx {
            while let Ok(ev) = rx.try_recv() {
                if write_error.is_none() {
                    write_error = write_event(session, ev).await.err();
                }
            }
        }
        let (started, ended) = state.stream_state();
        ctx.state = Some(state);
        let plugin = Arc::clone(&s.plugin);
        ctx.sessions
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
        if let Some(e) = write_error {
            return Err(e);
        }
        if is_fault(&outcome) {
            let (code, error, message) = fault(&outcome, &plugin, Phase::RequestFilter);
            if started {
                // The header is out: cut the response short.
                if let Some(st) = ctx.state.as_mut() {
                    st.set_error(message.clone());
                }
                return Err(Error::explain(HTTPStatus(code), message));
            }
            return self.fail(session, ctx, code, error, message).await;
        }
        if started {
            if !ended {
                // The plugin ended its phase without ending the stream.
                session.write_response_body(None, true).await?;
            }
            ctx.responded = true;
            return Ok(true);
        }
        self.respond_from_state(session, ctx).await?;
        Ok(true)
    }
}

/// Polls `fut` once with a no-op waker (the task is polled again only if it
/// is pending, with the real waker).
fn futures_poll_once<F: Future + ?Sized>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    match fut.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(o) => Some(o),
        Poll::Pending => None,
    }
}

/// The next stream event, or never when there is no stream.
async fn recv(rx: Option<&mut mpsc::Receiver<StreamEvent>>) -> Option<StreamEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The request body a route with plugins may read is buffered up to this.
pub const MAX_REQUEST_BODY: usize = 64 << 10;

#[async_trait]
impl<R: Routes> ProxyHttp for NylonProxy<R> {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            state: None,
            sessions: Mutex::new(Vec::new()),
            peer: None,
            responded: false,
            kept_length: false,
            stats: Some(Arc::clone(&self.host.stats)),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.host.stats.requests.fetch_add(1, Ordering::Relaxed);
        let snap = snapshot(session);
        let plan = match self.host.routes.route(&snap) {
            Ok(plan) => plan,
            Err((code, message)) => {
                ctx.state = Some(RequestState::new(snap));
                let error = if code == 404 {
                    "not_found"
                } else {
                    "method_not_allowed"
                };
                return self.fail(session, ctx, code, error, message.into()).await;
            }
        };
        let has_plugins =
            !plan.middleware.is_empty() || matches!(plan.service, ServiceStep::Plugin(_));
        let mut state = RequestState::new(snap);
        state.set_params(plan.params);
        if !plan.request_headers.is_empty() {
            let req = session.req_header_mut();
            for c in &plan.request_headers {
                match c {
                    HeaderChange::Set(n, v) => {
                        if let (Ok(name), Ok(value)) = (
                            http::HeaderName::from_bytes(n.as_bytes()),
                            http::HeaderValue::from_bytes(v),
                        ) {
                            let _ = req.insert_header(name, value);
                        }
                    }
                    HeaderChange::Remove(n) => {
                        let _ = req.remove_header(n.as_str());
                    }
                }
            }
            state.apply_request_changes(&plan.request_headers);
        }
        for c in &plan.response_headers {
            match c {
                HeaderChange::Set(n, v) => {
                    state.set_response_header(n, &String::from_utf8_lossy(v))
                }
                HeaderChange::Remove(n) => state.remove_response_header(n),
            }
        }
        if has_plugins {
            // Read the body now so a plugin can read it (method 200); Pingora's
            // retry buffer keeps it for the upstream.
            session.as_mut().enable_retry_buffering();
            let mut body = Vec::new();
            while let Some(chunk) = session.read_request_body().await? {
                if body.len() + chunk.len() > MAX_REQUEST_BODY {
                    ctx.state = Some(state);
                    return self
                        .fail(
                            session,
                            ctx,
                            413,
                            "request_too_large",
                            format!(
                                "a request body through plugins is limited to \
                                 {MAX_REQUEST_BODY} bytes"
                            ),
                        )
                        .await;
                }
                body.extend_from_slice(&chunk);
            }
            state.set_request_body(body);
        }
        ctx.state = Some(state);

        for step in plan.middleware {
            let mut s = match self.open(step) {
                Ok(s) => s,
                Err((code, message)) => {
                    let error = if code == 503 {
                        "plugin_busy"
                    } else {
                        "plugin_error"
                    };
                    return self.fail(session, ctx, code, error, message).await;
                }
            };
            let Some(mut state) = ctx.state.take() else {
                return Ok(true);
            };
            let o = self
                .run_phase(&mut s, Phase::RequestFilter, &mut state, None)
                .await;
            ctx.state = Some(state);
            let plugin = Arc::clone(&s.plugin);
            ctx.sessions
                .get_mut()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
            match o {
                PhaseOutcome::Next => {}
                PhaseOutcome::End | PhaseOutcome::StreamEnd => {
                    self.respond_from_state(session, ctx).await?;
                    return Ok(true);
                }
                PhaseOutcome::Timeout | PhaseOutcome::Error(_) => {
                    let (code, error, message) = fault(&o, &plugin, Phase::RequestFilter);
                    return self.fail(session, ctx, code, error, message).await;
                }
            }
        }

        match plan.service {
            ServiceStep::Http(addr) => {
                ctx.peer = Some(addr);
                Ok(false)
            }
            ServiceStep::Plugin(step) => match self.open(step) {
                Ok(s) => self.serve_plugin(session, ctx, s).await,
                Err((code, message)) => {
                    let error = if code == 503 {
                        "plugin_busy"
                    } else {
                        "plugin_error"
                    };
                    self.fail(session, ctx, code, error, message).await
                }
            },
            ServiceStep::Unsupported(what) => {
                self.fail(session, ctx, 501, "not_implemented", what.to_string())
                    .await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let addr = ctx
            .peer
            .ok_or_else(|| Error::explain(InternalError, "no upstream for this route"))?;
        Ok(Box::new(HttpPeer::new(addr, false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if ctx.responded {
            return Ok(());
        }
        let Some(mut state) = ctx.state.take() else {
            return Ok(());
        };
        let mut sessions =
            std::mem::take(ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner()));
        if sessions.is_empty() {
            ctx.state = Some(state);
            return Ok(());
        }
        state.apply_upstream(
            upstream_response.status.as_u16(),
            upstream_response
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        let mut failure = None;
        for s in sessions.iter_mut().filter(|s| !s.failed) {
            let o = self
                .run_phase(s, Phase::ResponseFilter, &mut state, None)
                .await;
            if is_fault(&o) {
                failure = Some(fault(&o, &s.plugin, Phase::ResponseFilter));
                break;
            }
        }
        apply_changes(upstream_response, state.take_changes());
        if let Some(status) = state.status_override() {
            upstream_response.set_status(status)?;
        }
        // A body filter may change the body's length: unless no plugin of
        // this request does, the response goes out chunked.
        if sessions.iter().any(|s| s.plugin.rewrites_body) {
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            if upstream_response.version != http::Version::HTTP_2 {
                upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        } else {
            ctx.kept_length = upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH);
        }
        *ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner()) = sessions;
        if let Some((code, _, message)) = failure {
            state.set_error(message.clone());
            ctx.state = Some(state);
            return Err(Error::explain(HTTPStatus(code), message));
        }
        ctx.state = Some(state);
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if ctx.responded || (body.is_none() && !end_of_stream) {
            return Ok(None);
        }
        self.body_phase(ctx, body)?;
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let mut sessions =
            std::mem::take(ctx.sessions.get_mut().unwrap_or_else(|e| e.into_inner()));
        if let Some(mut state) = ctx.state.take() {
            let bytes = session.body_bytes_sent() as u64;
            state.begin_logging(bytes.max(state.bytes_sent()), e.map(|e| e.to_string()));
            for s in sessions.iter_mut().filter(|s| !s.failed) {
                self.run_phase(s, Phase::Logging, &mut state, None).await;
            }
            ctx.state = Some(state);
        }
        for s in sessions.iter_mut() {
            s.close(&self.host.stats);
        }
    }
}
