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
pub mod contended;
pub mod context;
pub mod go;
pub mod instructions;
pub mod isolated;
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
    /// Further variants of the same work, by key: `fast_legacy` (the legacy
    /// plugin on the fast host), `anchor` (nylon-ring, pinned),
    /// `anchor_unpinned`, and row-specific ones. Reported as `<key>_ns`.
    pub extra: Vec<(&'static str, Variant)>,
    /// What each variant does.
    pub note: &'static str,
    /// No variant involves another thread (see [`MULTI_THREAD_ROWS`]): the
    /// row gets instruction counts.
    pub single_thread: bool,
    /// Variants of a single-thread row whose work is mostly in another
    /// process (a worker), which callgrind does not see: no count.
    pub uncounted: Vec<&'static str>,
}

/// The rows one of whose variants runs on two threads at once (a partner
/// thread, concurrent requests): their instruction counts would depend on
/// how the threads interleave, so they get none. Rows not built yet may
/// be named here.
pub const MULTI_THREAD_ROWS: &[&str] = &[
    "channel",
    "ring_round_trip",
    "ring_batched",
    "request_contended",
    "request_go",
    "request_isolated",
];

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
            extra: Vec::new(),
            note: "",
            single_thread: !MULTI_THREAD_ROWS.contains(&name),
            uncounted: Vec::new(),
        }
    }

    /// Adds a further variant under `key`.
    #[must_use]
    pub fn with(mut self, key: &'static str, v: Variant) -> Self {
        self.extra.push((key, v));
        self
    }

    /// Adds a further variant under `key` that does its work in another
    /// process: timed, never counted (a count of this process alone would
    /// leave the work out).
    #[must_use]
    pub fn with_elsewhere(mut self, key: &'static str, v: Variant) -> Self {
        self.uncounted.push(key);
        self.with(key, v)
    }

    /// The variant under `key` (`baseline`, `fast` or an extra one).
    pub fn variant_mut(&mut self, key: &str) -> Option<&mut Variant> {
        match key {
            "baseline" => Some(&mut self.baseline),
            "fast" => Some(&mut self.fast),
            _ => self
                .extra
                .iter_mut()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v),
        }
    }

    /// Every variant's key, in measuring order.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut k = vec!["baseline", "fast"];
        k.extend(self.extra.iter().map(|(k, _)| *k));
        k
    }
}

