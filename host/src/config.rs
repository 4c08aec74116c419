//! The host's configuration, in upstream Nylon's YAML shape.
//!
//! [`Config::load`] reads one YAML file and decodes it into the typed structs below. Every
//! reference (a route's service, a middleware's plugin or group, a plugin service's plugin) is
//! resolved to an id at load, every payload template is compiled, and the router is built, so a
//! bad config fails at start-up with a [`ConfigError`] that names the file, line, column and key
//! path (`routes[2].paths[0].middleware[0].entry`), never on a request.
//!
//! What the config cannot know (whether a plugin file loads, which entries it exports) the proxy
//! checks after loading the plugins, with [`Config::check_entries`] and [`ConfigError::at`] on
//! the [`Location`] each reference carries.
//!
//! `docs/host-config.md` documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::route::{Params, RouteError, Router};
use crate::template::{StrTemplate, Template};

pub(crate) mod decode;

/// A decoded, validated host configuration.
///
/// Built once at start-up by [`Config::load`] or [`Config::parse`]; immutable afterwards and
/// shared by every worker.
#[derive(Debug)]
pub struct Config {
    /// The file the config was read from (as given; used in error messages).
    pub file: Arc<Path>,
    /// The `server:` section.
    pub server: ServerConfig,
    /// The `plugins:` list, in file order; a [`PluginId`] indexes it.
    pub plugins: Vec<PluginConfig>,
    /// The `services:` list, in file order; a [`ServiceId`] indexes it.
    pub services: Vec<ServiceConfig>,
    /// The `routes:` list, in file order, with groups expanded into each path's middleware.
    pub routes: Vec<RouteConfig>,
    /// `header_selector:`, lowercased: the request header whose value selects a
    /// `type: header` route before the host is tried.
    pub header_selector: Option<String>,
    /// The `websocket:` section: how rooms reach other nodes.
    pub websocket: WebSocketAdapter,
    router: Router<(usize, usize)>,
}

/// The `websocket:` section (upstream Nylon's `adapter_type:` with its `redis:` map): where
/// room membership and broadcasts go besides this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum WebSocketAdapter {
    /// `adapter_type: memory` (and no `websocket:` at all): rooms stay on this node.
    #[default]
    Memory,
    /// `adapter_type: redis`: rooms across nodes through one Redis (`crate::ws::redis`).
    Redis(RedisConfig),
}

/// `websocket.redis:`, the Redis of a cluster of nodes, with upstream Nylon's keys and our
/// heartbeat and janitor timings.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `host:`, a host name or an IP address.
    pub host: String,
    /// `port:`.
    pub port: u16,
    /// `password:` (`AUTH`); `None` (absent or `null`) sends none.
    pub password: Option<String>,
    /// `db:`, the database number. Default 0.
    pub db: u8,
    /// `key_prefix:` of every key and of the `{prefix}:events` channel. Default `nylon:ws`
    /// (upstream's).
    pub key_prefix: String,
    /// `heartbeat_interval:` (ours): how often this node refreshes `{prefix}:nodes:{id}`.
    /// Default 10 s (upstream's).
    pub heartbeat_interval: Duration,
    /// `node_ttl:` (ours): the heartbeat key's time to live; a node silent this long is dead and
    /// the others remove its connections. Default 30 s (upstream's).
    pub node_ttl: Duration,
    /// `janitor_interval:` (ours): how often this node looks for dead nodes. Default 30 s
    /// (upstream's).
    pub janitor_interval: Duration,
    /// `queue:` (ours): operations waiting for the adapter's task; beyond it a join, leave or
    /// broadcast is dropped and counted. Default 65536.
    pub queue: NonZeroUsize,
}

impl RedisConfig {
    /// Upstream's defaults for a Redis at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            password: None,
            db: 0,
            key_prefix: "nylon:ws".to_owned(),
            heartbeat_interval: Duration::from_secs(10),
            node_ttl: Duration::from_secs(30),
            janitor_interval: Duration::from_secs(30),
            queue: NonZeroUsize::new(65536).unwrap_or(NonZeroUsize::MIN),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("key_prefix", &self.key_prefix)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("node_ttl", &self.node_ttl)
            .field("janitor_interval", &self.janitor_interval)
            .field("queue", &self.queue)
            .finish()
    }
}

