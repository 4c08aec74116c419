//! The end-to-end suite of cases, shared by `e2e.rs` (in-process
//! transports) and `isolation.rs` (the same cases with every plugin in
//! worker processes).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{c_plugin, client, example, scratch_dir, stats, Proxy, Upstream, SERVER_YAML};

/// Which example plugin a suite runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `examples/rust_plugin.rs`, legacy ABI.
    Rust,
    /// `examples/c_plugin/plugin.c`, legacy ABI.
    C,
    /// `examples/v2_plugin.rs`, v2 ABI.
    V2,
}

/// The config of a suite: every route the cases use.
fn config(kind: Kind, file: &Path, copy: &Path, upstream: SocketAddr, dir: &Path) -> String {
    let header = format!(
        r#"{SERVER_YAML}plugins:
  - name: ex
    type: ffi
    file: "{file}"
    timeout: 10s
    config:
      shutdown_file: "{shutdown}"
  - name: slow
    type: ffi
    file: "{copy}"
    timeout: 1s
    config:
      shutdown_file: "{shutdown_copy}"
services:
  - name: up
    service_type: http
    endpoints:
      - ip: 127.0.0.1
        port: {up_port}
"#,
        file = file.display(),
        copy = copy.display(),
        shutdown = dir.join("shutdown.log").display(),
        shutdown_copy = dir.join("shutdown-copy.log").display(),
        up_port = upstream.port(),
    );
    let (silent, error) = match kind {
        Kind::Rust => ("silent", "error"),
        Kind::V2 => ("silent_async", "error"),
        Kind::C => ("c_silent", "c_unknown"),
    };
    let common_routes = format!(
        r#"      - path: "/timeout"
        service: {{ name: up }}
        middleware:
          - plugin: slow
            entry: {silent}
      - path: "/error"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: {error}
      - path: "/plain"
        service: {{ name: up }}
"#
    );
    match kind {
        Kind::C => format!(
            r#"{header}  - name: basic
    service_type: plugin
    plugin: {{ name: ex, entry: c_basic }}
routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/headers/{{id}}"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: c_next
      - path: "/c/{{id}}"
        service: {{ name: basic }}
{common_routes}"#
        ),
        Kind::Rust | Kind::V2 => {
            let all = if kind == Kind::Rust {
                "all_methods"
            } else {
                "all"
            };
            format!(
                r#"{header}  - name: payload
    service_type: plugin
    plugin:
      name: ex
      entry: e2e_payload
      payload:
        ip: "${{request(client_ip)}}"
        id: "${{param(id)}}"
        q: "${{query(q)}}"
        h: "${{header(x-test)}}"
  - name: stream
    service_type: plugin
    plugin: {{ name: ex, entry: e2e_stream }}
  - name: stream_inline
    service_type: plugin
    plugin: {{ name: ex, entry: stream }}
routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/headers/{{id}}"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: e2e_headers
      - path: "/auth"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: e2e_auth
      - path: "/payload/{{id}}"
        service: {{ name: payload }}
      - path: "/stream/{{id}}"
        service: {{ name: stream }}
      - path: "/stream-inline"
        service: {{ name: stream_inline }}
      - path: "/chunks/{{n}}"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: e2e_append
      - path: "/all/{{id}}"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: {all}
            payload: {{ key: "k-${{param(id)}}" }}
{common_routes}"#
            )
        }
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<absent>")
}

/// Middleware on both sides of the upstream: the request filter's headers
/// (from this request's id and path) and the response filter's.
async fn case_headers(kind: Kind, proxy: &Proxy) {
    let c = client();
    let r = c
        .get(proxy.url("/headers/7"))
        .header("x-request-id", "abc")
        .send()
        .await
        .expect("GET /headers/7");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-upstream"), "1");
    if kind != Kind::C {
        assert_eq!(header(&r, "x-mw-request"), "abc");
        assert_eq!(header(&r, "x-mw-path"), "/headers/7");
        assert_eq!(header(&r, "x-mw-response"), "200");
    }
    assert_eq!(
        r.text().await.expect("body"),
        "upstream GET /headers/7 id=abc body="
    );
    // A request body goes upstream after the plugins could read it.
    let r = c
        .post(proxy.url("/headers/8"))
        .header("x-request-id", "p")
        .body("hello body")
        .send()
        .await
        .expect("POST /headers/8");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        "upstream POST /headers/8 id=p body=hello body"
    );
}

