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
    v2_commands
);
