//! Drives one whole request through a plugin entry, as a proxy would: open,
//! the four phases (the body filter once per chunk), close. The CLI's `run`
//! command and the tests use it with a [`MemoryContext`].
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::abi::legacy::Phase;
use crate::host::context::{MemoryContext, UpstreamSpec, WsEffect};
use crate::transport::{OpenError, PhaseOutcome, SessionOptions, TraceEntry, Transport};

/// Options of [`run_request`].
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Per-phase timeout.
    pub timeout: Duration,
    /// Record every message in both directions.
    pub trace: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            trace: false,
        }
    }
}

/// One phase as it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhaseReport {
    /// `request_filter`, `response_filter`, `response_body_filter` or `logging`.
    pub phase: &'static str,
    /// `next`, `end`, `stream_end`, `timeout` or `error`.
    pub outcome: &'static str,
    /// The error message, for `error` and `timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The response the client would get.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResponseReport {
    /// Status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// Body (UTF-8, lossy), for a non-streamed response.
    pub body: String,
    /// Chunks written by `SET_RESPONSE_STREAM_DATA`, in order.
    pub streamed_chunks: Vec<String>,
    /// What happened over the WebSocket, if the request upgraded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub websocket: Vec<WsEffect>,
}

/// Everything [`run_request`] observed.
#[derive(Clone, Debug, Serialize)]
pub struct RequestReport {
    /// The transport's name.
    pub transport: &'static str,
    /// The entry.
    pub entry: String,
    /// Each phase that ran, in order.
    pub phases: Vec<PhaseReport>,
    /// The resulting response.
    pub response: ResponseReport,
    /// Every message, when tracing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<TraceEntry>>,
}

impl RequestReport {
    /// The outcomes in order, for assertions.
    pub fn outcomes(&self) -> Vec<&'static str> {
        self.phases.iter().map(|p| p.outcome).collect()
    }

    /// The value of a response header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.response
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Runs one request through `entry`.
///
/// A timeout or error ends the request: the session is closed, later phases
/// are skipped, and the response becomes a JSON error (504 for a timeout, 500
/// for an error) unless it was already sent.
///
/// # Errors
///
/// [`OpenError`] when the plugin refuses the entry.
pub fn run_request<T: Transport>(
    transport: &T,
    plugin: &Arc<T::Plugin>,
    entry: &str,
    ctx: &mut MemoryContext,
    upstream: Option<&UpstreamSpec>,
    options: RunOptions,
) -> Result<RequestReport, OpenError> {
    let mut session = transport.open(
        plugin,
        entry,
        SessionOptions {
            trace: options.trace,
        },
    )?;
    let mut phases = Vec::new();
    let mut failed: Option<PhaseOutcome> = None;
    let mut run = |session: &mut T::Session, phase: Phase, ctx: &mut MemoryContext| {
        let outcome = transport.run_phase(session, phase, ctx, options.timeout);
        let message = match &outcome {
            PhaseOutcome::Error(e) => Some(e.to_string()),
            PhaseOutcome::Timeout => Some(format!(
                "plugin did not end the {} phase within {} ms",
                phase.name(),
                options.timeout.as_millis()
            )),
            _ => None,
        };
        phases.push(PhaseReport {
            phase: phase.name(),
            outcome: outcome.name(),
            message,
        });
        outcome
    };

    let first = run(&mut session, Phase::RequestFilter, ctx);
    let mut body_chunks: Vec<Vec<u8>> = Vec::new();
    let respond = match &first {
        PhaseOutcome::Next => {
            let up = upstream.cloned().unwrap_or_default();
            ctx.apply_upstream(up.status.unwrap_or(200), &up.headers);
            body_chunks = up
                .body_chunks
                .iter()
                .map(|c| c.clone().into_bytes())
                .collect();
            true
        }
        // The plugin's body (if any) is taken after the response filter.
        PhaseOutcome::End => true,
        PhaseOutcome::StreamEnd => false,
        PhaseOutcome::Timeout | PhaseOutcome::Error(_) => {
            failed = Some(first.clone());
            false
        }
    };
    let mut body: Vec<u8> = Vec::new();
    if respond {
        let o = run(&mut session, Phase::ResponseFilter, ctx);
        if matches!(o, PhaseOutcome::Timeout | PhaseOutcome::Error(_)) {
            failed = Some(o);
        }
        // A body set before the body filter (an END in the request filter,
        // a body set in the response filter) is the response body.
        if let Some(b) = ctx.body_override() {
            body_chunks = vec![b.to_vec()];
        }
        if body_chunks.is_empty() {
            // The end-of-stream call of the body filter.
            body_chunks.push(Vec::new());
        }
        for chunk in &body_chunks {
            if failed.is_some() {
                break;
            }
            // Each chunk's phase starts with no set body: a body set in it
            // replaces that chunk only.
            ctx.set_current_chunk(chunk);
            let o = run(&mut session, Phase::ResponseBodyFilter, ctx);
            if matches!(o, PhaseOutcome::Timeout | PhaseOutcome::Error(_)) {
                failed = Some(o);
            }
            body.extend_from_slice(ctx.body_override().unwrap_or(chunk));
        }
    } else if first == PhaseOutcome::StreamEnd {
        body = ctx.body_override().unwrap_or_default().to_vec();
    }
    if failed.is_none() {
        let o = run(&mut session, Phase::Logging, ctx);
        if matches!(o, PhaseOutcome::Timeout | PhaseOutcome::Error(_)) {
            failed = Some(o);
        }
    }

    let trace = options.trace.then(|| transport.take_trace(&mut session));
    transport.close(session);

    let (mut status, mut headers) = (
        ctx_status(ctx),
        ctx.headers()
            .iter()
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect::<Vec<_>>(),
    );
    // A failure in the request filter means no response was produced: the host
    // answers with a JSON error, as the legacy host does.
    if matches!(first, PhaseOutcome::Timeout | PhaseOutcome::Error(_)) {
        let (code, error) = match &first {
            PhaseOutcome::Timeout => (504, "plugin_timeout"),
            _ => (500, "plugin_error"),
        };
        status = code;
        headers = vec![("content-type".into(), "application/json".into())];
        let message = phases
            .first()
            .and_then(|p| p.message.clone())
            .unwrap_or_default();
        body = serde_json::json!({"status": code, "error": error, "message": message})
            .to_string()
            .into_bytes();
    }
    let _ = failed;
    Ok(RequestReport {
        transport: transport.name(),
        entry: entry.to_string(),
        phases,
        response: ResponseReport {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            streamed_chunks: ctx
                .streamed()
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
            websocket: ctx.ws_effects().to_vec(),
        },
        trace,
    })
}

fn ctx_status(ctx: &MemoryContext) -> u16 {
    use crate::host::context::HttpContext;
    ctx.response_status()
}
