//! The ring between two processes: `nylon-transport __ring-echo` (the far
//! end of the `ring_round_trip` bench row) maps the two rings of a memfd
//! it gets as standard input and echoes every frame.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nylon_transport::ring::{region_size, MmapRegion, Ring};

#[test]
fn a_child_process_echoes_frames_through_one_memfd() {
    const CAP: usize = 1 << 12;
    let len = region_size(CAP);
    let back_offset = 1u64 << 16;
    let (to, file) = MmapRegion::memfd("nylon-ring-process-test", len).unwrap();
    let back = MmapRegion::file_range(&file, back_offset, len).unwrap();
    let mut tx = Ring::create(to, CAP).unwrap().into_producer();
    let mut rx = Ring::create(back, CAP).unwrap().into_consumer();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nylon-transport"))
        .args(["__ring-echo", "--fd", "0", "--capacity"])
        .arg(CAP.to_string())
        .arg("--back-offset")
        .arg(back_offset.to_string())
        .stdin(Stdio::from(file))
        .spawn()
        .unwrap();
    let timeout = Duration::from_secs(10);
    for i in 0..20_000u32 {
        // Lengths 0-99 bytes: frames wrap around the 4 KiB rings many times.
        let payload: Vec<u8> = (0..i % 100).map(|k| (i as u8) ^ (k as u8)).collect();
        tx.push_timeout(i, 7, i ^ 1, &payload, timeout).unwrap();
        let f = rx.pop_timeout(timeout).unwrap();
        let h = f.header();
        assert_eq!((h.session, h.method, h.flags), (i, 7, i ^ 1));
        assert_eq!(f.payload(), &payload[..], "frame {i}");
    }
    // Method u32::MAX asks the echo process to exit.
    tx.push_timeout(0, u32::MAX, 0, &[], timeout).unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "echo process: {status}");
            break;
        }
        assert!(Instant::now() < until, "the echo process did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}
