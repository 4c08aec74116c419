//! `nylon-serve`: loads the config and its plugins, routes requests with the
//! config's router and payload templates, and runs the Pingora server until a
//! signal (SIGTERM: graceful, with the config's grace period; SIGINT: fast),
//! then shuts every plugin down once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use nylon_transport::host::LegacyPlugin;
use nylon_transport::transport::isolated::{Abi, IsolatedConfig};
use nylon_transport::transport::{IsolatedPlugin, V2Plugin};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use tokio::sync::Semaphore;

use crate::config::{
    Config, ConfigError, ConfigErrorKind, Isolation, MiddlewareKind, PluginCall, PluginConfig,
    ServiceKind, TransportChoice, WebSocketAdapter,
};
use crate::ctx::{HeaderChange, RequestSnapshot};
use crate::proxy::{
    Host, LoadedPlugin, NylonProxy, PhaseWait, PluginStep, RoundRobin, RoutePlan, Routes,
    ServiceStep, Stats,
};
use crate::route::{Params, RouteError};
use crate::template::TemplateInput;
use crate::transport::{HostTransport, PluginHandle, TransportKind};
use crate::ws::cluster::{Cluster, LocalRooms};
use crate::ws::conn::WsConfig;
use crate::ws::redis::RedisCluster;
use crate::ws::rooms::Rooms;

/// Options of the `nylon-serve` command line.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The YAML config.
    pub config: PathBuf,
    /// The legacy transport when neither the plugin nor `server:` chooses.
    pub transport: TransportKind,
    /// How pending phases are waited for.
    pub phase_wait: PhaseWait,
    /// The phase timeout of plugins that set none.
    pub phase_timeout: Duration,
    /// Pingora worker threads, overriding the config.
    pub threads: Option<usize>,
    /// Plugins do not change body lengths in their body filter: keep the
    /// upstream's `Content-Length` (see [`LoadedPlugin::rewrites_body`]).
    pub keep_content_length: bool,
    /// WebSocket settings (ping interval, idle timeout, queue bounds, size
    /// limits).
    pub ws: WsConfig,
    /// Where every plugin runs, overriding each plugin's `isolation:`
    /// (`--isolation`); `None` follows the config.
    pub isolation: Option<Isolation>,
}

/// The config's routes over the loaded plugins.
#[derive(Debug)]
pub struct ConfigRoutes {
    config: Config,
    plugins: Vec<Arc<LoadedPlugin>>,
    round_robin: Vec<RoundRobin>,
}

struct Input<'a> {
    req: &'a RequestSnapshot,
    params: &'a Params<'a, 'a>,
}

impl TemplateInput for Input<'_> {
    fn write_client_ip(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.req.client_ip.as_bytes());
    }

    fn method(&self) -> &[u8] {
        self.req.method.as_bytes()
    }

    fn path(&self) -> &[u8] {
        self.req.path.as_bytes()
    }

    fn host(&self) -> &[u8] {
        self.req.authority.as_bytes()
    }

    fn query_string(&self) -> &[u8] {
        self.req.query.as_bytes()
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.req
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    }

    fn param(&self, name: &str) -> Option<&[u8]> {
        self.params.get(name).map(str::as_bytes)
    }
}

impl ConfigRoutes {
    fn step<'a>(&'a self, call: &'a PluginCall, input: &Input<'_>) -> PluginStep<'a> {
        let payload = call.payload.as_ref().map(|t| {
            let mut out = Vec::new();
            t.render(input, &mut out);
            out
        });
        PluginStep {
            plugin: &self.plugins[call.plugin.0],
            entry: &call.entry,
            payload,
        }
    }

    /// Every loaded plugin.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// The config.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Routes for ConfigRoutes {
    fn route(&self, req: &RequestSnapshot) -> Result<RoutePlan<'_>, (u16, &'static str)> {
        let selector = self.config.header_selector.as_deref().and_then(|h| {
            req.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(h.as_bytes()))
                .map(|(_, v)| v.as_slice())
        });
        let m = self
            .config
            .route(req.authority.as_bytes(), selector, &req.method, &req.path)
            .map_err(|e| match e {
                RouteError::NotFound => (404, "no route matches"),
                RouteError::MethodNotAllowed => (405, "method not allowed on this path"),
            })?;
        let input = Input {
            req,
            params: &m.params,
        };
        let mut plan = RoutePlan {
            params: m
                .params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            middleware: Vec::with_capacity(m.path.middleware.len()),
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            service: ServiceStep::Unsupported(""),
        };
        for mw in m.path.middleware.iter() {
            match &mw.kind {
                MiddlewareKind::Plugin(call) => plan.middleware.push(self.step(call, &input)),
                MiddlewareKind::RequestHeaderModifier(h) => {
                    modify(&mut plan.request_headers, h, &input)
                }
                MiddlewareKind::ResponseHeaderModifier(h) => {
                    modify(&mut plan.response_headers, h, &input)
                }
            }
        }
        plan.service = match &self.config.services[m.path.service.0].kind {
            ServiceKind::Http { endpoints, .. } => {
                let rr = &self.round_robin[m.path.service.0];
                ServiceStep::Http(endpoints[rr.next(endpoints.len())].addr)
            }
            ServiceKind::Plugin(call) => ServiceStep::Plugin(self.step(call, &input)),
            ServiceKind::Static { .. } => {
                ServiceStep::Unsupported("static file services are not served by nylon-serve")
            }
        };
        Ok(plan)
    }
}

