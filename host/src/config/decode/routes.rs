//! The decoder's second half: services, middleware (groups expanded) and routes, whose
//! references to plugins, services and groups are resolved here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use saphyr::{Scalar, YamlData};

use super::{index, join, list, Cx, Map, Node, Result, RouteTable, K, METHODS};
use crate::config::{
    Algorithm, ConfigError, Endpoint, HeaderModifier, Location, Middleware, MiddlewareKind,
    PathConfig, PluginConfig, RouteConfig, RouteMatcher, ServiceConfig, ServiceId, ServiceKind,
};
use crate::route::{PatternError, Router};
use crate::template::StrTemplate;

impl Cx<'_> {
    pub(super) fn services(
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
                if let (Some(n), false) = (m.key_node(key), own.contains(&key)) {
                    return Err(self.err(
                        n,
                        &join(&ip, key),
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

    pub(super) fn groups(
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

    pub(super) fn routes(
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
