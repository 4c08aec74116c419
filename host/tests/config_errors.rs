//! Every kind of config error names the file, line, column and key path of the problem.

use nylon_host::{Config, ConfigErrorKind as K};

/// A valid config the cases below break one piece of. Line numbers are in the comments.
const BASE: &str = "\
plugins:                          # 1
  - name: auth                    # 2
    type: ffi                     # 3
    file: ./libauth.so            # 4
services:                         # 5
  - name: api                     # 6
    service_type: http            # 7
    endpoints:                    # 8
      - ip: 127.0.0.1             # 9
        port: 3000                # 10
middleware_groups:                # 11
  guard:                          # 12
    - plugin: auth                # 13
      entry: check                # 14
routes:                           # 15
  - route: {type: host, value: localhost}   # 16
    name: one                     # 17
    middleware:                   # 18
      - group: guard              # 19
    paths:                        # 20
      - path: /a                  # 21
        service: {name: api}      # 22
      - path: ['/b/{id}', /c]     # 23
        middleware:               # 24
          - plugin: auth          # 25
            entry: sign           # 26
            payload:              # 27
              id: ${param(id)}    # 28
        service: {name: api}      # 29
";

/// `BASE` with `from` replaced by `to` (which must occur once).
fn with(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "`{from}` must occur once in BASE"
    );
    BASE.replacen(from, to, 1)
}

/// Checks each (config, kind, message) at once, so a failure shows every mismatch.
fn check(cases: &[(String, K, &str)]) {
    let got: Vec<(K, String)> = cases.iter().map(|(text, _, _)| error(text)).collect();
    let want: Vec<(K, String)> = cases
        .iter()
        .map(|(_, k, m)| (*k, (*m).to_owned()))
        .collect();
    assert_eq!(got, want);
}

fn error(text: &str) -> (K, String) {
    match Config::parse_with_env(text, "bad.yaml", &|_| None) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => (e.kind(), e.to_string()),
    }
}

#[test]
fn the_base_config_is_valid() {
    let c = Config::parse_with_env(BASE, "bad.yaml", &|_| None).unwrap();
    assert_eq!(c.routes[0].paths[1].middleware.len(), 2);
}

#[test]
fn yaml_syntax() {
    check(&[
        (
            with("    name: one ", "    name: [one "),
            K::Syntax,
            "bad.yaml:18:5: invalid YAML: invalid indentation in flow construct",
        ),
        (
            "a: 1\n---\nb: 2\n".into(),
            K::Syntax,
            "bad.yaml:3:1: the file holds more than one YAML document",
        ),
        (
            "a: 1\na: 2\n".into(),
            K::Syntax,
            "bad.yaml:2:1: invalid YAML: duplicated key in mapping",
        ),
    ]);
}

#[test]
fn missing_keys() {
    check(&[
        (
            with("    file: ./libauth.so ", "    fil3: ./libauth.so "),
            K::MissingKey,
            "bad.yaml:2:5: plugins[0].file: missing key `file` (is `fil3` a misspelling?)",
        ),
        (
            with("            entry: sign ", "            entri: sign "),
            K::MissingKey,
            "bad.yaml:25:13: routes[0].paths[1].middleware[0].entry: missing key `entry` (is `entri` a misspelling?)",
        ),
        (
            with(
                "        service: {name: api}      # 29",
                "        servic: {name: api}      # 29",
            ),
            K::MissingKey,
            "bad.yaml:23:9: routes[0].paths[1].service: missing key `service` (is `servic` a misspelling?)",
        ),
        (
            with("    endpoints:  ", "    endpoint:  "),
            K::MissingKey,
            "bad.yaml:6:5: services[0].endpoints: missing key `endpoints` (is `endpoint` a misspelling?)",
        ),
    ]);
}

