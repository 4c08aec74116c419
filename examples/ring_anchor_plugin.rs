//! The public anchor's plugin: the same work as our anchor rows, written
//! against `nylon-ring` (the same authors' newer ABI) so the benchmark can
//! measure both in the same run. Entries are matched by their dispatch id
//! (resolved once by the host), never by comparing names per call.
//!
//! - `empty` (id 0): fire-and-forget, nothing read, no reply (our v2 empty
//!   phase: the plugin says "next").
//! - `read_reply` (id 1): reads the 13-byte payload (our plugin reads the
//!   13-byte request path) and answers with one reply (our plugin sets one
//!   response header), the cheapest reply nylon-ring has (`Reply::Static`).
//! - `sink` (id 2): fire-and-forget with a 13-byte payload the plugin looks
//!   at (our plugin receives a 13-byte WebSocket message and does nothing).

use nylon_ring::{export_plugin, NrStatus, Plugin, Reply, Session};

/// The anchor plugin (stateless).
pub struct Anchor;

impl Plugin for Anchor {
    type Ctx = ();
    const ENTRIES: &'static [&'static str] = &["empty", "read_reply", "sink"];

    fn new() -> Self {
        Anchor
    }

    fn new_ctx(&self) -> Self::Ctx {}

    fn on_call(&self, session: &mut Session<'_>, _ctx: &mut ()) -> Reply {
        match session.entry_id() {
            0 => Reply::None,
            1 => {
                if session.payload().first() == Some(&b'/') {
                    Reply::Static(b"x-anchor=1")
                } else {
                    Reply::Fail(NrStatus::Invalid)
                }
            }
            2 => {
                std::hint::black_box(session.payload().len());
                Reply::None
            }
            _ => Reply::Fail(NrStatus::Invalid),
        }
    }
}

export_plugin!(Anchor);
