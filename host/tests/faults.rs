//! End to end: the limits and the start-up errors of `nylon-serve`.

mod common;

use std::time::Duration;

use common::{client, example, scratch_dir, Proxy, Upstream, SERVER_YAML};

fn base(file: &std::path::Path, upstream: std::net::SocketAddr, plugin_extra: &str) -> String {
    format!(
        r#"{SERVER_YAML}plugins:
  - name: ex
    type: ffi
    file: "{file}"
{plugin_extra}services:
  - name: up
    service_type: http
    endpoints:
      - ip: 127.0.0.1
        port: {port}
"#,
        file = file.display(),
        port = upstream.port(),
    )
}

/// A plugin whose sessions are all in flight refuses the next request at
/// once with 503 (no queue); the session's end frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_with_every_session_in_flight_gives_a_fast_503() {
    let dir = scratch_dir("busy");
    let upstream = Upstream::start().await;
    let cfg = base(
        &example("rust_plugin"),
        upstream.addr,
        "    max_sessions: 1\n    timeout: 3s\n",
    ) + r#"routes:
  - route: { type: host, value: "127.0.0.1" }
    name: app
    paths:
      - path: "/hold"
        service: { name: up }
        middleware:
          - plugin: ex
            entry: silent
"#;
    let proxy = Proxy::start(&dir, &cfg, &[]);
    let c = client();
    // Five at once: whichever gets the only session holds it until its phase
    // times out (504); the others arrive meanwhile and are refused at once.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (c, url) = (c.clone(), proxy.url("/hold"));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.expect("GET /hold");
            (r.status().as_u16(), r.text().await.expect("body"))
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("task");
        if status == 503 {
            assert!(body.contains("plugin_busy"), "{body}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    assert!(
        statuses.iter().all(|s| *s == 503 || *s == 504),
        "{statuses:?}"
    );
    assert!(statuses.contains(&503), "nobody was refused: {statuses:?}");
    assert!(
        statuses.contains(&504),
        "nobody held the session: {statuses:?}"
    );
    // The place is free again: the next request runs the plugin (and times out).
    let r = c.get(proxy.url("/hold")).send().await.expect("GET /hold");
    assert_eq!(r.status(), 504);
}

/// A phase that ends on the plugin's own thread 1 ms later is served both as
/// a future (the default) and with the thread-blocking wait; the per-plugin
/// transport in the config wins over the command line's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phase_ended_on_a_plugin_thread_is_served_in_both_wait_modes() {
    let upstream = Upstream::start().await;
    for (name, extra) in [
        ("rust_plugin", "    transport: baseline\n"),
        ("v2_plugin", ""),
    ] {
        let cfg = base(&example(name), upstream.addr, extra)
            + r#"routes:
  - route: { type: host, value: "127.0.0.1" }
    name: app
    paths:
      - path: "/delay/{id}"
        service: { name: up }
        middleware:
          - plugin: ex
            entry: delay_1ms
"#;
        for wait in ["future", "block"] {
            let dir = scratch_dir(&format!("delay-{name}-{wait}"));
            let proxy = Proxy::start(&dir, &cfg, &["--phase-wait", wait, "--transport", "fast"]);
            let c = client();
            let mut tasks = Vec::new();
            for i in 0..50 {
                let (c, url) = (c.clone(), proxy.url(&format!("/delay/{i}")));
                tasks.push(tokio::spawn(async move {
                    let r = c.get(url).send().await.expect("GET /delay");
                    (r.status().as_u16(), r.text().await.expect("body"))
                }));
            }
            for (i, t) in tasks.into_iter().enumerate() {
                let (status, body) = t.await.expect("task");
                assert_eq!(status, 200, "{name} {wait} request {i}");
                assert_eq!(body, format!("upstream GET /delay/{i} id= body="));
            }
            let log = proxy.log_text();
            let want = if name == "rust_plugin" {
                "legacy ABI on the baseline transport"
            } else {
                "v2 ABI on the fast-v2 transport"
            };
            assert!(log.contains(want), "{name}: {log}");
        }
    }
}

