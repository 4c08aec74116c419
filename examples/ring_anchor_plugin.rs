//! The public anchor's plugin: the same work as our rows, written against
//! `nylon-ring` (the same authors' newer ABI) so the benchmark can measure
//! it in the same run.
//!
//! - `read`: a synchronous call answering a static 13-byte string (our
//!   `ffi_call` row reads the 13-byte request path).
//! - `fire`: fire-and-forget, no reply (our `command` row).
//! - `unary`: an async entry that completes on its first poll, so the reply
//!   is delivered inline (nylon-ring's "unary call").

use nylon_ring::{export_plugin, AsyncSession, Plugin, Reply, Session};

/// The anchor plugin (stateless).
pub struct Anchor;

impl Plugin for Anchor {
    type Ctx = ();
    const ENTRIES: &'static [&'static str] = &["read", "fire"];
    const ASYNC_ENTRIES: &'static [&'static str] = &["unary"];

    fn new() -> Self {
        Anchor
    }

    fn new_ctx(&self) -> Self::Ctx {}

    fn on_call(&self, session: &mut Session<'_>, _ctx: &mut ()) -> Reply {
        match session.entry() {
            "read" => Reply::Static(b"/api/v1/items"),
            _ => Reply::None,
        }
    }

    async fn on_async_call(&self, _session: AsyncSession, _ctx: ()) -> Reply {
        Reply::Static(b"/api/v1/items")
    }
}

export_plugin!(Anchor);
