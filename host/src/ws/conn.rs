//! One WebSocket connection's two queues, shared between the proxy task that
//! owns the socket and the plugin side (the context a transport lends to the
//! plugin's threads, and the rooms).
//!
//! - [`Outbox`]: what goes to the client, **bounded**. Plugin sends and room
//!   broadcasts push already-encoded frames with `try_send` and never wait.
//!   When a push finds [`WsConfig::queue`] frames or [`WsConfig::queue_bytes`]
//!   bytes waiting (the client reads slower than it is sent to), the
//!   connection is condemned: the push fails, the socket task is told
//!   (`Notify`), tries to write a close 1013 (Try Again Later) for at most
//!   [`CLOSE_WRITE_TIMEOUT`] and drops the connection. Memory per connection
//!   is therefore bounded by `queue_bytes` plus one frame.
//! - [`WsLink`]: the context's side: the inbound queue of client messages,
//!   the outbox, and the connection's id for the rooms. The inbound queue is
//!   bounded by [`INBOUND_BYTES`]: each message holds permits of a semaphore
//!   for its length plus [`INBOUND_OVERHEAD`] until the plugin takes it, and
//!   the socket task stops reading while a message waits for permits, so a
//!   slow plugin slows its client down through TCP instead of growing a
//!   buffer.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use nylon_transport::ws::codec::Limits;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

use super::cluster::ConnId;

/// Bytes of client messages decoded and not yet taken by the plugin, per
/// connection, at most (a larger message waits until the queue is empty
/// and then takes the whole budget).
pub const INBOUND_BYTES: usize = 1 << 20;

/// What one queued client message counts for besides its payload.
pub const INBOUND_OVERHEAD: usize = 64;

/// How long the host tries to write its close frame to a client that is
/// being dropped (a slow client's socket buffer is usually full).
pub const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Close code of a connection dropped because its outgoing queue overflowed.
pub const CLOSE_SLOW: u16 = 1013;

/// The WebSocket settings of the host (command-line flags of `nylon-serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WsConfig {
    /// A ping is sent to the client this often (upstream Nylon: 20 s).
    pub ping_interval: Duration,
    /// The connection is closed (1001) when the client sent nothing, not
    /// even a pong, for this long.
    pub idle_timeout: Duration,
    /// Frames waiting for the client, per connection, at most.
    pub queue: usize,
    /// Bytes of frames waiting for the client, per connection, at most
    /// (one frame larger than this is accepted into an empty queue).
    pub queue_bytes: usize,
    /// Frame and message size limits of the client's frames (1009 beyond).
    pub limits: Limits,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(120),
            queue: 1024,
            queue_bytes: 1 << 20,
            limits: Limits::default(),
        }
    }
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue was full: the connection is being dropped (1013).
    Full,
    /// The connection is closing or gone.
    Closed,
}

/// A message of the client, as the plugin receives it.
#[derive(Debug)]
pub enum Inbound {
    /// A text message (valid UTF-8).
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// The client closed (or broke the protocol, or went away).
    Closed,
}

impl Inbound {
    /// The permits it holds while queued.
    #[must_use]
    pub fn cost(&self) -> u32 {
        let n = match self {
            Self::Text(b) | Self::Binary(b) => b.len(),
            Self::Closed => 0,
        };
        // At most the whole budget, which fits a u32.
        (n.saturating_add(INBOUND_OVERHEAD)).min(INBOUND_BYTES) as u32
    }
}

/// A queued client message and the inbound budget it holds (given back when
/// the plugin takes it).
pub type Queued = (Inbound, OwnedSemaphorePermit);

/// The frames waiting for one client (see the [module docs](self)).
#[derive(Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// 0 while open, else the close code asked for (the first one wins).
    close: AtomicU32,
    /// The `Sec-WebSocket-Accept` of a handshake the plugin accepted.
    accept: OnceLock<String>,
    /// Wakes the socket task: an upgrade or a close to act on.
    notify: Notify,
}

impl Outbox {
    /// An outbox and the receiver its socket task drains.
    #[must_use]
    pub fn new(config: &WsConfig) -> (Arc<Self>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let o = Arc::new(Self {
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes: config.queue_bytes,
            close: AtomicU32::new(0),
            accept: OnceLock::new(),
            notify: Notify::new(),
        });
        (o, rx)
    }

