//! The example config (upstream Nylon's shape) decodes into the expected typed config.

mod config_support;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use config_support::{render, Req};
use nylon_host::config::{
    Algorithm, MiddlewareKind, PluginId, RouteMatcher, ServiceId, ServiceKind, TransportChoice,
};
use nylon_host::{Config, ConfigErrorKind, Isolation, IsolationConfig, RouteError};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nylon.yaml");

fn example() -> Config {
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    let env = |name: &str| match name {
        "MY_APP_NAME" => Some("shop".to_owned()),
        _ => None,
    };
    Config::parse_with_env(&text, "nylon.yaml", &env).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn server_section() {
    let c = example();
    assert_eq!(
        c.server.listen,
        ["127.0.0.1:8088".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.server.threads.map(|t| t.get()), Some(2));
    assert_eq!(c.server.grace_period_seconds, 1);
    assert_eq!(c.server.graceful_shutdown_timeout_seconds, 1);
    assert_eq!(c.server.transport, Some(TransportChoice::Fast));
    assert_eq!(c.header_selector.as_deref(), Some("x-nylon-proxy"));
}

#[test]
fn plugins_with_transport_bounds_and_json_config() {
    let c = example();
    let names: Vec<&str> = c.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["plugin_sdk", "legacy_baseline", "v2"]);
    let sdk = &c.plugins[0];
    assert_eq!(
        sdk.file,
        Path::new("./target/release/examples/librust_plugin.so")
    );
    assert_eq!(sdk.config, br#"{"debug":true,"realm":"nylon"}"#);
    assert_eq!(sdk.max_sessions.map(|n| n.get()), Some(1024));
    assert_eq!(sdk.timeout, Some(Duration::from_secs(2)));
    assert_eq!(sdk.transport, None);
    assert_eq!((sdk.location.line, sdk.location.column), (14, 5));
    assert_eq!(sdk.location.key_path, "plugins[0]");
    assert_eq!(
        (sdk.file_location.line, sdk.file_location.key_path.as_str()),
        (16, "plugins[0].file")
    );
    assert_eq!(c.plugins[1].transport, Some(TransportChoice::Baseline));
    assert!(c.plugins[1].config.is_empty());
    assert_eq!(c.plugin("v2").map(|(id, _)| id), Some(PluginId(2)));
    assert!(c.plugin("nope").is_none());
}

#[test]
fn services_of_each_type() {
    let c = example();
    let ServiceKind::Http {
        endpoints,
        algorithm,
    } = &c.services[0].kind
    else {
        panic!("{:?}", c.services[0].kind)
    };
    assert_eq!(*algorithm, Algorithm::RoundRobin);
    let eps: Vec<(SocketAddr, u32)> = endpoints.iter().map(|e| (e.addr, e.weight)).collect();
    assert_eq!(
        eps,
        [
            ("127.0.0.1:3000".parse().unwrap(), 1),
            ("127.0.0.1:3001".parse().unwrap(), 2)
        ]
    );
    let ServiceKind::Plugin(call) = &c.services[1].kind else {
        panic!()
    };
    assert_eq!((call.plugin, call.entry.as_str()), (PluginId(0), "stream"));
    assert!(call.payload.is_none());
    let ServiceKind::Plugin(call) = &c.services[2].kind else {
        panic!()
    };
    assert_eq!((call.plugin, call.entry.as_str()), (PluginId(2), "echo"));
    let payload = call.payload.as_ref().unwrap();
    assert_eq!(
        render(payload, &Req::new().param("id", "7")),
        r#"{"id":"7"}"#
    );
    let ServiceKind::Static { root, index, spa } = &c.services[3].kind else {
        panic!()
    };
    assert_eq!(
        (root.as_path(), index.as_str(), *spa),
        (Path::new("./examples/static"), "index.html", true)
    );
}

#[test]
fn routes_expand_groups_into_each_path() {
    let c = example();
    let r = &c.routes[0];
    assert_eq!(r.name, "app-route");
    assert_eq!(
        r.matcher,
        RouteMatcher::Host(vec!["localhost".into(), "127.0.0.1".into()])
    );
    assert_eq!(r.paths.len(), 4);
    // The group's three middleware, then the path's own.
    let echo = &r.paths[2];
    assert_eq!(echo.patterns, ["/echo/{id}"]);
    assert_eq!(echo.service, ServiceId(2));
    let kinds: Vec<String> = echo
        .middleware
        .iter()
        .map(|m| match &m.kind {
            MiddlewareKind::Plugin(call) => {
                format!("{}:{}", c.plugins[call.plugin.0].name, call.entry)
            }
            MiddlewareKind::RequestHeaderModifier(_) => "req-headers".into(),
            MiddlewareKind::ResponseHeaderModifier(_) => "resp-headers".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        ["plugin_sdk:authz", "req-headers", "resp-headers", "v2:tag"]
    );
    // A group's middleware keeps the location where the group declares it.
    assert_eq!(
        echo.middleware[0].location.key_path,
        "middleware_groups.example[0]"
    );
    assert_eq!(
        echo.middleware[3].location.key_path,
        "routes[0].paths[2].middleware[0]"
    );
    let MiddlewareKind::Plugin(tag) = &echo.middleware[3].kind else {
        panic!()
    };
    let req = Req::new().query("q=a%20b");
    assert_eq!(
        render(tag.payload.as_ref().unwrap(), &req),
        r#"{"query":"a b","method":"GET"}"#
    );
    let stream = &r.paths[1];
    assert_eq!(
        stream.methods.as_deref(),
        Some(&["GET".to_owned(), "POST".to_owned()][..])
    );
    assert_eq!(r.paths[0].rewrite.as_deref(), Some("/static"));
    assert_eq!(c.routes[1].matcher, RouteMatcher::Header("my-svc".into()));
    // pathType: Prefix adds the catch-all below the path.
    assert_eq!(c.routes[1].paths[0].patterns, ["/", "/{*p}"]);
}

#[test]
fn header_modifiers_render_their_values() {
    let c = example();
    let MiddlewareKind::RequestHeaderModifier(m) = &c.routes[0].paths[0].middleware[1].kind else {
        panic!()
    };
    assert_eq!(m.remove, ["x-version"]);
    let names: Vec<&str> = m.set.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "x-hb-conf",
            "x-request-id",
            "x-timestamp",
            "x-forwarded-for",
            "x-host"
        ]
    );
    // env read at load.
    assert_eq!(m.set[0].1.as_static(), Some("env-shop"));
    let req = Req {
        ip: "127.0.0.1",
        ..Req::new()
    }
    .header("host", b"localhost:8088");
    let mut out = Vec::new();
    m.set[3].1.render(&req, &mut out);
    assert_eq!(out, b"127.0.0.1-local");
    out.clear();
    m.set[4].1.render(&req, &mut out);
    assert_eq!(out, b"localhost:8088");
    let MiddlewareKind::ResponseHeaderModifier(m) = &c.routes[0].paths[0].middleware[2].kind else {
        panic!()
    };
    assert_eq!(m.set[1].1.as_static(), Some("my-server"));
}

#[test]
fn requests_route_to_paths_with_params() {
    let c = example();
    let at = |host: &str, sel: Option<&str>, method: &str, path: &'static str| {
        c.route(host.as_bytes(), sel.map(str::as_bytes), method, path)
            .map(|m| {
                let params: Vec<String> =
                    m.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                (
                    m.route.name.clone(),
                    m.path.patterns[0].clone(),
                    params.join(","),
                )
            })
    };
    let ok = |r: &str, p: &str, params: &str| Ok((r.to_owned(), p.to_owned(), params.to_owned()));
    assert_eq!(
        at("localhost", None, "GET", "/echo/9"),
        ok("app-route", "/echo/{id}", "id=9")
    );
    assert_eq!(
        at("LOCALHOST:8088", None, "GET", "/static/css/a.css"),
        ok("app-route", "/static", "path=css/a.css")
    );
    assert_eq!(
        at("127.0.0.1:8088", None, "GET", "/static"),
        ok("app-route", "/static", "")
    );
    assert_eq!(
        at("localhost", None, "POST", "/stream"),
        ok("app-route", "/stream", "")
    );
    // /stream is GET and POST only; no other pattern matches it for PUT... but `/{*path}` does.
    assert_eq!(
        at("localhost", None, "PUT", "/stream"),
        ok("app-route", "/", "path=stream")
    );
    assert_eq!(at("localhost", None, "GET", "/"), ok("app-route", "/", ""));
    assert_eq!(
        at("other.example", None, "GET", "/"),
        Err(RouteError::NotFound)
    );
    // The selector header wins over the host.
    assert_eq!(
        at("localhost", Some("my-svc"), "GET", "/x/y"),
        ok("by-header", "/", "p=x/y")
    );
    // An unknown selector value falls back to the host.
    assert_eq!(
        at("localhost", Some("nope"), "GET", "/echo/1"),
        ok("app-route", "/echo/{id}", "id=1")
    );
}

