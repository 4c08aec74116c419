//! Rooms across nodes through one Redis, compatible with upstream Nylon's
//! Redis adapter (`crates/nylon-store/src/redis_adapter.rs`).
//!
//! # What goes where
//!
//! - **Events** are upstream's `WebSocketEvent` JSON (serde's externally
//!   tagged form), published on the channel `{prefix}:events`:
//!   `{"BroadcastToRoom":{"room":"lobby","message":{"Text":"hi"},"exclude_connection":null,"sender_node_id":"<uuid>"}}`,
//!   a binary message as `{"Binary":[0,1,255]}`, and `JoinRoom`, `LeaveRoom`
//!   and `Disconnect` as upstream publishes them.
//! - **Keys** are upstream's: `{prefix}:nodes:{node}` (the heartbeat, with a
//!   time to live), `{prefix}:node_connections:{node}` (SET of connection
//!   ids), `{prefix}:connections:{conn}` (upstream's `WebSocketConnection`
//!   JSON), `{prefix}:connection_rooms:{conn}` and `{prefix}:rooms:{room}`
//!   (SETs).
//!
//! # Connections and tasks
//!
//! One [`redis::aio::ConnectionManager`] (one multiplexed TCP connection that
//! reconnects by itself) carries every command of the node, and one pub/sub
//! connection receives the events: never a connection per publish (upstream
//! opens one for every operation).
//!
//! The [`Cluster`] methods never wait: each one `try_send`s an operation on a
//! bounded queue (full: dropped and counted) to the **command task**, which
//! applies the operations in order, a batch per round trip (one pipeline),
//! keeps the heartbeat, and keeps a mirror of this node's connections and
//! rooms. When the heartbeat finds its own key gone (a Redis restart, or a
//! stall long enough for another node's janitor to remove this node) or a
//! command failed, the task writes the mirror back ("resync"), so the keys
//! heal without the rooms' help.
//!
//! The **pub/sub task** decodes each event and hands a `BroadcastToRoom` from
//! another node to [`LocalRooms::deliver`]; it reconnects with a backoff
//! (100 ms doubling to 5 s) and asks for a resync after a reconnection.
//!
//! The **janitor task** SCANs `{prefix}:node_connections:*` and, for each node
//! whose heartbeat key is gone, removes its connections from every room and
//! deletes its keys, in one Lua script (atomic: a node that comes back and
//! rewrites its keys at the same moment is not half-cleaned).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::cluster::{Cluster, ConnId, LocalRooms, RoomMessage};
use crate::config::RedisConfig;

/// Operations a batch round trip carries at most.
const BATCH: usize = 512;
/// Connections rewritten per pipeline by a resync.
const RESYNC_CHUNK: usize = 512;
/// Longest wait between two reconnection attempts of the pub/sub connection.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long one connection attempt or one reply may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Cleans one dead node (ARGV: prefix, node id): nothing when its heartbeat
/// key exists, else removes each of its connections from its rooms and
/// deletes the connection keys and the node's set. Returns the number of
/// connections removed, or -1 when the node is alive.
const JANITOR_LUA: &str = r"
local p, node = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':nodes:' .. node) == 1 then return -1 end
local set = p .. ':node_connections:' .. node
local conns = redis.call('SMEMBERS', set)
for _, c in ipairs(conns) do
  local cr = p .. ':connection_rooms:' .. c
  for _, r in ipairs(redis.call('SMEMBERS', cr)) do
    redis.call('SREM', p .. ':rooms:' .. r, c)
  end
  redis.call('DEL', cr, p .. ':connections:' .. c)
end
redis.call('DEL', set)
return #conns
";