    /// Queues one encoded frame; never waits. A full queue condemns the
    /// connection (close 1013) and fails.
    ///
    /// # Errors
    ///
    /// [`PushError::Full`] when the queue overflowed (now or earlier),
    /// [`PushError::Closed`] when the connection is closing.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        // SYNC POINT: pairs with the Release in `request_close`: once a
        // close is asked for, no frame is queued behind it.
        match self.close.load(Ordering::Acquire) {
            0 => {}
            c if c == u32::from(CLOSE_SLOW) => return Err(PushError::Full),
            _ => return Err(PushError::Closed),
        }
        let n = frame.len();
        let before = self.queued_bytes.fetch_add(n, Ordering::Relaxed);
        if before > 0 && before + n > self.max_bytes {
            self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
            self.request_close(CLOSE_SLOW);
            return Err(PushError::Full);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
                self.request_close(CLOSE_SLOW);
                Err(PushError::Full)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
                Err(PushError::Closed)
            }
        }
    }

    /// The socket task took a frame of `n` bytes off the queue.
    pub fn taken(&self, n: usize) {
        self.queued_bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Asks the socket task to close with `code` after the frames already
    /// queued (1013: drop at once). The first code asked for wins.
    pub fn request_close(&self, code: u16) {
        // SYNC POINT: Release, read by `push` and `close_code` (Acquire).
        if self
            .close
            .compare_exchange(0, u32::from(code), Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The close code asked for, if any.
    #[must_use]
    pub fn close_code(&self) -> Option<u16> {
        // SYNC POINT: pairs with the Release in `request_close`.
        match self.close.load(Ordering::Acquire) {
            0 => None,
            c => u16::try_from(c).ok(),
        }
    }

    /// Records an accepted handshake and wakes the socket task.
    pub fn accept(&self, key: String) {
        if self.accept.set(key).is_ok() {
            self.notify.notify_one();
        }
    }

    /// The accepted handshake's `Sec-WebSocket-Accept`, if any.
    #[must_use]
    pub fn accepted(&self) -> Option<&str> {
        self.accept.get().map(String::as_str)
    }

    /// Resolves after `accept` or `request_close` (a permit is stored when
    /// nobody waits, so no wake-up is lost).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

/// The context's side of one connection: client messages in, the outbox out.
#[derive(Debug)]
pub struct WsLink {
    /// The connection's id (uuid v4).
    pub id: ConnId,
    /// The outgoing queue.
    pub outbox: Arc<Outbox>,
    /// Client messages, in the order the client sent them.
    pub inbound: mpsc::UnboundedReceiver<Queued>,
    /// The handshake was accepted.
    pub upgraded: bool,
    /// The plugin was told the connection is closed, or closed it.
    pub closed: bool,
}

/// The socket task's side of one connection.
#[derive(Debug)]
pub struct WsIo {
    /// The outgoing frames.
    pub out: mpsc::Receiver<Bytes>,
    /// Where client messages go (bounded by `budget`).
    pub inbound: mpsc::UnboundedSender<Queued>,
    /// The inbound budget ([`INBOUND_BYTES`] permits).
    pub budget: Arc<Semaphore>,
    /// The shared outbox (close requests, the handshake).
    pub outbox: Arc<Outbox>,
}

/// A new connection's two sides.
#[must_use]
pub fn link(config: &WsConfig) -> (WsLink, WsIo) {
    let (outbox, out) = Outbox::new(config);
    let (tx, rx) = mpsc::unbounded_channel();
    (
        WsLink {
            id: uuid::Uuid::new_v4().to_string().into(),
            outbox: Arc::clone(&outbox),
            inbound: rx,
            upgraded: false,
            closed: false,
        },
        WsIo {
            out,
            inbound: tx,
            budget: Arc::new(Semaphore::new(INBOUND_BYTES)),
            outbox,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_condemns_the_connection_instead_of_growing() {
        let cfg = WsConfig {
            queue: 2,
            queue_bytes: 1 << 20,
            ..WsConfig::default()
        };
        let (o, mut rx) = Outbox::new(&cfg);
        o.push(Bytes::from_static(b"a")).expect("room");
        o.push(Bytes::from_static(b"b")).expect("room");
        assert_eq!(o.push(Bytes::from_static(b"c")), Err(PushError::Full));
        assert_eq!(o.close_code(), Some(CLOSE_SLOW));
        // Condemned: even with room again, nothing more is queued.
        let _ = rx.try_recv();
        assert_eq!(o.push(Bytes::from_static(b"d")), Err(PushError::Full));
    }

    #[test]
    fn the_byte_budget_bounds_the_queue() {
        let cfg = WsConfig {
            queue: 1000,
            queue_bytes: 10,
            ..WsConfig::default()
        };
        let (o, _rx) = Outbox::new(&cfg);
        o.push(Bytes::from(vec![0; 6])).expect("room");
        assert_eq!(o.push(Bytes::from(vec![0; 6])), Err(PushError::Full));
    }
}
