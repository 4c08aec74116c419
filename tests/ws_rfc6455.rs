//! RFC 6455 conformance of the sans-IO server connection (`ws::codec`): the
//! Autobahn-style cases that can be reproduced without a socket, and a
//! property over generated frame sequences (the result does not depend on how
//! the bytes are split).

use nylon_transport::fuzzing::{ws_feed, WsLog};
use nylon_transport::ws::codec::{
    self, close_for, is_valid_close_code, Connection, Event, Limits, ProtocolError,
};
use nylon_transport::ws::{client_frame, client_frame_fragment, opcode, FrameError};

const M: [u8; 4] = [0xA1, 0x5B, 0x07, 0xE3];

fn frag(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    client_frame_fragment(fin, op, payload, M)
}

/// Feeds the frames one at a time, returning after which frame (index) the
/// error came, with the events before it.
fn frame_by_frame(frames: &[Vec<u8>]) -> (Vec<String>, Option<(usize, ProtocolError)>) {
    let mut c = Connection::new(Limits::default());
    let mut events = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        c.feed(f);
        loop {
            match c.next_event() {
                Ok(Some(ev)) => events.push(format!("{ev:?}")),
                Ok(None) => break,
                Err(e) => return (events, Some((i, e))),
            }
        }
    }
    (events, None)
}

fn at_once(frames: &[Vec<u8>]) -> WsLog {
    ws_feed(Limits::default(), [frames.concat().as_slice()])
}

fn text(s: &str) -> String {
    format!("{:?}", Event::Text(s))
}

#[test]
fn fragmented_text_across_many_one_byte_frames_is_one_message() {
    let msg = "Hello-µ@ßöäüàá-UTF-8!! 𝄞 κόσμε";
    let b = msg.as_bytes();
    let mut frames = vec![frag(false, opcode::TEXT, &b[..1])];
    for i in 1..b.len() {
        frames.push(frag(i == b.len() - 1, opcode::CONTINUATION, &b[i..=i]));
    }
    assert_eq!(frame_by_frame(&frames), (vec![text(msg)], None));
    assert_eq!(at_once(&frames), (vec![text(msg)], None));
}

#[test]
fn a_fragmented_message_with_an_empty_final_fragment_and_many_frames() {
    let mut frames = vec![frag(false, opcode::BINARY, &[0])];
    for i in 1..1000u32 {
        frames.push(frag(false, opcode::CONTINUATION, &[i as u8; 3]));
    }
    frames.push(frag(true, opcode::CONTINUATION, b""));
    let (events, err) = at_once(&frames);
    assert_eq!(err, None);
    assert_eq!(events.len(), 1);
    let mut expect = vec![0u8];
    for i in 1..1000u32 {
        expect.extend([i as u8; 3]);
    }
    assert_eq!(events[0], format!("{:?}", Event::Binary(&expect)));
}

#[test]
fn control_frames_inside_a_fragmented_message_come_out_first() {
    let frames = [
        frag(false, opcode::TEXT, b"frag"),
        frag(true, opcode::PING, b"ping payload"),
        frag(false, opcode::CONTINUATION, b"men"),
        frag(true, opcode::PONG, b""),
        frag(true, opcode::CONTINUATION, b"ts"),
        frag(true, opcode::TEXT, b"next"),
    ];
    let expect = vec![
        format!("{:?}", Event::Ping(b"ping payload")),
        format!("{:?}", Event::Pong(b"")),
        text("fragments"),
        text("next"),
    ];
    assert_eq!(frame_by_frame(&frames), (expect.clone(), None));
    assert_eq!(at_once(&frames), (expect, None));
}

#[test]
fn a_close_inside_a_fragmented_message_ends_the_connection() {
    let frames = [
        frag(false, opcode::TEXT, b"half"),
        frag(true, opcode::CLOSE, &1001u16.to_be_bytes()),
        frag(true, opcode::CONTINUATION, b"never"),
    ];
    let close = format!(
        "{:?}",
        Event::Close {
            code: Some(1001),
            reason: ""
        }
    );
    assert_eq!(at_once(&frames), (vec![close], None));
}