/// What each row measures, for the docs: one line saying what every side
/// does.
pub fn note(name: &str) -> &'static str {
    match name {
        "request" => "one request of the scenario, session open and close included, on every variant; the plugins run the same logic (a typed, borrowing sonic-rs parse of the payload, path, one header, all eight headers, two sets; status, one set; duration, client IP). baseline: legacy plugin on the baseline host; fast_legacy: the same legacy plugin on the fast host; fast: the v2 plugin",
        "empty_phase" => "host calls plugin, plugin does nothing and says next: one request-filter phase on an open session (legacy baseline, legacy on the fast host, v2); nylon-ring: `call` (fire-and-forget, per-call sid) with an empty payload, on an entry id resolved once",
        "read_command" => "host calls plugin, plugin reads the 13-byte path and sets one response header, host applies it: one phase on an open session (legacy baseline, legacy on the fast host, v2); nylon-ring: `call_response_fast` with a 13-byte payload the plugin checks, one static reply copied out by the host",
        "event" => "host hands the plugin a 13-byte message, no reply: a WebSocket text message to a plugin that ignores it (1000 per session; the host's frame codec is skipped on every side); nylon-ring: `call` with a 13-byte payload",
        "websocket" => "one masked 125-byte text frame: parse, unmask, deliver, plugin echoes, host builds the frame (per message, 1000 per session). baseline: today's frame codec and the legacy plugin on the baseline host; fast_legacy: the fast codec and the same legacy plugin on the fast host; fast: the fast codec and the v2 plugin; isolated: the fast codec and the v2 plugin in a worker process (the client's messages stream to the worker, the echoes come back as it sends them; timed only: callgrind would not see the worker's instructions)",
        "session_open" => "open and close one session of the same entry, nothing run: legacy on the baseline host; legacy on the fast host (fast_legacy); v2 (fast)",
        "ffi_call" => "one synchronous read of the request path from the plugin, inside a phase (1000 per phase): legacy on the baseline host; legacy on the fast host (fast_legacy); v2 (fast)",
        "command" => "one fire-and-forget command from the plugin (set the status), inside a phase, applied by the host (1000 per phase): legacy on the baseline host; legacy on the fast host (fast_legacy); v2 (fast)",
        "lock" => "finding a session from a plugin callback: today's global RwLock<HashMap> and a sender clone vs the fast transport's slot table and the session's own lock",
        "json_payload" => "reading `user` (string) and `limit` (number) of a 110-byte payload where they come first: serde_json into a Value (baseline) vs a typed, borrowing sonic-rs parse that validates the whole document (fast, what the scenario plugins do); also serde_json into the same typed struct, and the allocation-free key scan (codec::json, which validates only up to the keys it finds)",
        "json_payload_last" => "as json_payload, with the wanted keys at the end of the payload",
        "header_serialization" => "8 request headers as a NylonHttpHeaders FlatBuffer: map clone + new builder vs reused builder",
        "frame_parse" => "parse and unmask one 125-byte masked frame: legacy host style (growing buffer, copy, byte-wise unmask, drain) vs in place, word-wise",
        "channel" => "a u64 to another thread and back: two crossbeam bounded(1) channels, blocking send/recv (unbounded measured the same, bounded(0) far slower) vs two SPSC rings on the heap backend (spin, yield, futex)",
        "request_isolated" => "the request scenario (open, four phases, close) with the plugin in a worker process over the memfd ring pair: baseline: the legacy plugin on the in-process fast host; fast: the v2 plugin through a worker; isolated_legacy: the legacy plugin through a worker (fast inner transport); isolated_parked: fast with the caller parked at once, every answer handed over by the host's dispatcher thread (an asynchronous task's path); v2: the v2 plugin in process; isolated_concurrent: 16 v2 requests in flight on one worker, per request; isolated_names_inline: fast with header names sent as bytes, not interned ids; isolated_body_64k: the v2 body_rewrite entry on a 64 KiB chunk through a worker (open, one body phase, close), the chunk out and back in slabs of the shared mapping; isolated_body_64k_inline: the same inside ring frames. Compare with ring_round_trip of the same run",
        "ring_round_trip" => "8 bytes to another process and back: two pipes to a child process (blocking reads) vs two SPSC rings in one memfd the child maps (spin, yield, futex); rings_active: the same rings with both ends looking (yielding) for 50 µs before the ring's wait, as the isolated transport's worker and dispatcher do",
        "ring_batched" => "one-way throughput, ns per 64-byte frame (frames/s = 1e9/ns): crossbeam bounded(1024) of [u8; 64], send per frame, recv + try_iter vs ring push_many (32) / pop_many (256), 64 KiB, heap backend",
        "request_contended" => "8 host threads at once on 2 cores, each: open, 4 phases of the request scenario, close (per request, wall time over all threads), the legacy plugin running every phase on its own 4 threads as the Go SDK does. baseline: baseline host; fast: fast host; fast_deferred: fast host answering reads from the driver thread",
        "request_go" => "one request of the scenario in Go, session open and close included, the same plugin logic on every variant (payload as a map, path, one header, all headers, two sets; status, one set; duration, client IP). baseline: a Go plugin in today's upstream-SDK style (a goroutine per phase, a mutex + condition variable and a goroutine per read, C.malloc per message, headers decoded and the payload json.Unmarshal'ed per read) on the baseline host; fast_legacy: our Go SDK built for the legacy ABI on the fast host; fast: our Go SDK on v2; today_fast: the today's-style plugin on the fast host.",
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
    /// The further variants' medians, as `<key>_ns` (`fast_legacy_ns`,
    /// `anchor_ns`, `anchor_unpinned_ns`, ...).
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, f64>,
    /// Instructions per operation (callgrind), as `<key>_ir`, for the
    /// variants of single-thread rows, when valgrind is there.
    #[serde(flatten)]
    pub ir: std::collections::BTreeMap<String, f64>,
    /// The variants whose instruction count includes work on other
    /// threads, and so varies between runs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ir_other_threads: Vec<String>,
    /// What the row's variants do ([`note`]), with what this run adds (the
    /// Go toolchain of `request_go`).
    pub note: &'static str,
    /// The seed's figure before optimisation.
    pub seed_before: &'static str,
    /// The seed's target.
    pub seed_target: &'static str,
    /// Every round's figures, baseline then fast, for the spread.
    pub rounds: Vec<(f64, f64)>,
}