/// Every read a plugin has, on a real request: path, query, host, client IP,
/// headers, params, the request body (method 200), the templated payload.
async fn case_reads(kind: Kind, proxy: &Proxy) {
    let r = client()
        .post(proxy.url("/all/5?a=1"))
        .header("x-user", "alice")
        .body("the body")
        .send()
        .await
        .expect("POST /all/5");
    assert_eq!(r.status(), 201, "{:?}", r.headers());
    assert_eq!(header(&r, "x-request-body"), "the body");
    assert_eq!(header(&r, "x-payload-key"), "k-5");
    assert_eq!(header(&r, "x-path"), "/all/5");
    assert_eq!(header(&r, "x-query"), "a=1");
    assert_eq!(header(&r, "x-host"), "127.0.0.1");
    assert_eq!(header(&r, "x-client-ip"), "127.0.0.1");
    assert_eq!(header(&r, "x-user"), "alice");
    assert_eq!(header(&r, "x-upstream-status"), "201");
    assert!(header(&r, "x-headers").contains("x-user=alice"));
    let url = format!("http://127.0.0.1:{}/all/5?a=1", proxy.port);
    assert_eq!(header(&r, "x-url"), url);
    if kind == Kind::Rust {
        assert_eq!(header(&r, "x-params"), "id=5");
    } else {
        assert_eq!(header(&r, "x-params"), r#"{"id":"5"}"#);
    }
    assert_eq!(
        r.text().await.expect("body"),
        "upstream POST /all/5?a=1 id= body=the body"
    );
}

/// An auth middleware: 401 from the plugin without the header, the upstream
/// with it.
async fn case_auth(proxy: &Proxy) {
    let c = client();
    let r = c.get(proxy.url("/auth")).send().await.expect("GET /auth");
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(r.text().await.expect("body"), "unauthorized");
    let r = c
        .get(proxy.url("/auth"))
        .header("authorization", "Bearer let-me-in")
        .send()
        .await
        .expect("GET /auth");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-auth"), "ok");
    assert_eq!(
        r.text().await.expect("body"),
        "upstream GET /auth id= body="
    );
}

/// A templated payload, rendered per request, reaches a plugin service.
async fn case_payload(proxy: &Proxy) {
    let r = client()
        .get(proxy.url("/payload/42?q=hello%20world"))
        .header("x-test", "tv\"1")
        .send()
        .await
        .expect("GET /payload/42");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    let v: serde_json::Value =
        serde_json::from_str(&r.text().await.expect("body")).expect("JSON payload");
    assert_eq!(
        v,
        serde_json::json!({"ip": "127.0.0.1", "id": "42", "q": "hello world", "h": "tv\"1"})
    );
}

/// A plugin service that streams from its own thread, and one that streams
/// inside the call.
async fn case_stream(proxy: &Proxy) {
    let c = client();
    let r = c
        .get(proxy.url("/stream/9"))
        .send()
        .await
        .expect("GET /stream/9");
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(
        r.text().await.expect("body"),
        "chunk0 /stream/9\nchunk1 /stream/9\nchunk2 /stream/9\n"
    );
    let r = c
        .get(proxy.url("/stream-inline"))
        .send()
        .await
        .expect("GET /stream-inline");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "onetwo");
}

/// The body rewrite as plugin authors write it (read 107, append, set 103 on
/// every chunk): each upstream chunk arrives once, with its own addition. The
/// upstream sends a chunk only after the client got the previous one, so
/// every chunk is a separate body-filter phase.
async fn case_append(proxy: &Proxy, upstream: &Upstream) {
    let mut r = client()
        .get(proxy.url("/chunks/3"))
        .send()
        .await
        .expect("GET /chunks/3");
    assert_eq!(r.status(), 200);
    let mut got = String::new();
    for i in 0..3 {
        let want = format!("c{i} |{i}");
        let wait = async {
            while !got.ends_with(&want) {
                match r.chunk().await.expect("read a chunk") {
                    Some(c) => got.push_str(&String::from_utf8_lossy(&c)),
                    None => break,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .unwrap_or_else(|_| panic!("chunk {i} never arrived as `{want}`; got {got:?}"));
        assert!(got.ends_with(&want), "chunk {i}: got {got:?}");
        upstream.gate.add_permits(1);
    }
    while let Some(c) = r.chunk().await.expect("read the rest") {
        got.push_str(&String::from_utf8_lossy(&c));
    }
    assert_eq!(got, "c0 |0c1 |1c2 |2");
}

/// C: a plugin service that reads the path and a header and answers (END).
async fn case_c_basic(proxy: &Proxy) {
    let r = client()
        .get(proxy.url("/c/5"))
        .header("x-user", "bob")
        .send()
        .await
        .expect("GET /c/5");
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "x-c-path"), "/c/5");
    assert_eq!(header(&r, "x-c-user"), "bob");
    assert_eq!(r.text().await.expect("body"), "from C");
}

/// A plugin that never ends its phase: 504 (after its 1 s phase timeout) and
/// the proxy serves the next request; a plugin error: 502.
///
/// Isolated, the phase timeout is the worker's deadline: the worker ends the
/// phase with a timeout itself (504 all the same) and lives on.
async fn case_faults(proxy: &Proxy) {
    let c = client();
    let r = c
        .get(proxy.url("/timeout"))
        .send()
        .await
        .expect("GET /timeout");
    let status = r.status();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(status, 504, "{v}");
    assert_eq!(v["error"], "plugin_timeout", "{v}");
    let m = v["message"].as_str().unwrap_or("");
    assert!(m.contains("within 1000 ms"), "{v}");
    let r = c.get(proxy.url("/plain")).send().await.expect("GET /plain");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.expect("body"),
        "upstream GET /plain id= body="
    );
    let r = c.get(proxy.url("/error")).send().await.expect("GET /error");
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = serde_json::from_str(&r.text().await.expect("body")).expect("JSON");
    assert_eq!(v["error"], "plugin_error");
    let r = c
        .get(proxy.url("/headers/1"))
        .header("x-request-id", "after")
        .send()
        .await
        .expect("GET after the faults");
    assert_eq!(r.status(), 200);
}

