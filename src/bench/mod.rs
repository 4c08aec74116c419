//! The benchmark suite: every row of the seed's table and the brief's
//! scenarios, baseline against fast, measured in one run.
//!
//! The `bench` command and the criterion benches (`benches/`) share these
//! rows. A [`Variant`] times `iters` iterations itself, so cross-thread rows
//! measure both threads running, end to end. [`measure`] interleaves the
//! variants of a row round by round and reports medians; ratios come from the
//! same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod anchor;
pub mod context;
pub mod render;
pub mod ring_rows;
pub mod rows;
pub mod soak;

pub use rows::Plugins;

use crate::host::loader::LegacyPlugin;
use crate::transport::V2Plugin;

type Runner = Box<dyn FnMut(u64) -> Result<Duration, String> + Send>;

/// One way of doing a row's work; times `iters` iterations of itself.
pub struct Variant {
    run: Runner,
    /// Operations per iteration (e.g. 1000 reads in one phase).
    pub ops: u64,
}

impl std::fmt::Debug for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Variant").field("ops", &self.ops).finish()
    }
}

impl Variant {
    /// Wraps a timing closure.
    pub fn new(
        ops: u64,
        run: impl FnMut(u64) -> Result<Duration, String> + Send + 'static,
    ) -> Self {
        Self {
            run: Box::new(run),
            ops,
        }
    }

    /// Times `iters` iterations.
    ///
    /// # Errors
    ///
    /// The variant's own failure (a plugin misbehaving, a ring error).
    pub fn run(&mut self, iters: u64) -> Result<Duration, String> {
        (self.run)(iters)
    }

    /// Nanoseconds per operation of one timed batch.
    ///
    /// # Errors
    ///
    /// As [`Variant::run`].
    pub fn ns_per_op(&mut self, iters: u64) -> Result<f64, String> {
        let d = self.run(iters)?;
        Ok(d.as_nanos() as f64 / (iters * self.ops) as f64)
    }
}

/// One row of the table.
#[derive(Debug)]
pub struct Row {
    /// The row's name (the JSON `name`).
    pub name: &'static str,
    /// The seed's "before" figure.
    pub seed_before: &'static str,
    /// The seed's target.
    pub seed_target: &'static str,
    /// Today's design.
    pub baseline: Variant,
    /// Ours.
    pub fast: Variant,
    /// The request row only: the fast host with the unchanged legacy plugin.
    pub fast_legacy: Option<Variant>,
    /// The public anchor (nylon-ring), where it has an equivalent.
    pub anchor: Option<Variant>,
    /// What each variant does.
    pub note: &'static str,
}

impl Row {
    /// A row with a baseline and a fast variant.
    pub fn new(
        name: &'static str,
        seed_before: &'static str,
        seed_target: &'static str,
        baseline: Variant,
        fast: Variant,
    ) -> Self {
        Self {
            name,
            seed_before,
            seed_target,
            baseline,
            fast,
            fast_legacy: None,
            anchor: None,
            note: "",
        }
    }
}

