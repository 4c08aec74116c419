//! A shorter soak than `examples/soak.rs`: resident memory stays flat over
//! many requests through both fast paths (the exact allocation count of the
//! v2 path is in `tests/alloc.rs`).

use nylon_transport::bench;

#[test]
fn resident_memory_stays_flat_over_many_requests() {
    let (l, v, _) = bench::find_plugins().expect("example plugins");
    let plugins = bench::load_plugins(l, v).expect("load");
    let v2 = bench::soak::v2(&plugins.v2, 50_000).expect("v2 soak");
    let legacy = bench::soak::legacy(&plugins.legacy, 5_000).expect("legacy soak");
    for r in [v2, legacy] {
        let growth = r.rss_end_kib.saturating_sub(r.rss_start_kib);
        assert!(
            growth < 8 * 1024,
            "{}: resident memory grew by {growth} KiB over {} requests",
            r.path,
            r.requests
        );
    }
}
