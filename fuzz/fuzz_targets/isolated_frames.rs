#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| nylon_transport::fuzzing::isolated_frames(data));