#[test]
fn unknown_keys() {
    check(&[
        (
            with("    type: ffi ", "    type: ffi\n    flie: x.so "),
            K::UnknownKey,
            "bad.yaml:4:5: plugins[0].flie: unknown key `flie`",
        ),
        (
            with(
                "        port: 3000 ",
                "        port: 3000\n    health_check: {enabled: true} ",
            ),
            K::UnknownKey,
            "bad.yaml:11:5: services[0].health_check: upstream Nylon's `health_check` is not supported by this host",
        ),
        (
            with(
                "    service_type: http ",
                "    service_type: http\n    plugin: {name: auth, entry: x} ",
            ),
            K::UnknownKey,
            "bad.yaml:8:5: services[0].plugin: `plugin` does not apply to service_type `http`",
        ),
        (
            "plugin: []\n".into(),
            K::UnknownKey,
            "bad.yaml:1:1: plugin: unknown key `plugin`",
        ),
        // A misspelt section is named, not the references it breaks.
        (
            with("plugins:  ", "plugin:  "),
            K::UnknownKey,
            "bad.yaml:1:1: plugin: unknown key `plugin`",
        ),
        (
            with(
                "      - group: guard ",
                "      - group: guard\n        entry: x ",
            ),
            K::UnknownKey,
            "bad.yaml:20:9: routes[0].middleware[0].entry: unknown key `entry`",
        ),
    ]);
}

#[test]
fn bad_types() {
    check(&[
        (
            with("        port: 3000 ", "        port: \"3000\" "),
            K::BadType,
            "bad.yaml:10:15: services[0].endpoints[0].port: expected an integer, found a string",
        ),
        (
            "plugins: {name: x}\n".into(),
            K::BadType,
            "bad.yaml:1:10: plugins: expected a list, found a map",
        ),
        (
            with("    name: one ", "    name: {a: 1} "),
            K::BadType,
            "bad.yaml:17:11: routes[0].name: expected a string, found a map",
        ),
        (
            with(
                "        port: 3000 ",
                "        port: 3000\n        weight: [1] ",
            ),
            K::BadType,
            "bad.yaml:11:17: services[0].endpoints[0].weight: expected an integer, found a list",
        ),
    ]);
}