/// A config naming an entry the plugin does not export, or a plugin file
/// that does not load, stops the start with the file, line and key.
#[test]
fn a_bad_entry_or_plugin_file_names_file_line_and_key() {
    let dir = scratch_dir("badcfg");
    let up: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    for (file, entry, want) in [
        (
            example("rust_plugin"),
            "no_such_entry",
            "has no entry `no_such_entry`",
        ),
        (dir.join("missing.so"), "x", "cannot load"),
    ] {
        let cfg = base(&file, up, "")
            + &format!(
                r#"routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/x"
        service: {{ name: up }}
        middleware:
          - plugin: ex
            entry: {entry}
"#
            );
        let path = dir.join("bad.yaml");
        std::fs::write(&path, cfg.replace("{port}", "1")).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_nylon-serve"))
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .expect("run nylon-serve --check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&format!("{}:", path.display())), "{err}");
        // The error names the line of the offending key (1-based).
        let (needle, key) = if entry == "no_such_entry" {
            (
                "entry: no_such_entry",
                "routes[0].paths[0].middleware[0].entry",
            )
        } else {
            ("file: ", "plugins[0].file")
        };
        let line = cfg
            .lines()
            .position(|l| l.trim_start().starts_with(needle))
            .expect("the key is in the config")
            + 1;
        assert!(
            err.contains(&format!("bad.yaml:{line}:")),
            "line {line}: {err}"
        );
        assert!(err.contains(key), "{err}");
    }
}

/// `--keep-content-length`: a response through a plugin keeps the
/// upstream's Content-Length (no re-framing); a body filter that changes a
/// length anyway never produces a body that disagrees with its header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_content_length_keeps_the_framing_and_refuses_a_length_change() {
    let dir = scratch_dir("keepcl");
    let upstream = Upstream::start().await;
    let cfg = base(&example("rust_plugin"), upstream.addr, "")
        + r#"routes:
  - route: { type: host, value: "127.0.0.1" }
    name: app
    paths:
      - path: "/headers/{id}"
        service: { name: up }
        middleware:
          - plugin: ex
            entry: e2e_headers
      - path: "/append/{id}"
        service: { name: up }
        middleware:
          - plugin: ex
            entry: e2e_append
"#;
    let proxy = Proxy::start(&dir, &cfg, &["--keep-content-length"]);
    let c = client();
    let r = c
        .get(proxy.url("/headers/3"))
        .header("x-request-id", "k")
        .send()
        .await
        .expect("GET /headers/3");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get("x-mw-request").map(|v| v.as_bytes()),
        Some(&b"k"[..])
    );
    let want = "upstream GET /headers/3 id=k body=";
    assert_eq!(
        r.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some(want.len().to_string().as_str()),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.text().await.expect("body"), want);
    // e2e_append lengthens the body: the response is cut or refused, never
    // a body longer than its Content-Length.
    match c.get(proxy.url("/append/1")).send().await {
        Err(_) => {}
        Ok(r) if r.status() != 200 => assert_eq!(r.status(), 502),
        Ok(r) => {
            let declared = r.content_length();
            match r.bytes().await {
                Err(_) => {}
                Ok(b) => panic!(
                    "status 200 and a complete body although a plugin changed the length: {:?} (Content-Length {declared:?})",
                    String::from_utf8_lossy(&b)
                ),
            }
        }
    }
    let r = c
        .get(proxy.url("/headers/4"))
        .header("x-request-id", "after")
        .send()
        .await
        .expect("the proxy still serves");
    assert_eq!(r.status(), 200);
}

/// SIGTERM is a graceful shutdown: a response in flight (its upstream
/// holds the second chunk until the signal has been sent) still completes,
/// through the plugin, and the process then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_a_response_in_flight_finish() {
    let dir = scratch_dir("graceful");
    let upstream = Upstream::start().await;
    let cfg = base(&example("v2_plugin"), upstream.addr, "")
        .replace("grace_period_seconds: 1", "grace_period_seconds: 3")
        .replace(
            "graceful_shutdown_timeout_seconds: 1",
            "graceful_shutdown_timeout_seconds: 10",
        )
        + r#"routes:
  - route: { type: host, value: "127.0.0.1" }
    name: app
    paths:
      - path: "/chunks/{n}"
        service: { name: up }
        middleware:
          - plugin: ex
            entry: e2e_append
"#;
    let proxy = Proxy::start(&dir, &cfg, &[]);
    let mut r = client()
        .get(proxy.url("/chunks/2"))
        .send()
        .await
        .expect("GET /chunks/2");
    assert_eq!(r.status(), 200);
    let mut got = String::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while !got.ends_with("c0 |0") {
            match r.chunk().await.expect("read a chunk") {
                Some(c) => got.push_str(&String::from_utf8_lossy(&c)),
                None => break,
            }
        }
    });
    first.await.expect("the first chunk within 10 s");
    proxy.signal_term();
    // Let the shutdown begin while the response is still open (the grace
    // period is 3 s; this is no timing assertion, it only orders events).
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream.gate.add_permits(1);
    let rest = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(c) = r.chunk().await.expect("the rest after SIGTERM") {
            got.push_str(&String::from_utf8_lossy(&c));
        }
    });
    rest.await.expect("the response finished within 20 s");
    assert_eq!(got, "c0 |0c1 |1");
    let (status, log) = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("wait for the exit");
    assert!(status.success(), "{status}:\n{log}");
    assert!(log.contains("plugins shut down"), "{log}");
}
