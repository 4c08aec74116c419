//! The YAML decoder: saphyr's marked tree (a source position on every node) to the typed config,
//! checking every key, type and reference on the way and naming each problem's file, line,
//! column and key path.
//!
//! Hand-written rather than `serde`-derived: a serde deserializer reports where a *syntax or type*
//! error is, but a *reference* (a route naming a service that does not exist, an entry the plugin
//! turns out not to export) is found after deserialization, when serde's positions are gone. The
//! marked tree keeps them for every node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::{
    Config, ConfigError, ConfigErrorKind, Isolation, IsolationConfig, Location, PluginCall,
    PluginConfig, PluginId, RedisConfig, ServerConfig, TransportChoice, WebSocketAdapter,
};
use crate::route::Router;
use crate::template::{Builder, Template, TemplateError};

use ConfigErrorKind as K;

/// The router of a config: to (route index, path index).
type RouteTable = Router<(usize, usize)>;
type Env<'e> = &'e dyn Fn(&str) -> Option<String>;
type Node<'a> = MarkedYaml<'a>;
type Result<T> = std::result::Result<T, ConfigError>;

/// HTTP methods a path may name (upstream Nylon's list).
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "CONNECT", "TRACE", "PATCH",
];

/// Keys upstream Nylon accepts that this host does not implement: named in the error so the
/// user knows the key is not a typo.
const UPSTREAM_ONLY: [&str; 5] = ["health_check", "tls", "acme", "https", "metrics"];

mod routes;

struct Cx<'e> {
    file: Arc<Path>,
    env: Env<'e>,
}

/// Decodes the config text.
pub(super) fn decode(text: &str, file: Arc<Path>, env: Env<'_>) -> Result<Config> {
    let cx = Cx { file, env };
    let docs = MarkedYaml::load_from_str(text).map_err(|e| cx.scan_error(&e))?;
    let root = match docs.as_slice() {
        [] => None,
        [doc] => Some(doc),
        [_, second, ..] => {
            return Err(cx.err(
                second,
                "",
                K::Syntax,
                "the file holds more than one YAML document",
            ))
        }
    };
    let mut top = match root {
        Some(r) if !matches!(r.data, YamlData::Value(Scalar::Null)) => cx.map(r, "")?,
        _ => Map::empty(),
    };

    // Take every section first: a misspelt section is reported as such, not as the unknown
    // references it causes.
    let (server, header_selector, plugins, services, groups, routes, websocket) = (
        top.get("server"),
        top.get("header_selector"),
        top.get("plugins"),
        top.get("services"),
        top.get("middleware_groups"),
        top.get("routes"),
        top.get("websocket"),
    );
    top.finish(&cx)?;
    let websocket = match websocket {
        Some((n, p)) => cx.websocket(n, &p)?,
        None => WebSocketAdapter::Memory,
    };
    let server = match server {
        Some((n, p)) => cx.server(n, &p)?,
        None => ServerConfig::default(),
    };
    let header_selector = match header_selector {
        Some((n, p)) => Some(cx.string(n, &p)?.to_ascii_lowercase()),
        None => None,
    };
    let plugins = match plugins {
        Some((n, p)) => cx.plugins(n, &p)?,
        None => Vec::new(),
    };
    let services = match services {
        Some((n, p)) => cx.services(n, &p, &plugins)?,
        None => Vec::new(),
    };
    let groups = match groups {
        Some((n, p)) => cx.groups(n, &p, &plugins)?,
        None => HashMap::new(),
    };
    let (routes, router) = match routes {
        Some((n, p)) => cx.routes(
            n,
            &p,
            &plugins,
            &services,
            &groups,
            header_selector.is_some(),
        )?,
        None => (Vec::new(), Router::new()),
    };
    Ok(Config {
        file: cx.file,
        server,
        plugins,
        services,
        routes,
        header_selector,
        websocket,
        router,
    })
}

/// Compiles a standalone payload (`text` is one YAML value), naming it `file` in errors.
pub(crate) fn payload(text: &str, file: Arc<Path>, env: Env<'_>) -> Result<Template> {
    let cx = Cx { file, env };
    let docs = MarkedYaml::load_from_str(text).map_err(|e| cx.scan_error(&e))?;
    match docs.as_slice() {
        [doc] => cx.payload(doc, ""),
        _ => Err(ConfigError {
            kind: K::Syntax,
            file: cx.file.clone(),
            line: None,
            key_path: String::new(),
            message: "expected exactly one YAML document".to_owned(),
        }),
    }
}

