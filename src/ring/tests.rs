use super::*;

fn heap_ring(capacity: usize) -> (Producer<HeapRegion>, Consumer<HeapRegion>) {
    Ring::create(HeapRegion::new(region_size(capacity)), capacity)
        .unwrap()
        .split()
}

#[test]
fn frames_come_out_in_order_across_wrap_around() {
    let (mut p, mut c) = heap_ring(256);
    let n = if cfg!(miri) { 60 } else { 2_000 };
    for i in 0..n {
        let payload = vec![i as u8; i % 40];
        p.try_push(i as u32, 7, 0, &payload).unwrap();
        let f = c.try_pop().unwrap().expect("a frame");
        assert_eq!(f.header().session, i as u32);
        assert_eq!(f.header().method, 7);
        assert_eq!(f.payload(), &payload[..]);
        drop(f);
        assert!(c.try_pop().unwrap().is_none());
    }
}

#[test]
fn full_and_too_large_are_errors_and_room_comes_back() {
    let (mut p, mut c) = heap_ring(128);
    assert_eq!(
        p.try_push(0, 0, 0, &[0; 100]),
        Err(RingError::TooLarge(100))
    );
    p.try_push(1, 0, 0, &[1; 40]).unwrap(); // 64 bytes
    p.try_push(2, 0, 0, &[2; 40]).unwrap(); // 128: full
    assert_eq!(p.try_push(3, 0, 0, &[]), Err(RingError::Full));
    drop(c.try_pop().unwrap().unwrap());
    p.try_push(3, 0, 0, &[3; 8]).unwrap();
    let sessions: Vec<u32> =
        std::iter::from_fn(|| c.try_pop().unwrap().map(|f| f.header().session)).collect();
    assert_eq!(sessions, [2, 3]);
}

#[test]
fn a_dropped_loan_publishes_nothing() {
    let (mut p, mut c) = heap_ring(256);
    {
        let mut loan = p.try_loan(10).unwrap();
        loan.payload_mut().fill(9);
    }
    assert!(c.try_pop().unwrap().is_none());
    let mut loan = p.try_loan(3).unwrap();
    loan.payload_mut().copy_from_slice(b"abc");
    loan.commit(5, 6, FLAG_PAD | 1);
    let f = c.try_pop().unwrap().unwrap();
    assert_eq!(
        (f.header().flags, f.payload()),
        (1, &b"abc"[..]),
        "the pad flag is reserved"
    );
}

#[test]
fn open_checks_magic_version_layout_and_capacity() {
    let region = HeapRegion::new(region_size(1024));
    assert_eq!(
        Ring::open(HeapRegion::new(region_size(1024))).unwrap_err(),
        RingError::BadMagic
    );
    let ring = Ring::create(region, 1024).unwrap();
    let region = Arc::try_unwrap(ring.region).unwrap();
    // SAFETY: no ring operation is running on the region.
    unsafe { region.scribble(8, &2u32.to_le_bytes()) };
    let err = Ring::open(region).unwrap_err();
    assert_eq!(
        err,
        RingError::VersionMismatch {
            found: 2,
            expected: 1
        }
    );

    let ring = Ring::create(HeapRegion::new(region_size(1024)), 1024).unwrap();
    let region = Arc::try_unwrap(ring.region).unwrap();
    // SAFETY: as above.
    unsafe { region.scribble(12, &64u32.to_le_bytes()) };
    assert!(matches!(
        Ring::open(region),
        Err(RingError::LayoutMismatch { found: 64, .. })
    ));

    let ring = Ring::create(HeapRegion::new(region_size(1024)), 1024).unwrap();
    let region = Arc::try_unwrap(ring.region).unwrap();
    // SAFETY: as above.
    unsafe { region.scribble(16, &(1u64 << 40).to_le_bytes()) };
    assert_eq!(
        Ring::open(region).unwrap_err(),
        RingError::BadCapacity(1 << 40)
    );

    assert_eq!(
        Ring::create(HeapRegion::new(region_size(1000)), 1000).unwrap_err(),
        RingError::BadCapacity(1000)
    );
    assert_eq!(
        Ring::create(HeapRegion::new(100), 64).unwrap_err(),
        RingError::BadRegion
    );
}