/// The `server:` section: where the proxy listens and how it stops.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// `listen:`, one address or a list (`127.0.0.1:8088`). Default `["0.0.0.0:8088"]`.
    pub listen: Vec<SocketAddr>,
    /// `threads:`, Pingora worker threads per service. `None` leaves Pingora's default.
    pub threads: Option<NonZeroUsize>,
    /// `grace_period_seconds:`, how long the server keeps accepting after a shutdown signal
    /// (Pingora's setting of that name). Default 5.
    pub grace_period_seconds: u64,
    /// `graceful_shutdown_timeout_seconds:`, how long in-flight requests get to finish after
    /// the grace period (Pingora's setting of that name). Default 5.
    pub graceful_shutdown_timeout_seconds: u64,
    /// `transport:`, the default legacy transport for plugins that do not choose one. `None`
    /// leaves the choice to the command line (`--transport`).
    pub transport: Option<TransportChoice>,
}

/// Which transport drives a legacy-ABI plugin. A plugin that exports the v2 ABI always runs on
/// the v2 transport, whatever this says.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum TransportChoice {
    /// The legacy-ABI baseline transport (one message per call, as upstream Nylon).
    Baseline,
    /// The fast transport for legacy-ABI plugins.
    Fast,
}

/// Where a plugin runs (`plugins[i].isolation`).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum Isolation {
    /// `none` (the default): the library is loaded into the proxy's process; a crash in it
    /// takes the proxy down.
    #[default]
    None,
    /// `process`: the library runs in worker processes of its own, driven over shared-memory
    /// rings; a worker that crashes fails only its in-flight requests (502) and is restarted.
    Process,
}

/// The worker settings of an isolated plugin; `None` leaves the transport's default.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct IsolationConfig {
    /// `workers:`, worker processes for the plugin (sessions are spread across them).
    pub workers: Option<NonZeroUsize>,
    /// `worker_queue:`, submissions queued per worker; a request that finds every worker's
    /// queue full gets a fast 503.
    pub worker_queue: Option<NonZeroUsize>,
    /// `restart_backoff:`, the delay before the first restart of a worker that died.
    pub restart_backoff: Option<Duration>,
    /// `restart_backoff_max:`, the longest delay between restarts (the delay doubles per
    /// consecutive death up to it).
    pub restart_backoff_max: Option<Duration>,
}

/// Index of a plugin in [`Config::plugins`].
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct PluginId(pub usize);

/// Index of a service in [`Config::services`].
#[derive(Clone, Copy, Debug, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct ServiceId(pub usize);

/// One entry of `plugins:`.
#[derive(Debug)]
pub struct PluginConfig {
    /// `name:`, unique among plugins.
    pub name: String,
    /// `file:`, the shared library, as written: a relative path is relative to the proxy's
    /// working directory, as in upstream Nylon.
    pub file: PathBuf,
    /// `config:` rendered once to compact JSON, passed to the plugin's `initialize`. Empty when
    /// the key is absent.
    pub config: Vec<u8>,
    /// `transport:` for this plugin (legacy ABI only). `None`: [`ServerConfig::transport`],
    /// then the command line.
    pub transport: Option<TransportChoice>,
    /// `max_sessions:`, the bound on this plugin's sessions in flight; a request beyond it gets
    /// a fast 503. `None`: unbounded.
    pub max_sessions: Option<NonZeroUsize>,
    /// `timeout:` for one phase of this plugin (`500ms`, `2s`, `1m`); past it the client gets a
    /// 504. `None`: the proxy's default.
    pub timeout: Option<Duration>,
    /// `isolation:`, where the plugin runs: [`Isolation::None`] (in the proxy's process, the
    /// default) or [`Isolation::Process`] (in worker processes; see [`IsolationConfig`]).
    pub isolation: Isolation,
    /// The worker settings (`workers:`, `worker_queue:`, `restart_backoff:`,
    /// `restart_backoff_max:`), each `None` when not written. The keys are accepted only with
    /// `isolation: process`; `nylon-serve --isolation process` uses them (or the defaults) for
    /// every plugin.
    pub isolation_config: IsolationConfig,
    /// `entry:`, upstream's optional list of the entries the plugin exports. When given,
    /// every reference is checked against it at load; the proxy checks the loaded plugin anyway.
    pub entries: Option<Vec<String>>,
    /// Where the plugin is declared (`plugins[i]`).
    pub location: Location,
    /// Where its `file:` is (`plugins[i].file`), for a plugin that fails to load.
    pub file_location: Location,
}

