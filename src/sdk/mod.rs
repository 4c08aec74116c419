//! The plugin side: write a Nylon plugin in Rust.
//!
//! A plugin is a `cdylib` that implements [`Plugin`] (one instance per load)
//! and [`Session`] (one per request and entry), and exports the legacy symbols
//! with [`export_legacy_plugin!`](crate::export_legacy_plugin). Handlers read
//! request and response data through [`PhaseCx`] (reads return values) and
//! change the response with commands (commands send and return at once). The
//! author never touches an [`FfiBuffer`](crate::abi::legacy::FfiBuffer).
//!
//! ```no_run
//! use nylon_transport::sdk::{Flow, PhaseCx, Plugin, SdkError, Session};
//!
//! struct Auth;
//! struct AuthSession;
//!
//! impl Plugin for Auth {
//!     fn initialize(_config: &[u8]) -> Self {
//!         Auth
//!     }
//!     fn open(&self, entry: &str, _sid: u32) -> Option<Box<dyn Session>> {
//!         (entry == "auth").then(|| Box::new(AuthSession) as Box<dyn Session>)
//!     }
//! }
//!
//! impl Session for AuthSession {
//!     fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
//!         if cx.request_header("x-api-key")?.is_empty() {
//!             cx.set_response_status(401);
//!             cx.set_response_body(b"missing key");
//!             return Ok(Flow::End);
//!         }
//!         Ok(Flow::Next)
//!     }
//! }
//!
//! nylon_transport::export_legacy_plugin!(Auth);
//! ```

use std::fmt;

pub mod legacy;
pub mod v2;

pub use legacy::{PhaseCx, PhasePool, WsCx};

/// How a phase handler ends its phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Continue (`NEXT`).
    Next,
    /// The plugin answered the request (`END`): the host sends the response it set.
    End,
    /// Finish a streamed response (`SET_RESPONSE_STREAM_END`).
    StreamEnd,
    /// Send nothing: the phase goes on, for example in WebSocket mode after
    /// [`PhaseCx::websocket_upgrade`], until the connection closes.
    Hold,
}

/// A WebSocket event delivered to [`Session::on_websocket`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// The handshake completed.
    Open,
    /// A client text message (not UTF-8 validated by the host).
    Text(&'a [u8]),
    /// A client binary message.
    Binary(&'a [u8]),
    /// The connection closed.
    Close,
    /// An error message from the host.
    Error(&'a [u8]),
}

/// Why a read failed, or why a handler gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SdkError {
    /// The session was closed by the host (timeout, error or end of request).
    Closed,
    /// The host did not answer a read in time.
    Timeout,
    /// A reply that does not decode.
    Decode(String),
    /// An error raised by the handler itself.
    Handler(String),
}

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("session closed"),
            Self::Timeout => f.write_str("host did not answer in time"),
            Self::Decode(e) => write!(f, "cannot decode reply: {e}"),
            Self::Handler(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for SdkError {}

/// The message a caught handler panic is reported with, by both SDKs.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {msg}")
}

/// A plugin: one instance per `initialize` call.
pub trait Plugin: Send + Sync + 'static {
    /// Builds the plugin from its JSON config text (empty when none is configured).
    ///
    /// Called again on every host reload; the new instance serves new sessions.
    fn initialize(config: &[u8]) -> Self
    where
        Self: Sized;

    /// Opens a session for `entry`; `None` refuses it (the host reports an error).
    fn open(&self, entry: &str, sid: u32) -> Option<Box<dyn Session>>;

    /// Called once when the host shuts down.
    fn shutdown(&self) {}
}

/// One session: a request as seen by one entry of the plugin.
///
/// Each phase handler defaults to [`Flow::Next`]. A handler that returns an
/// error or panics ends its phase with an `error` outcome on the host; the
/// panic does not cross the C boundary.
pub trait Session: Send + 'static {
    /// Phase 1, the request filter.
    ///
    /// # Errors
    ///
    /// Any [`SdkError`]: reported to the host as an error for this session.
    fn request_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 2, the response filter (upstream headers).
    ///
    /// # Errors
    ///
    /// As [`Session::request_filter`].
    fn response_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 3, once per response body chunk.
    ///
    /// # Errors
    ///
    /// As [`Session::request_filter`].
    fn response_body_filter(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// Phase 4, logging.
    ///
    /// # Errors
    ///
    /// As [`Session::request_filter`].
    fn logging(&mut self, cx: &mut PhaseCx<'_>) -> Result<Flow, SdkError> {
        let _ = cx;
        Ok(Flow::Next)
    }

    /// A WebSocket event, delivered in order. Only commands are available here.
    fn on_websocket(&mut self, event: WsEvent<'_>, ws: &mut WsCx<'_>) {
        let _ = (event, ws);
    }

    /// The fixed pool of plugin threads this session's phases run on, asked
    /// once when the session opens; `None` (the default) runs each phase on
    /// the SDK's cached pool.
    fn phase_pool(&self) -> Option<&'static PhasePool> {
        None
    }
}