fn modify(out: &mut Vec<HeaderChange>, h: &crate::config::HeaderModifier, input: &Input<'_>) {
    for (name, value) in &h.set {
        let mut v = Vec::new();
        value.render(input, &mut v);
        out.push(HeaderChange::Set(name.clone(), v));
    }
    for name in &h.remove {
        out.push(HeaderChange::Remove(name.clone()));
    }
}

/// Loads the config and every plugin it names, and checks every entry.
///
/// # Errors
///
/// A config error (file, line, key), a plugin that fails to load, or an
/// entry a plugin does not export.
pub fn load(opts: &ServeOptions) -> anyhow::Result<Host<ConfigRoutes>> {
    let config = Config::load(&opts.config)?;
    let mut plugins = Vec::with_capacity(config.plugins.len());
    for p in &config.plugins {
        let fail =
            |why: String| ConfigError::at(&p.file_location, ConfigErrorKind::PluginLoad, why);
        let kind = match p.transport.or(config.server.transport) {
            Some(TransportChoice::Baseline) => TransportKind::Baseline,
            Some(TransportChoice::Fast) => TransportKind::Fast,
            None => opts.transport,
        };
        let timeout = p.timeout.unwrap_or(opts.phase_timeout);
        if opts.isolation.unwrap_or(p.isolation) == Isolation::Process {
            // The library is never opened in this process: the workers load
            // it, detect its ABI and initialize it.
            let plugin =
                IsolatedPlugin::start(&p.file, &p.config, isolated_config(p, kind, timeout))
                    .map_err(|e| {
                        fail(format!(
                            "cannot start `{}` in worker processes: {e}",
                            p.file.display()
                        ))
                    })?;
            plugins.push(Arc::new(LoadedPlugin {
                name: p.name.clone(),
                handle: PluginHandle::Isolated(plugin),
                transport: HostTransport::isolated(),
                sessions: p.max_sessions.map(|n| Arc::new(Semaphore::new(n.get()))),
                timeout: timeout * ISOLATED_BACKSTOP,
                rewrites_body: !opts.keep_content_length,
                last_worker_failure: Default::default(),
            }));
            continue;
        }
        let report = nylon_transport::host::inspect(&p.file)
            .map_err(|e| fail(format!("cannot load `{}`: {e}", p.file.display())))?;
        let (handle, transport) = if report.abi == "v2" {
            let plugin = V2Plugin::load(&p.file, &p.config)
                .map_err(|e| fail(format!("cannot load `{}`: {e}", p.file.display())))?;
            (PluginHandle::V2(Arc::new(plugin)), HostTransport::v2())
        } else {
            let plugin = LegacyPlugin::load(&p.file)
                .map_err(|e| fail(format!("cannot load `{}`: {e}", p.file.display())))?;
            plugin
                .initialize(&p.config)
                .map_err(|e| fail(format!("`{}` failed to initialize: {e}", p.file.display())))?;
            (
                PluginHandle::Legacy(Arc::new(plugin)),
                HostTransport::legacy(kind),
            )
        };
        plugins.push(Arc::new(LoadedPlugin {
            name: p.name.clone(),
            handle,
            transport,
            sessions: p.max_sessions.map(|n| Arc::new(Semaphore::new(n.get()))),
            timeout,
            rewrites_body: !opts.keep_content_length,
            last_worker_failure: Default::default(),
        }));
    }
    config.check_entries(|p, entry| {
        let loaded = plugins
            .iter()
            .find(|l| l.name == p.name)
            .ok_or_else(|| format!("plugin `{}` is not loaded", p.name))?;
        let exported = match &loaded.handle {
            PluginHandle::V2(v2) => v2.entry_id(entry).is_some(),
            // A worker is asked once and the answer cached for `open`: a
            // cold entry would otherwise be checked on the first request, by
            // a synchronous round trip on a Pingora thread that waits behind
            // whatever phase the worker runs.
            PluginHandle::Isolated(iso) => match iso.check_entry(entry) {
                Ok(ok) => ok,
                Err(e) => {
                    return Err(format!(
                        "plugin `{}` ({}): cannot check entry `{entry}`: {e}",
                        p.name,
                        p.file.display()
                    ))
                }
            },
            PluginHandle::Legacy(_) => match loaded.transport.open(&loaded.handle, entry) {
                Ok(s) => {
                    loaded.transport.close(s);
                    true
                }
                Err(_) => false,
            },
        };
        if exported {
            Ok(())
        } else {
            Err(format!(
                "plugin `{}` ({}) has no entry `{entry}`",
                p.name,
                p.file.display()
            ))
        }
    })?;
    let round_robin = config
        .services
        .iter()
        .map(|_| RoundRobin::default())
        .collect();
    Ok(Host {
        routes: ConfigRoutes {
            config,
            plugins,
            round_robin,
        },
        phase_wait: opts.phase_wait,
        stats: Arc::new(Stats::default()),
        ws: opts.ws,
        rooms: Arc::new(Rooms::new()),
    })
}

