//! Two `nylon-serve` nodes on one real Redis (`websocket: {adapter_type:
//! redis}`): a WebSocket client on each in the same room (the Rust example's
//! `ws_room` entry), a broadcast on either reaches the other; then one node
//! is killed with SIGKILL and the survivor removes its members from Redis
//! within the (shortened) heartbeat window.
//!
//! Every wait is bounded (30 s); no timing is asserted.

mod common;
mod redis_support;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{example, scratch_dir, Proxy, SERVER_YAML};
use futures_util::{SinkExt, StreamExt};
use redis::Commands as _;
use redis_support::{wait_until, RedisServer};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(30);

fn config(redis_port: u16) -> String {
    format!(
        r#"{SERVER_YAML}plugins:
  - name: ex
    type: ffi
    file: "{file}"
    timeout: 10s
services:
  - name: room
    service_type: plugin
    plugin: {{ name: ex, entry: ws_room }}
routes:
  - route: {{ type: host, value: "127.0.0.1" }}
    name: app
    paths:
      - path: "/room"
        service: {{ name: room }}
websocket:
  adapter_type: redis
  redis:
    host: 127.0.0.1
    port: {redis_port}
    heartbeat_interval: 200ms
    node_ttl: 1s
    janitor_interval: 200ms
"#,
        file = example("rust_plugin").display(),
    )
}

fn node(redis: &RedisServer, tag: &str) -> (Proxy, String) {
    let dir = scratch_dir(&format!("ws-cluster-{tag}"));
    let proxy = Proxy::start(&dir, &config(redis.port), &[]);
    let log = proxy.log_text();
    let id = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("nylon-serve: websocket rooms across nodes on Redis")
                .and_then(|l| l.rsplit("node ").next())
        })
        .unwrap_or_else(|| panic!("no node id in the log:\n{log}"))
        .trim()
        .to_owned();
    (proxy, id)
}

async fn connect(proxy: &Proxy, path: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}{path}", proxy.port);
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("handshake within the bound")
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", proxy.log_text()));
    ws
}

/// The next data message (pings and pongs skipped), within one bound for the
/// whole wait (the server's pings must not extend it).
async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = ws
                .next()
                .await
                .expect("the stream is open")
                .expect("a valid message");
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return m;
            }
        }
    })
    .await
    .expect("a data message within the bound")
}

async fn send(ws: &mut Ws, m: Message) {
    ws.send(m).await.expect("send");
}

fn members(c: &mut redis::Connection, key: &str) -> BTreeSet<String> {
    c.smembers(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_room_and_the_survivor_cleans_up() {
    let Some(redis) = RedisServer::start("two_nodes_share_a_room_and_the_survivor_cleans_up")
    else {
        return;
    };
    let (a, a_id) = node(&redis, "a");
    let (b, b_id) = node(&redis, "b");
    assert_ne!(a_id, b_id);

    // One member per node; each sees its own marker back (sender included),
    // so it is in the room on its node.
    let mut on_a = connect(&a, "/room?room=lobby").await;
    send(&mut on_a, Message::text("ready-a")).await;
    assert_eq!(next(&mut on_a).await, Message::text("ready-a"));
    let mut on_b = connect(&b, "/room?room=lobby").await;
    send(&mut on_b, Message::text("ready-b")).await;
    // b's marker crossed to a.
    assert_eq!(next(&mut on_a).await, Message::text("ready-b"));
    // a's marker may still have been on its way through Redis to b when b's
    // member joined, so b may get it too, at any point before a's next
    // message: a "sync" from a (published after "ready-a", in order) bounds
    // that window. Nothing else may reach b.
    send(&mut on_a, Message::text("sync")).await;
    assert_eq!(next(&mut on_a).await, Message::text("sync"));
    let (mut seen_a, mut seen_b) = (false, false);
    loop {
        match next(&mut on_b).await {
            m if m == Message::text("sync") => break,
            m if m == Message::text("ready-b") => {
                assert!(!seen_b, "b's marker twice on b");
                seen_b = true;
            }
            m => {
                assert_eq!(m, Message::text("ready-a"), "on b before the sync");
                assert!(!seen_a, "a's marker twice on b");
                seen_a = true;
            }
        }
    }
    assert!(seen_b, "b's own marker (sender included)");

    // Both ways, text and binary, in order.
    for i in 0..20 {
        send(&mut on_a, Message::text(format!("from a {i}"))).await;
    }
    send(&mut on_b, Message::binary(vec![0u8, 1, 255])).await;
    // Each receiver: a's texts in a's order, b's binary once (the two
    // senders interleave freely).
    for ws in [&mut on_a, &mut on_b] {
        let (mut texts, mut binaries) = (0, 0);
        while texts + binaries < 21 {
            match next(ws).await {
                Message::Text(t) => {
                    assert_eq!(t.as_str(), format!("from a {texts}"));
                    texts += 1;
                }
                Message::Binary(b) => {
                    assert_eq!(&b[..], [0u8, 1, 255]);
                    binaries += 1;
                }
                m => panic!("unexpected {m:?}"),
            }
        }
        assert_eq!((texts, binaries), (20, 1));
    }

    // Redis holds both nodes' members in upstream's layout.
    let mut c = redis.conn();
    let a_conns = members(&mut c, &format!("nylon:ws:node_connections:{a_id}"));
    let b_conns = members(&mut c, &format!("nylon:ws:node_connections:{b_id}"));
    assert_eq!((a_conns.len(), b_conns.len()), (1, 1));
    let lobby: BTreeSet<String> = a_conns.union(&b_conns).cloned().collect();
    assert_eq!(members(&mut c, "nylon:ws:rooms:lobby"), lobby);
    let b_conn = b_conns.iter().next().unwrap().clone();

    // kill -9 node b: no goodbye. Node a's janitor removes b's member once
    // b's heartbeat key expires.
    drop(b);
    let mut probe = redis.conn();
    let b_set = format!("nylon:ws:node_connections:{b_id}");
    wait_until("node a to clean up node b's members", 30, || {
        !probe.exists::<_, bool>(&b_set).unwrap()
    })
    .await;
    assert_eq!(members(&mut c, "nylon:ws:rooms:lobby"), a_conns);
    for gone in [
        format!("nylon:ws:nodes:{b_id}"),
        format!("nylon:ws:connections:{b_conn}"),
        format!("nylon:ws:connection_rooms:{b_conn}"),
    ] {
        assert!(!c.exists::<_, bool>(&gone).unwrap(), "{gone} is left");
    }
    // Node a carries on.
    assert!(c
        .exists::<_, bool>(format!("nylon:ws:nodes:{a_id}"))
        .unwrap());
    send(&mut on_a, Message::text("still here")).await;
    assert_eq!(next(&mut on_a).await, Message::text("still here"));

    // A graceful stop of a removes its heartbeat (its members are then the
    // next janitor's, on any node).
    on_a.close(None).await.expect("close");
    let (status, log) = a.terminate();
    assert!(status.success(), "{log}");
    assert!(
        !c.exists::<_, bool>(format!("nylon:ws:nodes:{a_id}"))
            .unwrap(),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_stops_the_start_up() {
    let port = common::free_port();
    let dir = scratch_dir("ws-cluster-noredis");
    let path = dir.join("nylon.yaml");
    std::fs::write(&path, config(port).replace("{port}", "0")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nylon-serve"))
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run nylon-serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "websocket.redis: cannot connect to Redis at 127.0.0.1:{port}"
        )),
        "{err}"
    );
}