/// What each row measures, for the docs.
pub fn note(name: &str) -> &'static str {
    match name {
        "request" => "open, 4 phases (payload 2 keys, path, 1 header, 8 headers, 2 sets; status, 1 set; next; duration, client IP), close. baseline: legacy plugin on the baseline host; fast: v2 plugin; fast_legacy: the same legacy plugin on the fast host",
        "websocket" => "one masked 125-byte text frame: parse, unmask, deliver, plugin echoes, host builds the frame (per message, 1000 per session)",
        "plugin_load" => "dlopen of a fresh copy, symbol checks, initialize, shutdown, dlclose",
        "session_open" => "open and close one session (legacy register/close vs v2 open/close)",
        "ffi_call" => "one synchronous read of the request path from the plugin (1000 per phase)",
        "transfer_memory" => "moving a 256-byte payload: malloc+copy twice vs a pooled lease and one copy",
        "channel" => "a u64 to another thread and back: two crossbeam bounded(1) channels, blocking send/recv (unbounded measured the same, bounded(0) far slower) vs two SPSC rings on the heap backend (spin, yield, futex)",
        "lock" => "finding a session from a callback: global RwLock<HashMap> + sender clone vs slot table + own lock",
        "json_payload" => "reading two keys of a 110-byte JSON payload: serde_json Value vs an allocation-free top-level key scan (codec::json; sonic-rs lazy get allocates per call)",
        "header_serialization" => "8 request headers as a NylonHttpHeaders FlatBuffer: map clone + new builder vs reused builder",
        "frame_parse" => "parse and unmask one 125-byte masked frame: legacy host style vs in place, word-wise",
        "dispatch" => "from phase start to the handler: formatted key + string map vs entry id index",
        "command" => "one fire-and-forget command from the plugin (1000 per phase)",
        "ring_round_trip" => "8 bytes to another process and back: two pipes to a child process (blocking reads) vs two SPSC rings in one memfd the child maps (spin, yield, futex)",
        "ring_batched" => "one-way throughput, ns per 64-byte frame (frames/s = 1e9/ns): crossbeam bounded(1024) of [u8; 64], send per frame, recv + try_iter vs ring push_many (32) / pop_many (256), 64 KiB, heap backend",
        _ => "",
    }
}

/// Measurement settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Rounds per row (each round times every variant once, interleaved).
    pub rounds: usize,
    /// Target time of one timed batch.
    pub batch: Duration,
}

impl Settings {
    /// The `--quick` settings (under two minutes on a 2-core machine).
    pub fn quick() -> Self {
        Self {
            rounds: 5,
            batch: Duration::from_millis(15),
        }
    }

    /// The default, more careful settings.
    pub fn careful() -> Self {
        Self {
            rounds: 15,
            batch: Duration::from_millis(60),
        }
    }
}

/// One measured row.
#[derive(Clone, Debug, Serialize)]
pub struct RowResult {
    /// Row name.
    pub name: &'static str,
    /// Median ns per operation, baseline.
    pub baseline_ns: f64,
    /// Median ns per operation, fast (for `request`: the v2 plugin).
    pub fast_ns: f64,
    /// `baseline_ns / fast_ns`.
    pub ratio: f64,
    /// `request` only: the legacy plugin on the fast host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fast_legacy_ns: Option<f64>,
    /// nylon-ring's closest equivalent, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_ns: Option<f64>,
    /// The seed's figure before optimisation.
    pub seed_before: &'static str,
    /// The seed's target.
    pub seed_target: &'static str,
    /// Every round's figures, baseline then fast, for the spread.
    pub rounds: Vec<(f64, f64)>,
}

/// The machine the run happened on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs available.
    pub cores: usize,
    /// Memory in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// A spinning cross-thread round trip, ns (the machine's state now).
    pub reference_ping_pong_ns: f64,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// `quick` or `careful`.
    pub mode: &'static str,
    /// The rows.
    pub rows: Vec<RowResult>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Picks a batch size that takes about `target`.
fn calibrate(v: &mut Variant, target: Duration, cap: u64) -> Result<u64, String> {
    let mut iters = 1u64;
    loop {
        let d = v.run(iters)?;
        if d >= target / 4 || iters >= cap {
            let per = d.as_nanos().max(1) as f64 / iters as f64;
            return Ok(((target.as_nanos() as f64 / per) as u64).clamp(1, cap));
        }
        iters = (iters * 4).min(cap);
    }
}

