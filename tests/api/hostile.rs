//! Hostile plugins: each problem is reported for its own session, and the host
//! keeps serving every other session.

use std::time::{Duration, Instant};

use nylon_transport::abi::legacy::{Method, Phase};
use nylon_transport::host::{MemoryContext, RequestSpec};
use nylon_transport::transport::{Baseline, PhaseOutcome, SessionError, SessionOptions, Transport};

use super::common::{full_request, on_transport, run, run_with, rust_plugin, Kind, KINDS};

/// The generous bound of every wait below: a lost message fails the test
/// after it, a slow machine does not.
const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `kind` has dropped at least `n` messages for `sid` (failing
/// after [`PATIENCE`]), and returns the count then.
fn wait_for_drops(kind: Kind, sid: u32, n: u64) -> u64 {
    let start = Instant::now();
    loop {
        let dropped = kind.dropped_for(sid);
        if dropped >= n {
            return dropped;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{kind:?}: {dropped} of {n} messages for session {sid} dropped after {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

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
        on_transport!(kind, |t| {
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
            assert_eq!(first, PhaseOutcome::Timeout, "{kind:?}");
            // Refused at once: the timeout only bounds a wrongly started phase.
            let again = t.run_phase(&mut s, Phase::Logging, &mut ctx, Duration::from_millis(50));
            assert_eq!(again, PhaseOutcome::Error(SessionError::Closed), "{kind:?}");
            t.close(s);
        });
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
        let victim_sid: u32 = victim.header("x-victim-sid").unwrap().parse().unwrap();
        // The plugin learns of the close when its session object drops, which
        // in the asynchronous forms can come after `run` returned: until then
        // a stale session names the previous victim (whose count is not
        // looked at), so run it again until it names this one.
        let start = Instant::now();
        let r = loop {
            let r = run(kind, "stale", RequestSpec::default(), None);
            assert_eq!(r.outcomes(), ["next", "next", "next", "next"]);
            let named: u32 = r.header("x-victim").unwrap().parse().unwrap();
            if named == victim_sid {
                break r;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{kind:?}: the plugin never saw session {victim_sid} close (it names {named})"
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        assert_ne!(victim_sid, 0, "a victim session was closed first");
        assert_eq!(
            r.header("x-stale"),
            None,
            "nothing leaked into this session"
        );
        // Both were sent inside the stale phase, which has ended: counted.
        assert_eq!(
            kind.dropped_for(victim_sid),
            2,
            "{kind:?}: both stale messages dropped"
        );
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
        // The plugin's thread sends a command and NEXT once the host has
        // closed the session after its timeout.
        let sid = on_transport!(kind, |t| {
            let mut s = t
                .open(&rust_plugin(), "late", SessionOptions::default())
                .unwrap();
            let sid = s.sid();
            let mut ctx = MemoryContext::new(RequestSpec::default(), None);
            let first = t.run_phase(
                &mut s,
                Phase::RequestFilter,
                &mut ctx,
                Duration::from_millis(100),
            );
            assert_eq!(first, PhaseOutcome::Timeout, "{kind:?}");
            t.close(s);
            sid
        });
        assert_eq!(
            wait_for_drops(kind, sid, 2),
            2,
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
        let r = run(kind, "forge", RequestSpec::default(), None);
        assert_eq!(r.outcomes(), ["next", "next", "next", "next"], "{kind:?}");
        assert_eq!(r.header("x-forged"), None);
        let forged: u32 = r.header("x-forged-sid").unwrap().parse().unwrap();
        // Both were sent inside the phase, which has ended: counted.
        assert_eq!(kind.dropped_for(forged), 2, "{kind:?}");
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
        // The same loaded copy (dlopen of one path gives one library), for
        // its count of started `slow` phases.
        // SAFETY: the example plugin's initialisers are plain Rust statics.
        let lib = unsafe { libloading::Library::new(&copy) }.unwrap();
        // SAFETY: the example exports this symbol with this signature.
        let started =
            unsafe { lib.get::<extern "C" fn() -> u32>(b"example_slow_phases_started") }.unwrap();
        let p2 = std::sync::Arc::clone(&plugin);
        // The `slow` phase reads until a read fails.
        let in_flight = std::thread::spawn(move || {
            run_with(kind, &p2, "slow", RequestSpec::default(), None, PATIENCE)
        });
        let start = Instant::now();
        while started() == 0 {
            assert!(
                start.elapsed() < PATIENCE,
                "{kind:?}: the phase never started"
            );
            assert!(
                !in_flight.is_finished(),
                "{kind:?}: the request ended first"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        plugin.shutdown();
        let r = in_flight.join().expect("the host survives");
        // The SDK closed the session under the handler: its next read fails,
        // and the handler's error reaches the host, which still knows the
        // session. The same on every transport.
        assert_eq!(r.outcomes(), ["error"], "{kind:?}: {:?}", r.phases);
        assert_eq!(
            r.phases[0].message.as_deref(),
            Some("plugin error: session closed"),
            "{kind:?}"
        );
        // After shutdown the plugin refuses new sessions.
        on_transport!(kind, |t| {
            let err = t
                .open(&plugin, "end", SessionOptions::default())
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "plugin refused to open a session for entry `end`",
                "{kind:?}"
            );
        });
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