/// A tiny deterministic generator for garbage.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn a_peer_writing_garbage_gets_errors_never_out_of_bounds_reads() {
    let rounds = if cfg!(miri) { 20 } else { 3_000 };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..rounds {
        let ring = Ring::create(HeapRegion::new(region_size(256)), 256).unwrap();
        let region = Arc::clone(&ring.region);
        let (mut p, mut c) = ring.split();
        for i in 0..(round % 5) {
            let _ = p.try_push(i, i, 0, &[i as u8; 20]);
        }
        // The peer scribbles over indices, frame headers and data.
        let mut garbage = [0u8; 64];
        for b in garbage.iter_mut() {
            *b = xorshift(&mut seed) as u8;
        }
        let offset = match round % 4 {
            0 => 64,                                            // tail
            1 => HEADER + (xorshift(&mut seed) % 192) as usize, // frames
            2 => HEADER,
            _ => (xorshift(&mut seed) % (region_size(256) as u64 - 64)) as usize,
        };
        let len = 1 + (xorshift(&mut seed) % 64) as usize;
        // SAFETY: no ring operation is running now.
        unsafe { region.scribble(offset, &garbage[..len]) };
        for _ in 0..8 {
            match c.try_pop() {
                Ok(Some(f)) => {
                    let h = f.header();
                    assert!(
                        f.payload().len() == h.len as usize && h.len as usize <= 256 - FRAME_HEADER
                    );
                }
                Ok(None) | Err(_) => break,
            }
        }
        let _ = p.try_push(1, 1, 0, b"after");
    }
}

#[test]
fn corrupt_indices_are_reported() {
    let ring = Ring::create(HeapRegion::new(region_size(256)), 256).unwrap();
    let region = Arc::clone(&ring.region);
    let (mut p, mut c) = ring.split();
    p.try_push(1, 1, 0, b"x").unwrap();
    // SAFETY: no ring operation is running now.
    unsafe { region.scribble(64, &u64::MAX.to_le_bytes()) };
    assert_eq!(
        c.try_pop().unwrap_err(),
        RingError::Corrupt("producer index out of range")
    );

    let ring = Ring::create(HeapRegion::new(region_size(256)), 256).unwrap();
    let region = Arc::clone(&ring.region);
    let (mut p, mut c) = ring.split();
    p.try_push(1, 1, 0, b"x").unwrap();
    // A frame claiming more bytes than were published.
    // SAFETY: as above.
    unsafe { region.scribble(HEADER, &200u32.to_le_bytes()) };
    assert_eq!(
        c.try_pop().unwrap_err(),
        RingError::Corrupt("frame length beyond the published data")
    );
    // A consumer index the producer cannot have reached.
    // SAFETY: as above.
    unsafe { region.scribble(128, &1_000_000u64.to_le_bytes()) };
    for _ in 0..10 {
        if let Err(e) = p.try_push(1, 1, 0, &[0; 100]) {
            assert!(matches!(e, RingError::Corrupt(_) | RingError::Full), "{e}");
        }
    }
}

#[test]
fn cross_thread_stream_keeps_order_and_content() {
    let n: u32 = if cfg!(miri) { 200 } else { 200_000 };
    let (mut p, mut c) = heap_ring(1024);
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..n {
                let len = (i % 50) as usize;
                let payload = [i as u8; 50];
                p.push_deadline(
                    i,
                    0,
                    0,
                    &payload[..len],
                    Instant::now() + Duration::from_secs(30),
                )
                .unwrap();
            }
        });
        for i in 0..n {
            let f = c.pop_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(f.header().session, i);
            assert_eq!(f.payload().len(), (i % 50) as usize);
            assert!(f.payload().iter().all(|&b| b == i as u8));
        }
    });
}

#[test]
fn a_sleeping_consumer_is_woken_and_an_idle_wait_times_out() {
    let (mut p, mut c) = heap_ring(256);
    let t = Instant::now();
    assert_eq!(
        c.wait_deadline(t + Duration::from_millis(20)).unwrap_err(),
        RingError::Timeout
    );
    assert!(t.elapsed() >= Duration::from_millis(20));
    std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            p.try_push(9, 9, 0, b"wake").unwrap();
        });
        let f = c.pop_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(f.payload(), b"wake");
    });
}

#[cfg(not(miri))]
#[test]
fn two_mappings_of_one_memfd_talk_through_offsets_only() {
    let len = region_size(4096);
    let (a, file) = MmapRegion::memfd("nylon-ring-test", len).unwrap();
    let b = MmapRegion::file(&file, len).unwrap();
    assert_ne!(a.as_ptr(), b.as_ptr(), "distinct mappings");
    let mut p = Ring::create(a, 4096).unwrap().into_producer();
    let mut c = Ring::open(b).unwrap().into_consumer();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..10_000u32 {
                p.push_deadline(
                    i,
                    1,
                    0,
                    &i.to_le_bytes(),
                    Instant::now() + Duration::from_secs(30),
                )
                .unwrap();
            }
        });
        for i in 0..10_000u32 {
            let f = c.pop_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(f.payload(), i.to_le_bytes());
        }
    });
    let anon = MmapRegion::anonymous(len).unwrap();
    let (mut p, mut c) = Ring::create(anon, 4096).unwrap().split();
    p.try_push(1, 2, 3, b"anon").unwrap();
    assert_eq!(c.try_pop().unwrap().unwrap().payload(), b"anon");
}