/// A mapping being decoded: keys are taken one by one; [`Map::finish`] rejects those left.
struct Map<'n, 'a> {
    path: String,
    entries: Vec<(&'n str, &'n Node<'a>, &'n Node<'a>)>,
    used: Vec<bool>,
    node: Option<&'n Node<'a>>,
}

impl<'n, 'a> Map<'n, 'a> {
    fn empty() -> Self {
        Self {
            path: String::new(),
            entries: Vec::new(),
            used: Vec::new(),
            node: None,
        }
    }

    /// Takes `key`: its value node and key path.
    fn get(&mut self, key: &str) -> Option<(&'n Node<'a>, String)> {
        let i = self.entries.iter().position(|(k, _, _)| *k == key)?;
        self.used[i] = true;
        Some((self.entries[i].2, join(&self.path, key)))
    }

    /// Takes `key`, which must be present.
    fn req(&mut self, cx: &Cx<'_>, key: &str) -> Result<(&'n Node<'a>, String)> {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let mut message = format!("missing key `{key}`");
        // A key not taken yet and one or two edits away is most likely the same key, misspelt.
        if let Some((near, _, _)) = self
            .entries
            .iter()
            .zip(&self.used)
            .find(|((k, _, _), used)| !**used && edit_distance(k, key) <= 2)
            .map(|(e, _)| e)
        {
            message.push_str(&format!(" (is `{near}` a misspelling?)"));
        }
        Err(match self.node {
            Some(n) => cx.err(n, &join(&self.path, key), K::MissingKey, message),
            None => ConfigError {
                kind: K::MissingKey,
                file: cx.file.clone(),
                line: None,
                key_path: join(&self.path, key),
                message,
            },
        })
    }

    /// The node of `key` itself (not its value), when present.
    fn key_node(&self, key: &str) -> Option<&'n Node<'a>> {
        self.entries
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, k, _)| *k)
    }

    /// Rejects the first key not taken.
    fn finish(self, cx: &Cx<'_>) -> Result<()> {
        match self
            .entries
            .iter()
            .zip(&self.used)
            .find(|(_, used)| !**used)
        {
            None => Ok(()),
            Some(((key, key_node, _), _)) => {
                let why = if UPSTREAM_ONLY.contains(key) {
                    format!("upstream Nylon's `{key}` is not supported by this host")
                } else {
                    format!("unknown key `{key}`")
                };
                Err(cx.err(key_node, &join(&self.path, key), K::UnknownKey, why))
            }
        }
    }
}

/// The Levenshtein distance of two short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn describe(node: &Node<'_>) -> &'static str {
    match &node.data {
        YamlData::Value(Scalar::Null) => "null",
        YamlData::Value(Scalar::Boolean(_)) => "a boolean",
        YamlData::Value(Scalar::Integer(_)) => "an integer",
        YamlData::Value(Scalar::FloatingPoint(_)) => "a float",
        YamlData::Value(Scalar::String(_)) | YamlData::Representation(..) => "a string",
        YamlData::Sequence(_) => "a list",
        YamlData::Mapping(_) => "a map",
        YamlData::Tagged(..) => "a tagged value",
        YamlData::Alias(_) | YamlData::BadValue => "an invalid value",
    }
}