/// One entry of `services:`.
#[derive(Debug)]
pub struct ServiceConfig {
    /// `name:`, unique among services.
    pub name: String,
    /// What serves the request: `service_type:` and its keys.
    pub kind: ServiceKind,
    /// Where the service is declared (`services[i]`).
    pub location: Location,
}

/// What a service is (`service_type: http | plugin | static`).
#[derive(Debug)]
pub enum ServiceKind {
    /// `service_type: http`: proxied to upstream endpoints.
    Http {
        /// `endpoints:` (`ip`, `port`, optional `weight`), at least one.
        endpoints: Vec<Endpoint>,
        /// `algorithm:`, default round robin.
        algorithm: Algorithm,
    },
    /// `service_type: plugin`: the plugin's entry serves the request (`plugin: {name, entry,
    /// payload}`).
    Plugin(PluginCall),
    /// `service_type: static`: files from a directory (`static: {root, index, spa}`).
    Static {
        /// `root:`, the directory.
        root: PathBuf,
        /// `index:`, the file served for a directory. Default `index.html`.
        index: String,
        /// `spa:`, serve the index for a missing file. Default false.
        spa: bool,
    },
}

/// One upstream endpoint of an http service.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Endpoint {
    /// `ip:` and `port:`.
    pub addr: SocketAddr,
    /// `weight:`, default 1.
    pub weight: u32,
}

/// `algorithm:` of an http service (upstream Nylon's names).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Algorithm {
    /// `round_robin` (the default).
    RoundRobin,
    /// `random`.
    Random,
    /// `consistent` (hashing).
    Consistent,
    /// `weighted`.
    Weighted,
}

/// A call of one plugin entry: a plugin service or a plugin middleware.
#[derive(Clone, Debug)]
pub struct PluginCall {
    /// The plugin, resolved at load.
    pub plugin: PluginId,
    /// `entry:`, the plugin's entry name. Whether the plugin exports it is checked by the proxy
    /// at start-up ([`Config::check_entries`]).
    pub entry: String,
    /// `payload:`, compiled; rendered per request to JSON.
    pub payload: Option<Arc<Template>>,
    /// Where `entry:` is written (`routes[2].paths[0].middleware[0].entry`).
    pub entry_location: Location,
}

/// One middleware of a path's chain, with groups already expanded.
#[derive(Clone, Debug)]
pub struct Middleware {
    /// What runs.
    pub kind: MiddlewareKind,
    /// Where it is written: the item inside the group for a group's middleware.
    pub location: Location,
}

/// What a middleware runs.
#[derive(Clone, Debug)]
pub enum MiddlewareKind {
    /// A plugin entry (`plugin: NAME`, `entry:`, `payload:`).
    Plugin(PluginCall),
    /// Upstream's built-in `RequestHeaderModifier`: sets and removes request headers.
    RequestHeaderModifier(Arc<HeaderModifier>),
    /// Upstream's built-in `ResponseHeaderModifier`: sets and removes response headers.
    ResponseHeaderModifier(Arc<HeaderModifier>),
}

/// The payload of a header-modifier middleware.
#[derive(Debug, Default)]
pub struct HeaderModifier {
    /// `set:` (`name`, `value`), names lowercased, values templates rendered as raw bytes.
    pub set: Vec<(String, StrTemplate)>,
    /// `remove:`, lowercased names.
    pub remove: Vec<String>,
}

/// One entry of `routes:`.
#[derive(Debug)]
pub struct RouteConfig {
    /// `name:`, unique among routes.
    pub name: String,
    /// `route:` (`type: host | header`, `value:`).
    pub matcher: RouteMatcher,
    /// `paths:`, in file order.
    pub paths: Vec<PathConfig>,
    /// Where the route is declared (`routes[i]`).
    pub location: Location,
}