#[test]
fn bad_values() {
    check(&[
        (
            with("    service_type: http ", "    service_type: ftp "),
            K::BadValue,
            "bad.yaml:7:19: services[0].service_type: unknown service_type `ftp`; expected http, plugin or static",
        ),
        (
            with("        port: 3000 ", "        port: 70000 "),
            K::BadValue,
            "bad.yaml:10:15: services[0].endpoints[0].port: port 70000 is not in 1..=65535",
        ),
        (
            with("      - ip: 127.0.0.1 ", "      - ip: localhost "),
            K::BadValue,
            "bad.yaml:9:13: services[0].endpoints[0].ip: `localhost` is not an IP address",
        ),
        (
            with("    type: ffi ", "    type: wasm "),
            K::BadValue,
            "bad.yaml:3:11: plugins[0].type: plugin type `wasm` is not supported; expected ffi",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    transport: turbo "),
            K::BadValue,
            "bad.yaml:4:16: plugins[0].transport: unknown transport `turbo`; expected baseline or fast (a v2 plugin always uses v2)",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    timeout: 2 "),
            K::BadType,
            "bad.yaml:4:14: plugins[0].timeout: expected a duration with a unit (`500ms`, `2s`, `1m`), found an integer",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    timeout: 2h "),
            K::BadValue,
            "bad.yaml:4:14: plugins[0].timeout: `2h` is not a duration; write a whole number and a unit: `500ms`, `2s`, `1m`",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    max_sessions: 0 "),
            K::BadValue,
            "bad.yaml:4:19: plugins[0].max_sessions: must be at least 1",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    isolation: container "),
            K::BadValue,
            "bad.yaml:4:16: plugins[0].isolation: unknown isolation `container`; expected none or process",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    workers: 2 "),
            K::BadValue,
            "bad.yaml:4:14: plugins[0].workers: `workers` applies only to a plugin with `isolation: process` (this one runs in the proxy's process)",
        ),
        (
            with(
                "    type: ffi ",
                "    type: ffi\n    isolation: none\n    worker_queue: 8 ",
            ),
            K::BadValue,
            "bad.yaml:5:19: plugins[0].worker_queue: `worker_queue` applies only to a plugin with `isolation: process` (this one runs in the proxy's process)",
        ),
        (
            with(
                "    type: ffi ",
                "    type: ffi\n    isolation: process\n    workers: 0 ",
            ),
            K::BadValue,
            "bad.yaml:5:14: plugins[0].workers: must be at least 1",
        ),
        (
            with(
                "    type: ffi ",
                "    type: ffi\n    isolation: process\n    worker_queue: many ",
            ),
            K::BadType,
            "bad.yaml:5:19: plugins[0].worker_queue: expected an integer, found a string",
        ),
        (
            with(
                "    type: ffi ",
                "    type: ffi\n    isolation: process\n    restart_backoff: 1s\n    restart_backoff_max: 100ms ",
            ),
            K::BadValue,
            "bad.yaml:6:26: plugins[0].restart_backoff_max: must not be shorter than `restart_backoff` (1000 ms)",
        ),
        (
            with("    type: ffi ", "    type: ffi\n    isolation: [process] "),
            K::BadType,
            "bad.yaml:4:16: plugins[0].isolation: expected a string, found a list",
        ),
        (
            with(
                "      - path: /a ",
                "      - path: /a\n        methods: [GET, FETCH] ",
            ),
            K::BadValue,
            "bad.yaml:22:24: routes[0].paths[0].methods[1]: unknown method `FETCH`; expected one of GET, POST, PUT, DELETE, OPTIONS, HEAD, CONNECT, TRACE, PATCH",
        ),
        (
            with("plugins: ", "server: {listen: 'localhost:80'}\nplugins: "),
            K::BadValue,
            "bad.yaml:1:18: server.listen: `localhost:80` is not an address (`127.0.0.1:8088`)",
        ),
    ]);
}

#[test]
fn duplicate_names() {
    check(&[
        (
            with("        port: 3000 ", "        port: 3000\n  - name: api\n    service_type: http\n    endpoints: [{ip: 127.0.0.1, port: 1}] "),
            K::Duplicate,
            "bad.yaml:11:11: services[1].name: a service named `api` is already declared",
        ),
        (
            format!("{BASE}  - route: {{type: host, value: b}}\n    name: one\n    paths: []\n"),
            K::Duplicate,
            "bad.yaml:31:11: routes[1].name: a route named `one` is already declared",
        ),
    ]);
}

#[test]
fn unknown_references() {
    check(&[
        (with("          - plugin: auth ", "          - plugin: atuh "), K::UnknownPlugin,
            "bad.yaml:25:21: routes[0].paths[1].middleware[0].plugin: unknown plugin `atuh`; `plugins:` declares `auth`"),
        (with("    - plugin: auth                # 13", "    - plugin: nope                # 13"), K::UnknownPlugin,
            "bad.yaml:13:15: middleware_groups.guard[0].plugin: unknown plugin `nope`; `plugins:` declares `auth`"),
        (
            with("        port: 3000 ", "        port: 3000\n  - name: svc\n    service_type: plugin\n    plugin: {name: auht, entry: serve} "),
            K::UnknownPlugin,
            "bad.yaml:13:20: services[1].plugin.name: unknown plugin `auht`; `plugins:` declares `auth`",
        ),
        (with("        service: {name: api}      # 29", "        service: {name: apj}      # 29"), K::UnknownService,
            "bad.yaml:29:25: routes[0].paths[1].service.name: unknown service `apj`; `services:` declares `api`"),
        (with("      - group: guard ", "      - group: gaurd "), K::UnknownGroup,
            "bad.yaml:19:16: routes[0].middleware[0].group: unknown middleware group `gaurd`; `middleware_groups:` declares `guard`"),
        (with("    type: ffi ", "    type: ffi\n    entry: [check] "), K::UnknownEntry,
            "bad.yaml:27:20: routes[0].paths[1].middleware[0].entry: plugin `auth` declares no entry `sign`; its `entry:` lists `check`"),
    ]);
}