#[test]
fn invalid_utf8_split_across_fragments_fails_at_the_fragment_that_makes_it_certain() {
    // U+10FFFF is F4 8F BF BF; F4 90 is past it, certain at the second byte.
    let frames = [
        frag(false, opcode::TEXT, "κόσμε".as_bytes()),
        frag(false, opcode::CONTINUATION, b"ok \xf4"),
        frag(false, opcode::CONTINUATION, b"\x90\x80\x80"),
        frag(true, opcode::CONTINUATION, b"end"),
    ];
    let (events, err) = frame_by_frame(&frames);
    assert!(events.is_empty());
    assert_eq!(err, Some((2, ProtocolError::InvalidUtf8)));
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);

    // A sequence invalid inside the first fragment fails there, before FIN.
    let frames = [
        frag(false, opcode::TEXT, b"a\xc0\xafb"),
        frag(true, opcode::CONTINUATION, b"c"),
    ];
    assert_eq!(
        frame_by_frame(&frames).1,
        Some((0, ProtocolError::InvalidUtf8))
    );

    // A surrogate (ED A0 80) split after its first byte: certain at the second.
    let frames = [
        frag(false, opcode::TEXT, b"\xed"),
        frag(false, opcode::CONTINUATION, b"\xa0"),
        frag(true, opcode::CONTINUATION, b"\x80"),
    ];
    assert_eq!(
        frame_by_frame(&frames).1,
        Some((1, ProtocolError::InvalidUtf8))
    );
}

#[test]
fn a_text_message_ending_inside_a_character_fails() {
    let frames = [
        frag(false, opcode::TEXT, b"euro \xe2\x82"),
        frag(true, opcode::CONTINUATION, b""),
    ];
    assert_eq!(
        frame_by_frame(&frames).1,
        Some((1, ProtocolError::InvalidUtf8))
    );
    // Unfragmented.
    assert_eq!(
        at_once(&[frag(true, opcode::TEXT, b"euro \xe2\x82")]).1,
        Some(ProtocolError::InvalidUtf8)
    );
}

#[test]
fn multibyte_characters_split_at_every_point_are_valid() {
    let msg = "a€b𝄞cé";
    let b = msg.as_bytes();
    for cut in 0..=b.len() {
        for cut2 in cut..=b.len() {
            let frames = [
                frag(false, opcode::TEXT, &b[..cut]),
                frag(false, opcode::CONTINUATION, &b[cut..cut2]),
                frag(true, opcode::CONTINUATION, &b[cut2..]),
            ];
            assert_eq!(
                frame_by_frame(&frames),
                (vec![text(msg)], None),
                "cuts {cut} {cut2}"
            );
        }
    }
}

#[test]
fn close_code_validation_table() {
    let valid: [u16; 16] = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000,
        4999,
    ];
    let invalid: [u16; 13] = [
        0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    for code in valid {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(b"why");
        let close = Event::Close {
            code: Some(code),
            reason: "why",
        };
        assert_eq!(
            at_once(&[frag(true, opcode::CLOSE, &payload)]),
            (vec![format!("{close:?}")], None),
            "{code}"
        );
    }
    for code in invalid {
        let e = at_once(&[frag(true, opcode::CLOSE, &code.to_be_bytes())]).1;
        assert_eq!(e, Some(ProtocolError::BadCloseCode(code)));
        assert_eq!(e.unwrap().close_code(), 1002);
    }
    // The predicate agrees with the table over the whole range.
    for code in 0..=u16::MAX {
        assert_eq!(
            is_valid_close_code(code),
            valid.contains(&code)
                || (1000..=1003).contains(&code)
                || (1007..=1014).contains(&code)
                || (3000..=4999).contains(&code),
        );
    }
}

#[test]
fn close_payloads_empty_one_byte_and_bad_reason() {
    let empty = Event::Close {
        code: None,
        reason: "",
    };
    assert_eq!(
        at_once(&[frag(true, opcode::CLOSE, b"")]),
        (vec![format!("{empty:?}")], None)
    );
    assert_eq!(
        at_once(&[frag(true, opcode::CLOSE, &[0x03])]).1,
        Some(ProtocolError::BadClosePayload)
    );
    assert_eq!(ProtocolError::BadClosePayload.close_code(), 1002);
    let e = at_once(&[frag(true, opcode::CLOSE, b"\x03\xe8ok\xff")]).1;
    assert_eq!(e, Some(ProtocolError::BadCloseReason));
    assert_eq!(e.unwrap().close_code(), 1007);
    // The longest reason: 123 bytes.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend([b'r'; 123]);
    assert_eq!(at_once(&[frag(true, opcode::CLOSE, &payload)]).1, None);
}

