//! WebSocket end to end: the `nylon-serve` binary on loopback, a real
//! WebSocket client (`tokio-tungstenite`) or raw frames over a `TcpStream`,
//! and the example plugins (Rust legacy on the fast and baseline
//! transports, Rust v2, C legacy; in process and in worker processes).
//!
//! Every wait is bounded generously (30 s) so that a lost wake-up fails a
//! test instead of hanging it; no test asserts a timing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{example, scratch_dir, stats, Proxy, SERVER_YAML};
use futures_util::{SinkExt, StreamExt};
use nylon_transport::ws;
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
        r#"{SERVER_YAML}plugins:
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
  - name: lobby
    service_type: plugin
    plugin: {{ name: ex, entry: {lobby} }}
routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/echo"
        service: {{ name: echo }}
      - path: "/room"
        service: {{ name: room }}
      - path: "/lobby"
        service: {{ name: lobby }}
"#,
        file = file.display(),
        lobby = if kind == Kind::C { room } else { "ws" },
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

/// The next data message (pings and pongs skipped), within one bound for
/// the whole wait (the server's pings must not extend it).
async fn next(ws: &mut Ws) -> Message {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
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

/// Room chat: every member gets every message of the room, the sender
/// included, each sender's messages in the order it sent them; a member of
/// another room gets none of them; text and binary.
async fn case_room(proxy: &Proxy) {
    const MEMBERS: usize = 4;
    const EACH: usize = 25;
    // One member at a time joins and sees its own marker come back: then
    // it is a member, and every earlier member gets its marker too.
    let mut members = Vec::new();
    for i in 0..MEMBERS {
        // Half name the room in the query, half with their first message.
        let mut ws = if i % 2 == 0 {
            connect(proxy, "/room?room=r1").await
        } else {
            let mut ws = connect(proxy, "/room").await;
            send_text(&mut ws, "r1").await;
            ws
        };
        send_text(&mut ws, &format!("ready{i}")).await;
        assert_eq!(next(&mut ws).await, Message::text(format!("ready{i}")));
        members.push(ws);
    }
    let mut other = connect(proxy, "/room?room=r2").await;
    // Drain the other members' markers.
    for (i, ws) in members.iter_mut().enumerate() {
        let mut seen = [false; MEMBERS];
        seen[i] = true;
        // The markers of the members that joined after i.
        for _ in (i + 1)..MEMBERS {
            match next(ws).await {
                Message::Text(t) => {
                    let j: usize = t
                        .as_str()
                        .trim_start_matches("ready")
                        .parse()
                        .expect("a marker");
                    assert!(j > i && !seen[j], "marker {j} at member {i}");
                    seen[j] = true;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
    }
    for round in 0..EACH {
        for (i, ws) in members.iter_mut().enumerate() {
            if round % 5 == 4 {
                ws.send(Message::binary(vec![i as u8, round as u8]))
                    .await
                    .expect("send");
            } else {
                send_text(ws, &format!("{i}:{round}")).await;
            }
        }
    }
    for ws in &mut members {
        let mut next_round = [0usize; MEMBERS];
        for _ in 0..MEMBERS * EACH {
            let (sender, round) = match next(ws).await {
                Message::Text(t) => {
                    let (a, b) = t.as_str().split_once(':').expect("i:round");
                    (
                        a.parse::<usize>().expect("i"),
                        b.parse::<usize>().expect("round"),
                    )
                }
                Message::Binary(b) => (usize::from(b[0]), usize::from(b[1])),
                m => panic!("unexpected {m:?}"),
            };
            assert_eq!(
                round, next_round[sender],
                "sender {sender}'s messages in order"
            );
            next_round[sender] += 1;
        }
        assert_eq!(next_round, [EACH; MEMBERS]);
    }
    // The other room heard nothing: its own message is the next thing it gets.
    send_text(&mut other, "alone").await;
    assert_eq!(next(&mut other).await, Message::text("alone"));
    for mut ws in members {
        ws.close(None).await.expect("close");
    }
}

/// The plugin closes (the `ws` entry on `bye`): the client gets close 1000
/// after everything the plugin sent before.
async fn case_plugin_close(proxy: &Proxy) {
    let mut ws = connect(proxy, "/lobby").await;
    send_text(&mut ws, "one").await;
    send_text(&mut ws, "bye").await;
    // `ws` echoes and broadcasts to the lobby (which this client is in).
    for _ in 0..2 {
        assert_eq!(next(&mut ws).await, Message::text("one"));
    }
    match next(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
        m => panic!("expected close 1000, got {m:?}"),
    }
}

/// A raw client: the handshake by hand and frames as bytes, for what a
/// WebSocket library will not send (fragments with a ping inside, invalid
/// UTF-8, unmasked frames).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `req` and reads the response head (up to the blank line).
async fn http_head(proxy: &Proxy, req: &str) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            return (s, head, rest);
        }
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("a response within the bound")
            .expect("read");
        assert!(
            n > 0,
            "EOF before the response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

impl Raw {
    async fn connect(proxy: &Proxy, path: &str) -> Raw {
        let (s, head, rest) = http_head(proxy, &upgrade_request(path, "")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        Raw { s, buf: rest }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }

    /// The next server frame: (fin, opcode, payload); `None` at EOF.
    async fn frame(&mut self) -> Option<(bool, u8, Vec<u8>)> {
        let mut chunk = vec![0u8; 65536];
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                assert_eq!(b1 & 0x80, 0, "server frames are not masked");
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                        4,
                    ),
                    127 if self.buf.len() >= 10 => {
                        let mut l = [0u8; 8];
                        l.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(l) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (usize::from(n), 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((b0 & 0x80 != 0, b0 & 0x0f, payload));
                }
            }
            let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
                .await
                .expect("a frame within the bound")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames up to the server's close (within one bound for the
    /// whole wait); its code.
    async fn close_code(&mut self) -> u16 {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.frame().await {
                    Some((_, 0x8, p)) => {
                        assert!(p.len() >= 2, "a close with a code");
                        return u16::from_be_bytes([p[0], p[1]]);
                    }
                    Some(_) => {}
                    None => panic!("EOF without a close frame"),
                }
            }
        })
        .await
        .expect("a close within the bound")
    }
}

const M: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frag(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    ws::client_frame_fragment(fin, op, payload, M)
}

/// RFC 6455 through the proxy: fragmentation with control frames inside,
/// ping/pong, invalid UTF-8 (also split across fragments), oversize,
/// protocol errors, and close-code validation.
async fn case_rfc(proxy: &Proxy) {
    use ws::opcode::{BINARY, CLOSE, CONTINUATION, PING, TEXT};

    // A text message in 40 fragments with a ping in the middle: the pong
    // comes first (with the ping's payload), then the whole message.
    let mut raw = Raw::connect(proxy, "/echo").await;
    let text: String = (0..40).map(|i| format!("é{i}-")).collect();
    let bytes = text.as_bytes();
    let parts: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(40)).collect();
    let mut wire = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let op = if i == 0 { TEXT } else { CONTINUATION };
        wire.extend(frag(i + 1 == parts.len(), op, p));
        if i == 20 {
            wire.extend(frag(true, PING, b"mid"));
        }
    }
    raw.send(&wire).await;
    assert_eq!(raw.frame().await, Some((true, 0xA, b"mid".to_vec())));
    assert_eq!(raw.frame().await, Some((true, TEXT, bytes.to_vec())));
    // A close with a code and a reason: echoed.
    let mut close = 4000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"done");
    raw.send(&frag(true, CLOSE, &close)).await;
    assert_eq!(raw.frame().await, Some((true, CLOSE, close)));

    // Invalid UTF-8 in one frame, and split across fragments: 1007.
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(true, TEXT, b"ok\xff")).await;
    assert_eq!(raw.close_code().await, 1007);
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(false, TEXT, b"a\xce")).await;
    raw.send(&frag(true, CONTINUATION, b"\x28b")).await;
    assert_eq!(raw.close_code().await, 1007);

    // A message over --ws-max-message (64 KiB), in one frame and in
    // fragments each under the frame limit: 1009.
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(true, BINARY, &vec![7u8; 70_000])).await;
    assert_eq!(raw.close_code().await, 1009);
    let mut raw = Raw::connect(proxy, "/echo").await;
    for i in 0..3 {
        let op = if i == 0 { BINARY } else { CONTINUATION };
        raw.send(&frag(i == 2, op, &vec![7u8; 30_000])).await;
    }
    assert_eq!(raw.close_code().await, 1009);

    // Protocol errors: an unmasked frame, a continuation with no message,
    // a fragmented ping, a close code that may not be sent: 1002.
    let mut raw = Raw::connect(proxy, "/echo").await;
    let mut unmasked = Vec::new();
    ws::write_frame(&mut unmasked, TEXT, b"hi");
    raw.send(&unmasked).await;
    assert_eq!(raw.close_code().await, 1002);
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(true, CONTINUATION, b"x")).await;
    assert_eq!(raw.close_code().await, 1002);
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(false, PING, b"x")).await;
    assert_eq!(raw.close_code().await, 1002);
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(true, CLOSE, &1005u16.to_be_bytes())).await;
    assert_eq!(raw.close_code().await, 1002);

    // Binary echo through the raw client (the C and Rust echo entries
    // answer text; the connection is still fine after a ping).
    let mut raw = Raw::connect(proxy, "/echo").await;
    raw.send(&frag(true, PING, b"")).await;
    assert_eq!(raw.frame().await, Some((true, 0xA, Vec::new())));
    raw.send(&frag(true, TEXT, b"after ping")).await;
    assert_eq!(
        raw.frame().await,
        Some((true, TEXT, b"after ping".to_vec()))
    );
}

