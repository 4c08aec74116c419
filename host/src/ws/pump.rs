//! The connection loop of one WebSocket, on the proxy task that owns
//! Pingora's session: no thread per connection, no blocked worker.
//!
//! [`run`] is given the plugin's request-filter phase future (the phase in
//! which the plugin calls `websocket_upgrade`; after an upgrade it lasts as
//! long as the connection). It polls that future in a `select!` with:
//!
//! 1. the handshake: once the plugin accepted it ([`Outbox::accepted`]), the
//!    101 goes out (Pingora then switches the session to upgraded mode:
//!    `read_request_body` returns raw client bytes, `write_response_body`
//!    writes raw bytes);
//! 2. client bytes: fed to the RFC 6455 codec; messages go into the inbound
//!    queue, bounded in bytes (reading stops while a message waits for room:
//!    see [`conn`](super::conn)), and the next iteration
//!    polls the phase future again, which hands them to the plugin through
//!    the context's `websocket_recv` (that poll is the wake-up the
//!    transports ask for); pings are answered with pongs here; a close is
//!    echoed; a protocol error closes with the codec's code;
//! 3. the outbox: frames the plugin sent or rooms broadcast, written in
//!    queue order (several per write when they wait);
//! 4. the ping interval and the idle timeout (1001 "idle timeout");
//! 5. the slow-client policy: an outbox that overflowed closes with 1013
//!    and drops the connection (see [`conn`](super::conn)).
//!
//! `read_request_body` is cancellation safe on an upgraded session (its one
//! await is the socket read, which loses nothing when dropped), so it sits
//! in the `select!`. A write is never raced against anything that could
//! resume the loop with half a frame sent, except the slow-client drop,
//! after which nothing more is written.
//!
//! When the connection ends (the client's close, EOF, an error, a timeout,
//! the slow-client drop), the plugin is told (the inbound queue's `Closed`,
//! which the transports deliver as the close event and end the phase with)
//! and the loop waits for the phase to end, at most the plugin's phase
//! timeout; then the future is dropped (which cancels the phase).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nylon_transport::transport::PhaseOutcome;
use nylon_transport::ws::codec::{self, Connection, Event};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use tokio::time::{sleep, Instant, MissedTickBehavior};

use super::conn::{Inbound, WsConfig, WsIo, CLOSE_SLOW, CLOSE_WRITE_TIMEOUT};
use crate::proxy::Stats;

/// Frames written in one write, at most (bytes), when several wait.
const WRITE_BATCH: usize = 64 << 10;

/// How the loop ended, for the caller.
#[derive(Debug)]
pub enum Ended {
    /// No upgrade: the phase ended (a refused handshake, or a plugin that
    /// never upgraded) and the caller answers as for any phase.
    NotUpgraded(PhaseOutcome),
    /// The connection was upgraded and is over.
    Upgraded(PhaseOutcome),
}

/// What a write found.
enum Wrote {
    Ok,
    /// The client is gone (write error or timeout).
    Failed,
    /// The outbox overflowed during the write: drop the connection.
    Slow,
}

/// Writes `bytes`, giving up when the outbox is condemned (1013) meanwhile
/// or after `limit`.
async fn write(session: &mut Session, io: &WsIo, bytes: Bytes, limit: Duration) -> Wrote {
    let w = session.write_response_body(Some(bytes), false);
    let mut w = std::pin::pin!(w);
    let deadline = sleep(limit);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            r = w.as_mut() => return if r.is_ok() { Wrote::Ok } else { Wrote::Failed },
            () = io.outbox.notified() => {
                if io.outbox.close_code() == Some(CLOSE_SLOW) {
                    return Wrote::Slow;
                }
            }
            () = deadline.as_mut() => return Wrote::Failed,
        }
    }
}

/// A close frame.
fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = Vec::with_capacity(4 + reason.len());
    codec::encode_close(&mut out, Some(code), reason);
    Bytes::from(out)
}

/// The loop's bookkeeping after the handshake.
struct Loop<'a> {
    io: &'a mut WsIo,
    cfg: &'a WsConfig,
    stats: &'a Stats,
    /// Client messages the inbound queue had no room for yet.
    pending: VecDeque<Inbound>,
    /// The connection is over for the socket (nothing more is read or
    /// written); the plugin still has to end its phase.
    ending: bool,
}