/// Measures every row: warm-up, calibration, then interleaved rounds.
///
/// `progress` is called before each row with its index and name.
///
/// # Errors
///
/// The first variant failure, with the row's name.
pub fn measure(
    rows: &mut [Row],
    settings: Settings,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Vec<RowResult>, String> {
    let total = rows.len();
    let mut out = Vec::with_capacity(total);
    for (i, row) in rows.iter_mut().enumerate() {
        progress(i + 1, total, row.name);
        let name = row.name;
        let ctx = |e: String| format!("{name}: {e}");
        // Plugin loads are slow and touch the disk: few of them.
        let cap = if name == "plugin_load" { 8 } else { 50_000_000 };
        let mut variants: Vec<&mut Variant> = vec![&mut row.baseline, &mut row.fast];
        if let Some(v) = row.fast_legacy.as_mut() {
            variants.push(v);
        }
        if let Some(v) = row.anchor.as_mut() {
            variants.push(v);
        }
        let mut batches = Vec::new();
        for v in variants.iter_mut() {
            v.run(1).map_err(ctx)?; // warm-up
            batches.push(calibrate(v, settings.batch, cap).map_err(ctx)?);
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..settings.rounds {
            for (k, v) in variants.iter_mut().enumerate() {
                samples[k].push(v.ns_per_op(batches[k]).map_err(ctx)?);
            }
        }
        let rounds: Vec<(f64, f64)> = samples[0]
            .iter()
            .copied()
            .zip(samples[1].iter().copied())
            .collect();
        let mut med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        let baseline_ns = med.remove(0);
        let fast_ns = med.remove(0);
        let fast_legacy_ns = row.fast_legacy.as_ref().map(|_| med.remove(0));
        let anchor_ns = row.anchor.as_ref().map(|_| med.remove(0));
        out.push(RowResult {
            name,
            baseline_ns,
            fast_ns,
            ratio: baseline_ns / fast_ns,
            fast_legacy_ns,
            anchor_ns,
            seed_before: row.seed_before,
            seed_target: row.seed_target,
            rounds,
        });
    }
    Ok(out)
}

/// Describes this machine, with a reference ping-pong measured now.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown".into(), |s| s.trim().to_string());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map_or(0.0, |kib| (kib / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let mut pp: Vec<f64> = (0..5)
        .map(|_| rows::reference_ping_pong(20_000).as_nanos() as f64 / 20_000.0)
        .collect();
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        reference_ping_pong_ns: median(&mut pp),
    }
}

/// Formats nanoseconds for people.
pub fn human(ns: f64) -> String {
    if !ns.is_finite() {
        "-".into()
    } else if ns >= 1_000_000.0 {
        format!("{:.2} ms", ns / 1_000_000.0)
    } else if ns >= 1_000.0 {
        format!("{:.2} µs", ns / 1_000.0)
    } else if ns >= 10.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{ns:.1} ns")
    }
}

/// One row's cells, in table order: name, seed before, seed target,
/// baseline, fast, ratio, fast with the legacy plugin, nylon-ring.
pub fn cells(r: &RowResult) -> [String; 8] {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), human);
    [
        r.name.to_string(),
        r.seed_before.to_string(),
        r.seed_target.to_string(),
        human(r.baseline_ns),
        human(r.fast_ns),
        format!("{:.1}x", r.ratio),
        opt(r.fast_legacy_ns),
        opt(r.anchor_ns),
    ]
}

/// The before/after table as text.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores, {} GiB, Linux {}); reference ping-pong {:.0} ns; mode {}",
        m.cpu, m.cores, m.memory_gib, m.kernel, m.reference_ping_pong_ns, report.mode
    );
    let _ = writeln!(
        s,
        "{:<22} {:>12} {:>12} {:>12} {:>12} {:>9} {:>14} {:>12}",
        "row",
        "seed before",
        "seed target",
        "baseline",
        "fast",
        "ratio",
        "fast (legacy)",
        "nylon-ring"
    );
    for r in &report.rows {
        let [name, before, target, base, fast, ratio, legacy, anchor] = cells(r);
        let _ = writeln!(
            s,
            "{name:<22} {before:>12} {target:>12} {base:>12} {fast:>12} {ratio:>9} {legacy:>14} {anchor:>12}"
        );
    }
    s
}

