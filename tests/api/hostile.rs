//! Hostile plugins: each problem is reported for its own session, and the host
//! keeps serving every other session.

use std::time::Duration;

use nylon_transport::abi::legacy::{Method, Phase};
use nylon_transport::host::{MemoryContext, RequestSpec};
use nylon_transport::transport::{Baseline, PhaseOutcome, SessionError, SessionOptions, Transport};

use super::common::{full_request, run, run_with, rust_plugin, Kind, KINDS};

fn error_message(kind: Kind, entry: &str) -> String {
    let r = run(kind, entry, RequestSpec::default(), None);
    assert_eq!(r.outcomes(), ["error"], "{entry}: {:?}", r.phases);
    assert_eq!(r.response.status, 500);
    r.phases[0].message.clone().unwrap()
}

#[test]
fn a_plugin_that_never_answers_times_out_and_is_closed() {
    for kind in KINDS {
        let plugin = rust_plugin();
        let r = run_with(
            kind,
            &plugin,
            "silent",
            RequestSpec::default(),
            None,
            Duration::from_millis(100),
        );
        assert_eq!(r.outcomes(), ["timeout"]);
        assert_eq!(r.response.status, 504);
        assert!(r.phases[0].message.as_ref().unwrap().contains("100 ms"));

        // The session is closed after the timeout: later phases refuse at once.
        let t = Baseline::new();
        let mut s = t
            .open(&plugin, "silent", SessionOptions::default())
            .unwrap();
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let first = t.run_phase(
            &mut s,
            Phase::RequestFilter,
            &mut ctx,
            Duration::from_millis(50),
        );
        assert_eq!(first, PhaseOutcome::Timeout);
        let again = t.run_phase(&mut s, Phase::Logging, &mut ctx, Duration::from_millis(50));
        assert_eq!(again, PhaseOutcome::Error(SessionError::Closed));
        t.close(s);
    }
}

#[test]
fn unknown_method_is_an_error_for_the_session() {
    for kind in KINDS {
        assert_eq!(error_message(kind, "unknown_method"), "unknown method 999");
    }
}

#[test]
fn malformed_flatbuffer_is_an_error_for_the_session() {
    for kind in KINDS {
        let m = error_message(kind, "malformed");
        assert!(m.starts_with("malformed payload for method 100"), "{m}");
    }
}

#[test]
fn a_null_payload_with_a_length_is_an_error_not_a_read() {
    for kind in KINDS {
        assert_eq!(
            error_message(kind, "bad_length"),
            "bad message: null payload pointer with length 16"
        );
    }
}

#[test]
fn an_event_id_sent_to_the_host_is_an_error() {
    for kind in KINDS {
        assert_eq!(
            error_message(kind, "event_to_host"),
            "method 350 is a host-to-plugin event"
        );
    }
}

#[test]
fn handler_errors_and_panics_are_contained() {
    for kind in KINDS {
        assert_eq!(
            error_message(kind, "error"),
            "plugin error: database unavailable"
        );
        assert_eq!(
            error_message(kind, "panic"),
            "plugin error: handler panicked: boom"
        );
        // The plugin still serves new sessions after a panic.
        assert_eq!(
            run(kind, "end", RequestSpec::default(), None)
                .response
                .status,
            403
        );
    }
}