impl Loop<'_> {
    /// Queues a client message for the plugin, in order, if the inbound
    /// budget has room; else it waits in `pending` (and reading stops).
    fn deliver(&mut self, m: Inbound) {
        if self.pending.is_empty() {
            if let Ok(p) = Arc::clone(&self.io.budget).try_acquire_many_owned(m.cost()) {
                // An error: the plugin's side is gone (the phase ended).
                let _ = self.io.inbound.send((m, p));
                return;
            }
        }
        self.pending.push_back(m);
    }

    /// The socket is done: tell the plugin (once).
    fn end(&mut self) {
        if !self.ending {
            self.ending = true;
            self.deliver(Inbound::Closed);
        }
    }

    /// Writes a close frame (bounded) and ends.
    async fn close(&mut self, session: &mut Session, code: u16, reason: &str) {
        if !self.ending {
            let _ = write(
                session,
                self.io,
                close_frame(code, reason),
                CLOSE_WRITE_TIMEOUT,
            )
            .await;
        }
        self.end();
    }

    /// Handles bytes read from the client.
    async fn feed(&mut self, session: &mut Session, conn: &mut Connection, bytes: &[u8]) {
        conn.feed(bytes);
        loop {
            let reply = match conn.next_event() {
                Ok(None) => return,
                Ok(Some(Event::Text(t))) => {
                    self.deliver(Inbound::Text(Bytes::copy_from_slice(t.as_bytes())));
                    continue;
                }
                Ok(Some(Event::Binary(b))) => {
                    self.deliver(Inbound::Binary(Bytes::copy_from_slice(b)));
                    continue;
                }
                Ok(Some(Event::Pong(_))) => continue,
                Ok(Some(Event::Ping(p))) => {
                    let mut out = Vec::with_capacity(2 + p.len());
                    // A ping's payload is at most 125 bytes (the codec checks).
                    let _ = codec::encode_pong(&mut out, p);
                    Ok(Bytes::from(out))
                }
                Ok(Some(Event::Close { code, reason })) => {
                    let mut out = Vec::with_capacity(4 + reason.len());
                    codec::encode_close(&mut out, code, reason);
                    Err(Bytes::from(out))
                }
                Err(e) => {
                    self.stats
                        .ws_protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    let mut out = Vec::new();
                    codec::close_for(&mut out, e);
                    Err(Bytes::from(out))
                }
            };
            match reply {
                Ok(pong) => match write(session, self.io, pong, self.cfg.idle_timeout).await {
                    Wrote::Ok => {}
                    Wrote::Failed => return self.end(),
                    Wrote::Slow => return self.slow(session).await,
                },
                Err(close) => {
                    // The client's close (echoed) or a protocol error: the
                    // last frame of the connection.
                    let _ = write(session, self.io, close, CLOSE_WRITE_TIMEOUT).await;
                    return self.end();
                }
            }
        }
    }

    /// The slow-client policy: close 1013 (bounded) and drop.
    async fn slow(&mut self, session: &mut Session) {
        if !self.ending {
            self.stats.ws_dropped_slow.fetch_add(1, Ordering::Relaxed);
        }
        self.close(session, CLOSE_SLOW, "client too slow: outgoing queue full")
            .await;
    }

    /// Writes what waits in the outbox (several frames per write).
    async fn flush(&mut self, session: &mut Session, first: Bytes) {
        let mut batch = first;
        loop {
            let mut next = None;
            if batch.len() < WRITE_BATCH {
                if let Ok(f) = self.io.out.try_recv() {
                    let mut buf = Vec::with_capacity(WRITE_BATCH.max(batch.len() + f.len()));
                    buf.extend_from_slice(&batch);
                    self.io.outbox.taken(f.len());
                    buf.extend_from_slice(&f);
                    while buf.len() < WRITE_BATCH {
                        let Ok(f) = self.io.out.try_recv() else { break };
                        self.io.outbox.taken(f.len());
                        buf.extend_from_slice(&f);
                    }
                    batch = Bytes::from(buf);
                    next = self.io.out.try_recv().ok();
                    if let Some(f) = &next {
                        self.io.outbox.taken(f.len());
                    }
                }
            }
            match write(session, self.io, batch, self.cfg.idle_timeout).await {
                Wrote::Ok => {}
                Wrote::Failed => return self.end(),
                Wrote::Slow => return self.slow(session).await,
            }
            match next {
                Some(f) => batch = f,
                None => return,
            }
        }
    }
}

