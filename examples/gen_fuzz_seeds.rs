//! Writes the FlatBuffers seeds of the `header_messages` fuzz corpus and the
//! WebSocket streams of the `ws_stream` corpus
//! (`cargo run --example gen_fuzz_seeds`).

use nylon_transport::ws::{client_frame, client_frame_fragment, opcode};

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
    ws_stream_seeds()
}

/// Each seed is one split-seed byte, then client frames.
fn ws_stream_seeds() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/ws_stream");
    std::fs::create_dir_all(&dir)?;
    let m = [0x37, 0xfa, 0x21, 0x3d];
    let seed = |frames: &[Vec<u8>]| {
        let mut out = vec![7u8];
        for f in frames {
            out.extend_from_slice(f);
        }
        out
    };
    let seeds: [(&str, Vec<u8>); 6] = [
        (
            "text_binary",
            seed(&[
                client_frame(opcode::TEXT, "héllo".as_bytes(), m),
                client_frame(opcode::BINARY, &[0, 1, 2, 255], m),
            ]),
        ),
        (
            "fragmented_with_ping",
            seed(&[
                client_frame_fragment(false, opcode::TEXT, b"\xce\xba\xe1", m),
                client_frame(opcode::PING, b"p", m),
                client_frame_fragment(false, opcode::CONTINUATION, b"\xbd\xb9", m),
                client_frame(opcode::PONG, b"", m),
                client_frame(opcode::CONTINUATION, "σμε".as_bytes(), m),
            ]),
        ),
        (
            "close_reason",
            seed(&[client_frame(opcode::CLOSE, b"\x03\xe8bye", m)]),
        ),
        (
            "invalid_utf8_split",
            seed(&[
                client_frame_fragment(false, opcode::TEXT, b"ok\xf4", m),
                client_frame(opcode::CONTINUATION, b"\x90\x80\x80", m),
            ]),
        ),
        ("len16", seed(&[client_frame(opcode::BINARY, &[9; 200], m)])),
        (
            "over_limits",
            seed(&[
                client_frame_fragment(false, opcode::BINARY, &[1; 300], m),
                client_frame_fragment(false, opcode::CONTINUATION, &[2; 300], m),
                client_frame_fragment(false, opcode::CONTINUATION, &[3; 300], m),
                client_frame(opcode::CONTINUATION, &[4; 300], m),
            ]),
        ),
    ];
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes)?;
    }
    Ok(())
}