/// Counters of a [`RedisCluster`] (a snapshot: [`RedisCluster::stats`]).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Broadcasts of this node that Redis accepted (PUBLISH).
    pub published: u64,
    /// Broadcasts from other nodes handed to [`LocalRooms::deliver`].
    pub delivered: u64,
    /// Operations lost: the queue was full or closed, or a broadcast's
    /// publish failed (a membership change lost this way is restored by the
    /// next resync).
    pub dropped: u64,
    /// Pub/sub payloads that are not an upstream `WebSocketEvent`.
    pub malformed: u64,
    /// This node's own events, heard back on the channel and skipped.
    pub own: u64,
    /// Well-formed events from other nodes with nothing to do on this node:
    /// `JoinRoom`, `LeaveRoom`, `Disconnect`, `SendToConnection`, a
    /// broadcast of a `Close`, `Ping` or `Pong` message, and a broadcast that
    /// excludes a connection of this node (see [`RedisCluster`]).
    pub ignored: u64,
    /// Redis commands or round trips that failed.
    pub errors: u64,
    /// Times this node wrote its connections and rooms back to Redis.
    pub resyncs: u64,
    /// Times the pub/sub connection was re-established after a loss.
    pub reconnects: u64,
    /// Connections of dead nodes this node's janitor removed.
    pub cleaned: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    malformed: AtomicU64,
    own: AtomicU64,
    ignored: AtomicU64,
    errors: AtomicU64,
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    cleaned: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// What the command task is asked to do, in order.
enum Op {
    Open(ConnId),
    Close(ConnId),
    Join(ConnId, Arc<str>),
    Leave(ConnId, Arc<str>),
    Broadcast(Arc<str>, RoomMessage),
    /// Answered once every earlier operation is applied.
    Flush(oneshot::Sender<()>),
}

struct Shared {
    node_id: Arc<str>,
    prefix: Arc<str>,
    counters: Counters,
    /// The pub/sub task reconnected: the keys may be gone.
    resync: Notify,
    /// This node's connections, as applied by the command task; read by the
    /// pub/sub task for a broadcast that names an `exclude_connection`.
    local_ids: Mutex<HashSet<ConnId>>,
}

impl Shared {
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}:{kind}:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:events", self.prefix)
    }
}