/// 1,000 requests at once: every one answered, each with its own id.
async fn case_concurrent(kind: Kind, proxy: &Proxy) {
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = c.clone();
        let url = proxy.url(&format!("/headers/{i}"));
        tasks.push(tokio::spawn(async move {
            let r = c
                .get(url)
                .header("x-request-id", format!("id-{i}"))
                .send()
                .await
                .map_err(|e| format!("request {i}: {e}"))?;
            let status = r.status().as_u16();
            let mw = header(&r, "x-mw-request").to_string();
            let body = r.text().await.map_err(|e| format!("body {i}: {e}"))?;
            Ok::<_, String>((i, status, mw, body))
        }));
    }
    let mut seen = 0;
    for t in tasks {
        let (i, status, mw, body) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every request answered within 60 s")
            .expect("task")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "request {i}");
        assert_eq!(body, format!("upstream GET /headers/{i} id=id-{i} body="));
        if kind != Kind::C {
            assert_eq!(mw, format!("id-{i}"), "request {i}");
        }
        seen += 1;
    }
    assert_eq!(seen, 1000);
}

/// Runs every case of `kind` on `transport`, then shuts the proxy down
/// gracefully and checks the plugin was shut down once and every session
/// closed.
///
/// `isolated`: every plugin runs in worker processes (`--isolation
/// process`, two workers each, `transport` being the workers' legacy
/// transport); each worker is one instance of the library, so `shutdown`
/// runs once per worker, and no worker of the plugin `ex` may die.
pub(crate) async fn suite(kind: Kind, transport: &str, isolated: bool) {
    let dir = scratch_dir(&format!("{kind:?}-{transport}-{isolated}"));
    let file = match kind {
        Kind::Rust => example("rust_plugin"),
        Kind::V2 => example("v2_plugin"),
        Kind::C => c_plugin(),
    };
    // A second copy of the library (its own global state, as a second plugin
    // in production would have) serves the timeout route with a short
    // timeout, so the other routes can have a generous one.
    let copy = dir.join("libcopy.so");
    std::fs::copy(&file, &copy).expect("copy the plugin");
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        &dir,
        &config(kind, &file, &copy, upstream.addr, &dir),
        &if isolated {
            vec!["--transport", transport, "--isolation", "process"]
        } else {
            vec!["--transport", transport]
        },
    );
    if isolated {
        let log = proxy.log_text();
        assert!(
            log.contains("on the isolated transport (worker processes ["),
            "{log}"
        );
        assert_eq!(
            proxy.worker_pids().len(),
            4,
            "two workers per plugin:\n{log}"
        );
    }
    case_headers(kind, &proxy).await;
    match kind {
        Kind::C => case_c_basic(&proxy).await,
        Kind::Rust | Kind::V2 => {
            case_reads(kind, &proxy).await;
            case_auth(&proxy).await;
            case_payload(&proxy).await;
            case_stream(&proxy).await;
            case_append(&proxy, &upstream).await;
        }
    }
    case_faults(&proxy).await;
    case_concurrent(kind, &proxy).await;

    let (status, log) = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "nylon-serve exit {status}:\n{log}");
    assert!(log.contains("plugins shut down"), "{log}");
    let stats = stats(&log);
    assert_eq!(
        stats["sessions_opened"], stats["sessions_closed"],
        "every session closed: {stats}"
    );
    if isolated {
        assert_eq!(
            stats["isolated"]["ex"]["deaths"], 0,
            "no worker of `ex` died: {stats}"
        );
    }
    // Once per instance: one in process, one per worker when isolated.
    let instances = if isolated { 2 } else { 1 };
    if kind != Kind::C {
        for f in ["shutdown.log", "shutdown-copy.log"] {
            let lines = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            assert_eq!(
                lines.lines().count(),
                instances,
                "{f}: the plugin's shutdown ran once per instance: {lines:?}\n{log}"
            );
        }
    }
}