#[test]
fn a_flood_of_commands_is_applied_in_order_last_value_wins() {
    for kind in KINDS {
        let r = run(kind, "flood", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
        assert_eq!(r.header("x-flood"), Some("9999"));
        for d in 0..10 {
            assert_eq!(
                r.header(&format!("x-flood-{d}")),
                Some(format!("999{d}").as_str())
            );
        }
        let sets = r
            .trace
            .as_ref()
            .unwrap()
            .iter()
            .filter(|t| t.method == Method::SetResponseHeader as u32)
            .count();
        assert_eq!(sets, 20_000, "every command applied");
    }
}

#[test]
fn callbacks_from_several_foreign_threads_at_once() {
    for kind in KINDS {
        let spec = RequestSpec {
            path: "/threads".into(),
            ..Default::default()
        };
        let r = run(kind, "threads", spec, None);
        assert_eq!(
            r.outcomes(),
            ["next", "next", "next", "next"],
            "{:?}",
            r.phases
        );
        for t in 0..8 {
            assert_eq!(r.header(&format!("x-thread-{t}")), Some("199"));
        }
        // Eight concurrent reads, eight replies, each to its own request.
        let replies = r
            .trace
            .as_ref()
            .unwrap()
            .iter()
            .filter(|t| {
                t.method == Method::ReadRequestPath as u32 && t.phase == 0 && !t.payload.is_empty()
            })
            .count();
        assert_eq!(replies, 8);
    }
}

#[test]
fn messages_for_a_closed_session_are_dropped() {
    for kind in KINDS {
        let victim = run(kind, "victim", RequestSpec::default(), None);
        assert_eq!(victim.outcomes(), ["next", "next", "next", "next"]);
        let before = kind.dropped();
        let r = run(kind, "stale", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
        assert_ne!(
            r.header("x-victim"),
            Some("0"),
            "a victim session was closed first"
        );
        assert_eq!(
            r.header("x-stale"),
            None,
            "nothing leaked into this session"
        );
        assert!(kind.dropped() >= before + 2, "both stale messages dropped");
    }
}

#[test]
fn an_unknown_entry_is_refused_at_open() {
    let t = Baseline::new();
    let err = t
        .open(&rust_plugin(), "no_such_entry", SessionOptions::default())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "plugin refused to open a session for entry `no_such_entry`"
    );
}

#[test]
fn hostile_sessions_do_not_disturb_healthy_ones() {
    for kind in KINDS {
        let hostile = [
            "silent",
            "unknown_method",
            "malformed",
            "panic",
            "flood",
            "threads",
            "bad_length",
        ];
        std::thread::scope(|s| {
            for entry in hostile {
                s.spawn(move || {
                    let spec = RequestSpec {
                        path: "/threads".into(),
                        ..Default::default()
                    };
                    run_with(
                        kind,
                        &rust_plugin(),
                        entry,
                        spec,
                        None,
                        Duration::from_millis(300),
                    )
                });
            }
            let healthy: Vec<_> = (0..6)
                .map(|_| {
                    s.spawn(|| {
                        run_with(
                            kind,
                            &rust_plugin(),
                            "all_methods",
                            full_request(),
                            Some(br#"{"key":"ok"}"#),
                            Duration::from_secs(10),
                        )
                    })
                })
                .collect();
            for h in healthy {
                let r = h.join().unwrap();
                assert_eq!(r.outcomes(), ["next", "next", "next", "next", "next"]);
                assert_eq!(r.header("x-payload-key"), Some("ok"));
                assert_eq!(r.header("x-path"), Some("/users/7"));
            }
        });
    }
}

#[test]
fn a_late_reply_after_a_timeout_is_dropped() {
    for kind in KINDS {
        let before = kind.dropped();
        let r = run_with(
            kind,
            &rust_plugin(),
            "late",
            RequestSpec::default(),
            None,
            Duration::from_millis(100),
        );
        assert_eq!(r.outcomes(), ["timeout"]);
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            kind.dropped() >= before + 2,
            "{kind:?}: the late messages were dropped"
        );
        // The host still serves.
        assert_eq!(
            run(kind, "end", RequestSpec::default(), None)
                .response
                .status,
            403
        );
    }
}

#[test]
fn a_forged_session_id_reaches_no_session() {
    for kind in KINDS {
        let before = kind.dropped();
        let r = run(kind, "forge", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.header("x-forged"), None);
        assert!(kind.dropped() >= before + 2, "{kind:?}");
    }
}

#[test]
fn shutting_a_plugin_down_with_a_phase_in_flight() {
    // A private copy of the library: its SDK state is its own, so shutting it
    // down does not touch the plugin the other tests share.
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unload");
    std::fs::create_dir_all(&dir).unwrap();
    for kind in KINDS {
        let copy = dir.join(format!("libcopy-{kind:?}.so"));
        std::fs::copy(super::common::rust_plugin_path(), &copy).unwrap();
        let plugin = std::sync::Arc::new(nylon_transport::host::LegacyPlugin::load(&copy).unwrap());
        plugin.initialize(b"{}").unwrap();
        let p2 = std::sync::Arc::clone(&plugin);
        let in_flight = std::thread::spawn(move || {
            run_with(
                kind,
                &p2,
                "slow",
                RequestSpec::default(),
                None,
                Duration::from_millis(1000),
            )
        });
        std::thread::sleep(Duration::from_millis(50));
        plugin.shutdown();
        let r = in_flight.join().expect("the host survives");
        // The SDK closed the session under the handler: its read fails, the
        // phase reports an error or times out; nothing crashes.
        assert!(
            matches!(r.outcomes()[0], "error" | "timeout" | "next"),
            "{:?}",
            r.phases
        );
        // After shutdown the plugin refuses new sessions.
        let refused = std::panic::catch_unwind(|| {
            run_with(
                kind,
                &plugin,
                "end",
                RequestSpec::default(),
                None,
                Duration::from_millis(200),
            )
        });
        assert!(refused.is_err(), "open after shutdown is refused");
    }
}

#[test]
fn a_flood_between_phases_is_bounded_on_the_fast_host() {
    use nylon_transport::transport::{Fast, FastConfig, ReplyMode};
    for mode in [ReplyMode::Inline, ReplyMode::Deferred] {
        let t = Fast::new(FastConfig {
            reply_mode: mode,
            ..FastConfig::default()
        });
        let plugin = rust_plugin();
        let mut s = t
            .open(&plugin, "flood_after", SessionOptions::default())
            .unwrap();
        let mut ctx = MemoryContext::new(RequestSpec::default(), None);
        let first = t.run_phase(
            &mut s,
            Phase::RequestFilter,
            &mut ctx,
            Duration::from_secs(5),
        );
        assert_eq!(first, PhaseOutcome::Next, "{mode:?}");
        // No phase runs now: the 3000 commands sent after NEXT wait in the
        // backlog, which holds at most 1024 messages.
        std::thread::sleep(Duration::from_millis(300));
        let second = t.run_phase(
            &mut s,
            Phase::ResponseFilter,
            &mut ctx,
            Duration::from_secs(5),
        );
        assert_eq!(
            second,
            PhaseOutcome::Error(SessionError::QueueFull),
            "{mode:?}"
        );
        t.close(s);
    }
}