/// A [`Cluster`] on one Redis, with upstream Nylon's keys and events.
///
/// Start it with [`RedisCluster::connect`] (checks that Redis answers, writes
/// the heartbeat, starts the command and janitor tasks on the current Tokio
/// runtime), then [`RedisCluster::attach`] this node's rooms (subscribes and
/// starts delivering); [`RedisCluster::start`] does both. The tasks run until
/// [`RedisCluster::shutdown`].
///
/// What an upstream event asks that [`LocalRooms`] cannot do is counted in
/// [`RedisStats::ignored`] and not done: a `SendToConnection` (no per-connection
/// send in [`LocalRooms`]; upstream's own hosts never publish one), a
/// broadcast of a `Close`, `Ping` or `Pong` message, and a broadcast whose
/// `exclude_connection` is a connection of this node (upstream and this host
/// always publish `null` there; a connection of another node is excluded by
/// not being here, as upstream).
pub struct RedisCluster {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    stop: watch::Sender<bool>,
    client: redis::Client,
    attached: Mutex<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("node_id", &self.shared.node_id)
            .field("key_prefix", &self.shared.prefix)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn connection_info(cfg: &RedisConfig) -> anyhow::Result<ConnectionInfo> {
    let mut redis = RedisConnectionInfo::default().set_db(i64::from(cfg.db));
    if let Some(p) = &cfg.password {
        redis = redis.set_password(p);
    }
    Ok(ConnectionAddr::Tcp(cfg.host.clone(), cfg.port)
        .into_connection_info()?
        .set_redis_settings(redis))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisCluster {
    /// Connects to Redis (failing after a few seconds when it does not
    /// answer), writes this node's heartbeat, and starts the command and
    /// janitor tasks on the current Tokio runtime. Remote broadcasts are
    /// delivered once [`RedisCluster::attach`] is called.
    ///
    /// # Errors
    ///
    /// Redis cannot be reached, refuses the password or the database, or does
    /// not answer `PING`.
    pub async fn connect(cfg: &RedisConfig) -> anyhow::Result<Arc<Self>> {
        let where_ = format!("Redis at {}:{} (db {})", cfg.host, cfg.port, cfg.db);
        let client = redis::Client::open(connection_info(cfg)?)
            .with_context(|| format!("bad address for {where_}"))?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(MAX_BACKOFF);
        let mut conn = tokio::time::timeout(
            IO_TIMEOUT * 2,
            client.get_connection_manager_with_config(manager_cfg),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to {where_}"))?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .with_context(|| format!("{where_} does not answer PING"))?;
        anyhow::ensure!(pong == "PONG", "{where_} answered PING with `{pong}`");

        let shared = Arc::new(Shared {
            node_id: Arc::from(uuid::Uuid::new_v4().to_string()),
            prefix: Arc::from(cfg.key_prefix.as_str()),
            counters: Counters::default(),
            resync: Notify::new(),
            local_ids: Mutex::new(HashSet::new()),
        });
        let mut task = CommandTask {
            shared: Arc::clone(&shared),
            conn: conn.clone(),
            local: HashMap::new(),
            session_seq: 0,
            ttl_ms: millis(cfg.node_ttl),
            dirty: false,
        };
        task.heartbeat()
            .await
            .with_context(|| format!("cannot write this node's heartbeat to {where_}"))?;

        let (tx, rx) = mpsc::channel(cfg.queue.get());
        let (stop, stop_rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(task.run(rx, stop_rx.clone(), cfg.heartbeat_interval)),
            tokio::spawn(janitor(
                Arc::clone(&shared),
                conn,
                stop_rx,
                cfg.janitor_interval,
            )),
        ];
        Ok(Arc::new(Self {
            shared,
            tx,
            stop,
            client,
            attached: Mutex::new(false),
            tasks: Mutex::new(tasks),
        }))
    }

    /// Subscribes to `{prefix}:events` and delivers broadcasts from other
    /// nodes to `rooms`; returns once the subscription is in place.
    ///
    /// # Errors
    ///
    /// Already attached, or the pub/sub connection cannot be made.
    pub async fn attach(&self, rooms: Arc<dyn LocalRooms>) -> anyhow::Result<()> {
        {
            let mut attached = self
                .attached
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            anyhow::ensure!(!*attached, "this RedisCluster already delivers to rooms");
            *attached = true;
        }
        let pubsub = subscribe(&self.client, &self.shared.channel())
            .await
            .context("cannot subscribe to the Redis events channel")?;
        let handle = tokio::spawn(pubsub_task(
            Arc::clone(&self.shared),
            self.client.clone(),
            pubsub,
            rooms,
            self.stop.subscribe(),
        ));
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(handle);
        }
        Ok(())
    }

    /// [`RedisCluster::connect`], then [`RedisCluster::attach`] `rooms`.
    ///
    /// # Errors
    ///
    /// As those two.
    pub async fn start(cfg: &RedisConfig, rooms: Arc<dyn LocalRooms>) -> anyhow::Result<Arc<Self>> {
        let c = Self::connect(cfg).await?;
        c.attach(rooms).await?;
        Ok(c)
    }

    /// The counters so far.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        RedisStats {
            published: c.published.load(Relaxed),
            delivered: c.delivered.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            own: c.own.load(Relaxed),
            ignored: c.ignored.load(Relaxed),
            errors: c.errors.load(Relaxed),
            resyncs: c.resyncs.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            cleaned: c.cleaned.load(Relaxed),
        }
    }

    /// The key prefix (`nylon:ws` by default).
    pub fn key_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Waits until every operation queued before this call is applied in
    /// Redis (or failed). Unlike the [`Cluster`] methods this waits: for
    /// tests and shutdown.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Applies what is queued, stops the tasks, and deletes this node's
    /// heartbeat key so that the other nodes' janitors remove whatever
    /// connections of this node are still registered.
    pub async fn shutdown(&self) {
        self.flush().await;
        let _ = self.stop.send(true);
        let tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let _ = t.await;
        }
    }

    fn queue(&self, op: Op) {
        if self.tx.try_send(op).is_err() {
            bump(&self.shared.counters.dropped);
        }
    }
}