#[test]
fn an_oversize_frame_fails_with_1009_from_its_header_alone() {
    let limits = Limits {
        max_frame: 100,
        max_message: 250,
    };
    let f = frag(true, opcode::BINARY, &[0; 101]);
    let mut c = Connection::new(limits);
    c.feed(&f[..8]); // the header and the mask, no payload
    let e = c.next_event().unwrap_err();
    assert_eq!(e, ProtocolError::Frame(FrameError::TooLong(101)));
    assert_eq!(e.close_code(), 1009);
    // At the limit: fine.
    let log = ws_feed(limits, [frag(true, opcode::BINARY, &[0; 100]).as_slice()]);
    assert_eq!(log.1, None);
}

#[test]
fn an_oversize_message_fails_with_1009_at_the_fragment_that_crosses_the_limit() {
    let limits = Limits {
        max_frame: 100,
        max_message: 250,
    };
    let mut c = Connection::new(limits);
    for op in [opcode::BINARY, opcode::CONTINUATION] {
        c.feed(&frag(false, op, &[b'a'; 100]));
        assert_eq!(c.next_event(), Ok(None));
    }
    // Only the header of the third: 300 > 250 is known already.
    let third = frag(true, opcode::CONTINUATION, &[b'a'; 100]);
    c.feed(&third[..6]);
    let e = c.next_event().unwrap_err();
    assert_eq!(e, ProtocolError::MessageTooLong(300));
    assert_eq!(e.close_code(), 1009);
    // 250 exactly is fine, and control frames do not count.
    let frames = [
        frag(false, opcode::BINARY, &[1; 100]),
        frag(true, opcode::PING, &[2; 125]),
        frag(false, opcode::CONTINUATION, &[3; 100]),
        frag(true, opcode::CONTINUATION, &[4; 50]),
    ];
    let log = ws_feed(limits, [frames.concat().as_slice()]);
    assert_eq!((log.0.len(), log.1), (2, None));
}

#[test]
fn an_unmasked_client_frame_fails_with_1002() {
    let mut f = Vec::new();
    nylon_transport::ws::write_frame(&mut f, opcode::TEXT, b"hi");
    let e = ws_feed(Limits::default(), [f.as_slice()]).1.unwrap();
    assert_eq!(e, ProtocolError::Unmasked);
    assert_eq!(e.close_code(), 1002);
}

#[test]
fn reserved_bits_and_unknown_opcodes_fail_with_1002() {
    for rsv in [0x40u8, 0x20, 0x10] {
        let mut f = frag(true, opcode::TEXT, b"x");
        f[0] |= rsv;
        let e = at_once(&[f]).1.unwrap();
        assert_eq!(e, ProtocolError::Frame(FrameError::Reserved), "{rsv:#x}");
        assert_eq!(e.close_code(), 1002);
    }
    for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        let e = at_once(&[frag(true, op, b"")]).1.unwrap();
        assert_eq!(e, ProtocolError::Frame(FrameError::BadOpcode(op)));
        assert_eq!(e.close_code(), 1002);
    }
}

#[test]
fn control_frames_too_long_or_fragmented_fail_with_1002() {
    for op in [opcode::PING, opcode::PONG, opcode::CLOSE] {
        let mut p = vec![0x03, 0xE8];
        p.resize(126, b'a');
        let e = at_once(&[frag(true, op, &p)]).1.unwrap();
        assert_eq!(e, ProtocolError::Frame(FrameError::BadControl));
        assert_eq!(e.close_code(), 1002);
        let e = at_once(&[frag(false, op, &p[..2])]).1.unwrap();
        assert_eq!(e, ProtocolError::Frame(FrameError::BadControl));
        // 125 is allowed.
        assert_eq!(at_once(&[frag(true, op, &p[..125])]).1, None);
    }
}

#[test]
fn continuation_without_a_start_and_a_start_inside_a_message_fail_with_1002() {
    let e = at_once(&[frag(true, opcode::CONTINUATION, b"x")])
        .1
        .unwrap();
    assert_eq!(e, ProtocolError::UnexpectedContinuation);
    assert_eq!(e.close_code(), 1002);
    for op in [opcode::TEXT, opcode::BINARY] {
        let (events, e) = at_once(&[
            frag(false, opcode::BINARY, b"a"),
            frag(true, opcode::PING, b""),
            frag(true, op, b"b"),
        ]);
        assert_eq!(events.len(), 1);
        assert_eq!(e, Some(ProtocolError::ExpectedContinuation));
    }
    // After a complete fragmented message, a continuation is unexpected again.
    let e = at_once(&[
        frag(false, opcode::TEXT, b"a"),
        frag(true, opcode::CONTINUATION, b"b"),
        frag(true, opcode::CONTINUATION, b"c"),
    ])
    .1;
    assert_eq!(e, Some(ProtocolError::UnexpectedContinuation));
}

