//! The Redis cluster adapter (`nylon_host::ws::redis`) against a real
//! `redis-server`, without the proxy: upstream Nylon's event JSON both ways,
//! its key layout, malformed events, one command connection for all
//! publishes, the janitor, a Redis restart, and a full queue.

mod redis_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use nylon_host::config::RedisConfig;
use nylon_host::ws::cluster::{Cluster, ConnId, LocalRooms, RoomMessage};
use nylon_host::ws::redis::RedisCluster;
use redis::Commands as _;
use redis_support::{wait_until, RedisServer};

/// Records what the adapter delivers.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, RoomMessage)>>);

impl LocalRooms for Recorder {
    fn deliver(&self, room: &str, msg: &RoomMessage) {
        self.0.lock().unwrap().push((room.to_owned(), msg.clone()));
    }
}

impl Recorder {
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn take(&self) -> Vec<(String, RoomMessage)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn config(redis: &RedisServer) -> RedisConfig {
    let mut c = RedisConfig::new("127.0.0.1", redis.port);
    c.heartbeat_interval = Duration::from_millis(200);
    c.node_ttl = Duration::from_secs(2);
    c.janitor_interval = Duration::from_millis(200);
    c
}

async fn start(redis: &RedisServer) -> (Arc<RedisCluster>, Arc<Recorder>) {
    let rooms = Arc::new(Recorder::default());
    let cluster = RedisCluster::start(&config(redis), rooms.clone())
        .await
        .expect("start the adapter");
    (cluster, rooms)
}

const OTHER_NODE: &str = "0b0e6f1c-7d55-4b4a-9a53-3c2f0f2f9e01";

fn text(s: &str) -> RoomMessage {
    RoomMessage::Text(Bytes::copy_from_slice(s.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_broadcast_is_delivered() {
    let Some(redis) = RedisServer::start("an_upstream_broadcast_is_delivered") else {
        return;
    };
    let (cluster, rooms) = start(&redis).await;
    let mut c = redis.conn();
    // Exactly what upstream's serde writes for `WebSocketEvent::BroadcastToRoom`.
    let events = [
        format!(
            r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"hi é"}},"exclude_connection":null,"sender_node_id":"{OTHER_NODE}"}}}}"#
        ),
        format!(
            r#"{{"BroadcastToRoom":{{"room":"game:1","message":{{"Binary":[0,1,255]}},"exclude_connection":"{OTHER_NODE}:7","sender_node_id":"{OTHER_NODE}"}}}}"#
        ),
    ];
    for e in &events {
        let _: i64 = c.publish("nylon:ws:events", e).unwrap();
    }
    wait_until("two deliveries", 20, || rooms.len() == 2).await;
    assert_eq!(
        rooms.take(),
        [
            ("lobby".to_owned(), text("hi é")),
            (
                "game:1".to_owned(),
                RoomMessage::Binary(Bytes::from_static(&[0, 1, 255]))
            ),
        ]
    );
    let stats = cluster.stats();
    assert_eq!((stats.delivered, stats.malformed), (2, 0), "{stats:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_events_and_events_for_nobody_here_are_not_delivered() {
    let Some(redis) = RedisServer::start("own_events_are_not_delivered") else {
        return;
    };
    let (cluster, rooms) = start(&redis).await;
    let me = cluster.node_id().to_owned();
    let mine: ConnId = Arc::from("5f1b8f5e-2b1e-4a43-8a4c-6f7c1b3e9d10");
    cluster.connection_opened(&mine);
    cluster.flush().await;
    let mut c = redis.conn();
    let ignored = [
        // This node's own broadcast, heard back.
        format!(
            r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"echo"}},"exclude_connection":null,"sender_node_id":"{me}"}}}}"#
        ),
        // Excludes a connection of this node: LocalRooms cannot skip one member.
        format!(
            r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"x"}},"exclude_connection":"{mine}","sender_node_id":"{OTHER_NODE}"}}}}"#
        ),
        format!(
            r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Close":{{"code":1000,"reason":""}}}},"exclude_connection":null,"sender_node_id":"{OTHER_NODE}"}}}}"#
        ),
        format!(
            r#"{{"JoinRoom":{{"connection_id":"a","room":"lobby","node_id":"{OTHER_NODE}"}}}}"#
        ),
        format!(r#"{{"Disconnect":{{"connection_id":"a","node_id":"{OTHER_NODE}"}}}}"#),
        format!(
            r#"{{"SendToConnection":{{"connection_id":"a","message":{{"Text":"x"}},"sender_node_id":"{OTHER_NODE}"}}}}"#
        ),
    ];
    for e in &ignored {
        let _: i64 = c.publish("nylon:ws:events", e).unwrap();
    }
    // One channel keeps publish order: once the marker is here, the rest was handled.
    let marker = format!(
        r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"marker"}},"exclude_connection":null,"sender_node_id":"{OTHER_NODE}"}}}}"#
    );
    let _: i64 = c.publish("nylon:ws:events", &marker).unwrap();
    wait_until("the marker", 20, || rooms.len() == 1).await;
    assert_eq!(rooms.take(), [("lobby".to_owned(), text("marker"))]);
    let s = cluster.stats();
    assert_eq!((s.own, s.ignored, s.delivered), (1, 5, 1), "{s:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_are_counted_and_skipped() {
    let Some(redis) = RedisServer::start("malformed_events_are_counted_and_skipped") else {
        return;
    };
    let (cluster, rooms) = start(&redis).await;
    let mut c = redis.conn();
    let bad: [&[u8]; 6] = [
        b"{",
        b"",
        b"\xff\xfe not utf-8",
        br#"{"Nope":{}}"#,
        br#"{"BroadcastToRoom":{"room":1,"message":{"Text":"x"},"sender_node_id":"n"}}"#,
        br#"{"BroadcastToRoom":{"room":"r","message":{"Binary":[256]},"sender_node_id":"n"}}"#,
    ];
    for b in bad {
        let _: i64 = c.publish("nylon:ws:events", b).unwrap();
    }
    let marker = format!(
        r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"after"}},"exclude_connection":null,"sender_node_id":"{OTHER_NODE}"}}}}"#
    );
    let _: i64 = c.publish("nylon:ws:events", &marker).unwrap();
    wait_until("the event after the bad ones", 20, || rooms.len() == 1).await;
    assert_eq!(rooms.take(), [("lobby".to_owned(), text("after"))]);
    let s = cluster.stats();
    assert_eq!((s.malformed, s.delivered), (6, 1), "{s:?}");
    cluster.shutdown().await;
}

