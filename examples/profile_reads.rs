//! Profiles one variant of one row of the benchmark suite (for `perf record`
//! or `valgrind --tool=callgrind`): runs it in a loop. `cargo run --release
//! --example profile_reads -- ffi_call fast 200000`.

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "ffi_call".into());
    let key = args.next().unwrap_or_else(|| "fast".into());
    let iters: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let (l, v, a) = nylon_transport::bench::find_plugins()?;
    let plugins = nylon_transport::bench::load_plugins(l, v)?;
    let mut rows = nylon_transport::bench::rows::all(&plugins)?;
    let anchor = nylon_transport::bench::anchor::Anchor::load(&a)?;
    nylon_transport::bench::attach_anchor(&mut rows, &anchor)?;
    let row = rows
        .iter_mut()
        .find(|r| r.name == name)
        .ok_or("no such row")?;
    let v = row.variant_mut(&key).ok_or("no such variant")?;
    let ns = v.ns_per_op(iters)?;
    println!("{name} {key}: {ns:.2} ns/op");
    Ok(())
}
