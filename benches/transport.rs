//! Criterion benches over the same rows as `nylon-transport bench`: every
//! row's baseline and fast variant (and nylon-ring where it has an
//! equivalent), on the real example plugins. Each variant times itself, so
//! cross-thread rows run both threads for real.
//!
//! `cargo bench` runs them; `cargo bench -- request` runs one row.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use nylon_transport::bench::{self, Variant};

fn per_op(v: &mut Variant, iters: u64) -> Duration {
    let ops = v.ops.max(1) as u32;
    match v.run(iters) {
        Ok(d) => d / ops,
        Err(e) => panic!("benchmark variant failed: {e}"),
    }
}

fn rows(c: &mut Criterion) {
    let (legacy, v2, anchor) = bench::find_plugins().expect("example plugins");
    let plugins = bench::load_plugins(legacy, v2).expect("load example plugins");
    let mut rows = bench::rows::all(&plugins).expect("benchmark rows");
    bench::attach_anchor(
        &mut rows,
        bench::anchor::load(&anchor).expect("nylon-ring anchor"),
    );
    for row in &mut rows {
        let mut group = c.benchmark_group(row.name);
        if row.name == "plugin_load" {
            group.sample_size(10);
        }
        group.bench_function("baseline", |b| {
            b.iter_custom(|n| per_op(&mut row.baseline, n))
        });
        group.bench_function("fast", |b| b.iter_custom(|n| per_op(&mut row.fast, n)));
        if let Some(v) = row.fast_legacy.as_mut() {
            group.bench_function("fast_legacy_plugin", |b| b.iter_custom(|n| per_op(v, n)));
        }
        if let Some(v) = row.fast_deferred.as_mut() {
            group.bench_function("fast_deferred", |b| b.iter_custom(|n| per_op(v, n)));
        }
        if let Some(v) = row.anchor.as_mut() {
            group.bench_function("nylon_ring", |b| b.iter_custom(|n| per_op(v, n)));
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = rows
}
criterion_main!(benches);
