//! Loopback ports for the servers the tests start, picked below the
//! kernel's ephemeral range (32768-60999 by default).
//!
//! A port found by binding port 0 and releasing it comes from that range, so
//! between the release and the server's own bind any connection's source
//! port, or another test's bind to port 0, can take it: the server then
//! fails to start, or the test talks to someone else's. Ports below the
//! range are never handed out by the kernel; a counter keeps the tests of
//! one process apart, and a bind checks that nothing else holds the port.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// A free port in `lo..hi` (below 32768), taken in turn with `next`.
pub(crate) fn pick(lo: u16, hi: u16, next: &AtomicU32) -> u16 {
    let span = u32::from(hi - lo);
    // Test binaries run one after another; the pid spreads them anyway, so
    // that one binary's lingering servers are not the next one's first try.
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let port = lo + ((start + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {lo}..{hi}");
}
