//! Profiles one row of the benchmark suite (for `perf record`): runs the
//! named row's fast variant in a loop. `cargo run --release --example
//! profile_reads -- ffi_call 200000`.

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "ffi_call".into());
    let iters: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let (l, v, _) = nylon_transport::bench::find_plugins()?;
    let plugins = nylon_transport::bench::load_plugins(l, v)?;
    let mut rows = nylon_transport::bench::rows::all(&plugins)?;
    let row = rows
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or("no such row")?;
    let ns = row.fast.ns_per_op(iters)?;
    println!("{name}: {ns:.2} ns/op");
    Ok(())
}
