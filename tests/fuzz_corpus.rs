//! Replays every committed fuzz corpus file through its target's body, on
//! stable, so `cargo test` exercises the fuzz bodies everywhere, and keeps
//! every crash the fuzzers found fixed (crashes are added to the corpus).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_file() {
            body(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "the {target} corpus is empty");
}

macro_rules! corpus {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            replay(stringify!($name), nylon_transport::fuzzing::$name);
        }
    )*};
}

corpus!(
    legacy_dispatch,
    header_messages,
    json_payload,
    scalars,
    ring_region,
    ws_frame,
    v2_commands,
    ws_stream,
    isolated_frames
);

/// Found by the `scalars` fuzzer: a decimal with leading zeros beyond 20
/// digits was refused, though it is a valid number.
#[test]
fn regression_leading_zeros_are_accepted() {
    assert_eq!(
        nylon_transport::codec::scalar::parse_u64(b"00000000000000624493610080577060"),
        Some(624_493_610_080_577_060)
    );
    nylon_transport::fuzzing::scalars(b"00000000000000624493610080577060");
}

/// Found by the `legacy_dispatch` fuzzer: the differential compared two
/// contexts created at different milliseconds (timestamp reply 211).
#[test]
fn regression_dispatch_differential_uses_one_context_state() {
    let mut input = vec![27u8]; // Method::ALL[27] is READ_REQUEST_TIMESTAMP
    input.extend_from_slice(&[0; 4]);
    assert_eq!(nylon_transport::abi::legacy::Method::ALL[27] as u32, 211);
    for _ in 0..50 {
        nylon_transport::fuzzing::legacy_dispatch(&input);
    }
}
