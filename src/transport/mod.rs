//! Transports: how messages cross between the host's phase driver and a plugin.
//!
//! Every transport implements [`Transport`]; the same conformance suite runs
//! against each. [`baseline`] reproduces today's design and its costs.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::abi::legacy::{PayloadError, Phase};
use crate::host::context::HttpContext;
use crate::host::dispatch::DispatchError;

pub mod baseline;
mod drops;
pub mod fast;
pub mod isolated;
pub mod v2;
pub mod wait;

pub use baseline::{Baseline, BaselinePhase};
pub use fast::{Fast, FastConfig, FastPhase, ReplyMode};
pub use isolated::{Isolated, IsolatedConfig, IsolatedPlugin};
pub use v2::{V2Plugin, V2};
pub use wait::WaitPolicy;

/// How a phase ended, as the host reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhaseOutcome {
    /// The plugin sent `NEXT`.
    Next,
    /// The plugin sent `END` (or the host answered after a failed WebSocket handshake).
    End,
    /// The response was finished by the plugin (stream end, WebSocket close) or the client.
    StreamEnd,
    /// The plugin did not end the phase in time; the session was closed.
    Timeout,
    /// A bad message or plugin error; the session was closed.
    Error(SessionError),
}

impl PhaseOutcome {
    /// The CLI's name for the outcome.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::End => "end",
            Self::StreamEnd => "stream_end",
            Self::Timeout => "timeout",
            Self::Error(_) => "error",
        }
    }
}

/// Why a session failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A message that could not be processed.
    Dispatch(DispatchError),
    /// A message whose pointer and length cannot be read.
    Payload(PayloadError),
    /// The session was already closed (after an earlier timeout or error).
    Closed,
    /// A bounded queue of the session overflowed (a flooding plugin).
    QueueFull,
    /// A v2 plugin returned an error status or reported an error.
    Plugin(String),
    /// The isolated worker running the session died or was killed mid-phase
    /// (crash, exit, timeout, protocol violation); the reason, e.g.
    /// `worker 1234 killed by signal 11 (SIGSEGV)`. A host answers 502.
    Worker(String),
    /// The phase could not start at once: the isolated worker's ring is full
    /// (it is behind, or stuck). Nothing was sent; a host answers 503.
    Busy(String),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dispatch(e) => e.fmt(f),
            Self::Payload(e) => write!(f, "bad message: {e}"),
            Self::Closed => f.write_str("session is closed"),
            Self::Plugin(m) => write!(f, "plugin error: {m}"),
            Self::Worker(m) => write!(f, "worker failed: {m}"),
            Self::Busy(m) => write!(f, "worker busy: {m}"),
            Self::QueueFull => {
                f.write_str("session queue is full: the plugin sends faster than the host applies")
            }
        }
    }
}

impl std::error::Error for SessionError {}

/// Why a session could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// `register_session_stream` returned false: the plugin has no such entry.
    Rejected(String),
    /// Every session slot is in use.
    TooManySessions,
    /// Every isolated worker's queue is full: a host answers a fast 503.
    Overloaded,
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected(e) => write!(f, "plugin refused to open a session for entry `{e}`"),
            Self::TooManySessions => f.write_str("too many open sessions"),
            Self::Overloaded => f.write_str("every worker's queue is full"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Which way a traced message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Host to plugin (`event_stream`).
    ToPlugin,
    /// Plugin to host (the callback).
    ToHost,
}

/// One message as it crossed the boundary, recorded when tracing is on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEntry {
    /// Direction.
    pub direction: Direction,
    /// Phase byte.
    pub phase: u8,
    /// Method id.
    pub method: u32,
    /// Payload bytes, exactly as sent.
    pub payload: Vec<u8>,
}

/// Options for one session.
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionOptions {
    /// Record every message in both directions (see [`Transport::trace`]).
    pub trace: bool,
}

/// A way to carry the legacy protocol between the host and a plugin.
///
/// # Phases as futures
///
/// [`Transport::phase`] starts one phase and returns a future of its
/// outcome; [`Transport::run_phase`] is the synchronous form, a thin wrapper
/// that polls that future and waits on the calling thread.
///
/// - A phase the plugin ends inside the host's call (the common case on the
///   fast and v2 transports) is `Ready` on the first poll, at no cost beyond
///   the call itself: no lock, clock read or allocation is added for it.
/// - A phase that ends later, on a plugin thread, wakes the task through the
///   waker of its last poll (an `AtomicWaker` per session): nothing spins and
///   no thread is parked for it in the asynchronous form.
/// - The context is lent to the plugin's threads exactly while the future is
///   alive: reads and commands from a plugin thread reach it under the
///   session's own lock while the task is suspended, and the future's `Drop`
///   revokes it under that lock, so after the drop returns no callback can
///   touch it.
/// - Dropping a future that was polled but has not completed cancels the
///   phase: the session is closed on both sides (the plugin is told
///   `close_session`) and later phases return `Error(Closed)`. A host
///   implements the phase timeout by dropping the future when its timer fires
///   and reporting [`PhaseOutcome::Timeout`]. A future dropped before its
///   first poll never started the phase and changes nothing.
/// - After a WebSocket upgrade the phase lasts as long as the connection.
///   Each poll then delivers what the context's non-blocking
///   `websocket_recv(Duration::ZERO, ..)` has; the transport has no way to
///   know when client data arrives, so a host must wake the task itself when
///   it does (the synchronous form polls about every millisecond).
pub trait Transport: Send + Sync {
    /// The kind of plugin it drives.
    type Plugin;
    /// One open session.
    type Session: Send;
    /// The future of one phase. It borrows the session and the context until
    /// it completes or is dropped.
    type PhaseFuture<'a>: Future<Output = PhaseOutcome> + Send + 'a
    where
        Self: 'a;

    /// The transport's name (`baseline`, `fast`).
    fn name(&self) -> &'static str;

    /// Opens a session for `entry` (`register_session_stream`).
    ///
    /// # Errors
    ///
    /// [`OpenError::Rejected`] when the plugin refuses the entry.
    fn open(
        &self,
        plugin: &Arc<Self::Plugin>,
        entry: &str,
        options: SessionOptions,
    ) -> Result<Self::Session, OpenError>;

    /// Starts one phase; the future ends with the phase (see the
    /// [trait docs](Transport#phases-as-futures)).
    ///
    /// `Ready` on the first poll when the plugin ended the phase inside the
    /// call. A phase that ends later on a plugin thread wakes the task
    /// through the waker. Dropping the future before it completes cancels the
    /// phase and closes the session.
    ///
    /// After `Timeout`, `Error` or a cancellation the session is closed on
    /// both sides and every later message for it is dropped; later phases
    /// return `Error(Closed)`.
    fn phase<'a>(
        &'a self,
        session: &'a mut Self::Session,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> Self::PhaseFuture<'a>;

    /// Runs one phase to its end, its timeout, or an error, on this thread:
    /// polls [`Transport::phase`] and, while it is pending, waits as the
    /// transport's [`WaitPolicy`] says (spin while recent phases ended fast,
    /// then yield, then park until the waker fires or the deadline passes).
    /// At the deadline the future is dropped (the session is closed) and the
    /// outcome is `Timeout`. For the CLI, the tests and the benches.
    fn run_phase(
        &self,
        session: &mut Self::Session,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome;

    /// Closes the session (`close_session_stream`) and forgets it.
    fn close(&self, session: Self::Session);

    /// Takes the messages recorded so far, if the session traces.
    fn take_trace(&self, session: &mut Self::Session) -> Vec<TraceEntry>;
}
