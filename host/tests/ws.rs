//! WebSocket end to end: the `nylon-serve` binary on loopback, a real
//! WebSocket client (`tokio-tungstenite`) or raw frames over a `TcpStream`,
//! and the example plugins (Rust legacy on the fast and baseline
//! transports, Rust v2, C legacy).
//!
//! Every wait is bounded generously (30 s) so that a lost wake-up fails a
//! test instead of hanging it; no test asserts a timing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{example, scratch_dir, Proxy};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Every wait's bound.
const WAIT: Duration = Duration::from_secs(30);

/// Which example plugin serves the routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rust,
    V2,
    C,
}

/// The entry names of `kind`: (echo, room chat).
fn entries(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Rust | Kind::V2 => ("ws_echo", "ws_room"),
        Kind::C => ("c_ws_echo", "c_ws_room"),
    }
}

fn config(kind: Kind, file: &Path) -> String {
    let (echo, room) = entries(kind);
    format!(
        r#"server:
  listen: "127.0.0.1:{{port}}"
  threads: 2
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
plugins:
  - name: ex
    type: ffi
    file: "{file}"
    timeout: 10s
services:
  - name: echo
    service_type: plugin
    plugin: {{ name: ex, entry: {echo} }}
  - name: room
    service_type: plugin
    plugin: {{ name: ex, entry: {room} }}
routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/echo"
        service: {{ name: echo }}
      - path: "/room"
        service: {{ name: room }}
"#,
        file = file.display(),
    )
}

fn plugin_file(kind: Kind) -> std::path::PathBuf {
    match kind {
        Kind::Rust => example("rust_plugin"),
        Kind::V2 => example("v2_plugin"),
        Kind::C => common::c_plugin(),
    }
}

/// A proxy serving `kind`'s entries, with extra command-line `args`.
fn start(kind: Kind, tag: &str, args: &[&str]) -> Proxy {
    let dir = scratch_dir(&format!("ws-{tag}"));
    Proxy::start(&dir, &config(kind, &plugin_file(kind)), args)
}

async fn connect(proxy: &Proxy, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}{path}", proxy.port);
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the bound")
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", proxy.log_text()));
    assert_eq!(resp.status(), 101);
    ws
}

/// The next data message (pings and pongs skipped).
async fn next(ws: &mut Ws) -> Message {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the bound")
            .expect("the stream is open")
            .expect("a valid message");
        if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
            return m;
        }
    }
}

async fn send_text(ws: &mut Ws, t: &str) {
    ws.send(Message::text(t)).await.expect("send");
}

/// Echo: every message comes back, in order; then a normal close both ways.
async fn case_echo(proxy: &Proxy) {
    let mut ws = connect(proxy, "/echo").await;
    for i in 0..50 {
        send_text(&mut ws, &format!("m{i}")).await;
    }
    for i in 0..50 {
        assert_eq!(next(&mut ws).await, Message::text(format!("m{i}")));
    }
    // The client closes with a code and a reason: the host echoes them.
    ws.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye now".into(),
    }))
    .await
    .expect("close");
    match next(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(f.code, CloseCode::Away);
            assert_eq!(f.reason.as_str(), "bye now");
        }
        other => panic!("expected the close echo, got {other:?}"),
    }
}

async fn suite(kind: Kind, transport: &str) {
    let proxy = start(
        kind,
        &format!("{kind:?}-{transport}"),
        &["--transport", transport],
    );
    case_echo(&proxy).await;
    let (status, log) = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "nylon-serve exit {status}:\n{log}");
    let stats = stats(&log);
    assert_eq!(
        stats["sessions_opened"], stats["sessions_closed"],
        "every session closed: {stats}"
    );
}

fn stats(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .find(|l| l.starts_with("nylon-serve: stats "))
        .unwrap_or_else(|| panic!("no stats line:\n{log}"));
    serde_json::from_str(line.trim_start_matches("nylon-serve: stats ")).expect("stats")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_legacy_on_fast() {
    suite(Kind::Rust, "fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_legacy_on_baseline() {
    suite(Kind::Rust, "baseline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_plugin() {
    suite(Kind::V2, "fast").await;
}
