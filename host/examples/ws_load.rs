//! A WebSocket echo load client for the end-to-end load test (wrk cannot
//! speak WebSocket).
//!
//! ```sh
//! ws_load ws://127.0.0.1:8088/ws-fast [CONNS=64] [DURATION_MS=4000] [WINDOW=16] [SIZE=64]
//! ```
//!
//! Opens CONNS connections; each sends text messages of SIZE bytes carrying a
//! sequence number, keeping at most WINDOW unanswered, for DURATION_MS, then
//! waits for the outstanding echoes. Every echo must come back in the order
//! sent (checked). Prints one line:
//! `ws_load: conns=.. window=.. size=.. echoed=.. elapsed_s=.. msgs_per_s=..`
//! (echoes per second over all connections) and exits non-zero on a lost,
//! reordered or corrupted echo.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// One connection: returns the echoes it got, all in order, or an error.
async fn conn(
    url: String,
    stop: Arc<AtomicBool>,
    window: u64,
    size: usize,
    c: u64,
) -> Result<u64, String> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connection {c}: handshake: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    let mut sent = 0u64;
    let mut echoed = 0u64;
    let pad = "x".repeat(size.saturating_sub(24));
    let wait = Duration::from_secs(30);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && sent - echoed < window {
            // Fill the window.
            while sent - echoed < window {
                tx.feed(Message::text(format!("{c}:{sent}:{pad}")))
                    .await
                    .map_err(|e| format!("connection {c}: send: {e}"))?;
                sent += 1;
            }
            tx.flush()
                .await
                .map_err(|e| format!("connection {c}: send: {e}"))?;
        }
        if stopping && echoed == sent {
            let _ = tx.close().await;
            return Ok(echoed);
        }
        let m = tokio::time::timeout(wait, rx.next())
            .await
            .map_err(|_| format!("connection {c}: no echo within 30 s"))?
            .ok_or_else(|| format!("connection {c}: closed"))?
            .map_err(|e| format!("connection {c}: {e}"))?;
        let Message::Text(t) = m else { continue };
        let mut parts = t.as_str().splitn(3, ':');
        let (Some(cc), Some(seq)) = (parts.next(), parts.next()) else {
            return Err(format!("connection {c}: bad echo {t:?}"));
        };
        if cc != c.to_string() || seq != echoed.to_string() {
            return Err(format!(
                "connection {c}: echo {cc}:{seq} where {c}:{echoed} was due (lost or reordered)"
            ));
        }
        echoed += 1;
    }
}

#[tokio::main]
async fn main() {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: ws_load URL [CONNS] [DURATION_MS] [WINDOW] [SIZE]");
        std::process::exit(2);
    };
    let conns = arg(2, 64);
    let duration = Duration::from_millis(arg(3, 4000));
    let window = arg(4, 16).max(1);
    let size = usize::try_from(arg(5, 64)).unwrap_or(64);
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let (url, stop, total) = (url.clone(), Arc::clone(&stop), Arc::clone(&total));
            tokio::spawn(async move {
                let r = conn(url, stop, window, size, c).await;
                if let Ok(n) = r {
                    total.fetch_add(n, Ordering::Relaxed);
                }
                r
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut failed = false;
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("ws_load: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("ws_load: task: {e}");
                failed = true;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let echoed = total.load(Ordering::Relaxed);
    println!(
        "ws_load: conns={conns} window={window} size={size} echoed={echoed} \
         elapsed_s={elapsed:.2} msgs_per_s={:.0}",
        echoed as f64 / elapsed
    );
    if failed {
        std::process::exit(1);
    }
}
