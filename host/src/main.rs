//! `nylon-serve --config FILE`: the Nylon host, a Pingora proxy with the
//! nylon-transport plugin transport swapped in.
//!
//! `nylon-serve worker ...` (hidden) is an isolated plugin's worker process:
//! the host starts it for each plugin with `isolation: process` and it never
//! reads the config or the other arguments.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use nylon_host::proxy::PhaseWait;
use nylon_host::serve::{parse_transport, run, shutdown, ServeOptions};
use nylon_host::ws::conn::WsConfig;
use nylon_host::Isolation;
use nylon_transport::ws::codec::Limits;

/// The Nylon host: a Pingora proxy that runs nylon-transport plugins.
#[derive(Debug, Parser)]
#[command(name = "nylon-serve", version)]
struct Cli {
    /// The YAML config (Nylon's shape: server, plugins, services, routes).
    #[arg(long)]
    config: PathBuf,
    /// The transport of legacy plugins that neither the plugin nor `server:`
    /// chooses: `baseline` or `fast` (v2 plugins always use v2).
    #[arg(long, default_value = "fast")]
    transport: String,
    /// How a phase that ends on a plugin thread is waited for: `future` (the
    /// task is suspended) or `block` (the synchronous `run_phase` blocks the
    /// worker thread; for comparison).
    #[arg(long, default_value = "future")]
    phase_wait: String,
    /// The phase timeout of plugins whose config sets none.
    #[arg(long, default_value_t = 5000)]
    phase_timeout_ms: u64,
    /// Pingora worker threads (overrides `server.threads`).
    #[arg(long)]
    threads: Option<usize>,
    /// The plugins do not change body lengths in their body filters: keep the
    /// upstream's Content-Length instead of re-framing every response through
    /// a plugin as chunked (a plugin that changes a length anyway gets that
    /// response cut short).
    #[arg(long)]
    keep_content_length: bool,
    /// WebSocket: a ping to every client this often (milliseconds; upstream
    /// Nylon pings every 20 s).
    #[arg(long, default_value_t = 20_000)]
    ws_ping_interval_ms: u64,
    /// WebSocket: close (1001) a connection whose client sent nothing, not
    /// even a pong, for this long (milliseconds).
    #[arg(long, default_value_t = 120_000)]
    ws_idle_timeout_ms: u64,
    /// WebSocket: frames waiting for one client, at most; beyond it (or
    /// `--ws-queue-bytes`) the client is too slow and is dropped with 1013.
    #[arg(long, default_value_t = 1024)]
    ws_queue: usize,
    /// WebSocket: bytes of frames waiting for one client, at most.
    #[arg(long, default_value_t = 1 << 20)]
    ws_queue_bytes: usize,
    /// WebSocket: the largest client frame payload (1009 beyond).
    #[arg(long, default_value_t = 1 << 20)]
    ws_max_frame: usize,
    /// WebSocket: the largest client message, fragments together (1009 beyond).
    #[arg(long, default_value_t = 4 << 20)]
    ws_max_message: usize,
    /// Where every plugin runs, whatever its `isolation:` says: `process`
    /// (worker processes) or `none` (the proxy's process). Absent: as the
    /// config says.
    #[arg(long)]
    isolation: Option<String>,
    /// Load the config and the plugins, check every entry, and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    // The worker subcommand comes first and bypasses the proxy's options: its
    // arguments belong to the isolated transport.
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "worker") {
        return nylon_transport::transport::isolated::worker_main(&args[2..]);
    }
    let cli = Cli::parse();
    let result = (|| -> anyhow::Result<()> {
        let opts = ServeOptions {
            config: cli.config,
            transport: parse_transport(&cli.transport)?,
            phase_wait: match cli.phase_wait.as_str() {
                "future" => PhaseWait::Future,
                "block" => PhaseWait::Block,
                other => anyhow::bail!("unknown --phase-wait `{other}` (future, block)"),
            },
            phase_timeout: Duration::from_millis(cli.phase_timeout_ms),
            threads: cli.threads,
            keep_content_length: cli.keep_content_length,
            ws: WsConfig {
                ping_interval: Duration::from_millis(cli.ws_ping_interval_ms.max(1)),
                idle_timeout: Duration::from_millis(cli.ws_idle_timeout_ms.max(1)),
                queue: cli.ws_queue.max(1),
                queue_bytes: cli.ws_queue_bytes,
                limits: Limits {
                    max_frame: cli.ws_max_frame,
                    max_message: cli.ws_max_message,
                },
            },
            isolation: match cli.isolation.as_deref() {
                None => None,
                Some("process") => Some(Isolation::Process),
                Some("none") => Some(Isolation::None),
                Some(other) => anyhow::bail!("unknown --isolation `{other}` (process, none)"),
            },
        };
        if cli.check {
            let host = nylon_host::serve::load(&opts)?;
            println!(
                "config OK: {} plugins loaded, every entry found",
                host.routes.plugins().len()
            );
            // Isolated plugins' workers are shut down like the proxy's.
            shutdown(Arc::new(host));
            return Ok(());
        }
        run(&opts)
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nylon-serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}