impl Cx<'_> {
    fn scan_error(&self, e: &saphyr::ScanError) -> ConfigError {
        ConfigError {
            kind: K::Syntax,
            file: self.file.clone(),
            line: Some((e.marker().line(), e.marker().col() + 1)),
            key_path: String::new(),
            message: format!("invalid YAML: {}", e.info()),
        }
    }

    fn loc(&self, node: &Node<'_>, path: &str) -> Location {
        Location {
            file: self.file.clone(),
            line: node.span.start.line(),
            column: node.span.start.col() + 1,
            key_path: path.to_owned(),
        }
    }

    fn err(
        &self,
        node: &Node<'_>,
        path: &str,
        kind: ConfigErrorKind,
        msg: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(&self.loc(node, path), kind, msg)
    }

    fn bad_type(&self, node: &Node<'_>, path: &str, want: &str) -> ConfigError {
        self.err(
            node,
            path,
            K::BadType,
            format!("expected {want}, found {}", describe(node)),
        )
    }

    fn map<'n, 'a>(&self, node: &'n Node<'a>, path: &str) -> Result<Map<'n, 'a>> {
        let YamlData::Mapping(m) = &node.data else {
            return Err(self.bad_type(node, path, "a map"));
        };
        let mut entries = Vec::with_capacity(m.len());
        for (k, v) in m.iter() {
            let key = match &k.data {
                YamlData::Value(Scalar::String(s)) => &**s,
                YamlData::Representation(s, ..) => &**s,
                _ => return Err(self.bad_type(k, path, "a string key")),
            };
            entries.push((key, k, v));
        }
        Ok(Map {
            path: path.to_owned(),
            used: vec![false; entries.len()],
            entries,
            node: Some(node),
        })
    }

    fn seq<'n, 'a>(&self, node: &'n Node<'a>, path: &str) -> Result<&'n [Node<'a>]> {
        match &node.data {
            YamlData::Sequence(s) => Ok(s),
            _ => Err(self.bad_type(node, path, "a list")),
        }
    }

    fn string<'n>(&self, node: &'n Node<'_>, path: &str) -> Result<&'n str> {
        match &node.data {
            YamlData::Value(Scalar::String(s)) => Ok(s),
            YamlData::Representation(s, ..) => Ok(s),
            _ => Err(self.bad_type(node, path, "a string")),
        }
    }

    /// A non-empty name.
    fn name<'n>(&self, node: &'n Node<'_>, path: &str) -> Result<&'n str> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            return Err(self.err(node, path, K::BadValue, "must not be empty"));
        }
        Ok(s)
    }

    fn uint(&self, node: &Node<'_>, path: &str) -> Result<u64> {
        match &node.data {
            YamlData::Value(Scalar::Integer(i)) if *i >= 0 => Ok(*i as u64),
            YamlData::Value(Scalar::Integer(_)) => {
                Err(self.err(node, path, K::BadValue, "must not be negative"))
            }
            _ => Err(self.bad_type(node, path, "an integer")),
        }
    }

    fn positive(&self, node: &Node<'_>, path: &str) -> Result<NonZeroUsize> {
        let n = self.uint(node, path)?;
        usize::try_from(n)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| self.err(node, path, K::BadValue, "must be at least 1"))
    }

    fn boolean(&self, node: &Node<'_>, path: &str) -> Result<bool> {
        match &node.data {
            YamlData::Value(Scalar::Boolean(b)) => Ok(*b),
            _ => Err(self.bad_type(node, path, "a boolean")),
        }
    }

    /// A string or a list of strings.
    fn strings<'n, 'a>(
        &self,
        node: &'n Node<'a>,
        path: &str,
    ) -> Result<Vec<(&'n str, &'n Node<'a>, String)>> {
        match &node.data {
            YamlData::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let p = index(path, i);
                    Ok((self.string(n, &p)?, n, p))
                })
                .collect(),
            _ => Ok(vec![(
                self.string(node, path)
                    .map_err(|_| self.bad_type(node, path, "a string or a list of strings"))?,
                node,
                path.to_owned(),
            )]),
        }
    }

    fn transport(&self, node: &Node<'_>, path: &str) -> Result<TransportChoice> {
        match self.string(node, path)? {
            "baseline" => Ok(TransportChoice::Baseline),
            "fast" => Ok(TransportChoice::Fast),
            other => Err(self.err(
                node,
                path,
                K::BadValue,
                format!("unknown transport `{other}`; expected baseline or fast (a v2 plugin always uses v2)"),
            )),
        }
    }

    fn isolation(&self, node: &Node<'_>, path: &str) -> Result<Isolation> {
        match self.string(node, path)? {
            "none" => Ok(Isolation::None),
            "process" => Ok(Isolation::Process),
            other => Err(self.err(
                node,
                path,
                K::BadValue,
                format!("unknown isolation `{other}`; expected none or process"),
            )),
        }
    }

    /// A plugin's worker keys, from map `m`; they are accepted only with `isolation: process`.
    fn isolation_config(
        &self,
        m: &mut Map<'_, '_>,
        isolation: Isolation,
    ) -> Result<IsolationConfig> {
        let mut c = IsolationConfig::default();
        let mut max_at = None;
        for key in [
            "workers",
            "worker_queue",
            "restart_backoff",
            "restart_backoff_max",
        ] {
            let Some((n, p)) = m.get(key) else {
                continue;
            };
            if isolation != Isolation::Process {
                return Err(self.err(
                    n,
                    &p,
                    K::BadValue,
                    format!(
                        "`{key}` applies only to a plugin with `isolation: process` (this one \
                         runs in the proxy's process)"
                    ),
                ));
            }
            match key {
                "workers" => c.workers = Some(self.positive(n, &p)?),
                "worker_queue" => c.worker_queue = Some(self.positive(n, &p)?),
                "restart_backoff" => c.restart_backoff = Some(self.duration(n, &p)?),
                _ => {
                    c.restart_backoff_max = Some(self.duration(n, &p)?);
                    max_at = Some((n, p));
                }
            }
        }
        if let (Some(first), Some(max), Some((n, p))) =
            (c.restart_backoff, c.restart_backoff_max, max_at)
        {
            if max < first {
                return Err(self.err(
                    n,
                    &p,
                    K::BadValue,
                    format!(
                        "must not be shorter than `restart_backoff` ({} ms)",
                        first.as_millis()
                    ),
                ));
            }
        }
        Ok(c)
    }

    fn duration(&self, node: &Node<'_>, path: &str) -> Result<Duration> {
        let s = self.string(node, path).map_err(|_| {
            self.bad_type(node, path, "a duration with a unit (`500ms`, `2s`, `1m`)")
        })?;
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let d = num.parse::<u64>().ok().and_then(|n| match unit.trim() {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            _ => None,
        });
        match d {
            Some(d) if !d.is_zero() => Ok(d),
            Some(_) => Err(self.err(node, path, K::BadValue, "must be longer than zero")),
            None => Err(self.err(
                node,
                path,
                K::BadValue,
                format!(
                    "`{s}` is not a duration; write a whole number and a unit: `500ms`, `2s`, `1m`"
                ),
            )),
        }
    }

    fn template_err(&self, node: &Node<'_>, path: &str, e: TemplateError) -> ConfigError {
        self.err(
            node,
            path,
            K::Template,
            format!(
                "bad template: {} (at byte {} of `{}`)",
                e.message, e.offset, e.text
            ),
        )
    }

    // -----------------------------------------------------------------------------------------
    // Sections

    fn server(&self, node: &Node<'_>, path: &str) -> Result<ServerConfig> {
        let mut m = self.map(node, path)?;
        let mut s = ServerConfig::default();
        if let Some((n, p)) = m.get("listen") {
            s.listen = self
                .strings(n, &p)?
                .into_iter()
                .map(|(text, n, p)| {
                    text.parse::<SocketAddr>().map_err(|_| {
                        self.err(
                            n,
                            &p,
                            K::BadValue,
                            format!("`{text}` is not an address (`127.0.0.1:8088`)"),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            if s.listen.is_empty() {
                return Err(self.err(n, &p, K::BadValue, "must name at least one address"));
            }
        }
        if let Some((n, p)) = m.get("threads") {
            s.threads = Some(self.positive(n, &p)?);
        }
        if let Some((n, p)) = m.get("grace_period_seconds") {
            s.grace_period_seconds = self.uint(n, &p)?;
        }
        if let Some((n, p)) = m.get("graceful_shutdown_timeout_seconds") {
            s.graceful_shutdown_timeout_seconds = self.uint(n, &p)?;
        }
        if let Some((n, p)) = m.get("transport") {
            s.transport = Some(self.transport(n, &p)?);
        }
        m.finish(self)?;
        Ok(s)
    }

    /// `websocket:`, upstream's runtime key: `adapter_type: memory | redis | cluster` and the
    /// `redis:` map.
    fn websocket(&self, node: &Node<'_>, path: &str) -> Result<WebSocketAdapter> {
        let mut m = self.map(node, path)?;
        if let Some(n) = m.key_node("cluster") {
            return Err(self.err(
                n,
                &join(path, "cluster"),
                K::UnknownKey,
                "upstream Nylon's `cluster` adapter is not supported by this host; use \
                 `adapter_type: redis` with `redis:`",
            ));
        }
        let (n, p) = m.req(self, "adapter_type")?;
        let out = match self.string(n, &p)? {
            "memory" => {
                // Upstream ignores `redis:` here; check it all the same.
                if let Some((rn, rp)) = m.get("redis") {
                    self.redis(rn, &rp)?;
                }
                WebSocketAdapter::Memory
            }
            "redis" => {
                let (rn, rp) = m.req(self, "redis")?;
                WebSocketAdapter::Redis(self.redis(rn, &rp)?)
            }
            "cluster" => {
                return Err(self.err(
                    n,
                    &p,
                    K::BadValue,
                    "`cluster` (upstream's Redis Cluster adapter) is not supported by this \
                     host; use `redis`",
                ))
            }
            other => {
                return Err(self.err(
                    n,
                    &p,
                    K::BadValue,
                    format!("unknown adapter_type `{other}`; expected memory or redis"),
                ))
            }
        };
        m.finish(self)?;
        Ok(out)
    }

    fn is_null(node: &Node<'_>) -> bool {
        matches!(node.data, YamlData::Value(Scalar::Null))
    }

    /// `websocket.redis:`.
    fn redis(&self, node: &Node<'_>, path: &str) -> Result<RedisConfig> {
        let mut m = self.map(node, path)?;
        let (n, p) = m.req(self, "host")?;
        let host = self.name(n, &p)?.to_owned();
        let (n, p) = m.req(self, "port")?;
        let port = self.uint(n, &p)?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| self.err(n, &p, K::BadValue, "must be between 1 and 65535"))?;
        let mut r = RedisConfig::new(host, port);
        if let Some((n, p)) = m.get("password") {
            if !Self::is_null(n) {
                r.password = Some(self.string(n, &p)?.to_owned());
            }
        }
        if let Some((n, p)) = m.get("db") {
            if !Self::is_null(n) {
                r.db = u8::try_from(self.uint(n, &p)?)
                    .map_err(|_| self.err(n, &p, K::BadValue, "must be between 0 and 255"))?;
            }
        }
        if let Some((n, p)) = m.get("key_prefix") {
            if !Self::is_null(n) {
                r.key_prefix = self.name(n, &p)?.to_owned();
            }
        }
        if let Some((n, p)) = m.get("heartbeat_interval") {
            r.heartbeat_interval = self.duration(n, &p)?;
        }
        let ttl = m.get("node_ttl");
        if let Some((n, p)) = &ttl {
            r.node_ttl = self.duration(n, p)?;
        }
        if let Some((n, p)) = m.get("janitor_interval") {
            r.janitor_interval = self.duration(n, &p)?;
        }
        if let Some((n, p)) = m.get("queue") {
            r.queue = self.positive(n, &p)?;
        }
        if r.node_ttl <= r.heartbeat_interval {
            let (n, p) = match &ttl {
                Some((n, p)) => (*n, p.clone()),
                None => (node, join(path, "node_ttl")),
            };
            return Err(self.err(
                n,
                &p,
                K::BadValue,
                format!(
                    "the heartbeat's time to live ({:?}) must be longer than heartbeat_interval \
                     ({:?}), or a live node is taken for dead",
                    r.node_ttl, r.heartbeat_interval
                ),
            ));
        }
        m.finish(self)?;
        Ok(r)
    }

    fn plugins(&self, node: &Node<'_>, path: &str) -> Result<Vec<PluginConfig>> {
        let mut out: Vec<PluginConfig> = Vec::new();
        for (i, item) in self.seq(node, path)?.iter().enumerate() {
            let ip = index(path, i);
            let mut m = self.map(item, &ip)?;
            let (n, p) = m.req(self, "name")?;
            let name = self.name(n, &p)?;
            if out.iter().any(|o| o.name == name) {
                return Err(self.err(
                    n,
                    &p,
                    K::Duplicate,
                    format!("a plugin named `{name}` is already declared"),
                ));
            }
            let (n, p) = m.req(self, "type")?;
            match self.string(n, &p)? {
                "ffi" => {}
                other => {
                    return Err(self.err(
                        n,
                        &p,
                        K::BadValue,
                        format!("plugin type `{other}` is not supported; expected ffi"),
                    ))
                }
            }
            let (file_node, file_path) = m.req(self, "file")?;
            let file = PathBuf::from(self.name(file_node, &file_path)?);
            let config = match m.get("config") {
                Some((n, p)) => {
                    let mut b = Builder::new();
                    self.json(n, &p, &mut b, false)?;
                    b.finish()
                        .as_static()
                        .map(<[u8]>::to_vec)
                        .unwrap_or_default()
                }
                None => Vec::new(),
            };
            let transport = match m.get("transport") {
                Some((n, p)) => Some(self.transport(n, &p)?),
                None => None,
            };
            let max_sessions = match m.get("max_sessions") {
                Some((n, p)) => Some(self.positive(n, &p)?),
                None => None,
            };
            let timeout = match m.get("timeout") {
                Some((n, p)) => Some(self.duration(n, &p)?),
                None => None,
            };
            let isolation = match m.get("isolation") {
                Some((n, p)) => self.isolation(n, &p)?,
                None => Isolation::None,
            };
            let isolation_config = self.isolation_config(&mut m, isolation)?;
            let entries = match m.get("entry") {
                Some((n, p)) => Some(
                    self.strings(n, &p)?
                        .into_iter()
                        .map(|(s, _, _)| s.to_owned())
                        .collect(),
                ),
                None => None,
            };
            m.finish(self)?;
            out.push(PluginConfig {
                name: name.to_owned(),
                file,
                config,
                transport,
                max_sessions,
                timeout,
                isolation,
                isolation_config,
                entries,
                location: self.loc(item, &ip),
                file_location: self.loc(file_node, &file_path),
            });
        }
        Ok(out)
    }

    /// Resolves a plugin name.
    fn plugin_id(&self, plugins: &[PluginConfig], node: &Node<'_>, path: &str) -> Result<PluginId> {
        let name = self.name(node, path)?;
        plugins
            .iter()
            .position(|p| p.name == name)
            .map(PluginId)
            .ok_or_else(|| {
                let known: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
                self.err(
                    node,
                    path,
                    K::UnknownPlugin,
                    format!(
                        "unknown plugin `{name}`; `plugins:` declares {}",
                        list(&known)
                    ),
                )
            })
    }

    /// A plugin call: `plugin`'s `entry` with an optional `payload`, from map `m`.
    fn call(
        &self,
        m: &mut Map<'_, '_>,
        plugins: &[PluginConfig],
        plugin: PluginId,
    ) -> Result<PluginCall> {
        let (n, p) = m.req(self, "entry")?;
        let entry = self.name(n, &p)?;
        let entry_location = self.loc(n, &p);
        if let Some(declared) = &plugins[plugin.0].entries {
            if !declared.iter().any(|e| e == entry) {
                return Err(self.err(
                    n,
                    &p,
                    K::UnknownEntry,
                    format!(
                        "plugin `{}` declares no entry `{entry}`; its `entry:` lists {}",
                        plugins[plugin.0].name,
                        list(&declared.iter().map(String::as_str).collect::<Vec<_>>())
                    ),
                ));
            }
        }
        let payload = match m.get("payload") {
            Some((n, p)) => Some(Arc::new(self.payload(n, &p)?)),
            None => None,
        };
        Ok(PluginCall {
            plugin,
            entry: entry.to_owned(),
            payload,
            entry_location,
        })
    }

    fn payload(&self, node: &Node<'_>, path: &str) -> Result<Template> {
        let mut b = Builder::new();
        self.json(node, path, &mut b, true)?;
        Ok(b.finish())
    }

    /// Walks a YAML value into JSON; strings are templates when `templates` is set.
    fn json(&self, node: &Node<'_>, path: &str, b: &mut Builder, templates: bool) -> Result<()> {
        match &node.data {
            YamlData::Value(Scalar::Null) => b.null(),
            YamlData::Value(Scalar::Boolean(v)) => b.bool(*v),
            YamlData::Value(Scalar::Integer(i)) => b.int(*i),
            YamlData::Value(Scalar::FloatingPoint(f)) => {
                if !b.float(f.into_inner()) {
                    return Err(self.err(
                        node,
                        path,
                        K::BadValue,
                        "NaN and infinities have no JSON form",
                    ));
                }
            }
            YamlData::Value(Scalar::String(s)) | YamlData::Representation(s, ..) => {
                if templates {
                    b.template_string(s, self.env)
                        .map_err(|e| self.template_err(node, path, e))?;
                } else {
                    b.raw_string(s);
                }
            }
            YamlData::Sequence(items) => {
                b.begin_seq();
                for (i, item) in items.iter().enumerate() {
                    self.json(item, &index(path, i), b, templates)?;
                }
                b.end_seq();
            }
            YamlData::Mapping(map) => {
                b.begin_map();
                for (k, v) in map.iter() {
                    let key = match &k.data {
                        YamlData::Value(Scalar::String(s)) | YamlData::Representation(s, ..) => {
                            s.to_string()
                        }
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(v)) => v.to_string(),
                        _ => return Err(self.bad_type(k, path, "a string key")),
                    };
                    b.key(&key);
                    self.json(v, &join(path, &key), b, templates)?;
                }
                b.end_map();
            }
            YamlData::Tagged(..) | YamlData::Alias(_) | YamlData::BadValue => {
                return Err(self.err(
                    node,
                    path,
                    K::BadValue,
                    format!("{} has no JSON form", describe(node)),
                ))
            }
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 8088))],
            threads: None,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 5,
            transport: None,
        }
    }
}

/// `` `a`, `b` `` or "none".
fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