/// Bad upgrades: 400 (or 426 with the version the host speaks), and the
/// connection is not switched.
async fn case_bad_upgrade(proxy: &Proxy) {
    let cases = [
        // no key
        (
            "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                .to_string(),
            400,
        ),
        // a key that is not 16 bytes
        (
            upgrade_request("/echo", "").replace(KEY, "c2hvcnQ="),
            400,
        ),
        // no upgrade token in Connection
        (
            upgrade_request("/echo", "").replace("Connection: Upgrade", "Connection: keep-alive"),
            400,
        ),
        // version 8
        (
            upgrade_request("/echo", "").replace("Version: 13", "Version: 8"),
            426,
        ),
        // a plain request on a WebSocket route
        (
            "GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (req, status) in cases {
        let (_s, head, _) = http_head(proxy, &req).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?} -> {head}"
        );
        if status == 426 {
            assert!(
                head.to_ascii_lowercase()
                    .contains("sec-websocket-version: 13"),
                "{head}"
            );
        }
    }
}

async fn suite(kind: Kind, transport: &str) {
    suite_with(kind, transport, &[]).await;
}

async fn suite_with(kind: Kind, transport: &str, extra: &[&str]) {
    let mut args = vec![
        "--transport",
        transport,
        "--ws-max-frame",
        "65536",
        "--ws-max-message",
        "65536",
    ];
    args.extend_from_slice(extra);
    let proxy = start(
        kind,
        &format!("{kind:?}-{transport}{}", extra.join("")),
        &args,
    );
    // Boxed: debug builds of these futures are large.
    Box::pin(case_echo(&proxy)).await;
    Box::pin(case_room(&proxy)).await;
    if kind != Kind::C {
        Box::pin(case_plugin_close(&proxy)).await;
    }
    Box::pin(case_rfc(&proxy)).await;
    Box::pin(case_bad_upgrade(&proxy)).await;
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

/// The same suite with the plugins in worker processes: the handshake is
/// the proxy's, the connection's traffic crosses the worker's rings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_legacy_isolated() {
    suite_with(Kind::Rust, "fast", &["--isolation", "process"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_plugin_isolated() {
    suite_with(Kind::V2, "fast", &["--isolation", "process"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_plugin_isolated() {
    suite_with(Kind::C, "fast", &["--isolation", "process"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_plugin_on_fast() {
    suite(Kind::C, "fast").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_plugin_on_baseline() {
    suite(Kind::C, "baseline").await;
}

/// The server pings (`--ws-ping-interval-ms`) and closes an idle client
/// with 1001 (`--ws-idle-timeout-ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_ping_and_idle_timeout() {
    let proxy = start(
        Kind::Rust,
        "idle",
        &[
            "--ws-ping-interval-ms",
            "100",
            "--ws-idle-timeout-ms",
            "1000",
        ],
    );
    let mut raw = Raw::connect(&proxy, "/echo").await;
    let mut pings = 0;
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match raw.frame().await {
                Some((true, 0x9, _)) => pings += 1,
                Some((_, 0x8, p)) => break u16::from_be_bytes([p[0], p[1]]),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("closed within the bound");
    assert!(pings > 0, "the server pinged before the idle timeout");
    assert_eq!(code, 1001);
}

/// A slow client (it stops reading) in a room with a fast one: the fast one
/// gets every broadcast in order, the slow one is dropped (1013, or EOF
/// when even the close frame cannot be written) per the bounded-queue
/// policy, and the host's memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_client_is_dropped_others_keep_receiving() {
    const N: usize = 4000;
    const SIZE: usize = 16 << 10;
    let proxy = start(
        Kind::Rust,
        "slow",
        &["--ws-queue", "64", "--ws-queue-bytes", "262144"],
    );
    let mut slow = Raw::connect(&proxy, "/room?room=s").await;
    // It is a member once its own broadcast comes back; then it stops reading.
    slow.send(&frag(true, ws::opcode::TEXT, b"slow")).await;
    assert_eq!(
        slow.frame().await,
        Some((true, ws::opcode::TEXT, b"slow".to_vec()))
    );
    let rss_before = proxy.rss_kib();

    let fast = connect(&proxy, "/room?room=s").await;
    let (mut tx, mut rx) = fast.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let mut m = vec![b'x'; SIZE];
            m[..8].copy_from_slice(&(i as u64).to_be_bytes());
            tx.send(Message::binary(m)).await.expect("send");
        }
        tx
    });
    let mut got = 0;
    let mut peak_rss = 0;
    while got < N {
        let m = tokio::time::timeout(WAIT, rx.next())
            .await
            .expect("the fast member keeps receiving")
            .expect("open")
            .expect("valid");
        if let Message::Binary(b) = m {
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[..8]);
            assert_eq!(u64::from_be_bytes(n) as usize, got, "in order");
            got += 1;
            if got % 500 == 0 {
                peak_rss = peak_rss.max(proxy.rss_kib());
            }
        }
    }
    let _tx = writer.await.expect("writer");
    // N x 16 KiB = 64 MiB went to the room; the slow member may hold its
    // queue's 256 KiB and its socket buffers, not the flood.
    assert!(
        peak_rss < rss_before + 48 * 1024,
        "host memory grew from {rss_before} KiB to {peak_rss} KiB"
    );
    // The slow client reads again: what was in its socket, then the end.
    let mut data = 0;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match slow.frame().await {
                Some((_, 0x2, _)) => data += 1,
                Some((_, 0x8, p)) => break Some(u16::from_be_bytes([p[0], p[1]])),
                Some(_) => {}
                None => break None,
            }
        }
    })
    .await
    .expect("the slow client's connection ended within the bound");
    assert!(
        data < N,
        "the slow client was dropped, not served everything"
    );
    assert!(matches!(end, None | Some(1013)), "ended with {end:?}");
    let (_, log) = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("terminate");
    assert_eq!(stats(&log)["ws_dropped_slow"], 1, "{log}");
}

/// 1,000 concurrent connections (all open at once), each sending 20
/// messages and getting each echo back, nothing lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_connections() {
    thousand(&[]).await;
}

/// The same with the plugin in its two worker processes (500 connections
/// each).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_connections_isolated() {
    thousand(&["--isolation", "process"]).await;
}

async fn thousand(args: &[&str]) {
    const CONNS: usize = 1000;
    const MSGS: usize = 20;
    let proxy = start(Kind::Rust, &format!("thousand{}", args.join("")), args);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONNS));
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let url = format!("ws://127.0.0.1:{}/echo", proxy.port);
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let (barrier, connecting, url) = (barrier.clone(), connecting.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire().await.expect("semaphore");
            let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
                .await
                .expect("connect within the bound")
                .expect("handshake");
            drop(permit);
            barrier.wait().await;
            for i in 0..MSGS {
                ws.send(Message::text(format!("{c}/{i}")))
                    .await
                    .expect("send");
            }
            for i in 0..MSGS {
                assert_eq!(next(&mut ws).await, Message::text(format!("{c}/{i}")));
            }
            ws.close(None).await.expect("close");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("every connection done within the bound")
            .expect("connection task");
    }
    let (status, log) = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "{log}");
    let st = stats(&log);
    assert_eq!(st["ws_upgrades"], CONNS as u64, "{st}");
    assert_eq!(st["sessions_opened"], st["sessions_closed"], "{st}");
}