impl Cluster for RedisCluster {
    fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    fn connection_opened(&self, conn: &ConnId) {
        self.queue(Op::Open(Arc::clone(conn)));
    }

    fn connection_closed(&self, conn: &ConnId) {
        self.queue(Op::Close(Arc::clone(conn)));
    }

    fn joined(&self, conn: &ConnId, room: &str) {
        self.queue(Op::Join(Arc::clone(conn), Arc::from(room)));
    }

    fn left(&self, conn: &ConnId, room: &str) {
        self.queue(Op::Leave(Arc::clone(conn), Arc::from(room)));
    }

    fn broadcast(&self, room: &str, msg: &RoomMessage) {
        self.queue(Op::Broadcast(Arc::from(room), msg.clone()));
    }
}

// ---------------------------------------------------------------------------------------------
// Upstream's JSON (`crates/nylon-types/src/websocket.rs`): the same enum and field names, in the
// same order, so that serde produces and accepts the same text.

#[derive(Serialize)]
enum EventOut<'a> {
    JoinRoom {
        connection_id: &'a str,
        room: &'a str,
        node_id: &'a str,
    },
    LeaveRoom {
        connection_id: &'a str,
        room: &'a str,
        node_id: &'a str,
    },
    Disconnect {
        connection_id: &'a str,
        node_id: &'a str,
    },
    BroadcastToRoom {
        room: &'a str,
        message: MessageOut<'a>,
        exclude_connection: Option<&'a str>,
        sender_node_id: &'a str,
    },
}

