//! The transports a host can put behind a plugin, as one enum.
//!
//! Four transports: baseline, fast (legacy ABI), v2, all in the proxy's
//! process, and isolated (either ABI, the library in worker processes; see
//! `nylon_transport::transport::isolated`).
//!
//! [`Transport`] has a generic associated future type, so it is not
//! dyn-compatible; the host picks one of the three at start-up (per plugin)
//! and dispatches with a `match`, which also lets every phase future stay on
//! the task's stack (no box per phase).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nylon_transport::abi::legacy::Phase;
use nylon_transport::host::{HttpContext, LegacyPlugin};
use nylon_transport::transport::isolated::InnerKind;
use nylon_transport::transport::{
    Baseline, Fast, FastConfig, Isolated, IsolatedPlugin, OpenError, PhaseOutcome, ReplyMode,
    SessionOptions, Transport, V2Plugin, V2,
};

/// Which transport drives a legacy plugin (v2 plugins always use [`V2`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// Today's design, reproduced.
    Baseline,
    /// The fast transport (replies inline).
    Fast,
    /// The fast transport with deferred replies (plugins that hold a lock
    /// across the callback).
    FastDeferred,
}

impl TransportKind {
    /// Parses `baseline`, `fast` or `fast-deferred`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "baseline" => Self::Baseline,
            "fast" => Self::Fast,
            "fast-deferred" | "deferred" => Self::FastDeferred,
            _ => return None,
        })
    }

    /// The in-process transport an isolated worker drives a legacy library
    /// with.
    pub fn inner(self) -> InnerKind {
        match self {
            Self::Baseline => InnerKind::Baseline,
            Self::Fast => InnerKind::Fast,
            Self::FastDeferred => InnerKind::FastDeferred,
        }
    }

    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Fast => "fast",
            Self::FastDeferred => "fast-deferred",
        }
    }
}

/// A loaded plugin of either ABI.
#[derive(Debug, Clone)]
pub enum PluginHandle {
    /// A legacy-ABI library.
    Legacy(Arc<LegacyPlugin>),
    /// A v2-ABI library.
    V2(Arc<V2Plugin>),
    /// A library of either ABI loaded in worker processes (never in the
    /// proxy's process).
    Isolated(Arc<IsolatedPlugin>),
}

/// One transport instance.
#[derive(Debug)]
pub enum HostTransport {
    /// See [`Baseline`].
    Baseline(Baseline),
    /// See [`Fast`].
    Fast(Fast),
    /// See [`V2`].
    V2(V2),
    /// See [`Isolated`].
    Isolated(Isolated),
}

impl HostTransport {
    /// A transport for a legacy plugin.
    pub fn legacy(kind: TransportKind) -> Self {
        match kind {
            TransportKind::Baseline => Self::Baseline(Baseline::new()),
            TransportKind::Fast => Self::Fast(Fast::new(FastConfig::default())),
            TransportKind::FastDeferred => Self::Fast(Fast::new(FastConfig {
                reply_mode: ReplyMode::Deferred,
                ..FastConfig::default()
            })),
        }
    }

    /// The v2 transport.
    pub fn v2() -> Self {
        Self::V2(V2::default())
    }

    /// The process-isolated transport.
    pub fn isolated() -> Self {
        Self::Isolated(Isolated::new())
    }