/// Runs the proxy until a shutdown signal, then shuts the plugins down.
///
/// # Errors
///
/// As [`load`].
pub fn run(opts: &ServeOptions) -> anyhow::Result<()> {
    let host = Arc::new(load(opts)?);
    // Rooms across nodes: connected before serving, so that an unreachable Redis stops the
    // start-up with an error naming it.
    let cluster = start_cluster(&host)?;
    let server_cfg = &host.routes.config.server;
    let conf = ServerConf {
        threads: opts
            .threads
            .or(server_cfg.threads.map(|t| t.get()))
            .unwrap_or(1),
        grace_period_seconds: Some(server_cfg.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(server_cfg.graceful_shutdown_timeout_seconds),
        ..ServerConf::default()
    };
    let listen: Vec<SocketAddr> = server_cfg.listen.clone();
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(
        &server.configuration,
        NylonProxy::new(Arc::clone(&host)),
    );
    for addr in &listen {
        service.add_tcp(&addr.to_string());
    }
    server.add_service(service);
    for p in &host.routes.plugins {
        let (abi, workers, timeout) = match &p.handle {
            PluginHandle::Legacy(_) => ("legacy", String::new(), p.timeout),
            PluginHandle::V2(_) => ("v2", String::new(), p.timeout),
            PluginHandle::Isolated(iso) => (
                match iso.abi() {
                    Abi::Legacy => "legacy",
                    Abi::V2 => "v2",
                },
                format!(" (worker processes {:?})", iso.worker_pids()),
                p.timeout / ISOLATED_BACKSTOP,
            ),
        };
        eprintln!(
            "nylon-serve: plugin `{}`: {abi} ABI on the {} transport{workers}, phase timeout {} \
             ms, sessions in flight {}",
            p.name,
            p.transport.name(),
            timeout.as_millis(),
            p.sessions.as_ref().map_or("unbounded".to_string(), |s| s
                .available_permits()
                .to_string()),
        );
    }
    eprintln!(
        "nylon-serve: listening on {} ({} plugins)",
        listen
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        host.routes.plugins.len()
    );
    server.run(RunArgs::default());
    eprintln!("nylon-serve: stats {}", stats_json(&host));
    if let Some((runtime, cluster)) = cluster {
        runtime.block_on(cluster.shutdown());
        eprintln!("nylon-serve: websocket cluster {:?}", cluster.stats());
    }
    shutdown(host);
    Ok(())
}

/// With `websocket: {adapter_type: redis}`: connects the Redis cluster adapter on a runtime
/// of its own (one thread: the adapter's command, pub/sub and janitor tasks), hands it to the
/// rooms, and subscribes.
///
/// # Errors
///
/// Redis does not answer, or refuses the password or database.
#[allow(clippy::type_complexity)]
fn start_cluster(
    host: &Host<ConfigRoutes>,
) -> anyhow::Result<Option<(tokio::runtime::Runtime, Arc<RedisCluster>)>> {
    let WebSocketAdapter::Redis(cfg) = &host.routes.config.websocket else {
        return Ok(None);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("nylon-ws-cluster")
        .enable_all()
        .build()
        .context("cannot start the WebSocket cluster runtime")?;
    let cluster = runtime
        .block_on(RedisCluster::connect(cfg))
        .context("websocket.redis")?;
    if host
        .rooms
        .set_cluster(Arc::clone(&cluster) as Arc<dyn Cluster>)
        .is_err()
    {
        anyhow::bail!("the rooms already have a cluster adapter");
    }
    runtime
        .block_on(cluster.attach(Arc::clone(&host.rooms) as Arc<dyn LocalRooms>))
        .context("websocket.redis")?;
    eprintln!(
        "nylon-serve: websocket rooms across nodes on Redis {}:{} db {} prefix `{}`, node {}",
        cfg.host,
        cfg.port,
        cfg.db,
        cfg.key_prefix,
        cluster.node_id()
    );
    Ok(Some((runtime, cluster)))
}

/// The host's counters, with each isolated plugin's worker counters under
/// `isolated.NAME`.
fn stats_json(host: &Host<ConfigRoutes>) -> serde_json::Value {
    let mut v = host.stats.to_json();
    let mut iso = serde_json::Map::new();
    for p in &host.routes.plugins {
        if let PluginHandle::Isolated(i) = &p.handle {
            let s = i.stats();
            iso.insert(
                p.name.clone(),
                serde_json::json!({
                    "started": s.started,
                    "restarts": s.restarts,
                    "deaths": s.deaths,
                    "last_death": s.last_death,
                    "in_flight": s.in_flight,
                    "rejected_503": s.rejected,
                }),
            );
        }
    }
    if !iso.is_empty() {
        v["isolated"] = serde_json::Value::Object(iso);
    }
    v
}

/// The worker settings of an isolated plugin: the config's keys over the
/// transport's defaults.
///
/// The plugin's phase timeout is the worker's deadline: the worker ends a
/// phase that runs longer with a timeout (504), and the transport's
/// watchdog kills a worker that owes an answer and has sent nothing for that
/// long and a tick more (a plugin call that never returns), and every
/// request in flight on it (the stuck one included) gets 502 with the
/// reason. The host's own phase timer for an isolated plugin is
/// only a backstop at [`ISOLATED_BACKSTOP`] times the timeout (see [`load`]):
/// were it to fire first, the stuck request would get a 504 that says
/// nothing of the worker (the worker would still be replaced: the watchdog
/// counts cancelled phases too).
fn isolated_config(p: &PluginConfig, kind: TransportKind, timeout: Duration) -> IsolatedConfig {
    let d = IsolatedConfig::default();
    let c = &p.isolation_config;
    let first = c.restart_backoff.unwrap_or(d.restart_backoff.0);
    let max = c
        .restart_backoff_max
        .unwrap_or(d.restart_backoff.1)
        .max(first);
    let exe = std::env::current_exe().map_or_else(|_| "nylon-serve".into(), |e| e.into_os_string());
    IsolatedConfig {
        workers: c.workers.map_or(d.workers, |n| n.get()),
        queue: c.worker_queue.map_or(d.queue, |n| n.get()),
        phase_timeout: timeout,
        restart_backoff: (first, max),
        worker_command: vec![exe, "worker".into()],
        legacy_transport: kind.inner(),
        ..d
    }
}

/// The host's phase timer of an isolated plugin, in multiples of its
/// `timeout` (the worker's deadline): the watchdog kills a stuck worker
/// between 1 and 1.5 timeouts after the phase began, so the timer fires only
/// if the watchdog failed.
pub const ISOLATED_BACKSTOP: u32 = 2;

/// How long isolated workers get to run the plugin's `shutdown` and exit.
const WORKER_GRACE: Duration = Duration::from_secs(5);

/// Calls every plugin's `shutdown` once: legacy plugins explicitly, v2 ones
/// when their last reference goes (the v2 ABI ties `shutdown` to the drop),
/// isolated ones in their workers (which are then reaped, or killed after
/// a grace period).
pub fn shutdown(host: Arc<Host<ConfigRoutes>>) {
    for p in &host.routes.plugins {
        match &p.handle {
            PluginHandle::Legacy(l) => l.shutdown(),
            PluginHandle::Isolated(i) => i.shutdown(WORKER_GRACE),
            PluginHandle::V2(_) => {}
        }
    }
    match Arc::try_unwrap(host) {
        Ok(host) => drop(host),
        Err(host) => eprintln!(
            "nylon-serve: {} references to the host remain at exit; v2 plugins are shut down by \
             the process exit",
            Arc::strong_count(&host) - 1
        ),
    }
    eprintln!("nylon-serve: plugins shut down");
}

/// Parses a `--transport` value.
///
/// # Errors
///
/// An unknown name.
pub fn parse_transport(s: &str) -> anyhow::Result<TransportKind> {
    TransportKind::parse(s).with_context(|| format!("unknown transport `{s}` (baseline, fast)"))
}