#[derive(Serialize)]
enum MessageOut<'a> {
    Text(&'a str),
    /// A JSON array of numbers, as serde writes upstream's `Vec<u8>`.
    Binary(&'a [u8]),
}

/// Upstream's `WebSocketConnection`, the value of `{prefix}:connections:{conn}`.
#[derive(Serialize)]
struct ConnectionOut<'a> {
    id: &'a str,
    session_id: u32,
    rooms: [&'a str; 0],
    node_id: &'a str,
    connected_at: u64,
    metadata: HashMap<&'a str, &'a str>,
}

#[derive(Deserialize)]
enum EventIn {
    JoinRoom {
        node_id: String,
    },
    LeaveRoom {
        node_id: String,
    },
    Disconnect {
        node_id: String,
    },
    BroadcastToRoom {
        room: String,
        message: MessageIn,
        #[serde(default)]
        exclude_connection: Option<String>,
        sender_node_id: String,
    },
    SendToConnection {
        sender_node_id: String,
    },
}

#[derive(Deserialize)]
enum MessageIn {
    Text(String),
    Binary(Vec<u8>),
    Close {},
    Ping(serde::de::IgnoredAny),
    Pong(serde::de::IgnoredAny),
}

fn encode(event: &EventOut<'_>) -> Vec<u8> {
    // Serializing borrowed strings and byte slices to a Vec cannot fail.
    serde_json::to_vec(event).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The command task.

struct LocalConn {
    rooms: HashSet<Arc<str>>,
    json: Vec<u8>,
}

struct CommandTask {
    shared: Arc<Shared>,
    conn: ConnectionManager,
    /// This node's connections and their rooms, as applied.
    local: HashMap<ConnId, LocalConn>,
    session_seq: u32,
    ttl_ms: u64,
    /// A round trip failed: the keys may miss something; resync at the next
    /// heartbeat.
    dirty: bool,
}

impl CommandTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Op>,
        mut stop: watch::Receiver<bool>,
        heartbeat_every: Duration,
    ) {
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate; `connect` just wrote it
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                n = rx.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        break;
                    }
                    self.apply(&mut batch).await;
                }
                _ = heartbeat.tick() => self.beat().await,
                () = self.shared.resync.notified() => {
                    self.dirty = true;
                    self.beat().await;
                }
            }
        }
        // Shutting down: the other nodes' janitors take over this node's keys.
        let node_key = self.shared.key("nodes", &self.shared.node_id);
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&node_key)
            .query_async(&mut self.conn)
            .await;
    }

    /// Refreshes the heartbeat; writes everything back when the key was gone
    /// or an earlier round trip failed.
    async fn beat(&mut self) {
        match self.heartbeat().await {
            Ok(existed) if existed && !self.dirty => {}
            Ok(_) => {
                if self.resync().await.is_ok() {
                    self.dirty = false;
                }
            }
            Err(_) => self.dirty = true,
        }
    }

    /// `SET {prefix}:nodes:{id} 1 PX ttl GET`: whether the key existed.
    async fn heartbeat(&mut self) -> redis::RedisResult<bool> {
        let old: Option<String> = redis::cmd("SET")
            .arg(self.shared.key("nodes", &self.shared.node_id))
            .arg("1")
            .arg("PX")
            .arg(self.ttl_ms)
            .arg("GET")
            .query_async(&mut self.conn)
            .await
            .inspect_err(|_| bump(&self.shared.counters.errors))?;
        Ok(old.is_some())
    }

    /// Writes this node's connections and rooms back (idempotent SET and SADD).
    async fn resync(&mut self) -> redis::RedisResult<()> {
        bump(&self.shared.counters.resyncs);
        let s = &self.shared;
        let node_conns = s.key("node_connections", &s.node_id);
        let all: Vec<(&ConnId, &LocalConn)> = self.local.iter().collect();
        for chunk in all.chunks(RESYNC_CHUNK) {
            let mut pipe = redis::pipe();
            for (id, c) in chunk {
                pipe.cmd("SET")
                    .arg(s.key("connections", id))
                    .arg(&c.json)
                    .ignore();
                pipe.cmd("SADD").arg(&node_conns).arg(&***id).ignore();
                for r in &c.rooms {
                    pipe.cmd("SADD").arg(s.key("rooms", r)).arg(&***id).ignore();
                    pipe.cmd("SADD")
                        .arg(s.key("connection_rooms", id))
                        .arg(&**r)
                        .ignore();
                }
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn)
                .await
                .inspect_err(|_| bump(&s.counters.errors))?;
        }
        Ok(())
    }

    /// One pipeline for the whole batch, in order.
    async fn apply(&mut self, batch: &mut Vec<Op>) {
        let s = Arc::clone(&self.shared);
        let node: &str = &s.node_id;
        let channel = s.channel();
        let node_conns = s.key("node_connections", node);
        let mut pipe = redis::pipe();
        let mut broadcasts = 0u64;
        let mut flushes = Vec::new();
        for op in batch.drain(..) {
            match op {
                Op::Open(id) => {
                    self.session_seq = self.session_seq.wrapping_add(1);
                    let json = serde_json::to_vec(&ConnectionOut {
                        id: &id,
                        session_id: self.session_seq,
                        rooms: [],
                        node_id: node,
                        connected_at: unix_now(),
                        metadata: HashMap::new(),
                    })
                    .unwrap_or_default();
                    pipe.cmd("SET")
                        .arg(s.key("connections", &id))
                        .arg(&json)
                        .ignore();
                    pipe.cmd("SADD").arg(&node_conns).arg(&*id).ignore();
                    if let Ok(mut ids) = s.local_ids.lock() {
                        ids.insert(Arc::clone(&id));
                    }
                    self.local.insert(
                        id,
                        LocalConn {
                            rooms: HashSet::new(),
                            json,
                        },
                    );
                }
                Op::Join(id, room) => {
                    pipe.cmd("SADD")
                        .arg(s.key("rooms", &room))
                        .arg(&*id)
                        .ignore();
                    pipe.cmd("SADD")
                        .arg(s.key("connection_rooms", &id))
                        .arg(&*room)
                        .ignore();
                    pipe.cmd("PUBLISH")
                        .arg(&channel)
                        .arg(encode(&EventOut::JoinRoom {
                            connection_id: &id,
                            room: &room,
                            node_id: node,
                        }))
                        .ignore();
                    if let Some(c) = self.local.get_mut(&id) {
                        c.rooms.insert(room);
                    }
                }
                Op::Leave(id, room) => {
                    self.leave(&mut pipe, &channel, &id, &room);
                    if let Some(c) = self.local.get_mut(&id) {
                        c.rooms.remove(&room);
                    }
                }
                Op::Close(id) => {
                    // As upstream's `remove_connection`: leave every room, delete the
                    // connection's keys, then publish `Disconnect`. (Redis deletes a set
                    // when its last member goes, so no SCARD/DEL is needed.)
                    if let Ok(mut ids) = s.local_ids.lock() {
                        ids.remove(&id);
                    }
                    if let Some(c) = self.local.remove(&id) {
                        for room in &c.rooms {
                            self.leave(&mut pipe, &channel, &id, room);
                        }
                    }
                    pipe.cmd("DEL")
                        .arg(s.key("connections", &id))
                        .arg(s.key("connection_rooms", &id))
                        .ignore();
                    pipe.cmd("SREM").arg(&node_conns).arg(&*id).ignore();
                    pipe.cmd("PUBLISH")
                        .arg(&channel)
                        .arg(encode(&EventOut::Disconnect {
                            connection_id: &id,
                            node_id: node,
                        }))
                        .ignore();
                }
                Op::Broadcast(room, msg) => {
                    let lossy;
                    let message = match &msg {
                        RoomMessage::Text(b) => match std::str::from_utf8(b) {
                            Ok(t) => MessageOut::Text(t),
                            // Valid UTF-8 by contract; should it not be, upstream's lossy form.
                            Err(_) => {
                                lossy = String::from_utf8_lossy(b).into_owned();
                                MessageOut::Text(&lossy)
                            }
                        },
                        RoomMessage::Binary(b) => MessageOut::Binary(b),
                    };
                    pipe.cmd("PUBLISH")
                        .arg(&channel)
                        .arg(encode(&EventOut::BroadcastToRoom {
                            room: &room,
                            message,
                            exclude_connection: None,
                            sender_node_id: node,
                        }))
                        .ignore();
                    broadcasts += 1;
                }
                Op::Flush(done) => flushes.push(done),
            }
        }
        if !pipe.is_empty() {
            match pipe.query_async::<()>(&mut self.conn).await {
                Ok(()) => {
                    s.counters.published.fetch_add(broadcasts, Relaxed);
                }
                Err(_) => {
                    bump(&s.counters.errors);
                    s.counters.dropped.fetch_add(broadcasts, Relaxed);
                    self.dirty = true;
                }
            }
        }
        for f in flushes {
            let _ = f.send(());
        }
    }

    fn leave(&self, pipe: &mut redis::Pipeline, channel: &str, id: &str, room: &str) {
        let s = &self.shared;
        pipe.cmd("SREM").arg(s.key("rooms", room)).arg(id).ignore();
        pipe.cmd("SREM")
            .arg(s.key("connection_rooms", id))
            .arg(room)
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(channel)
            .arg(encode(&EventOut::LeaveRoom {
                connection_id: id,
                room,
                node_id: &s.node_id,
            }))
            .ignore();
    }
}