    /// The transport's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Baseline(t) => t.name(),
            Self::Fast(t) => t.name(),
            Self::V2(t) => t.name(),
            Self::Isolated(t) => t.name(),
        }
    }

    /// Opens a session of `entry`.
    ///
    /// # Errors
    ///
    /// The plugin refused the entry, or the transport and plugin ABI differ.
    pub fn open(&self, plugin: &PluginHandle, entry: &str) -> Result<HostSession, OpenError> {
        let opts = SessionOptions::default();
        Ok(match (self, plugin) {
            (Self::Baseline(t), PluginHandle::Legacy(p)) => {
                HostSession::Baseline(t.open(p, entry, opts)?)
            }
            (Self::Fast(t), PluginHandle::Legacy(p)) => HostSession::Fast(t.open(p, entry, opts)?),
            (Self::V2(t), PluginHandle::V2(p)) => HostSession::V2(t.open(p, entry, opts)?),
            (Self::Isolated(t), PluginHandle::Isolated(p)) => {
                HostSession::Isolated(t.open(p, entry, opts)?)
            }
            _ => return Err(OpenError::Rejected(entry.to_string())),
        })
    }

    /// Starts one phase (see `Transport::phase`): the future is `Ready` on
    /// its first poll when the plugin ends the phase inside the call;
    /// dropping it while pending cancels the phase and closes the session.
    pub fn phase<'a>(
        &'a self,
        session: &'a mut HostSession,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> HostPhase<'a> {
        match (self, session) {
            (Self::Baseline(t), HostSession::Baseline(s)) => HostPhase::Baseline {
                f: t.phase(s, phase, ctx),
            },
            (Self::Fast(t), HostSession::Fast(s)) => HostPhase::Fast {
                f: t.phase(s, phase, ctx),
            },
            (Self::V2(t), HostSession::V2(s)) => HostPhase::V2 {
                f: t.phase(s, phase, ctx),
            },
            (Self::Isolated(t), HostSession::Isolated(s)) => HostPhase::Isolated {
                f: t.phase(s, phase, ctx),
            },
            _ => HostPhase::Mismatch,
        }
    }

    /// Runs one phase on this thread, waiting up to `timeout` (the
    /// synchronous form, for the thread-blocking comparison of the load test).
    pub fn run_phase_blocking(
        &self,
        session: &mut HostSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: std::time::Duration,
    ) -> PhaseOutcome {
        match (self, session) {
            (Self::Baseline(t), HostSession::Baseline(s)) => t.run_phase(s, phase, ctx, timeout),
            (Self::Fast(t), HostSession::Fast(s)) => t.run_phase(s, phase, ctx, timeout),
            (Self::V2(t), HostSession::V2(s)) => t.run_phase(s, phase, ctx, timeout),
            (Self::Isolated(t), HostSession::Isolated(s)) => t.run_phase(s, phase, ctx, timeout),
            _ => mismatch(),
        }
    }

    /// Closes a session.
    pub fn close(&self, session: HostSession) {
        match (self, session) {
            (Self::Baseline(t), HostSession::Baseline(s)) => t.close(s),
            (Self::Fast(t), HostSession::Fast(s)) => t.close(s),
            (Self::V2(t), HostSession::V2(s)) => t.close(s),
            (Self::Isolated(t), HostSession::Isolated(s)) => t.close(s),
            // A session always comes from the transport that opened it; a
            // mismatch is dropped, which releases what it holds.
            (_, s) => drop(s),
        }
    }
}

fn mismatch() -> PhaseOutcome {
    PhaseOutcome::Error(nylon_transport::transport::SessionError::Plugin(
        "session and transport differ".into(),
    ))
}

/// A session of one of the transports.
#[derive(Debug)]
pub enum HostSession {
    /// A [`Baseline`] session.
    Baseline(<Baseline as Transport>::Session),
    /// A [`Fast`] session.
    Fast(<Fast as Transport>::Session),
    /// A [`V2`] session.
    V2(<V2 as Transport>::Session),
    /// An [`Isolated`] session.
    Isolated(<Isolated as Transport>::Session),
}

pin_project_lite::pin_project! {
    /// The future of one phase on one of the transports (each variant's `f`
    /// is that transport's future).
    #[project = HostPhaseProj]
    #[allow(missing_docs)]
    pub enum HostPhase<'a> {
        /// On [`Baseline`].
        Baseline {
            #[pin]
            f: <Baseline as Transport>::PhaseFuture<'a>,
        },
        /// On [`Fast`].
        Fast {
            #[pin]
            f: <Fast as Transport>::PhaseFuture<'a>,
        },
        /// On [`V2`].
        V2 {
            #[pin]
            f: <V2 as Transport>::PhaseFuture<'a>,
        },
        /// On [`Isolated`].
        Isolated {
            #[pin]
            f: <Isolated as Transport>::PhaseFuture<'a>,
        },
        /// The session came from another transport.
        Mismatch,
    }
}

impl Future for HostPhase<'_> {
    type Output = PhaseOutcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<PhaseOutcome> {
        match self.project() {
            HostPhaseProj::Baseline { f } => f.poll(cx),
            HostPhaseProj::Fast { f } => f.poll(cx),
            HostPhaseProj::V2 { f } => f.poll(cx),
            HostPhaseProj::Isolated { f } => f.poll(cx),
            HostPhaseProj::Mismatch => Poll::Ready(mismatch()),
        }
    }
}