/// What this node publishes, byte for byte as upstream's serde writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_are_upstream_json() {
    let Some(redis) = RedisServer::start("published_events_are_upstream_json") else {
        return;
    };
    let (cluster, _rooms) = start(&redis).await;
    let mut sub = redis.client().get_async_pubsub().await.unwrap();
    sub.subscribe("nylon:ws:events").await.unwrap();
    let mut messages = sub.into_on_message();

    let conn: ConnId = Arc::from("c0ffee00-0000-4000-8000-000000000001");
    cluster.connection_opened(&conn);
    cluster.joined(&conn, "lobby");
    cluster.broadcast("lobby", &text("hi \"there\" é\n"));
    cluster.broadcast(
        "lobby",
        &RoomMessage::Binary(Bytes::from_static(&[0, 1, 255])),
    );
    cluster.left(&conn, "lobby");
    cluster.joined(&conn, "game");
    cluster.connection_closed(&conn);
    cluster.flush().await;

    let n = cluster.node_id();
    let golden = [
        r#"{"JoinRoom":{"connection_id":"C","room":"lobby","node_id":"N"}}"#,
        r#"{"BroadcastToRoom":{"room":"lobby","message":{"Text":"hi \"there\" é\n"},"exclude_connection":null,"sender_node_id":"N"}}"#,
        r#"{"BroadcastToRoom":{"room":"lobby","message":{"Binary":[0,1,255]},"exclude_connection":null,"sender_node_id":"N"}}"#,
        r#"{"LeaveRoom":{"connection_id":"C","room":"lobby","node_id":"N"}}"#,
        r#"{"JoinRoom":{"connection_id":"C","room":"game","node_id":"N"}}"#,
        r#"{"LeaveRoom":{"connection_id":"C","room":"game","node_id":"N"}}"#,
        r#"{"Disconnect":{"connection_id":"C","node_id":"N"}}"#,
    ];
    for want in golden {
        let want = want
            .replace("\"C\"", &format!("\"{conn}\""))
            .replace("\"N\"", &format!("\"{n}\""));
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::next(&mut messages),
        )
        .await
        .expect("an event within 20 s")
        .expect("the subscription is open");
        let got: String = got.get_payload().unwrap();
        assert_eq!(got, want);
    }
    // The adapter hears its own seven events back and skips them.
    wait_until("seven own events", 20, || cluster.stats().own == 7).await;
    let s = cluster.stats();
    assert_eq!((s.published, s.dropped, s.delivered), (2, 0, 0), "{s:?}");
    cluster.shutdown().await;
}