/// Finds the example plugins next to the running binary, building them with
/// cargo (same profile) first so they are never stale. Without cargo or the
/// source tree, plugins already built are used as they are.
///
/// # Errors
///
/// A message when they cannot be found or built.
pub fn find_plugins() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("no binary directory")?.to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let legacy = dir.join("examples").join("librust_plugin.so");
    let v2 = dir.join("examples").join("libv2_plugin.so");
    let anchor = dir.join("examples").join("libring_anchor_plugin.so");
    let release = dir.ends_with("release");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    if manifest.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "--quiet", "--examples", "--manifest-path"])
            .arg(&manifest);
        if release {
            cmd.arg("--release");
        }
        let built = cmd.status().map(|s| s.success()).unwrap_or(false);
        if !(built || legacy.exists() && v2.exists() && anchor.exists()) {
            return Err("building the example plugins with cargo failed".into());
        }
    }
    if !legacy.exists() || !v2.exists() || !anchor.exists() {
        return Err(format!(
            "example plugins missing in {}; build them with `cargo build --examples{}`",
            dir.join("examples").display(),
            if release { " --release" } else { "" }
        ));
    }
    Ok((legacy, v2, anchor))
}

/// Loads the example plugins for the rows.
///
/// # Errors
///
/// A message when a plugin does not load.
pub fn load_plugins(legacy_path: PathBuf, v2_path: PathBuf) -> Result<Plugins, String> {
    let legacy = LegacyPlugin::load(&legacy_path).map_err(|e| e.to_string())?;
    legacy.initialize(b"{}").map_err(|e| e.to_string())?;
    let v2 = V2Plugin::load(&v2_path, b"{}").map_err(|e| e.to_string())?;
    Ok(Plugins {
        legacy: Arc::new(legacy),
        v2: Arc::new(v2),
        legacy_path,
        v2_path,
    })
}

/// Puts nylon-ring's closest equivalents beside our rows: its synchronous
/// call for `ffi_call`, fire-and-forget for `command`, its unary call (entry
/// dispatch and a reply) for `dispatch`.
pub fn attach_anchor(rows: &mut [Row], anchor: anchor::Anchor) {
    let anchor::Anchor {
        sync_call,
        fire,
        unary,
    } = anchor;
    let mut slots = [
        ("ffi_call", Some(sync_call)),
        ("command", Some(fire)),
        ("dispatch", Some(unary)),
    ];
    for row in rows.iter_mut() {
        if let Some((_, v)) = slots.iter_mut().find(|(n, _)| *n == row.name) {
            row.anchor = v.take();
        }
    }
}

/// Runs the whole suite.
///
/// # Errors
///
/// A message from plugin discovery or any row.
pub fn run(
    settings: Settings,
    quick: bool,
    progress: impl FnMut(usize, usize, &str),
) -> Result<Report, String> {
    run_rows(settings, quick, &[], progress)
}

/// Runs the rows named in `only` (every row when it is empty).
///
/// # Errors
///
/// As [`run`], and a message naming the rows when a name is unknown.
pub fn run_rows(
    settings: Settings,
    quick: bool,
    only: &[String],
    progress: impl FnMut(usize, usize, &str),
) -> Result<Report, String> {
    let (l, v, a) = find_plugins()?;
    let plugins = load_plugins(l, v)?;
    let mut rows = rows::all(&plugins)?;
    if let Some(unknown) = only
        .iter()
        .find(|n| !rows.iter().any(|r| r.name == n.as_str()))
    {
        let names: Vec<&str> = rows.iter().map(|r| r.name).collect();
        return Err(format!("no row `{unknown}`; rows: {}", names.join(", ")));
    }
    if !only.is_empty() {
        rows.retain(|r| only.iter().any(|n| n == r.name));
    }
    attach_anchor(&mut rows, anchor::load(&a)?);
    let machine = machine();
    let rows = measure(&mut rows, settings, progress)?;
    Ok(Report {
        machine,
        mode: if quick { "quick" } else { "careful" },
        rows,
    })
}

/// Seconds since `start`, for progress lines.
pub fn elapsed_since(start: Instant) -> String {
    format!("{:.0}s", start.elapsed().as_secs_f64())
}