/// Runs the request-filter phase `fut` of a plugin service on a request that
/// asked for a WebSocket (see the [module docs](self)).
///
/// `phase_timeout` bounds the phase before the handshake and the plugin's
/// end after the connection ended.
pub async fn run<F>(
    session: &mut Session,
    mut fut: Pin<&mut F>,
    io: &mut WsIo,
    cfg: &WsConfig,
    phase_timeout: Duration,
    stats: &Stats,
) -> Ended
where
    F: Future<Output = PhaseOutcome> + ?Sized,
{
    // Before the handshake: the phase as any other.
    let mut outcome = None;
    {
        let deadline = sleep(phase_timeout);
        let mut deadline = std::pin::pin!(deadline);
        while io.outbox.accepted().is_none() {
            tokio::select! {
                biased;
                o = fut.as_mut() => {
                    outcome = Some(o);
                    break;
                }
                () = io.outbox.notified() => {}
                () = deadline.as_mut() => return Ended::NotUpgraded(PhaseOutcome::Timeout),
            }
        }
    }
    let Some(accept) = io.outbox.accepted().map(str::to_string) else {
        return Ended::NotUpgraded(outcome.unwrap_or(PhaseOutcome::End));
    };
    stats.ws_upgrades.fetch_add(1, Ordering::Relaxed);
    let mut lp = Loop {
        io,
        cfg,
        stats,
        pending: VecDeque::new(),
        ending: false,
    };
    match ResponseHeader::build(101, Some(3)) {
        Ok(mut resp) => {
            let ok = resp.insert_header("upgrade", "websocket").is_ok()
                && resp.insert_header("connection", "Upgrade").is_ok()
                && resp.insert_header("sec-websocket-accept", accept).is_ok();
            if !ok
                || session
                    .write_response_header(Box::new(resp), false)
                    .await
                    .is_err()
            {
                lp.end();
            }
        }
        Err(_) => lp.end(),
    }

    let mut conn = Connection::new(cfg.limits);
    let start = Instant::now();
    let mut ping = tokio::time::interval_at(start + cfg.ping_interval, cfg.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let idle = sleep(cfg.idle_timeout);
    let mut idle = std::pin::pin!(idle);
    // Armed once the socket is done: how long the plugin gets to end.
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let budget = Arc::clone(&lp.io.budget);

    loop {
        if outcome.is_some() {
            break;
        }
        if lp.ending && grace.is_none() {
            grace = Some(Box::pin(sleep(phase_timeout)));
        }
        if !lp.ending && lp.io.outbox.close_code() == Some(CLOSE_SLOW) {
            lp.slow(session).await;
            continue;
        }
        let reading = !lp.ending && lp.pending.is_empty();
        let need = lp.pending.front().map_or(0, Inbound::cost);
        tokio::select! {
            biased;
            o = fut.as_mut() => outcome = Some(o),
            permit = Arc::clone(&budget).acquire_many_owned(need), if !lp.pending.is_empty() => {
                match (permit, lp.pending.pop_front()) {
                    (Ok(p), Some(m)) => {
                        let _ = lp.io.inbound.send((m, p));
                    }
                    _ => lp.pending.clear(),
                }
            }
            f = lp.io.out.recv() => match f {
                Some(f) => {
                    lp.io.outbox.taken(f.len());
                    if !lp.ending {
                        lp.flush(session, f).await;
                    }
                }
                // Unreachable while the outbox lives (it holds the sender).
                None => lp.end(),
            },
            () = lp.io.outbox.notified() => {}
            r = session.read_request_body(), if reading => match r {
                Ok(Some(bytes)) => {
                    idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                    lp.feed(session, &mut conn, &bytes).await;
                }
                // EOF or a read error: the client is gone.
                Ok(None) | Err(_) => lp.end(),
            },
            _ = ping.tick(), if !lp.ending => {
                let mut out = Vec::with_capacity(2);
                let _ = codec::encode_ping(&mut out, b"");
                match write(session, lp.io, Bytes::from(out), cfg.idle_timeout).await {
                    Wrote::Ok => {}
                    Wrote::Failed => lp.end(),
                    Wrote::Slow => lp.slow(session).await,
                }
            }
            () = idle.as_mut(), if !lp.ending => {
                stats.ws_idle_timeouts.fetch_add(1, Ordering::Relaxed);
                lp.close(session, 1001, "idle timeout").await;
            }
            () = async { match grace.as_mut() { Some(g) => g.await, None => std::future::pending().await } } => {
                return Ended::Upgraded(PhaseOutcome::Timeout);
            }
        }
    }
    let outcome = outcome.unwrap_or(PhaseOutcome::StreamEnd);
    if !lp.ending {
        // The plugin ended the connection (its close, or an error): what it
        // sent before goes out first, then the close.
        while let Ok(f) = lp.io.out.try_recv() {
            lp.io.outbox.taken(f.len());
            if !lp.ending {
                lp.flush(session, f).await;
            }
        }
        let (code, reason) = match &outcome {
            PhaseOutcome::Error(_) | PhaseOutcome::Timeout => (1011, "plugin error"),
            _ => match lp.io.outbox.close_code() {
                Some(CLOSE_SLOW) => (CLOSE_SLOW, "client too slow: outgoing queue full"),
                _ => (1000, ""),
            },
        };
        if !lp.ending {
            let sent = matches!(
                write(
                    session,
                    lp.io,
                    close_frame(code, reason),
                    CLOSE_WRITE_TIMEOUT
                )
                .await,
                Wrote::Ok
            );
            lp.ending = true;
            if sent {
                // Wait (briefly) for the client's close, so the socket is
                // not reset under the close frame it has not read yet.
                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
                    loop {
                        match session.read_request_body().await {
                            Ok(Some(b)) => {
                                conn.feed(&b);
                                loop {
                                    match conn.next_event() {
                                        Ok(Some(Event::Close { .. })) | Err(_) => return,
                                        Ok(Some(_)) => {}
                                        Ok(None) => break,
                                    }
                                }
                            }
                            Ok(None) | Err(_) => return,
                        }
                    }
                })
                .await;
            }
        }
    }
    Ended::Upgraded(outcome)
}