/// `route:` of a route: what selects it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum RouteMatcher {
    /// `type: host`: the request's host (port stripped, case-insensitive) is one of these
    /// (`value: a.example|b.example`, lowercased).
    Host(Vec<String>),
    /// `type: header`: the [`Config::header_selector`] header has this value.
    Header(String),
}

/// One entry of a route's `paths:`.
#[derive(Debug)]
pub struct PathConfig {
    /// `path:`, one pattern or a list (`/users/{id}`, `/static/{*path}`).
    pub patterns: Vec<String>,
    /// `methods:`, uppercased; `None` accepts every method.
    pub methods: Option<Vec<String>>,
    /// `service: {name}`, resolved.
    pub service: ServiceId,
    /// `service: {rewrite}`: the path prefix the upstream sees instead of the matched one.
    pub rewrite: Option<String>,
    /// The route's `middleware:` then the path's, each group expanded in place, in order.
    pub middleware: Arc<[Middleware]>,
    /// Where the path is declared (`routes[i].paths[j]`).
    pub location: Location,
}

/// The route a request matched, with the path parameters.
#[derive(Debug)]
pub struct RouteMatch<'c, 'p> {
    /// The matched route.
    pub route: &'c RouteConfig,
    /// The matched path entry of that route.
    pub path: &'c PathConfig,
    /// The `{name}` and `{*name}` parameters, borrowed from the request path.
    pub params: Params<'c, 'p>,
}

/// A reference to a plugin entry somewhere in the config, for the proxy to check once the plugin
/// is loaded.
#[derive(Clone, Copy, Debug)]
pub struct EntryRef<'c> {
    /// The plugin.
    pub plugin: PluginId,
    /// The entry name.
    pub entry: &'c str,
    /// Where the reference is written.
    pub location: &'c Location,
}

/// Where something is in the config: file, line and column (1-based), and the key path.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Location {
    /// The config file.
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key path, as `routes[2].paths[0].middleware[0].entry`; empty for the document root.
    pub key_path: String,
}

/// A configuration error: what is wrong and exactly where.
///
/// `Display` gives `FILE:LINE:COLUMN: KEY.PATH: message`.
#[derive(Clone, Debug)]
pub struct ConfigError {
    kind: ConfigErrorKind,
    file: Arc<Path>,
    line: Option<(usize, usize)>,
    key_path: String,
    message: String,
}

/// The class of a [`ConfigError`].
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// The file cannot be read.
    Io,
    /// The file is not valid YAML.
    Syntax,
    /// A required key is missing.
    MissingKey,
    /// A key the host does not know (a typo, most often).
    UnknownKey,
    /// A value of the wrong type (a list where a string is expected, ...).
    BadType,
    /// A value of the right type that is not allowed (`service_type: ftp`, a bad address).
    BadValue,
    /// Two plugins, services, routes or groups with one name.
    Duplicate,
    /// A reference to a plugin that `plugins:` does not declare.
    UnknownPlugin,
    /// A reference to a service that `services:` does not declare.
    UnknownService,
    /// A reference to a group that `middleware_groups:` does not declare.
    UnknownGroup,
    /// An entry the loaded plugin does not export (found by the proxy at start-up).
    UnknownEntry,
    /// A plugin file that fails to load (found by the proxy at start-up).
    PluginLoad,
    /// A payload template that does not parse.
    Template,
    /// Two paths of one host that match the same requests, or a bad path pattern.
    Route,
}