// ---------------------------------------------------------------------------------------------
// The pub/sub task.

async fn subscribe(client: &redis::Client, channel: &str) -> anyhow::Result<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(IO_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting"))??;
    tokio::time::timeout(IO_TIMEOUT, pubsub.subscribe(channel))
        .await
        .map_err(|_| anyhow::anyhow!("timed out subscribing"))??;
    Ok(pubsub)
}

async fn pubsub_task(
    shared: Arc<Shared>,
    client: redis::Client,
    first: redis::aio::PubSub,
    rooms: Arc<dyn LocalRooms>,
    mut stop: watch::Receiver<bool>,
) {
    let channel = shared.channel();
    let mut pubsub = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let conn = match pubsub.take() {
            Some(p) => p,
            None => {
                tokio::select! {
                    _ = stop.changed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                match subscribe(&client, &channel).await {
                    Ok(p) => {
                        bump(&shared.counters.reconnects);
                        backoff = Duration::from_millis(100);
                        // Redis may have restarted empty: have the command task write
                        // this node's keys back now rather than at the next heartbeat.
                        shared.resync.notify_one();
                        p
                    }
                    Err(_) => {
                        bump(&shared.counters.errors);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        let mut messages = conn.into_on_message();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                m = messages.next() => match m {
                    Some(m) => handle(&shared, &*rooms, m.get_payload_bytes()),
                    None => break, // the connection is gone: reconnect
                },
            }
        }
    }
}

/// Decodes one event and delivers what concerns this node.
fn handle(shared: &Shared, rooms: &dyn LocalRooms, payload: &[u8]) {
    let c = &shared.counters;
    let Ok(event) = serde_json::from_slice::<EventIn>(payload) else {
        bump(&c.malformed);
        return;
    };
    match event {
        EventIn::BroadcastToRoom {
            room,
            message,
            exclude_connection,
            sender_node_id,
        } => {
            if *sender_node_id == *shared.node_id {
                bump(&c.own);
                return;
            }
            if exclude_connection.is_some_and(|x| is_local(shared, &x)) {
                bump(&c.ignored);
                return;
            }
            let msg = match message {
                MessageIn::Text(s) => RoomMessage::Text(Bytes::from(s)),
                MessageIn::Binary(b) => RoomMessage::Binary(Bytes::from(b)),
                MessageIn::Close {} | MessageIn::Ping(_) | MessageIn::Pong(_) => {
                    bump(&c.ignored);
                    return;
                }
            };
            rooms.deliver(&room, &msg);
            bump(&c.delivered);
        }
        // Membership lives in the keys, and `LocalRooms` has no per-connection
        // send: nothing to do here (upstream's hosts ignore these too).
        EventIn::JoinRoom { node_id: from }
        | EventIn::LeaveRoom { node_id: from }
        | EventIn::Disconnect { node_id: from }
        | EventIn::SendToConnection {
            sender_node_id: from,
        } => {
            if *from == *shared.node_id {
                bump(&c.own);
            } else {
                bump(&c.ignored);
            }
        }
    }
}

/// Whether connection `id` is one of this node's.
fn is_local(shared: &Shared, id: &str) -> bool {
    shared.local_ids.lock().is_ok_and(|ids| ids.contains(id))
}

// ---------------------------------------------------------------------------------------------
// The janitor.

async fn janitor(
    shared: Arc<Shared>,
    mut conn: ConnectionManager,
    mut stop: watch::Receiver<bool>,
    every: Duration,
) {
    let pattern = format!("{}:node_connections:*", shared.prefix);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(every) => {}
        }
        let mut cursor: u64 = 0;
        loop {
            let res: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(200)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = res else {
                bump(&shared.counters.errors);
                break;
            };
            for key in keys {
                let Some(node) = key.rsplit(':').next() else {
                    continue;
                };
                if node == &*shared.node_id {
                    continue;
                }
                match redis::cmd("EVAL")
                    .arg(JANITOR_LUA)
                    .arg(0)
                    .arg(&*shared.prefix)
                    .arg(node)
                    .query_async::<i64>(&mut conn)
                    .await
                {
                    Ok(n) if n > 0 => {
                        shared.counters.cleaned.fetch_add(n.unsigned_abs(), Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => bump(&shared.counters.errors),
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
}
