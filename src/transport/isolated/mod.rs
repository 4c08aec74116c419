//! The process-isolated transport: plugins run in worker processes, so a
//! plugin that crashes takes down only its worker, never the host.
//!
//! The host starts [`IsolatedConfig::workers`] worker processes per plugin
//! (`nylon-transport worker ...`, the same binary, or any binary that calls
//! [`worker_main`]). Each loads the library, detects its ABI, and drives it
//! with the in-process [`Fast`](super::Fast) or [`V2`](super::V2) transport
//! through a shadow context built from the phase-start frame. Host and worker
//! talk over a pair of rings ([`crate::ring`]) in one shared memfd mapping.
//! See `docs/isolation.md` for the protocol and the safety argument.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{OpenError, PhaseOutcome, SessionOptions, TraceEntry, Transport};
use crate::abi::legacy::Phase;
use crate::host::context::HttpContext;

/// Settings of an [`IsolatedPlugin`].
#[derive(Clone, Debug)]
pub struct IsolatedConfig {
    /// Worker processes per plugin (default 2); at least 1.
    pub workers: usize,
    /// Submissions queued per worker, at most (default 1024); past it
    /// [`Transport::open`] returns [`OpenError::Overloaded`].
    pub queue: usize,
    /// A worker that does not answer a phase in time is killed and
    /// restarted (default 5 s).
    pub phase_timeout: Duration,
    /// The first and the largest delay between restarts of one worker
    /// (default 10 ms, 2 s); the delay doubles after each death in a row.
    pub restart_backoff: (Duration, Duration),
    /// The argv that starts a worker; the host appends its own arguments.
    /// Default: `[current_exe, "worker"]`.
    pub worker_command: Vec<OsString>,
    /// Which in-process transport a worker drives a legacy library with
    /// (v2 libraries always use [`V2`](super::V2)).
    pub legacy_transport: InnerKind,
}

impl Default for IsolatedConfig {
    fn default() -> Self {
        unimplemented!()
    }
}

/// The in-process transport a worker uses for a legacy library.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InnerKind {
    /// [`Fast`](super::Fast), replies inline.
    #[default]
    Fast,
    /// [`Fast`](super::Fast), replies deferred.
    FastDeferred,
    /// [`Baseline`](super::Baseline).
    Baseline,
}

/// The ABI a worker found in the library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// The legacy C ABI.
    Legacy,
    /// The v2 ABI.
    V2,
}

/// Why an isolated plugin could not be started or asked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IsolatedError {
    /// A worker process could not be started (spawn, memfd, mapping).
    Spawn(String),
    /// A worker could not load or initialize the library; its message.
    Load(String),
    /// A worker died or broke the protocol before it answered.
    Worker(String),
    /// The plugin was shut down.
    ShutDown,
}

impl fmt::Display for IsolatedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spawn(m) => write!(f, "cannot start a worker: {m}"),
            Self::Load(m) => write!(f, "worker cannot load the plugin: {m}"),
            Self::Worker(m) => write!(f, "worker failed: {m}"),
            Self::ShutDown => f.write_str("plugin is shut down"),
        }
    }
}

impl std::error::Error for IsolatedError {}

/// Counters of an [`IsolatedPlugin`], as [`IsolatedPlugin::stats`] reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IsolatedStats {
    /// Worker processes started (the first ones and every restart).
    pub started: u64,
    /// Restarts after a death.
    pub restarts: u64,
    /// Worker deaths (crash, exit, killed after a timeout or garbage).
    pub deaths: u64,
    /// Why the last worker died, if one did.
    pub last_death: Option<String>,
    /// Sessions open now.
    pub in_flight: u64,
    /// Opens refused with [`OpenError::Overloaded`].
    pub rejected: u64,
}

/// A plugin loaded in worker processes.
pub struct IsolatedPlugin {
    _private: (),
}

impl fmt::Debug for IsolatedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IsolatedPlugin").finish_non_exhaustive()
    }
}

impl IsolatedPlugin {
    /// Starts the workers; each loads `path`, calls `initialize(config)` and
    /// says hello.
    ///
    /// # Errors
    ///
    /// [`IsolatedError::Spawn`] when a worker cannot be started,
    /// [`IsolatedError::Load`] when it cannot load or initialize the library.
    pub fn start(
        path: &Path,
        config: &[u8],
        cfg: IsolatedConfig,
    ) -> Result<Arc<Self>, IsolatedError> {
        let _ = (path, config, cfg);
        unimplemented!()
    }

    /// Asks a worker whether the plugin accepts `entry` (opens and closes a
    /// session there).
    ///
    /// # Errors
    ///
    /// [`IsolatedError::Worker`] when no worker answered.
    pub fn check_entry(&self, entry: &str) -> Result<bool, IsolatedError> {
        let _ = entry;
        unimplemented!()
    }

    /// The ABI the workers found.
    pub fn abi(&self) -> Abi {
        unimplemented!()
    }

    /// The pids of the live workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        unimplemented!()
    }

    /// The counters.
    pub fn stats(&self) -> IsolatedStats {
        unimplemented!()
    }

    /// Calls the plugin's `shutdown` in every worker once, waits up to
    /// `grace` for them to exit, then kills the rest. Later opens fail.
    pub fn shutdown(&self, grace: Duration) {
        let _ = grace;
        unimplemented!()
    }
}

/// The process-isolated transport (see the [module docs](self)).
#[derive(Debug, Default)]
pub struct Isolated {
    _private: (),
}

impl Isolated {
    /// Creates the transport.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One session open in a worker.
#[derive(Debug)]
pub struct IsolatedSession {
    _private: (),
}

/// The future of one isolated phase (see [`Transport::phase`]).
#[derive(Debug)]
pub struct IsolatedPhase<'a> {
    _ctx: std::marker::PhantomData<&'a mut IsolatedSession>,
}

impl std::future::Future for IsolatedPhase<'_> {
    type Output = PhaseOutcome;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<PhaseOutcome> {
        unimplemented!()
    }
}

impl Transport for Isolated {
    type Plugin = IsolatedPlugin;
    type Session = IsolatedSession;
    type PhaseFuture<'a> = IsolatedPhase<'a>;

    fn name(&self) -> &'static str {
        "isolated"
    }

    fn open(
        &self,
        plugin: &Arc<IsolatedPlugin>,
        entry: &str,
        options: SessionOptions,
    ) -> Result<IsolatedSession, OpenError> {
        let _ = (plugin, entry, options);
        unimplemented!()
    }

    fn phase<'a>(
        &'a self,
        session: &'a mut IsolatedSession,
        phase: Phase,
        ctx: &'a mut dyn HttpContext,
    ) -> IsolatedPhase<'a> {
        let _ = (session, phase, ctx);
        unimplemented!()
    }

    fn run_phase(
        &self,
        session: &mut IsolatedSession,
        phase: Phase,
        ctx: &mut dyn HttpContext,
        timeout: Duration,
    ) -> PhaseOutcome {
        let _ = (session, phase, ctx, timeout);
        unimplemented!()
    }

    fn close(&self, session: IsolatedSession) {
        let _ = session;
        unimplemented!()
    }

    fn take_trace(&self, session: &mut IsolatedSession) -> Vec<TraceEntry> {
        let _ = session;
        Vec::new()
    }
}

/// The `worker` subcommand: both binaries (`nylon-transport`, and the
/// host's `nylon-serve`) call it with the arguments after `worker`.
pub fn worker_main(args: &[OsString]) -> std::process::ExitCode {
    let _ = args;
    unimplemented!()
}
