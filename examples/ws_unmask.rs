//! Measures the unmasking throughput of `ws::unmask` (8-byte words) against
//! a 16-byte variant and `ws::unmask_bytewise`, in GB/s, over a buffer that
//! stays in L2 (64 KiB) and one larger than the L3 (128 MiB):
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

/// A 16-byte variant (`u128` words), for comparison.
fn unmask_u128(data: &mut [u8], mask: [u8; 4]) {
    let mut m16 = [0u8; 16];
    for (i, b) in m16.iter_mut().enumerate() {
        *b = mask[i % 4];
    }
    let word = u128::from_ne_bytes(m16);
    let mut chunks = data.chunks_exact_mut(16);
    for c in &mut chunks {
        let mut w = [0u8; 16];
        w.copy_from_slice(c);
        c.copy_from_slice(&(u128::from_ne_bytes(w) ^ word).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

fn main() {
    for size in [64 << 10, 128 << 20] {
        println!(
            "{:>6} KiB: unmask (8-byte words) {:6.2} GB/s, 16-byte words {:6.2} GB/s, unmask_bytewise {:6.2} GB/s",
            size >> 10,
            gbps(size, ws::unmask),
            gbps(size, unmask_u128),
            gbps(size, ws::unmask_bytewise),
        );
    }
}