fn members(c: &mut redis::Connection, key: &str) -> BTreeSet<String> {
    c.smembers(key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_upstream_layout() {
    let Some(redis) = RedisServer::start("keys_follow_upstream_layout") else {
        return;
    };
    let (cluster, _rooms) = start(&redis).await;
    let node = cluster.node_id().to_owned();
    let a: ConnId = Arc::from("aaaaaaaa-0000-4000-8000-000000000001");
    let b: ConnId = Arc::from("bbbbbbbb-0000-4000-8000-000000000002");
    cluster.connection_opened(&a);
    cluster.connection_opened(&b);
    cluster.joined(&a, "lobby");
    cluster.joined(&b, "lobby");
    cluster.joined(&a, "game");
    cluster.flush().await;

    let mut c = redis.conn();
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let ttl: i64 = c.pttl(format!("nylon:ws:nodes:{node}")).unwrap();
    assert!(ttl > 0, "the heartbeat key has a time to live: {ttl}");
    assert_eq!(
        members(&mut c, &format!("nylon:ws:node_connections:{node}")),
        set(&[&a, &b])
    );
    assert_eq!(members(&mut c, "nylon:ws:rooms:lobby"), set(&[&a, &b]));
    assert_eq!(members(&mut c, "nylon:ws:rooms:game"), set(&[&a]));
    assert_eq!(
        members(&mut c, &format!("nylon:ws:connection_rooms:{a}")),
        set(&["lobby", "game"])
    );
    // Upstream's `WebSocketConnection`.
    let json: String = c.get(format!("nylon:ws:connections:{a}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["id"], *a);
    assert_eq!(v["node_id"], node);
    assert!(
        v["session_id"]
            .as_u64()
            .is_some_and(|s| s <= u64::from(u32::MAX)),
        "{v}"
    );
    assert!(
        v["connected_at"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000),
        "{v}"
    );
    assert!(v["rooms"].is_array() && v["metadata"].is_object(), "{v}");

    cluster.left(&a, "game");
    cluster.connection_closed(&b);
    cluster.flush().await;
    let exists = |c: &mut redis::Connection, k: String| -> bool { c.exists(k).unwrap() };
    assert!(
        !exists(&mut c, "nylon:ws:rooms:game".into()),
        "an empty room has no key"
    );
    assert_eq!(members(&mut c, "nylon:ws:rooms:lobby"), set(&[&a]));
    assert!(!exists(&mut c, format!("nylon:ws:connections:{b}")));
    assert!(!exists(&mut c, format!("nylon:ws:connection_rooms:{b}")));
    assert_eq!(
        members(&mut c, &format!("nylon:ws:node_connections:{node}")),
        set(&[&a])
    );
    cluster.shutdown().await;
    assert!(
        !exists(&mut c, format!("nylon:ws:nodes:{node}")),
        "a node that shuts down removes its heartbeat"
    );
}

/// Upstream opens a connection per publish; this adapter uses its one
/// command connection: Redis accepts no new connection during 1,000
/// broadcasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_publishes_open_no_connection() {
    let Some(redis) = RedisServer::start("a_thousand_publishes_open_no_connection") else {
        return;
    };
    let (cluster, _rooms) = start(&redis).await;
    let mut c = redis.conn();
    let accepted = |c: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(c).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("total_connections_received in INFO stats")
    };
    let before = accepted(&mut c);
    for i in 0..1000 {
        cluster.broadcast("lobby", &text(&format!("message {i}")));
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    cluster.flush().await;
    let after = accepted(&mut c);
    let s = cluster.stats();
    assert_eq!((s.published, s.dropped), (1000, 0), "{s:?}");
    assert_eq!(
        after, before,
        "connections accepted by Redis during 1,000 publishes"
    );
    cluster.shutdown().await;
}

/// A dead node's connections (written by hand in upstream's layout, with no
/// heartbeat key) leave every room; a live node's stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_janitor_cleans_up_a_dead_node() {
    let Some(redis) = RedisServer::start("the_janitor_cleans_up_a_dead_node") else {
        return;
    };
    let mut c = redis.conn();
    let dead = "dead0000-0000-4000-8000-000000000000";
    let alive = "a11ve000-0000-4000-8000-000000000000";
    let _: () = redis::pipe()
        .set(format!("nylon:ws:nodes:{alive}"), "1")
        .sadd(format!("nylon:ws:node_connections:{dead}"), &["d1", "d2"])
        .sadd(format!("nylon:ws:node_connections:{alive}"), "a1")
        .set("nylon:ws:connections:d1", "{}")
        .set("nylon:ws:connections:d2", "{}")
        .sadd("nylon:ws:connection_rooms:d1", &["lobby", "game"])
        .sadd("nylon:ws:connection_rooms:d2", "lobby")
        .sadd("nylon:ws:connection_rooms:a1", "lobby")
        .sadd("nylon:ws:rooms:lobby", &["d1", "d2", "a1"])
        .sadd("nylon:ws:rooms:game", "d1")
        .query(&mut c)
        .unwrap();

    let (cluster, _rooms) = start(&redis).await;
    let key = format!("nylon:ws:node_connections:{dead}");
    let mut probe = redis.conn();
    wait_until("the janitor to remove the dead node", 20, || {
        !probe.exists::<_, bool>(&key).unwrap()
    })
    .await;
    let set = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(members(&mut c, "nylon:ws:rooms:lobby"), set(&["a1"]));
    for gone in [
        "nylon:ws:rooms:game",
        "nylon:ws:connections:d1",
        "nylon:ws:connections:d2",
        "nylon:ws:connection_rooms:d1",
        "nylon:ws:connection_rooms:d2",
    ] {
        assert!(!c.exists::<_, bool>(gone).unwrap(), "{gone} is left");
    }
    assert_eq!(
        members(&mut c, &format!("nylon:ws:node_connections:{alive}")),
        set(&["a1"])
    );
    assert_eq!(cluster.stats().cleaned, 2);
    cluster.shutdown().await;
}

/// Redis restarts empty: the adapter reconnects both connections, writes its
/// connections and rooms back, and delivers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_recovers_from_a_redis_restart() {
    let Some(mut redis) = RedisServer::start("it_recovers_from_a_redis_restart") else {
        return;
    };
    let (cluster, rooms) = start(&redis).await;
    let node = cluster.node_id().to_owned();
    let a: ConnId = Arc::from("aaaaaaaa-0000-4000-8000-00000000000a");
    cluster.connection_opened(&a);
    cluster.joined(&a, "lobby");
    cluster.flush().await;

    redis.restart();
    let mut c = redis.conn();
    let lobby_key = "nylon:ws:rooms:lobby".to_owned();
    let mut probe = redis.conn();
    wait_until("the keys to be written back", 30, || {
        probe
            .sismember::<_, _, bool>(&lobby_key, &*a)
            .unwrap_or(false)
    })
    .await;
    assert!(c
        .exists::<_, bool>(format!("nylon:ws:nodes:{node}"))
        .unwrap());
    assert!(c
        .exists::<_, bool>(format!("nylon:ws:connections:{a}"))
        .unwrap());
    assert!(c
        .sismember::<_, _, bool>(format!("nylon:ws:node_connections:{node}"), &*a)
        .unwrap());
    assert!(c
        .sismember::<_, _, bool>(format!("nylon:ws:connection_rooms:{a}"), "lobby")
        .unwrap());

    // The subscription is back: publish until one arrives (a publish before the
    // resubscription reaches nobody).
    let event = format!(
        r#"{{"BroadcastToRoom":{{"room":"lobby","message":{{"Text":"back"}},"exclude_connection":null,"sender_node_id":"{OTHER_NODE}"}}}}"#
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rooms.len() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery 30 s after the restart"
        );
        let _: i64 = c.publish("nylon:ws:events", &event).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rooms.take()[0], ("lobby".to_owned(), text("back")));
    // And this node's broadcasts get through again.
    cluster.broadcast("lobby", &text("out"));
    cluster.flush().await;
    let s = cluster.stats();
    assert!(
        s.published >= 1 && s.reconnects >= 1 && s.resyncs >= 1,
        "{s:?}"
    );
    cluster.shutdown().await;
}

/// The Cluster methods never wait: past the queue's bound, operations are
/// dropped and counted.
#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_drops_and_counts() {
    let Some(redis) = RedisServer::start("a_full_queue_drops_and_counts") else {
        return;
    };
    let mut cfg = config(&redis);
    cfg.queue = std::num::NonZeroUsize::new(4).unwrap();
    let cluster = RedisCluster::connect(&cfg).await.unwrap();
    // One thread: the adapter's task cannot run until this loop yields.
    for _ in 0..1000 {
        cluster.broadcast("lobby", &text("x"));
    }
    assert_eq!(cluster.stats().dropped, 996);
    cluster.flush().await;
    assert_eq!(cluster.stats().published, 4);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisCluster::connect(&RedisConfig::new("127.0.0.1", port))
        .await
        .expect_err("nothing listens there");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("cannot connect to Redis at 127.0.0.1:{port}")),
        "{msg}"
    );
}