#[test]
fn entry_refs_name_each_reference_once() {
    let c = example();
    let refs: Vec<String> = c
        .entry_refs()
        .map(|r| {
            format!(
                "{}:{} at {}:{} {}",
                c.plugins[r.plugin.0].name,
                r.entry,
                r.location.line,
                r.location.column,
                r.location.key_path
            )
        })
        .collect();
    assert_eq!(
        refs,
        [
            "plugin_sdk:stream at 45:14 services[1].plugin.entry",
            "v2:echo at 51:14 services[2].plugin.entry",
            "plugin_sdk:authz at 65:14 middleware_groups.example[0].entry",
            "v2:tag at 116:20 routes[0].paths[2].middleware[0].entry",
        ]
    );
}

#[test]
fn check_entries_reports_the_refused_reference() {
    let c = example();
    let err = c
        .check_entries(|plugin, entry| {
            if plugin.name == "v2" && entry == "tag" {
                Err(format!(
                    "plugin `{}` exports no entry `{entry}` (it exports: echo)",
                    plugin.name
                ))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::UnknownEntry);
    assert_eq!(
        err.to_string(),
        "nylon.yaml:116:20: routes[0].paths[2].middleware[0].entry: plugin `v2` exports no entry `tag` (it exports: echo)"
    );
    assert!(c.check_entries(|_, _| Ok(())).is_ok());
}

#[test]
fn a_plugin_that_fails_to_load_is_reported_at_its_file_key() {
    let c = example();
    let p = &c.plugins[2];
    let err = nylon_host::ConfigError::at(
        &p.file_location,
        ConfigErrorKind::PluginLoad,
        "cannot load: no such file",
    );
    assert_eq!(
        err.to_string(),
        "nylon.yaml:28:11: plugins[2].file: cannot load: no such file"
    );
    assert_eq!(
        (err.line(), err.column(), err.key_path()),
        (Some(28), Some(11), "plugins[2].file")
    );
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let c = Config::load(EXAMPLE).unwrap();
    assert_eq!(&*c.file, Path::new(EXAMPLE));
    let err = Config::load("/nonexistent/nylon.yaml").unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Io);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/nylon.yaml: cannot read the config file: "),
        "{err}"
    );
}

