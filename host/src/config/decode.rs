//! The YAML decoder: saphyr's marked tree (a source position on every node) to the typed config,
//! checking every key, type and reference on the way and naming each problem's file, line,
//! column and key path.
//!
//! Hand-written rather than `serde`-derived: a serde deserializer reports where a *syntax or type*
//! error is, but a *reference* (a route naming a service that does not exist, an entry the plugin
//! turns out not to export) is found after deserialization, when serde's positions are gone. The
//! marked tree keeps them for every node.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

use super::{
    Algorithm, Config, ConfigError, ConfigErrorKind, Endpoint, HeaderModifier, Location,
    Middleware, MiddlewareKind, PathConfig, PluginCall, PluginConfig, PluginId, RouteConfig,
    RouteMatcher, ServerConfig, ServiceConfig, ServiceId, ServiceKind, TransportChoice,
};
use crate::route::{PatternError, Router};

/// The router of a config: to (route index, path index).
type RouteTable = Router<(usize, usize)>;
use crate::template::{Builder, StrTemplate, Template, TemplateError};

use ConfigErrorKind as K;

type Env<'e> = &'e dyn Fn(&str) -> Option<String>;
type Node<'a> = MarkedYaml<'a>;
type Result<T> = std::result::Result<T, ConfigError>;

/// HTTP methods a path may name (upstream Nylon's list).
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "CONNECT", "TRACE", "PATCH",
];

/// Keys upstream Nylon accepts that this host does not implement: named in the error so the
/// user knows the key is not a typo.
const UPSTREAM_ONLY: [&str; 6] = [
    "health_check",
    "tls",
    "websocket",
    "acme",
    "https",
    "metrics",
];

struct Cx<'e> {
    file: Arc<Path>,
    env: Env<'e>,
}

