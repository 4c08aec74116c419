//! Every method of the legacy ABI through the real example plugin, both
//! directions, payloads checked byte for byte against `legacy-abi.md` §4.

use std::collections::BTreeSet;

use nylon_transport::abi::legacy::Method;
use nylon_transport::codec::{decode_header_kv, decode_headers, fbs};
use nylon_transport::host::driver::RequestReport;
use nylon_transport::host::RequestSpec;
use nylon_transport::transport::{Direction, TraceEntry};

use super::common::{full_request, run, Kind, KINDS};

fn sent(report: &RequestReport, dir: Direction, m: Method) -> Vec<&TraceEntry> {
    report
        .trace
        .as_ref()
        .expect("traced")
        .iter()
        .filter(|t| t.direction == dir && t.method == m as u32)
        .collect()
}

/// The reply payloads the host sent for read `m`, in order.
fn replies(report: &RequestReport, m: Method) -> Vec<Vec<u8>> {
    sent(report, Direction::ToPlugin, m)
        .into_iter()
        .map(|t| {
            assert_eq!(t.phase, 0, "replies carry phase 0");
            t.payload.clone()
        })
        .collect()
}

fn all_methods(kind: Kind) -> RequestReport {
    run(
        kind,
        "all_methods",
        full_request(),
        Some(br#"{"key":"v","n":1}"#),
    )
}

#[test]
fn every_read_is_answered_once_with_the_spec_encoding() {
    for kind in KINDS {
        let r = all_methods(kind);
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next", "next"],
            "{:?}",
            r.phases
        );
        let one = |m| {
            let v = replies(&r, m);
            assert_eq!(v.len(), 1, "{m:?} answered once");
            v.into_iter().next().unwrap()
        };
        assert_eq!(one(Method::GetPayload), br#"{"key":"v","n":1}"#);
        assert_eq!(one(Method::ReadRequestPath), b"/users/7");
        assert_eq!(
            one(Method::ReadRequestUrl),
            b"https://example.com:8080/users/7?a=1&b=2"
        );
        assert_eq!(one(Method::ReadRequestQuery), b"a=1&b=2");
        assert_eq!(one(Method::ReadRequestParams), br#"{"id":"7"}"#);
        assert_eq!(one(Method::ReadRequestHost), b"example.com");
        assert_eq!(one(Method::ReadRequestClientIp), b"10.0.0.1");
        assert_eq!(one(Method::ReadRequestMethod), b"POST");
        assert_eq!(one(Method::ReadRequestBytes), b"5");
        assert_eq!(one(Method::ReadRequestFullBody), b"hello");
        let ts = one(Method::ReadRequestTimestamp);
        assert!(
            ts.iter().all(u8::is_ascii_digit) && ts.len() >= 13,
            "ms since epoch: {ts:?}"
        );
        // Two header reads: a present one (case-insensitive) and an absent one,
        // which gets an empty reply instead of silence.
        assert_eq!(
            replies(&r, Method::ReadRequestHeader),
            [b"alice".to_vec(), Vec::new()]
        );
        let hs = one(Method::ReadRequestHeaders);
        assert_eq!(
            decode_headers(&hs).unwrap(),
            [
                ("x-user", "alice"),
                ("content-length", "5"),
                ("accept", "*/*"),
                ("accept", "text/html"),
                ("x-bin", ""), // not visible ASCII
            ]
        );
        // Response reads in phase 1 see the plugin's own status.
        let statuses = replies(&r, Method::ReadResponseStatus);
        assert_eq!(statuses[0], b"201");
        assert_eq!(
            replies(&r, Method::ReadResponseError),
            vec![b"upstream reset".to_vec(); 2]
        );
        // Body filter: once per chunk, reading that chunk and its length.
        assert_eq!(
            replies(&r, Method::ReadResponseFullBody),
            [b"ab".to_vec(), b"cd".to_vec()]
        );
        assert_eq!(
            replies(&r, Method::ReadResponseBytes),
            [b"2".to_vec(), b"2".to_vec()]
        );
        let dur = one(Method::ReadResponseDuration);
        assert!(!dur.is_empty() && dur.iter().all(u8::is_ascii_digit));
        let rh = one(Method::ReadResponseHeaders);
        let names: Vec<_> = decode_headers(&rh)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names[..2], ["content-type", "x-up"]);
    }
}

#[test]
fn plugin_to_host_payloads_match_the_spec_byte_for_byte() {
    for kind in KINDS {
        let r = all_methods(kind);
        // SET_RESPONSE_STATUS: two bytes, big-endian.
        let status = sent(&r, Direction::ToHost, Method::SetResponseStatus);
        assert_eq!(status[0].payload, [0x00, 0xc9]);
        // REMOVE_RESPONSE_HEADER: the raw name.
        let rm = sent(&r, Direction::ToHost, Method::RemoveResponseHeader);
        assert_eq!(rm[0].payload, b"x-remove-me");
        // SET_RESPONSE_HEADER: a HeaderKeyValue root, key at voffset 4, value at 6.
        let set = sent(&r, Direction::ToHost, Method::SetResponseHeader);
        let first = &set[0].payload;
        assert_eq!(decode_header_kv(first).unwrap(), ("x-payload-key", "v"));
        let root = u32::from_le_bytes(first[0..4].try_into().unwrap()) as usize;
        let vt = root - i32::from_le_bytes(first[root..root + 4].try_into().unwrap()) as usize;
        let vt_size = u16::from_le_bytes([first[vt], first[vt + 1]]);
        assert!(vt_size >= 8, "vtable has both fields");
        assert_eq!(fbs::HeaderKeyValue::VT_KEY, 4);
        assert_eq!(fbs::HeaderKeyValue::VT_VALUE, 6);
        // Reads carry their argument (the header name) or nothing.
        let reads = sent(&r, Direction::ToHost, Method::ReadRequestHeader);
        assert_eq!(reads[0].payload, b"X-User");
        assert!(sent(&r, Direction::ToHost, Method::ReadRequestPath)[0]
            .payload
            .is_empty());
        // Phase starts: phase N, method 0, empty.
        let starts: Vec<_> = r
            .trace
            .as_ref()
            .unwrap()
            .iter()
            .filter(|t| t.direction == Direction::ToPlugin && t.method == 0)
            .map(|t| (t.phase, t.payload.len()))
            .collect();
        assert_eq!(starts, [(1, 0), (2, 0), (3, 0), (3, 0), (4, 0)]);
    }
}

#[test]
fn commands_shape_the_response() {
    for kind in KINDS {
        let r = all_methods(kind);
        assert_eq!(r.response.status, 201, "plugin status wins over upstream");
        assert_eq!(r.header("x-path"), Some("/users/7"));
        assert_eq!(
            r.header("x-url"),
            Some("https://example.com:8080/users/7?a=1&b=2")
        );
        assert_eq!(r.header("x-user"), Some("alice"));
        assert_eq!(r.header("x-absent"), Some("[]"));
        assert_eq!(r.header("x-params"), Some("id=7"));
        assert_eq!(r.header("x-payload-key"), Some("v"));
        assert_eq!(r.header("x-bytes"), Some("5"));
        assert_eq!(r.header("x-ts-positive"), Some("true"));
        assert_eq!(r.header("x-request-body"), Some("hello"));
        assert_eq!(r.header("x-remove-me"), None);
        assert_eq!(r.header("x-up"), Some("1"), "upstream headers kept");
        assert_eq!(r.header("x-status-seen"), Some("201"));
        assert_eq!(r.header("x-upstream-status"), Some("201"));
        assert_eq!(r.header("x-chunks-seen"), Some("ab:2,cd:2"));
        assert_eq!(r.response.body, "abcd");
    }
}

#[test]
fn end_answers_with_the_plugins_response_and_reruns_response_phases() {
    for kind in KINDS {
        let r = run(kind, "end", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["end", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.response.status, 403);
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(
            r.response.body, "hi from config",
            "config reached initialize"
        );
    }
}

#[test]
fn streamed_response_is_written_in_order() {
    for kind in KINDS {
        let r = run(kind, "stream", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["stream_end", "next"], "{kind:?}");
        assert_eq!(r.response.streamed_chunks, ["one", "two"]);
        assert_eq!(
            sent(&r, Direction::ToHost, Method::SetResponseStreamHeader).len(),
            1
        );
        assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    }
}

fn ws_request(messages: &str, limit: Option<usize>) -> RequestSpec {
    let mut spec: RequestSpec = serde_json::from_str(&format!(
        r#"{{"headers":[["Sec-WebSocket-Key","dGhlIHNhbXBsZSBub25jZQ=="]],"websocket":{messages}}}"#
    ))
    .unwrap();
    spec.websocket_send_limit = limit;
    spec
}

#[test]
fn websocket_events_and_commands_cross_in_order() {
    for kind in KINDS {
        use nylon_transport::host::context::WsEffect::*;
        let r = run(
            kind,
            "ws",
            ws_request(r#"[{"text":"hi"},{"binary":[1,2,0]}]"#, None),
            None,
        );
        assert_eq!(r.outcomes(), ["stream_end", "next"], "{kind:?}");
        assert_eq!(
            r.response.websocket,
            [
                Join("lobby".into()),
                Text("hi".into()),
                BroadcastText {
                    room: "lobby".into(),
                    text: "hi".into()
                },
                Binary(vec![1, 2, 0]),
                BroadcastBinary {
                    room: "lobby".into(),
                    data: vec![1, 2, 0]
                },
                Close,
            ]
        );
        let events: Vec<_> = r
            .trace
            .as_ref()
            .unwrap()
            .iter()
            .filter(|t| t.direction == Direction::ToPlugin && (350..=354).contains(&t.method))
            .map(|t| (t.method, t.payload.clone()))
            .collect();
        assert_eq!(
            events,
            [
                (350, vec![]),
                (351, b"hi".to_vec()),
                (352, vec![1, 2, 0]),
                (353, vec![])
            ]
        );
        let bcast = sent(&r, Direction::ToHost, Method::WebsocketBroadcastRoomBinary);
        assert_eq!(bcast[0].payload, b"lobby\0\x01\x02\x00");
    }
}

#[test]
fn websocket_close_by_the_plugin_ends_the_phase() {
    for kind in KINDS {
        let r = run(
            kind,
            "ws",
            ws_request(r#"[{"text":"bye"},{"text":"never"}]"#, None),
            None,
        );
        assert_eq!(r.outcomes(), ["stream_end", "next"], "{kind:?}");
        use nylon_transport::host::context::WsEffect::*;
        assert_eq!(
            r.response.websocket,
            [Join("lobby".into()), Leave("lobby".into()), Close]
        );
    }
}

#[test]
fn a_broken_websocket_reports_354_to_the_plugin() {
    for kind in KINDS {
        let r = run(
            kind,
            "ws",
            ws_request(r#"[{"text":"a"},{"text":"b"}]"#, Some(1)),
            None,
        );
        assert_eq!(r.outcomes(), ["stream_end", "next"], "{kind:?}");
        let errors: Vec<_> = sent(&r, Direction::ToPlugin, Method::WebsocketOnError)
            .into_iter()
            .map(|t| t.payload.clone())
            .collect();
        assert_eq!(errors, [b"connection reset by peer".to_vec()]);
    }
}

#[test]
fn upgrade_without_a_key_answers_400_and_ends() {
    for kind in KINDS {
        let r = run(kind, "ws", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["end", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.response.status, 400);
        assert_eq!(r.response.body, "Missing Sec-WebSocket-Key");
    }
}

#[test]
fn all_41_methods_cross_the_boundary() {
    for kind in KINDS {
        let reports = [
            all_methods(kind),
            run(kind, "end", RequestSpec::default(), None),
            run(kind, "stream", RequestSpec::default(), None),
            run(
                kind,
                "ws",
                ws_request(r#"[{"text":"a"},{"binary":[7]},{"text":"bye"}]"#, None),
                None,
            ),
            run(
                kind,
                "ws",
                ws_request(r#"[{"text":"a"},{"text":"b"}]"#, Some(1)),
                None,
            ),
        ];
        let seen: BTreeSet<u32> = reports
            .iter()
            .flat_map(|r| r.trace.as_ref().unwrap().iter().map(|t| t.method))
            .filter(|m| *m != 0)
            .collect();
        let all: BTreeSet<u32> = Method::ALL.iter().map(|m| *m as u32).collect();
        let missing: Vec<_> = all.difference(&seen).collect();
        assert!(missing.is_empty(), "never crossed: {missing:?}");
    }
}

#[test]
fn a_body_filter_that_rewrites_every_chunk_sends_every_chunk_once_with_its_addition() {
    // The pattern plugin authors write: read the body (107), append, set it
    // (103), on every chunk of a multi-chunk upstream body.
    let spec: RequestSpec = serde_json::from_str(
        r#"{"upstream":{"status":200,"body_chunks":["one,","two,","three"]}}"#,
    )
    .unwrap();
    for kind in KINDS {
        let r = run(kind, "body_rewrite", spec.clone(), None);
        assert_eq!(
            r.outcomes(),
            ["next"; 6],
            "{kind:?}: request, response, three chunks, logging: {:?}",
            r.phases
        );
        assert_eq!(r.response.body, "one,+xtwo,+xthree+x", "{kind:?}");
    }
}