impl Config {
    /// Reads and decodes the config file at `path`.
    ///
    /// `${env(NAME)}` in templates is read now, from the process environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line, column and key path of the first problem.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let file: Arc<Path> = Arc::from(path);
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            kind: ConfigErrorKind::Io,
            file: file.clone(),
            line: None,
            key_path: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        decode::decode(&text, file, &|name| std::env::var(name).ok())
    }

    /// Decodes config `text`, naming it `file` in errors; `${env(NAME)}` reads the process
    /// environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line, column and key path of the first problem.
    pub fn parse(text: &str, file: impl AsRef<Path>) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, file, &|name| std::env::var(name).ok())
    }

    /// Decodes config `text` like [`Config::parse`], reading `${env(NAME)}` from `env`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the file, line, column and key path of the first problem.
    pub fn parse_with_env(
        text: &str,
        file: impl AsRef<Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        decode::decode(text, Arc::from(file.as_ref()), env)
    }

    /// Finds the plugin named `name`.
    pub fn plugin(&self, name: &str) -> Option<(PluginId, &PluginConfig)> {
        self.plugins
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
            .map(|(i, p)| (PluginId(i), p))
    }

    /// Matches a request to a route: first by the [`Config::header_selector`] header's value
    /// (`selector`) against `type: header` routes, then by `host` (a port is ignored, case is
    /// not significant) against `type: host` routes; then by `method` and `path`.
    ///
    /// `path` is the request path without the query string, as received (not
    /// percent-decoded). Allocation-free: the parameters borrow from the config and from `path`.
    ///
    /// # Errors
    ///
    /// [`RouteError::NotFound`] when no route and path match; [`RouteError::MethodNotAllowed`]
    /// when a path matches but not for this method.
    pub fn route<'c, 'p>(
        &'c self,
        host: &[u8],
        selector: Option<&[u8]>,
        method: &str,
        path: &'p str,
    ) -> Result<RouteMatch<'c, 'p>, RouteError> {
        let m = self.router.at(host, selector, method, path)?;
        let (route, path_index) = *m.value;
        let route = &self.routes[route];
        Ok(RouteMatch {
            route,
            path: &route.paths[path_index],
            params: m.params,
        })
    }

    /// Every plugin entry the config refers to (plugin services and plugin middleware, each
    /// occurrence once, groups counted where they are declared).
    pub fn entry_refs(&self) -> impl Iterator<Item = EntryRef<'_>> + '_ {
        let services = self.services.iter().filter_map(|s| match &s.kind {
            ServiceKind::Plugin(call) => Some(call),
            _ => None,
        });
        let middleware = self
            .routes
            .iter()
            .flat_map(|r| r.paths.iter())
            .flat_map(|p| p.middleware.iter())
            .filter_map(|m| match &m.kind {
                MiddlewareKind::Plugin(call) => Some(call),
                _ => None,
            });
        let mut seen: Vec<&Location> = Vec::new();
        services
            .chain(middleware)
            .filter(move |call| {
                // A group's item appears in every path that uses the group: report it once.
                if seen.contains(&&call.entry_location) {
                    false
                } else {
                    seen.push(&call.entry_location);
                    true
                }
            })
            .map(|call| EntryRef {
                plugin: call.plugin,
                entry: &call.entry,
                location: &call.entry_location,
            })
    }

    /// Checks every entry reference with `check` (the proxy asks the loaded plugin); the first
    /// refusal becomes a [`ConfigErrorKind::UnknownEntry`] error at the reference's location,
    /// with `check`'s message.
    ///
    /// # Errors
    ///
    /// The first reference `check` refuses.
    pub fn check_entries(
        &self,
        mut check: impl FnMut(&PluginConfig, &str) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        for r in self.entry_refs() {
            if let Err(why) = check(&self.plugins[r.plugin.0], r.entry) {
                return Err(ConfigError::at(
                    r.location,
                    ConfigErrorKind::UnknownEntry,
                    why,
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)?;
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// Builds an error at `location` (the proxy's plugin-load and entry errors use this).
    pub fn at(location: &Location, kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            file: location.file.clone(),
            line: Some((location.line, location.column)),
            key_path: location.key_path.clone(),
            message: message.into(),
        }
    }

    /// The class of the error.
    pub fn kind(&self) -> ConfigErrorKind {
        self.kind
    }

    /// The config file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The 1-based line, when the error has a position (not for an unreadable file).
    pub fn line(&self) -> Option<usize> {
        self.line.map(|(l, _)| l)
    }

    /// The 1-based column, when the error has a position.
    pub fn column(&self) -> Option<usize> {
        self.line.map(|(_, c)| c)
    }

    /// The key path (`routes[2].paths[0].service.name`); empty at the document root.
    pub fn key_path(&self) -> &str {
        &self.key_path
    }

    /// What is wrong, without the position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, column)) = self.line {
            write!(f, ":{line}:{column}")?;
        }
        if !self.key_path.is_empty() {
            write!(f, ": {}", self.key_path)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