#[test]
fn bad_templates() {
    check(&[
        (
            with(
                "              id: ${param(id)} ",
                "              id: ${param(id) ",
            ),
            K::Template,
            "bad.yaml:28:19: routes[0].paths[1].middleware[0].payload.id: bad template: unterminated `${` at byte 0: no closing `}` (at byte 0 of `${param(id)`)",
        ),
        (
            with(
                "              id: ${param(id)} ",
                "              id: x-${paramm(id)} ",
            ),
            K::Template,
            "bad.yaml:28:19: routes[0].paths[1].middleware[0].payload.id: bad template: unknown function `paramm` (at byte 4 of `x-${paramm(id)}`)",
        ),
        (
            with(
                "      entry: check ",
                "      entry: check\n      payload: {a: [1, '${uuid(v9)}']} ",
            ),
            K::Template,
            "bad.yaml:15:24: middleware_groups.guard[0].payload.a[1]: bad template: `uuid` takes v4 or v7, not `v9` (at byte 2 of `${uuid(v9)}`)",
        ),
    ]);
}

#[test]
fn route_conflicts_and_bad_patterns() {
    check(&[
        (with("      - path: ['/b/{id}', /c] ", "      - path: ['/b/{id}', /a] "), K::Route,
            "bad.yaml:23:27: routes[0].paths[1].path[1]: `/a` matches the same requests as `/a` (in this route or another route for the same host)"),
        (with("      - path: ['/b/{id}', /c] ", "      - path: ['/b/{id}', '/b/{key}'] "), K::Route,
            "bad.yaml:23:27: routes[0].paths[1].path[1]: `/b/{key}` names the parameter `key` where another pattern of this host names it `id` (in this route or another route for the same host)"),
        (with("      - path: ['/b/{id}', /c] ", "      - path: ['/b/{id}', '/c/{*rest}/d'] "), K::Route,
            "bad.yaml:23:27: routes[0].paths[1].path[1]: bad path pattern: the catch-all `{*rest}` in `/c/{*rest}/d` must end the pattern"),
        (with("      - path: ['/b/{id}', /c] ", "      - path: ['/b/x{id}'] "), K::Route,
            "bad.yaml:23:16: routes[0].paths[1].path[0]: bad path pattern: `/b/x{id}`: a parameter must be a whole segment (`/{name}`), not `x{id}`"),
        (
            format!("{BASE}  - route: {{type: host, value: LocalHost}}\n    name: two\n    paths: [{{path: /a, service: {{name: api}}}}]\n"),
            K::Route,
            "bad.yaml:32:20: routes[1].paths[0].path: `/a` matches the same requests as `/a` (in this route or another route for the same host)",
        ),
        (
            with("  - route: {type: host, value: localhost} ", "  - route: {type: header, value: v} "),
            K::MissingKey,
            "bad.yaml:16:19: routes[0].route.type: a `type: header` route needs the top-level `header_selector:` (the header to read)",
        ),
    ]);
}

#[test]
fn the_key_path_reaches_deep_list_items() {
    // The brief's example: routes[2].paths[0].middleware[0].entry.
    let text = format!(
        "{BASE}  - route: {{type: host, value: b}}\n    name: two\n    paths: [{{path: /x, service: {{name: api}}}}]\n  - route: {{type: host, value: c}}\n    name: three\n    paths:\n      - path: /y\n        service: {{name: api}}\n        middleware:\n          - plugin: auth\n            payload: {{}}\n"
    );
    check(&[(
        text,
        K::MissingKey,
        "bad.yaml:39:13: routes[2].paths[0].middleware[0].entry: missing key `entry`",
    )]);
}
