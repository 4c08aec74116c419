//! `websocket:`: upstream Nylon's `adapter_type` and `redis:` map, with our
//! heartbeat and janitor timings; errors name file, line, column and key path.

use std::time::Duration;

use nylon_host::config::{RedisConfig, WebSocketAdapter};
use nylon_host::{Config, ConfigErrorKind as K};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse_with_env(text, "ws.yaml", &|_| None).map_err(|e| format!("{:?}: {e}", e.kind()))
}

#[test]
fn absent_is_memory() {
    assert_eq!(parse("").unwrap().websocket, WebSocketAdapter::Memory);
    let c = parse("websocket:\n  adapter_type: memory\n").unwrap();
    assert_eq!(c.websocket, WebSocketAdapter::Memory);
}

/// Upstream's documented runtime example, as written there.
#[test]
fn upstreams_redis_example() {
    let c = parse(
        "\
websocket:
  adapter_type: redis    # memory | redis | cluster
  redis:
    host: localhost
    port: 6379
    password: null
    db: 0
    key_prefix: \"nylon:ws\"
",
    )
    .unwrap();
    assert_eq!(
        c.websocket,
        WebSocketAdapter::Redis(RedisConfig::new("localhost", 6379))
    );
}

#[test]
fn every_key() {
    let c = parse(
        "\
websocket:
  adapter_type: redis
  redis:
    host: 10.0.0.5
    port: 6380
    password: s3cret
    db: 3
    key_prefix: app:ws
    heartbeat_interval: 500ms
    node_ttl: 2s
    janitor_interval: 1s
    queue: 128
",
    )
    .unwrap();
    let WebSocketAdapter::Redis(r) = c.websocket else {
        panic!("not redis");
    };
    assert_eq!(
        (
            r.host.as_str(),
            r.port,
            r.password.as_deref(),
            r.db,
            r.key_prefix.as_str()
        ),
        ("10.0.0.5", 6380, Some("s3cret"), 3, "app:ws")
    );
    assert_eq!(
        (
            r.heartbeat_interval,
            r.node_ttl,
            r.janitor_interval,
            r.queue.get()
        ),
        (
            Duration::from_millis(500),
            Duration::from_secs(2),
            Duration::from_secs(1),
            128
        )
    );
    assert!(
        !format!("{r:?}").contains("s3cret"),
        "Debug hides the password"
    );
}

#[test]
fn errors_name_the_place() {
    let cases: [(&str, K, &str); 10] = [
        (
            "websocket:\n  adapter_type: cluster\n",
            K::BadValue,
            "ws.yaml:2:17: websocket.adapter_type: `cluster` (upstream's Redis Cluster adapter) is not supported by this host; use `redis`",
        ),
        (
            "websocket:\n  adapter_type: redis\n  cluster: {nodes: []}\n  redis: {host: h, port: 1}\n",
            K::UnknownKey,
            "ws.yaml:3:3: websocket.cluster: upstream Nylon's `cluster` adapter is not supported by this host; use `adapter_type: redis` with `redis:`",
        ),
        (
            "websocket:\n  adapter_type: redis\n",
            K::MissingKey,
            "ws.yaml:2:3: websocket.redis: missing key `redis`",
        ),
        (
            "websocket:\n  adapter_type: valkey\n",
            K::BadValue,
            "ws.yaml:2:17: websocket.adapter_type: unknown adapter_type `valkey`; expected memory or redis",
        ),
        (
            "websocket:\n  adapter: redis\n",
            K::MissingKey,
            "ws.yaml:2:3: websocket.adapter_type: missing key `adapter_type`",
        ),
        (
            "websocket:\n  adapter_type: redis\n  redis:\n    host: h\n    port: 70000\n",
            K::BadValue,
            "ws.yaml:5:11: websocket.redis.port: must be between 1 and 65535",
        ),
        (
            "websocket:\n  adapter_type: redis\n  redis:\n    host: h\n    port: 6379\n    db: 300\n",
            K::BadValue,
            "ws.yaml:6:9: websocket.redis.db: must be between 0 and 255",
        ),
        (
            "websocket:\n  adapter_type: redis\n  redis:\n    host: h\n    port: 6379\n    heartbeat_interval: 30s\n",
            K::BadValue,
            "ws.yaml:4:5: websocket.redis.node_ttl: the heartbeat's time to live (30s) must be longer than heartbeat_interval (30s), or a live node is taken for dead",
        ),
        (
            "websocket:\n  adapter_type: redis\n  redis:\n    host: h\n    port: 6379\n    node_ttl: 5\n",
            K::BadType,
            "ws.yaml:6:15: websocket.redis.node_ttl: expected a duration with a unit (`500ms`, `2s`, `1m`), found an integer",
        ),
        (
            "websocket:\n  adapter_type: redis\n  redis:\n    host: h\n    port: 6379\n    prefix: x\n",
            K::UnknownKey,
            "ws.yaml:6:5: websocket.redis.prefix: unknown key `prefix`",
        ),
    ];
    let got: Vec<String> = cases
        .iter()
        .map(|(t, _, _)| parse(t).unwrap_err())
        .collect();
    let want: Vec<String> = cases
        .iter()
        .map(|(_, k, m)| format!("{k:?}: {m}"))
        .collect();
    assert_eq!(got, want);
}
