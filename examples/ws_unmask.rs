//! Measures the unmasking throughput of `ws::unmask` (16 bytes at a time)
//! against `ws::unmask_bytewise`, in GB/s over a buffer that stays in cache
//! (64 KiB) and one that does not (16 MiB):
//! `cargo run --release --example ws_unmask`.

use std::hint::black_box;
use std::time::Instant;

use nylon_transport::ws;

fn gbps(size: usize, f: fn(&mut [u8], [u8; 4])) -> f64 {
    let mut buf = vec![0x5au8; size];
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let rounds = (1usize << 30) / size; // 1 GiB per measurement
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..rounds {
            f(black_box(&mut buf), black_box(mask));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    black_box(&buf);
    (rounds * size) as f64 / best / 1e9
}

fn main() {
    for size in [64 << 10, 16 << 20] {
        println!(
            "{:>6} KiB: unmask {:6.2} GB/s, unmask_bytewise {:6.2} GB/s",
            size >> 10,
            gbps(size, ws::unmask),
            gbps(size, ws::unmask_bytewise),
        );
    }
}