impl RowResult {
    /// The median of the variant under `key` (`baseline`, `fast`, or an extra
    /// key such as `anchor`).
    pub fn get(&self, key: &str) -> Option<f64> {
        match key {
            "baseline" => Some(self.baseline_ns),
            "fast" => Some(self.fast_ns),
            _ => self.extra.get(&format!("{key}_ns")).copied(),
        }
    }
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
    /// A spinning cross-thread round trip, ns, at the start of the run (the
    /// machine's state then).
    pub reference_ping_pong_ns: f64,
    /// The same, at the end of the timed rows (the VM's state can change
    /// during a run).
    pub reference_ping_pong_end_ns: f64,
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
    /// How the instruction counts were taken, or why there are none.
    pub instructions: String,
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
        let cap = 50_000_000;
        let keys = row.keys();
        let mut variants: Vec<&mut Variant> = vec![&mut row.baseline, &mut row.fast];
        variants.extend(row.extra.iter_mut().map(|(_, v)| v));
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
        let med: Vec<f64> = samples.iter_mut().map(|s| median(s)).collect();
        let extra = keys[2..]
            .iter()
            .zip(&med[2..])
            .map(|(k, m)| (format!("{k}_ns"), *m))
            .collect();
        out.push(RowResult {
            name,
            baseline_ns: med[0],
            fast_ns: med[1],
            ratio: med[0] / med[1],
            extra,
            ir: std::collections::BTreeMap::new(),
            ir_other_threads: Vec::new(),
            note: row.note,
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
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        reference_ping_pong_ns: ping_pong(),
        reference_ping_pong_end_ns: f64::NAN,
    }
}

/// The median of five spinning ping-pongs of 20 000 round trips, ns each.
fn ping_pong() -> f64 {
    let mut pp: Vec<f64> = (0..5)
        .map(|_| rows::reference_ping_pong(20_000).as_nanos() as f64 / 20_000.0)
        .collect();
    median(&mut pp)
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

/// The table's columns: header and variant key (`None`: the ratio).
const COLUMNS: [(&str, Option<&str>); 10] = [
    ("baseline", Some("baseline")),
    ("fast (legacy)", Some("fast_legacy")),
    ("legacy ratio", Some("%legacy")),
    ("fast", Some("fast")),
    ("ratio", None),
    ("nylon-ring", Some("anchor")),
    ("nr unpinned", Some("anchor_unpinned")),
    ("fast/nr", Some("/anchor")),
    ("seed before", Some("#before")),
    ("seed target", Some("#target")),
];

/// One row's cells, in [`COLUMNS`] order, after the name.
pub fn cells(r: &RowResult) -> Vec<String> {
    let opt = |v: Option<f64>| v.map_or_else(|| "-".into(), human);
    COLUMNS
        .iter()
        .map(|(_, key)| match key {
            None => format!("{:.1}x", r.ratio),
            Some("/anchor") => r
                .get("anchor")
                .map_or_else(|| "-".into(), |a| format!("{:.2}x", r.fast_ns / a)),
            Some("%legacy") => r
                .get("fast_legacy")
                .map_or_else(|| "-".into(), |l| format!("{:.1}x", r.baseline_ns / l)),
            Some("#before") => r.seed_before.to_string(),
            Some("#target") => r.seed_target.to_string(),
            Some(k) => opt(r.get(k)),
        })
        .collect()
}

/// Extra variants not in [`COLUMNS`], as `key value` text.
pub fn other_variants(r: &RowResult) -> String {
    r.extra
        .iter()
        .filter(|(k, _)| {
            let key = k.trim_end_matches("_ns");
            !COLUMNS.iter().any(|(_, c)| *c == Some(key))
        })
        .map(|(k, v)| format!("{}: {}", k.trim_end_matches("_ns"), human(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column headers, after `row`.
pub fn headers() -> Vec<&'static str> {
    COLUMNS.iter().map(|(h, _)| *h).collect()
}

/// One row's instruction-count cells, in [`COLUMNS`] order after the name
/// (`~` marks a count that includes other threads' work); `None` for a row
/// without counts.
pub fn ir_cells(r: &RowResult) -> Option<Vec<String>> {
    if r.ir.is_empty() {
        return None;
    }
    let get = |key: &str| r.ir.get(&format!("{key}_ir")).copied();
    let show = |key: &str| {
        get(key).map_or_else(
            || "-".into(),
            |v| {
                let mark = if r.ir_other_threads.iter().any(|k| k == key) {
                    "~"
                } else {
                    ""
                };
                format!("{mark}{}", instructions::human(v))
            },
        )
    };
    let ratio = |a: Option<f64>, b: Option<f64>, digits: usize| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.*}x", digits, a / b),
        _ => "-".into(),
    };
    Some(
        COLUMNS
            .iter()
            .map(|(_, key)| match key {
                None => ratio(get("baseline"), get("fast"), 1),
                Some("%legacy") => ratio(get("baseline"), get("fast_legacy"), 1),
                Some("/anchor") => ratio(get("fast"), get("anchor"), 2),
                Some("#before") | Some("#target") => String::new(),
                Some(k) => show(k),
            })
            .collect(),
    )
}

/// Counted variants not in [`COLUMNS`], as `key count` text.
pub fn other_ir(r: &RowResult) -> String {
    r.ir.iter()
        .filter(|(k, _)| {
            let key = k.trim_end_matches("_ir");
            !COLUMNS.iter().any(|(_, c)| *c == Some(key))
        })
        .map(|(k, v)| format!("{}: {}", k.trim_end_matches("_ir"), instructions::human(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The instruction-count table's headers (the time table's, without the
/// seed's figures).
pub fn ir_headers() -> Vec<&'static str> {
    headers()
        .into_iter()
        .filter(|h| !h.starts_with("seed"))
        .collect()
}

/// The before/after table as text.
pub fn table(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} cores, {} GiB, Linux {}); reference ping-pong {:.0} ns at the start, {:.0} ns at the end; mode {}",
        m.cpu,
        m.cores,
        m.memory_gib,
        m.kernel,
        m.reference_ping_pong_ns,
        m.reference_ping_pong_end_ns,
        report.mode
    );
    let _ = write!(s, "{:<22}", "row");
    for h in headers() {
        let _ = write!(s, " {h:>13}");
    }
    let _ = writeln!(s);
    for r in &report.rows {
        let _ = write!(s, "{:<22}", r.name);
        for c in cells(r) {
            let _ = write!(s, " {c:>13}");
        }
        let _ = writeln!(s);
        let others = other_variants(r);
        if !others.is_empty() {
            let _ = writeln!(s, "{:<22} {others}", "");
        }
        if let Some(extra) = r.note.strip_prefix(note(r.name)) {
            if !extra.trim().is_empty() {
                let _ = writeln!(s, "{:<22} {}", "", extra.trim());
            }
        }
    }
    let counted: Vec<(&RowResult, Vec<String>)> = report
        .rows
        .iter()
        .filter_map(|r| ir_cells(r).map(|c| (r, c)))
        .collect();
    if counted.is_empty() {
        let _ = writeln!(s, "\ninstructions: {}", report.instructions);
    } else {
        let _ = writeln!(
            s,
            "\ninstructions per operation (~: work on other threads too, varies between runs): {}",
            report.instructions
        );
        let _ = write!(s, "{:<22}", "row");
        for h in ir_headers() {
            let _ = write!(s, " {h:>13}");
        }
        let _ = writeln!(s);
        for (r, cells) in counted {
            let _ = write!(s, "{:<22}", r.name);
            for c in cells.iter().take(ir_headers().len()) {
                let _ = write!(s, " {c:>13}");
            }
            let _ = writeln!(s);
            let others = other_ir(r);
            if !others.is_empty() {
                let _ = writeln!(s, "{:<22} {others}", "");
            }
        }
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

/// Puts nylon-ring beside the rows that have its operation: pinned as
/// `anchor`, unpinned as `anchor_unpinned`.
///
/// # Errors
///
/// A message when an anchor entry does not resolve.
pub fn attach_anchor(rows: &mut [Row], anchor: &anchor::Anchor) -> Result<(), String> {
    for row in rows.iter_mut() {
        let op = match row.name {
            "empty_phase" => anchor::Op::Empty,
            "read_command" => anchor::Op::ReadReply,
            "event" => anchor::Op::Sink,
            _ => continue,
        };
        row.extra.push(("anchor", anchor.variant(op, true)?));
        row.extra
            .push(("anchor_unpinned", anchor.variant(op, false)?));
    }
    Ok(())
}

/// Whether [`build_rows`] builds the Go plugins and adds `request_go`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoRow {
    /// Not built.
    Skip,
    /// Built when a Go toolchain is there and the build works; else left
    /// out with a message on stderr.
    IfGo,
    /// Built; a failure is an error.
    Required,
}

/// Builds every row over the example plugins at these paths, with the
/// anchor attached (the `bench` command and its callgrind child alike), and
/// `request_go` as `go_row` says.
///
/// # Errors
///
/// A message when a plugin does not load or a row cannot be built.
pub fn build_rows(files: &instructions::PluginFiles, go_row: GoRow) -> Result<Vec<Row>, String> {
    let plugins = load_plugins(files.legacy.clone(), files.v2.clone())?;
    let mut rows = rows::all(&plugins)?;
    match (go_row, go::request_row) {
        (GoRow::Skip, _) => {}
        (GoRow::IfGo, build) => match build() {
            Ok(row) => rows.push(row),
            Err(e) => eprintln!("request_go skipped: {e}"),
        },
        (GoRow::Required, build) => rows.push(build()?),
    }
    let anchor = anchor::Anchor::load(&files.anchor)?;
    attach_anchor(&mut rows, &anchor)?;
    Ok(rows)
}

/// Runs the whole suite: times, then instruction counts of the
/// single-thread rows when valgrind is there.
///
/// `progress` is called before each row with its index and name, and with
/// lines about the instruction counts.
///
/// # Errors
///
/// A message from plugin discovery or any row.
pub fn run(
    settings: Settings,
    quick: bool,
    only: &[String],
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<Report, String> {
    let (legacy, v2, anchor) = find_plugins()?;
    let files = instructions::PluginFiles { legacy, v2, anchor };
    let go_row = if only.iter().any(|n| n == "request_go") {
        GoRow::Required
    } else if only.is_empty() {
        GoRow::IfGo
    } else {
        GoRow::Skip
    };
    let mut rows = build_rows(&files, go_row)?;
    if !only.is_empty() {
        if let Some(bad) = only
            .iter()
            .find(|n| !rows.iter().any(|r| r.name == n.as_str()))
        {
            let known: Vec<_> = rows.iter().map(|r| r.name).collect();
            return Err(format!("no row `{bad}`; rows: {}", known.join(", ")));
        }
        rows.retain(|r| only.iter().any(|n| n == r.name));
    }
    let mut machine = machine();
    let mut results = measure(&mut rows, settings, &mut progress)?;
    machine.reference_ping_pong_end_ns = ping_pong();
    let single: Vec<(&'static str, Vec<&'static str>)> = rows
        .iter()
        .filter(|r| r.single_thread)
        .map(|r| {
            let mut keys = r.keys();
            keys.retain(|k| !r.uncounted.contains(k));
            (r.name, keys)
        })
        .collect();
    drop(rows);
    let instructions = count_instructions(&mut results, &single, &files, &mut progress);
    Ok(Report {
        machine,
        mode: if quick { "quick" } else { "careful" },
        rows: results,
        instructions,
    })
}

/// Fills in the instruction counts of the rows and variants in `single`,
/// one callgrind run per variant; returns the line that says how, or why
/// not.
fn count_instructions(
    results: &mut [RowResult],
    single: &[(&'static str, Vec<&'static str>)],
    files: &instructions::PluginFiles,
    progress: &mut impl FnMut(usize, usize, &str),
) -> String {
    let Some(version) = instructions::valgrind_version() else {
        return "valgrind not found".into();
    };
    let mut failures = Vec::new();
    let total = single.len();
    for (i, (name, variants)) in single.iter().enumerate() {
        progress(i + 1, total, &format!("{name} (callgrind)"));
        let Some(r) = results.iter_mut().find(|r| r.name == *name) else {
            continue;
        };
        match instructions::count_row(name, variants, files) {
            Ok(ir) => {
                for (variant, v) in ir {
                    if v.other_threads {
                        r.ir_other_threads.push(variant.clone());
                    }
                    r.ir.insert(format!("{variant}_ir"), v.per_op);
                }
            }
            Err(e) => failures.push(e),
        }
    }
    let mut line = version;
    if !failures.is_empty() {
        let _ = write!(line, "; failed: {}", failures.join("; "));
    }
    line
}

/// Seconds since `start`, for progress lines.
pub fn elapsed_since(start: Instant) -> String {
    format!("{:.0}s", start.elapsed().as_secs_f64())
}