/// Decodes the config text.
pub(super) fn decode(text: &str, file: Arc<Path>, env: Env<'_>) -> Result<Config> {
    let cx = Cx { file, env };
    let docs = MarkedYaml::load_from_str(text).map_err(|e| ConfigError {
        kind: K::Syntax,
        file: cx.file.clone(),
        line: Some((e.marker().line(), e.marker().col() + 1)),
        key_path: String::new(),
        message: format!("invalid YAML: {}", e.info()),
    })?;
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

    let server = match top.get("server") {
        Some((n, p)) => cx.server(n, &p)?,
        None => ServerConfig::default(),
    };
    let header_selector = match top.get("header_selector") {
        Some((n, p)) => Some(cx.string(n, &p)?.to_ascii_lowercase()),
        None => None,
    };
    let plugins = match top.get("plugins") {
        Some((n, p)) => cx.plugins(n, &p)?,
        None => Vec::new(),
    };
    let services = match top.get("services") {
        Some((n, p)) => cx.services(n, &p, &plugins)?,
        None => Vec::new(),
    };
    let groups = match top.get("middleware_groups") {
        Some((n, p)) => cx.groups(n, &p, &plugins)?,
        None => HashMap::new(),
    };
    let (routes, router) = match top.get("routes") {
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
    top.finish(&cx)?;
    Ok(Config {
        file: cx.file,
        server,
        plugins,
        services,
        routes,
        header_selector,
        router,
    })
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
        match self.get(key) {
            Some(v) => Ok(v),
            None => Err(match self.node {
                Some(n) => cx.err(
                    n,
                    &join(&self.path, key),
                    K::MissingKey,
                    format!("missing key `{key}`"),
                ),
                None => ConfigError {
                    kind: K::MissingKey,
                    file: cx.file.clone(),
                    line: None,
                    key_path: join(&self.path, key),
                    message: format!("missing key `{key}`"),
                },
            }),
        }
    }

    fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| *k == key)
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

    fn services(
        &self,
        node: &Node<'_>,
        path: &str,
        plugins: &[PluginConfig],
    ) -> Result<Vec<ServiceConfig>> {
        let mut out: Vec<ServiceConfig> = Vec::new();
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
                    format!("a service named `{name}` is already declared"),
                ));
            }
            let (tn, tp) = m.req(self, "service_type")?;
            let ty = self.string(tn, &tp)?;
            // Keys that belong to another type are errors, not silently ignored.
            let own: &[&str] = match ty {
                "http" => &["endpoints", "algorithm"],
                "plugin" => &["plugin"],
                "static" => &["static"],
                other => {
                    return Err(self.err(
                        tn,
                        &tp,
                        K::BadValue,
                        format!("unknown service_type `{other}`; expected http, plugin or static"),
                    ))
                }
            };
            for key in ["endpoints", "algorithm", "plugin", "static"] {
                if m.has(key) && !own.contains(&key) {
                    let (n, p) = m.get(key).expect("checked by has");
                    return Err(self.err(
                        n,
                        &p,
                        K::UnknownKey,
                        format!("`{key}` does not apply to service_type `{ty}`"),
                    ));
                }
            }
            let kind = match ty {
                "http" => {
                    let (n, p) = m.req(self, "endpoints")?;
                    let endpoints = self.endpoints(n, &p)?;
                    let algorithm = match m.get("algorithm") {
                        Some((n, p)) => match self.string(n, &p)? {
                            "round_robin" => Algorithm::RoundRobin,
                            "random" => Algorithm::Random,
                            "consistent" => Algorithm::Consistent,
                            "weighted" => Algorithm::Weighted,
                            other => {
                                return Err(self.err(
                                    n,
                                    &p,
                                    K::BadValue,
                                    format!("unknown algorithm `{other}`; expected round_robin, random, consistent or weighted"),
                                ))
                            }
                        },
                        None => Algorithm::RoundRobin,
                    };
                    ServiceKind::Http {
                        endpoints,
                        algorithm,
                    }
                }
                "plugin" => {
                    let (n, p) = m.req(self, "plugin")?;
                    let mut pm = self.map(n, &p)?;
                    let (pn, pp) = pm.req(self, "name")?;
                    let plugin = self.plugin_id(plugins, pn, &pp)?;
                    let call = self.call(&mut pm, plugins, plugin)?;
                    pm.finish(self)?;
                    ServiceKind::Plugin(call)
                }
                _ => {
                    let (n, p) = m.req(self, "static")?;
                    let mut sm = self.map(n, &p)?;
                    let (rn, rp) = sm.req(self, "root")?;
                    let root = PathBuf::from(self.name(rn, &rp)?);
                    let index = match sm.get("index") {
                        Some((n, p)) => self.name(n, &p)?.to_owned(),
                        None => "index.html".to_owned(),
                    };
                    let spa = match sm.get("spa") {
                        Some((n, p)) => self.boolean(n, &p)?,
                        None => false,
                    };
                    sm.finish(self)?;
                    ServiceKind::Static { root, index, spa }
                }
            };
            m.finish(self)?;
            out.push(ServiceConfig {
                name: name.to_owned(),
                kind,
                location: self.loc(item, &ip),
            });
        }
        Ok(out)
    }

    fn endpoints(&self, node: &Node<'_>, path: &str) -> Result<Vec<Endpoint>> {
        let items = self.seq(node, path)?;
        if items.is_empty() {
            return Err(self.err(
                node,
                path,
                K::BadValue,
                "an http service needs at least one endpoint",
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let ip_path = index(path, i);
                let mut m = self.map(item, &ip_path)?;
                let (n, p) = m.req(self, "ip")?;
                let text = self.string(n, &p)?;
                let ip: IpAddr = text.parse().map_err(|_| {
                    self.err(n, &p, K::BadValue, format!("`{text}` is not an IP address"))
                })?;
                let (n, p) = m.req(self, "port")?;
                let port = self.uint(n, &p)?;
                let port = u16::try_from(port)
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| {
                        self.err(
                            n,
                            &p,
                            K::BadValue,
                            format!("port {port} is not in 1..=65535"),
                        )
                    })?;
                let weight = match m.get("weight") {
                    Some((n, p)) => u32::try_from(self.positive(n, &p)?.get())
                        .map_err(|_| self.err(n, &p, K::BadValue, "weight is too large"))?,
                    None => 1,
                };
                m.finish(self)?;
                Ok(Endpoint {
                    addr: SocketAddr::new(ip, port),
                    weight,
                })
            })
            .collect()
    }

    fn groups(
        &self,
        node: &Node<'_>,
        path: &str,
        plugins: &[PluginConfig],
    ) -> Result<HashMap<String, Vec<Middleware>>> {
        let mut m = self.map(node, path)?;
        let names: Vec<&str> = m.entries.iter().map(|(k, _, _)| *k).collect();
        let mut out = HashMap::new();
        for name in names {
            let (n, p) = m.get(name).expect("a key of this map");
            let mut items = Vec::new();
            for (i, item) in self.seq(n, &p)?.iter().enumerate() {
                let ip = index(&p, i);
                let mut im = self.map(item, &ip)?;
                if let Some((gn, gp)) = im.get("group") {
                    return Err(self.err(
                        gn,
                        &gp,
                        K::BadValue,
                        "a middleware group cannot include another group",
                    ));
                }
                items.push(self.middleware_item(item, &ip, im, plugins)?);
            }
            out.insert(name.to_owned(), items);
        }
        m.finish(self)?;
        Ok(out)
    }

    /// One middleware item with a `plugin:` key (a plugin entry or a built-in).
    fn middleware_item(
        &self,
        node: &Node<'_>,
        path: &str,
        mut m: Map<'_, '_>,
        plugins: &[PluginConfig],
    ) -> Result<Middleware> {
        let (pn, pp) = m.req(self, "plugin")?;
        let name = self.name(pn, &pp)?;
        let kind = match name {
            "RequestHeaderModifier" | "ResponseHeaderModifier"
                if !plugins.iter().any(|p| p.name == name) =>
            {
                if let Some((n, p)) = m.get("entry") {
                    return Err(self.err(
                        n,
                        &p,
                        K::UnknownKey,
                        format!("the built-in `{name}` takes no entry"),
                    ));
                }
                let modifier = match m.get("payload") {
                    Some((n, p)) => self.header_modifier(n, &p)?,
                    None => HeaderModifier::default(),
                };
                let modifier = Arc::new(modifier);
                if name == "RequestHeaderModifier" {
                    MiddlewareKind::RequestHeaderModifier(modifier)
                } else {
                    MiddlewareKind::ResponseHeaderModifier(modifier)
                }
            }
            _ => {
                let plugin = self.plugin_id(plugins, pn, &pp)?;
                MiddlewareKind::Plugin(self.call(&mut m, plugins, plugin)?)
            }
        };
        m.finish(self)?;
        Ok(Middleware {
            kind,
            location: self.loc(node, path),
        })
    }

    fn header_modifier(&self, node: &Node<'_>, path: &str) -> Result<HeaderModifier> {
        let mut m = self.map(node, path)?;
        let mut out = HeaderModifier::default();
        if let Some((n, p)) = m.get("set") {
            for (i, item) in self.seq(n, &p)?.iter().enumerate() {
                let ip = index(&p, i);
                let mut im = self.map(item, &ip)?;
                let (hn, hp) = im.req(self, "name")?;
                let name = self.header_name(hn, &hp)?;
                let (vn, vp) = im.req(self, "value")?;
                let text = match &vn.data {
                    YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                    YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                    _ => self.string(vn, &vp)?.to_owned(),
                };
                let value = StrTemplate::parse(&text, self.env)
                    .map_err(|e| self.template_err(vn, &vp, e))?;
                im.finish(self)?;
                out.set.push((name, value));
            }
        }
        if let Some((n, p)) = m.get("remove") {
            for (_, hn, hp) in self.strings(n, &p)? {
                out.remove.push(self.header_name(hn, &hp)?);
            }
        }
        m.finish(self)?;
        Ok(out)
    }

    fn header_name(&self, node: &Node<'_>, path: &str) -> Result<String> {
        let name = self.name(node, path)?;
        // RFC 9110 token characters.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if !name.bytes().all(token) {
            return Err(self.err(
                node,
                path,
                K::BadValue,
                format!("`{name}` is not a header name"),
            ));
        }
        Ok(name.to_ascii_lowercase())
    }

    /// A `middleware:` list of a route or path, groups expanded.
    fn middleware_list(
        &self,
        node: &Node<'_>,
        path: &str,
        plugins: &[PluginConfig],
        groups: &HashMap<String, Vec<Middleware>>,
        out: &mut Vec<Middleware>,
    ) -> Result<()> {
        for (i, item) in self.seq(node, path)?.iter().enumerate() {
            let ip = index(path, i);
            let mut m = self.map(item, &ip)?;
            if let Some((gn, gp)) = m.get("group") {
                let name = self.name(gn, &gp)?;
                let Some(group) = groups.get(name) else {
                    let mut known: Vec<&str> = groups.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(self.err(
                        gn,
                        &gp,
                        K::UnknownGroup,
                        format!(
                            "unknown middleware group `{name}`; `middleware_groups:` declares {}",
                            list(&known)
                        ),
                    ));
                };
                m.finish(self)?;
                out.extend(group.iter().cloned());
            } else {
                out.push(self.middleware_item(item, &ip, m, plugins)?);
            }
        }
        Ok(())
    }

    fn routes(
        &self,
        node: &Node<'_>,
        path: &str,
        plugins: &[PluginConfig],
        services: &[ServiceConfig],
        groups: &HashMap<String, Vec<Middleware>>,
        has_selector: bool,
    ) -> Result<(Vec<RouteConfig>, RouteTable)> {
        let mut routes: Vec<RouteConfig> = Vec::new();
        let mut router = Router::new();
        for (ri, item) in self.seq(node, path)?.iter().enumerate() {
            let rp = index(path, ri);
            let mut m = self.map(item, &rp)?;
            let (n, p) = m.req(self, "name")?;
            let name = self.name(n, &p)?;
            if routes.iter().any(|r| r.name == name) {
                return Err(self.err(
                    n,
                    &p,
                    K::Duplicate,
                    format!("a route named `{name}` is already declared"),
                ));
            }
            let (mn, mp) = m.req(self, "route")?;
            let mut mm = self.map(mn, &mp)?;
            let (tn, tp) = mm.req(self, "type")?;
            let (vn, vp) = mm.req(self, "value")?;
            let value = self.name(vn, &vp)?;
            let matcher = match self.string(tn, &tp)? {
                "host" => RouteMatcher::Host(
                    value
                        .split('|')
                        .map(|h| h.trim().to_ascii_lowercase())
                        .collect(),
                ),
                "header" => {
                    if !has_selector {
                        return Err(self.err(
                            tn,
                            &tp,
                            K::MissingKey,
                            "a `type: header` route needs the top-level `header_selector:` (the header to read)",
                        ));
                    }
                    RouteMatcher::Header(value.to_owned())
                }
                other => {
                    return Err(self.err(
                        tn,
                        &tp,
                        K::BadValue,
                        format!("unknown route type `{other}`; expected host or header"),
                    ))
                }
            };
            if let RouteMatcher::Host(hosts) = &matcher {
                if hosts.iter().any(String::is_empty) {
                    return Err(self.err(vn, &vp, K::BadValue, "empty host name"));
                }
            }
            mm.finish(self)?;
            let mut route_mw = Vec::new();
            if let Some((n, p)) = m.get("middleware") {
                self.middleware_list(n, &p, plugins, groups, &mut route_mw)?;
            }
            let (pn, pp) = m.req(self, "paths")?;
            let mut paths = Vec::new();
            for (pi, pitem) in self.seq(pn, &pp)?.iter().enumerate() {
                let ppath = index(&pp, pi);
                let (pc, pattern_locations) =
                    self.path_entry(pitem, &ppath, plugins, services, groups, &route_mw)?;
                // Register every pattern under every host of the route.
                for (pattern, at) in pc.patterns.iter().zip(&pattern_locations) {
                    let methods = pc.methods.as_deref();
                    let added = match &matcher {
                        RouteMatcher::Host(hosts) => hosts
                            .iter()
                            .try_for_each(|h| router.insert_host(h, pattern, methods, (ri, pi))),
                        RouteMatcher::Header(v) => {
                            router.insert_header(v, pattern, methods, (ri, pi))
                        }
                    };
                    added.map_err(|e| {
                        let why = match e {
                            PatternError::Syntax(m) => format!("bad path pattern: {m}"),
                            PatternError::Conflict(m) => {
                                format!("{m} (in this route or another route for the same host)")
                            }
                        };
                        ConfigError::at(at, K::Route, why)
                    })?;
                }
                paths.push(pc);
            }
            m.finish(self)?;
            routes.push(RouteConfig {
                name: name.to_owned(),
                matcher,
                paths,
                location: self.loc(item, &rp),
            });
        }
        Ok((routes, router))
    }

    fn path_entry(
        &self,
        node: &Node<'_>,
        path: &str,
        plugins: &[PluginConfig],
        services: &[ServiceConfig],
        groups: &HashMap<String, Vec<Middleware>>,
        route_mw: &[Middleware],
    ) -> Result<(PathConfig, Vec<Location>)> {
        let mut m = self.map(node, path)?;
        let (n, p) = m.req(self, "path")?;
        let written = self.strings(n, &p)?;
        if written.is_empty() {
            return Err(self.err(n, &p, K::BadValue, "must name at least one path"));
        }
        let mut patterns: Vec<String> = written.iter().map(|(s, _, _)| (*s).to_owned()).collect();
        let mut locations: Vec<Location> = written.iter().map(|(_, n, p)| self.loc(n, p)).collect();
        if let Some((tn, tp)) = m.get("pathType") {
            match self.string(tn, &tp)? {
                "Exact" => {}
                "Prefix" => {
                    // Upstream's older spelling: the path itself and everything below it.
                    let extra: Vec<String> = patterns
                        .iter()
                        .map(|p| format!("{}/{{*p}}", p.trim_end_matches('/')))
                        .collect();
                    patterns.extend(extra);
                    locations.extend_from_within(..);
                }
                other => {
                    return Err(self.err(
                        tn,
                        &tp,
                        K::BadValue,
                        format!("unknown pathType `{other}`; expected Exact or Prefix"),
                    ))
                }
            }
        }
        let methods = match m.get("methods") {
            Some((n, p)) => {
                let mut out = Vec::new();
                for (s, mn, mp) in self.strings(n, &p)? {
                    let up = s.to_ascii_uppercase();
                    if !METHODS.contains(&up.as_str()) {
                        return Err(self.err(
                            mn,
                            &mp,
                            K::BadValue,
                            format!(
                                "unknown method `{s}`; expected one of {}",
                                METHODS.join(", ")
                            ),
                        ));
                    }
                    out.push(up);
                }
                Some(out)
            }
            None => None,
        };
        let (sn, sp) = m.req(self, "service")?;
        let mut sm = self.map(sn, &sp)?;
        let (nn, np) = sm.req(self, "name")?;
        let service_name = self.name(nn, &np)?;
        let service = services
            .iter()
            .position(|s| s.name == service_name)
            .map(ServiceId)
            .ok_or_else(|| {
                let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
                self.err(
                    nn,
                    &np,
                    K::UnknownService,
                    format!(
                        "unknown service `{service_name}`; `services:` declares {}",
                        list(&known)
                    ),
                )
            })?;
        let rewrite = match sm.get("rewrite") {
            Some((n, p)) => Some(self.string(n, &p)?.to_owned()),
            None => None,
        };
        sm.finish(self)?;
        let mut middleware = route_mw.to_vec();
        if let Some((n, p)) = m.get("middleware") {
            self.middleware_list(n, &p, plugins, groups, &mut middleware)?;
        }
        m.finish(self)?;
        let pc = PathConfig {
            patterns,
            methods,
            service,
            rewrite,
            middleware: middleware.into(),
            location: self.loc(node, path),
        };
        Ok((pc, locations))
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