#[test]
fn an_empty_file_is_an_empty_config() {
    let c = Config::parse("# nothing\n", "empty.yaml").unwrap();
    assert!(c.plugins.is_empty() && c.routes.is_empty());
    assert_eq!(
        c.server.listen,
        ["0.0.0.0:8088".parse::<SocketAddr>().unwrap()]
    );
    assert!(matches!(
        c.route(b"localhost", None, "GET", "/"),
        Err(RouteError::NotFound)
    ));
}

#[test]
fn the_config_is_shared_across_worker_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Config>();
    send_sync::<nylon_host::Template>();
    send_sync::<nylon_host::StrTemplate>();
}

#[test]
fn plugin_keys_in_every_form() {
    let text = r#"
plugins:
  - name: a
    type: ffi
    file: a.so
    timeout: 500ms
    config: {tpl: "${uuid(v4)}", n: [1, 2.5, null], s: 'q"uote'}
  - name: b
    type: ffi
    file: b.so
    timeout: 1m
    transport: fast
    config: just text
"#;
    let c = Config::parse_with_env(text, "p.yaml", &|_| None).unwrap();
    assert_eq!(c.plugins[0].timeout, Some(Duration::from_millis(500)));
    assert_eq!(c.plugins[1].timeout, Some(Duration::from_secs(60)));
    assert_eq!(c.plugins[1].transport, Some(TransportChoice::Fast));
    // A plugin's config is data, not a template: `${...}` stays as written.
    assert_eq!(
        c.plugins[0].config,
        br#"{"tpl":"${uuid(v4)}","n":[1,2.5,null],"s":"q\"uote"}"#
    );
    assert_eq!(c.plugins[1].config, br#""just text""#);
}

#[test]
fn header_modifier_names_are_lowercased() {
    let text = r#"
services:
  - {name: s, service_type: http, endpoints: [{ip: "::1", port: 80}]}
routes:
  - route: {type: host, value: h}
    name: r
    middleware:
      - plugin: ResponseHeaderModifier
        payload:
          set: [{name: X-Served-By, value: 7}]
          remove: [X-Powered-By, Server]
    paths: [{path: /, service: {name: s}}]
"#;
    let c = Config::parse_with_env(text, "h.yaml", &|_| None).unwrap();
    let MiddlewareKind::ResponseHeaderModifier(m) = &c.routes[0].paths[0].middleware[0].kind else {
        panic!()
    };
    assert_eq!(m.remove, ["x-powered-by", "server"]);
    assert_eq!(m.set[0].0, "x-served-by");
    assert_eq!(m.set[0].1.as_static(), Some("7"));
    let ServiceKind::Http { endpoints, .. } = &c.services[0].kind else {
        panic!()
    };
    assert_eq!(endpoints[0].addr, "[::1]:80".parse::<SocketAddr>().unwrap());
}

#[test]
fn isolation_keys() {
    let text = r#"
plugins:
  - name: a
    type: ffi
    file: a.so
  - name: b
    type: ffi
    file: b.so
    isolation: process
  - name: c
    type: ffi
    file: c.so
    isolation: process
    workers: 3
    worker_queue: 16
    restart_backoff: 50ms
    restart_backoff_max: 2s
  - name: d
    type: ffi
    file: d.so
    isolation: none
"#;
    let c = Config::parse_with_env(text, "i.yaml", &|_| None).unwrap();
    assert_eq!(c.plugins[0].isolation, Isolation::None);
    assert_eq!(c.plugins[0].isolation_config, IsolationConfig::default());
    assert_eq!(c.plugins[1].isolation, Isolation::Process);
    assert_eq!(c.plugins[1].isolation_config, IsolationConfig::default());
    assert_eq!(c.plugins[2].isolation, Isolation::Process);
    assert_eq!(
        c.plugins[2].isolation_config,
        IsolationConfig {
            workers: NonZeroUsize::new(3),
            worker_queue: NonZeroUsize::new(16),
            restart_backoff: Some(Duration::from_millis(50)),
            restart_backoff_max: Some(Duration::from_secs(2)),
        }
    );
    assert_eq!(c.plugins[3].isolation, Isolation::None);
}
