//! The `nylon-transport` command line: `run`, `inspect` and `bench`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use nylon_transport::bench;
use nylon_transport::host::driver::{run_request, RunOptions};
use nylon_transport::host::{inspect, LegacyPlugin, MemoryContext, RequestSpec};
use nylon_transport::transport::{
    Baseline, Fast, FastConfig, Isolated, IsolatedConfig, IsolatedPlugin, ReplyMode, V2Plugin, V2,
};

#[derive(Parser)]
#[command(
    name = "nylon-transport",
    version,
    about = "Plugin transport engine for the Nylon reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive one request through a plugin's phases and print the result as JSON.
    Run {
        /// The plugin shared library.
        #[arg(long)]
        plugin: PathBuf,
        /// The entry (phase handler name) to open a session for.
        #[arg(long)]
        entry: String,
        /// Which transport carries the messages.
        #[arg(long, value_enum, default_value_t = TransportArg::Baseline)]
        transport: TransportArg,
        /// A JSON request file: method, path, query, host, client_ip, scheme,
        /// headers, body, params, upstream, websocket, websocket_send_limit, error.
        #[arg(long)]
        request: Option<PathBuf>,
        /// The plugin config, JSON, passed to `initialize`.
        #[arg(long)]
        config: Option<String>,
        /// The middleware payload, JSON, returned by GET_PAYLOAD.
        #[arg(long)]
        payload: Option<String>,
        /// Per-phase timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// Include every message that crossed the boundary in the output.
        #[arg(long)]
        trace: bool,
        /// With `--transport fast`: answer reads from the driver thread, as the
        /// original host does, instead of inside the plugin's callback.
        #[arg(long)]
        deferred_replies: bool,
    },
    /// Report which ABI a library speaks, its symbols and any problem.
    Inspect {
        /// The plugin shared library.
        file: PathBuf,
    },
    /// Run the benchmark scenarios, baseline against fast, and print the
    /// seed's before/after table next to ours.
    Bench {
        /// A shorter run (under two minutes on a 2-core machine).
        #[arg(long)]
        quick: bool,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write `benchmarks.md` and `benchmarks.svg` into this directory.
        #[arg(long, value_name = "DIR")]
        docs: Option<PathBuf>,
        /// Run only these rows (comma-separated names).
        #[arg(long, value_delimiter = ',', value_name = "ROWS")]
        rows: Vec<String>,
    },
    /// Internal: runs one benchmark row's measured regions, for `bench` to
    /// run under valgrind's callgrind.
    #[command(name = bench::instructions::SUBCOMMAND, hide = true)]
    CallgrindRow {
        /// The row's name.
        name: String,
        /// Only these variants (baseline, fast, fast_legacy, anchor); all
        /// when none is given.
        #[arg(long)]
        variant: Vec<String>,
        /// `librust_plugin.so`.
        #[arg(long)]
        legacy: PathBuf,
        /// `libv2_plugin.so`.
        #[arg(long)]
        v2: PathBuf,
        /// `libring_anchor_plugin.so`.
        #[arg(long)]
        anchor: PathBuf,
    },
    /// The far end of the `ring_round_trip` row: echoes frames between the
    /// two rings of the memfd open as descriptor `fd`.
    #[command(name = "__ring-echo", hide = true)]
    RingEcho {
        #[arg(long)]
        fd: i32,
        #[arg(long)]
        capacity: usize,
        #[arg(long)]
        back_offset: u64,
        /// Microseconds to keep looking (yielding) before the ring's wait.
        #[arg(long, default_value_t = 0)]
        active_us: u64,
    },
    /// The far end of the pipe baseline of `ring_round_trip`: echoes 8-byte
    /// messages from standard input to standard output.
    #[command(name = "__pipe-echo", hide = true)]
    PipeEcho,
    /// Internal: an isolated-transport worker process (started by the host
    /// of `--transport isolated`, never by hand).
    #[command(hide = true)]
    Worker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Baseline,
    Fast,
    /// The plugin runs in worker processes (either ABI).
    Isolated,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match execute(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn execute(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run {
            plugin,
            entry,
            transport,
            request,
            config,
            payload,
            timeout_ms,
            trace,
            deferred_replies,
        } => {
            let spec: RequestSpec = match &request {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read request file {}", path.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("invalid request file {}", path.display()))?
                }
                None => RequestSpec::default(),
            };
            let config = match &config {
                Some(c) => compact_json(c).context("--config is not valid JSON")?,
                None => Vec::new(),
            };
            let payload = match &payload {
                Some(p) => Some(compact_json(p).context("--payload is not valid JSON")?),
                None => None,
            };
            if timeout_ms == 0 {
                bail!("--timeout-ms must be at least 1");
            }
            let upstream = spec.upstream.clone();
            let mut ctx = MemoryContext::new(spec, payload);
            let options = RunOptions {
                timeout: Duration::from_millis(timeout_ms),
                trace,
            };
            let inspected = inspect(&plugin)?;
            let abi = inspected.abi;
            if abi != "v2"
                && inspected
                    .symbols
                    .iter()
                    .any(|s| s.name == nylon_transport::abi::v2::PLUGIN_SYMBOL)
            {
                bail!("{}: {}", plugin.display(), inspected.problems.join("; "));
            }
            let report = match (abi, transport) {
                (_, TransportArg::Isolated) => {
                    let lib = IsolatedPlugin::start(&plugin, &config, IsolatedConfig::default())?;
                    let report = run_request(
                        &Isolated::new(),
                        &lib,
                        &entry,
                        &mut ctx,
                        upstream.as_ref(),
                        options,
                    )?;
                    lib.shutdown(Duration::from_secs(5));
                    report
                }
                ("v2", TransportArg::Fast) => {
                    let lib = Arc::new(V2Plugin::load(&plugin, &config)?);
                    run_request(
                        &V2::default(),
                        &lib,
                        &entry,
                        &mut ctx,
                        upstream.as_ref(),
                        options,
                    )?
                }
                ("v2", TransportArg::Baseline) => {
                    bail!(
                        "{} is a v2 plugin: it runs on --transport fast",
                        plugin.display()
                    )
                }
                (_, TransportArg::Baseline) => {
                    let lib = Arc::new(LegacyPlugin::load(&plugin)?);
                    lib.initialize(&config)?;
                    run_request(
                        &Baseline::new(),
                        &lib,
                        &entry,
                        &mut ctx,
                        upstream.as_ref(),
                        options,
                    )?
                }
                (_, TransportArg::Fast) => {
                    let lib = Arc::new(LegacyPlugin::load(&plugin)?);
                    lib.initialize(&config)?;
                    let fast = Fast::new(FastConfig {
                        reply_mode: if deferred_replies {
                            ReplyMode::Deferred
                        } else {
                            ReplyMode::Inline
                        },
                        ..FastConfig::default()
                    });
                    run_request(&fast, &lib, &entry, &mut ctx, upstream.as_ref(), options)?
                }
            };
            out(&serde_json::to_string_pretty(&report)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect { file } => {
            let report = inspect(&file)?;
            out(&serde_json::to_string_pretty(&report)?)?;
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::RingEcho {
            fd,
            capacity,
            back_offset,
            active_us,
        } => {
            bench::ring_rows::ring_echo_process(fd, capacity, back_offset, active_us)
                .map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { args } => Ok(nylon_transport::transport::isolated::worker_main(&args)),
        Command::PipeEcho => {
            bench::ring_rows::pipe_echo_process().map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            quick,
            json,
            docs,
            rows,
        } => {
            let settings = if quick {
                bench::Settings::quick()
            } else {
                bench::Settings::careful()
            };
            let start = Instant::now();
            let report = bench::run(settings, quick, &rows, |i, n, name| {
                eprintln!("[{i}/{n}] {name} ({} elapsed)", bench::elapsed_since(start));
            })
            .map_err(anyhow::Error::msg)?;
            if json {
                out(&serde_json::to_string_pretty(&report)?)?;
            } else {
                out(bench::table(&report).trim_end())?;
            }
            if let Some(dir) = docs {
                std::fs::create_dir_all(&dir)?;
                let md = dir.join("benchmarks.md");
                let svg = dir.join("benchmarks.svg");
                let mut text = bench::render::markdown(&report, "benchmarks.svg");
                // The proxy's load test (scripts/e2e-bench.sh) writes its own
                // page; its latest figures are repeated here so that one page
                // has them all.
                if let Ok(e2e) = std::fs::read_to_string(dir.join("benchmarks-e2e.md")) {
                    bench::render::append_e2e(&mut text, &e2e);
                }
                std::fs::write(&md, text)?;
                std::fs::write(&svg, bench::render::svg(&report))?;
                eprintln!("wrote {} and {}", md.display(), svg.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CallgrindRow {
            name,
            variant,
            legacy,
            v2,
            anchor,
        } => {
            let files = bench::instructions::PluginFiles { legacy, v2, anchor };
            let mut rows = bench::build_rows(
                &files,
                if name == "request_go" {
                    bench::GoRow::Required
                } else {
                    bench::GoRow::Skip
                },
            )
            .map_err(anyhow::Error::msg)?;
            // Only this row's variants stay: the others' partner threads stop.
            rows.retain(|r| r.name == name);
            let row = rows
                .first_mut()
                .with_context(|| format!("no benchmark row named {name}"))?;
            let plan = bench::instructions::run_row(row, &variant).map_err(anyhow::Error::msg)?;
            out(&plan)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints a line to stdout; a closed pipe (`| head`) is not an error.
fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Folds clap's multi-line usage error into one line, keeping the possible values.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut out = lines
        .next()
        .unwrap_or("error: invalid arguments")
        .to_string();
    for l in lines {
        if l.starts_with("[possible values") || l.starts_with("tip:") {
            out.push(' ');
            out.push_str(l);
        }
    }
    out
}

fn compact_json(text: &str) -> Result<Vec<u8>> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    Ok(serde_json::to_vec(&v)?)
}
