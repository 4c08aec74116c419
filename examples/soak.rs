//! One million requests through each fast path, resident memory sampled
//! (`cargo run --release --example soak [requests]`). Prints JSON.

fn main() -> Result<(), String> {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let (l, v, _) = nylon_transport::bench::find_plugins()?;
    let plugins = nylon_transport::bench::load_plugins(l, v)?;
    let v2 = nylon_transport::bench::soak::v2(&plugins.v2, n)?;
    let legacy = nylon_transport::bench::soak::legacy(&plugins.legacy, n)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&[v2, legacy]).map_err(|e| e.to_string())?
    );
    Ok(())
}
