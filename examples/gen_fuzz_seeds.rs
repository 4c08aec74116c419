//! Writes the FlatBuffers seeds of the `header_messages` fuzz corpus
//! (`cargo run --example gen_fuzz_seeds`).

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/header_messages");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("kv"),
        nylon_transport::codec::encode_header_kv("X-Id", "42"),
    )?;
    let hs: [(&[u8], &[u8]); 3] = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")];
    std::fs::write(
        dir.join("headers"),
        nylon_transport::codec::encode_headers(hs),
    )?;
    std::fs::write(dir.join("empty"), b"")?;
    Ok(())
}