#[test]
fn close_for_every_error_writes_a_parseable_close_with_its_code() {
    for e in [
        ProtocolError::Unmasked,
        ProtocolError::InvalidUtf8,
        ProtocolError::MessageTooLong(1 << 40),
        ProtocolError::Frame(FrameError::TooLong(7)),
    ] {
        let mut out = Vec::new();
        close_for(&mut out, e);
        let (head, r) = nylon_transport::ws::parse_frame(&mut out, 125)
            .unwrap()
            .unwrap();
        assert_eq!(
            (head.fin, head.opcode, head.mask),
            (true, opcode::CLOSE, None)
        );
        assert_eq!(
            u16::from_be_bytes([out[r.start], out[r.start + 1]]),
            e.close_code()
        );
        assert_eq!(
            std::str::from_utf8(&out[r.start + 2..r.end]).unwrap(),
            e.to_string()
        );
    }
    let mut out = Vec::new();
    assert!(codec::encode_ping(&mut out, &[0; 126]).is_err());
    assert!(codec::encode_pong(&mut out, &[0; 125]).is_ok());
}

/// A xorshift generator with a fixed seed: the cases are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const PIECES: [&str; 8] = ["a", "é", "€", "𝄞", "κόσμε", " ", "xyz", "\u{10FFFF}"];

/// Generates a frame sequence and the events a correct connection gives.
fn generate(rng: &mut Rng) -> (Vec<u8>, Vec<String>) {
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    for _ in 0..rng.below(6) + 1 {
        let is_text = rng.below(2) == 0;
        let payload: Vec<u8> = if is_text {
            (0..rng.below(20))
                .flat_map(|_| PIECES[rng.below(PIECES.len())].bytes())
                .collect()
        } else {
            (0..rng.below(300)).map(|_| rng.next() as u8).collect()
        };
        let mask = (rng.next() as u32).to_ne_bytes();
        // Split into fragments at random byte offsets (inside characters too).
        let mut cuts: Vec<usize> = (0..rng.below(5))
            .map(|_| rng.below(payload.len() + 1))
            .collect();
        cuts.sort_unstable();
        cuts.push(payload.len());
        let mut start = 0;
        for (i, &end) in cuts.iter().enumerate() {
            let op = match (i, is_text) {
                (0, true) => opcode::TEXT,
                (0, false) => opcode::BINARY,
                _ => opcode::CONTINUATION,
            };
            let fin = i == cuts.len() - 1;
            wire.extend(client_frame_fragment(fin, op, &payload[start..end], mask));
            start = end;
            if !fin && rng.below(3) == 0 {
                let p: Vec<u8> = (0..rng.below(126)).map(|_| rng.next() as u8).collect();
                let op = [opcode::PING, opcode::PONG][rng.below(2)];
                wire.extend(client_frame(op, &p, mask));
                expect.push(format!(
                    "{:?}",
                    if op == opcode::PING {
                        Event::Ping(&p)
                    } else {
                        Event::Pong(&p)
                    }
                ));
            }
        }
        expect.push(if is_text {
            text(std::str::from_utf8(&payload).unwrap())
        } else {
            format!("{:?}", Event::Binary(&payload))
        });
    }
    (wire, expect)
}

#[test]
fn property_feeding_in_any_split_gives_the_same_result_as_at_once() {
    let mut rng = Rng(0x5eed_6455);
    let limits = Limits::default();
    let mut corrupted_errors = 0;
    for case in 0..400 {
        let (mut wire, expect) = generate(&mut rng);
        let whole = ws_feed(limits, [wire.as_slice()]);
        assert_eq!(whole, (expect, None), "case {case}: the model");
        // Half the cases: corrupt one byte, so that errors are compared too.
        if case % 2 == 1 && !wire.is_empty() {
            let i = rng.below(wire.len());
            wire[i] ^= 1 << rng.below(8);
        }
        let whole = ws_feed(limits, [wire.as_slice()]);
        corrupted_errors += usize::from(whole.1.is_some());
        assert_eq!(
            whole,
            ws_feed(limits, wire.chunks(1)),
            "case {case}: byte by byte"
        );
        let mut pieces = Vec::new();
        let mut rest = wire.as_slice();
        while !rest.is_empty() {
            let (a, b) = rest.split_at((rng.below(50) + 1).min(rest.len()));
            pieces.push(a);
            rest = b;
        }
        assert_eq!(whole, ws_feed(limits, pieces), "case {case}: random splits");
    }
    // The corruption did reach the error paths.
    assert!(corrupted_errors >= 10, "{corrupted_errors}");
}
