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
use nylon_host::Isolation;

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
