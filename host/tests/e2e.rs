//! End to end: the `nylon-serve` binary on loopback, a real HTTP client, a
//! loopback upstream, and the example plugins (Rust legacy, C legacy, Rust
//! v2) on the baseline and fast transports.
//!
//! Every wait is bounded generously (10-30 s) so that a lost wake-up fails a
//! test instead of hanging it; no test asserts a timing.

mod common;

use common::suite::{suite, Kind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_legacy_plugin_on_fast() {
    suite(Kind::Rust, "fast", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rust_legacy_plugin_on_baseline() {
    suite(Kind::Rust, "baseline", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_legacy_plugin_on_fast() {
    suite(Kind::C, "fast", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn c_legacy_plugin_on_baseline() {
    suite(Kind::C, "baseline", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v2_plugin() {
    suite(Kind::V2, "fast", false).await;
}
