//! Instruction counts per operation, from valgrind's callgrind: a figure
//! that does not swing with the VM's state, beside the times.
//!
//! The `bench` command runs itself under callgrind once per variant of each
//! single-thread row, through the hidden subcommand [`SUBCOMMAND`] (a process
//! of its own per variant, so that no thread another variant started, such
//! as a legacy SDK's phase workers, runs beside it). Inside: a warm-up
//! `run(1)`, then `run(N)` and `run(2N)`, each inside its own
//! `#[inline(never)]` function (`cg_region_<variant>_n`,
//! `cg_region_<variant>_2n`), each preceded by a call to `cg_fence`.
//! Callgrind dumps its counters when any of these functions returns
//! (`--dump-after`), so the dump that a region's return triggers holds
//! exactly the instructions executed while the region ran, on every thread
//! (a legacy plugin's handler runs on its SDK's own thread: a per-thread
//! toggle such as `--toggle-collect` would miss it). The region function's
//! inclusive cost in that dump is the calling thread's share; the rest ran
//! on other threads. The per-operation count is
//! `(Ir(2N) - Ir(N)) / (N * ops)`, which cancels what a call of `run` costs
//! once (the clock reads, the region's own call).
//!
//! A variant that runs on one thread repeats its count exactly, run after
//! run. One whose work crosses threads does not quite: how often a waiting
//! thread spins, yields or parks depends on how the threads interleave, so
//! its count is marked as such ([`VariantIr::other_threads`]).
//!
//! Callgrind counts every instruction the program executes; it does not
//! simulate the cache or the branch predictor (not asked here), so the
//! figure is the work done, not its time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Row, Variant};

/// The hidden CLI subcommand that runs one row's regions under callgrind.
pub const SUBCOMMAND: &str = "__callgrind-row";

/// The prefix of every function whose return makes callgrind dump.
const DUMP_PATTERN: &str = "nylon_transport::bench::instructions::cg_*";

/// Iterations of a row's first region (the second runs twice as many):
/// enough for the difference to average out what a variant does only now
/// and then, few enough that a row runs in seconds under callgrind (about
/// 50 times slower than natively).
pub fn iterations(ops: u64) -> u64 {
    if ops >= 100 {
        // A whole session of 1000 reads, commands or messages per iteration.
        4
    } else {
        200
    }
}

/// One variant's count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VariantIr {
    /// Instructions per operation, on every thread.
    pub per_op: f64,
    /// Whether threads other than the caller's executed more instructions
    /// in the 2N region than in the N one: the variant's work crosses
    /// threads (and its count varies a little between runs).
    pub other_threads: bool,
}

/// Instructions per operation of each variant of a row, by variant key.
pub type RowIr = BTreeMap<String, VariantIr>;

/// What the child ran: the first region's iterations, and the operations
/// per iteration of each variant it measured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The row.
    pub row: String,
    /// Iterations of the `_n` regions (`_2n` ran twice as many).
    pub n: u64,
    /// Variant name to operations per iteration, for the variants run.
    pub ops: BTreeMap<String, u64>,
    /// Variant name to the slot of its region functions
    /// (`cg_region_<slot>_n`, `cg_region_<slot>_2n`).
    pub slots: BTreeMap<String, usize>,
}

/// The line of the child's stdout that carries its [`Plan`].
const PLAN_PREFIX: &str = "callgrind-plan: ";

/// A dump point between regions: whatever ran since the previous dump
/// (warm-up, setup) goes into a dump of its own.
#[inline(never)]
fn cg_fence() {
    black_box(0u8);
}

macro_rules! regions {
    ($($name:ident = $id:literal),* $(,)?) => {
        $(
            /// One measured region (a distinct function per variant and count,
            /// so that no two share a symbol).
            #[inline(never)]
            fn $name(v: &mut Variant, iters: u64) -> Result<Duration, String> {
                black_box($id);
                v.run(black_box(iters))
            }
        )*
    };
}

regions!(
    cg_region_0_n = 1u8,
    cg_region_0_2n = 2u8,
    cg_region_1_n = 3u8,
    cg_region_1_2n = 4u8,
    cg_region_2_n = 5u8,
    cg_region_2_2n = 6u8,
    cg_region_3_n = 7u8,
    cg_region_3_2n = 8u8,
    cg_region_4_n = 9u8,
    cg_region_4_2n = 10u8,
    cg_region_5_n = 11u8,
    cg_region_5_2n = 12u8,
    cg_region_6_n = 13u8,
    cg_region_6_2n = 14u8,
    cg_region_7_n = 15u8,
    cg_region_7_2n = 16u8,
);

type Region = fn(&mut Variant, u64) -> Result<Duration, String>;

/// The region functions, one pair per slot.
const REGIONS: [(Region, Region); 8] = [
    (cg_region_0_n, cg_region_0_2n),
    (cg_region_1_n, cg_region_1_2n),
    (cg_region_2_n, cg_region_2_2n),
    (cg_region_3_n, cg_region_3_2n),
    (cg_region_4_n, cg_region_4_2n),
    (cg_region_5_n, cg_region_5_2n),
    (cg_region_6_n, cg_region_6_2n),
    (cg_region_7_n, cg_region_7_2n),
];

/// The child's side: runs the regions of the variants of `row` named in
/// `only` (all when empty), under callgrind, which records them; returns
/// the line to print.
///
/// # Errors
///
/// A variant's failure, a variant named in `only` that the row lacks, or
/// more variants than region slots.
pub fn run_row(row: &mut Row, only: &[String]) -> Result<String, String> {
    let name = row.name;
    let keys = row.keys();
    if let Some(missing) = only.iter().find(|o| !keys.contains(&o.as_str())) {
        return Err(format!("row {name} has no variant {missing}"));
    }
    let chosen: Vec<&'static str> = keys
        .into_iter()
        .filter(|k| only.is_empty() || only.iter().any(|o| o == k))
        .collect();
    if chosen.len() > REGIONS.len() {
        return Err(format!("row {name}: more than {} variants", REGIONS.len()));
    }
    let max_ops = chosen
        .iter()
        .filter_map(|k| row.variant_mut(k).map(|v| v.ops))
        .max()
        .unwrap_or(1);
    let n = iterations(max_ops);
    let (mut ops, mut slots) = (BTreeMap::new(), BTreeMap::new());
    for (slot, variant) in chosen.into_iter().enumerate() {
        let ctx = |e: String| format!("{name} {variant}: {e}");
        let v = row
            .variant_mut(variant)
            .ok_or_else(|| ctx("no such variant".into()))?;
        let (once, twice) = REGIONS[slot];
        v.run(1).map_err(ctx)?;
        cg_fence();
        once(v, n).map_err(ctx)?;
        cg_fence();
        twice(v, 2 * n).map_err(ctx)?;
        ops.insert(variant.to_string(), v.ops);
        slots.insert(variant.to_string(), slot);
    }
    cg_fence();
    let plan = Plan {
        row: name.to_string(),
        n,
        ops,
        slots,
    };
    Ok(format!(
        "{PLAN_PREFIX}{}",
        serde_json::to_string(&plan).map_err(|e| e.to_string())?
    ))
}

/// `valgrind --version`, or `None` when valgrind cannot be run.
pub fn valgrind_version() -> Option<String> {
    let out = Command::new("valgrind").arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One `--dump-after` dump of callgrind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// The function whose return triggered it, as callgrind names it.
    pub function: String,
    /// Instructions executed since the previous dump, on every thread.
    pub total: u64,
    /// The triggering function's inclusive cost: its own thread's share.
    pub inclusive: u64,
}

/// Reads one callgrind output file (format version 1, event `Ir` first):
/// `None` for a file that no `--dump-after` triggered.
pub fn parse_dump(text: &str) -> Option<Dump> {
    let mut function = None;
    let mut total = None;
    let mut positions = 1usize;
    // Compressed names: `fn=(7) name` once, then `fn=(7)`.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut name_of = |spec: &str| -> String {
        let spec = spec.trim();
        match spec.strip_prefix('(').and_then(|r| r.split_once(')')) {
            Some((id, rest)) => {
                let rest = rest.trim();
                if rest.is_empty() {
                    names.get(id).cloned().unwrap_or_default()
                } else {
                    names.insert(id.to_string(), rest.to_string());
                    rest.to_string()
                }
            }
            None => spec.to_string(),
        }
    };
    let mut inclusive: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("desc: Trigger: --dump-after=") {
            function = Some(t.trim().to_string());
        } else if let Some(t) = line.strip_prefix("totals:") {
            total = t.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some(t) = line.strip_prefix("summary:") {
            // Files without a `totals:` line carry the total here.
            if total.is_none() {
                total = t.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        } else if let Some(t) = line.strip_prefix("positions:") {
            positions = t.split_whitespace().count().max(1);
        } else if let Some(t) = line.strip_prefix("fn=") {
            current = name_of(t);
        } else if let Some(t) = line.strip_prefix("cfn=") {
            // Only to learn the name of a compressed id.
            let _ = name_of(t);
        } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
            // A cost line: positions, then the events (Ir first; absent is 0).
            let ir: u64 = line
                .split_whitespace()
                .nth(positions)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            // Both a function's own cost and the inclusive cost of each of
            // its calls (the line after `calls=`) count towards it.
            *inclusive.entry(current.clone()).or_insert(0) += ir;
        }
    }
    let function = function?;
    Some(Dump {
        inclusive: inclusive.get(&function).copied().unwrap_or(0),
        total: total?,
        function,
    })
}

/// Instructions per operation of each variant in `plan`, from the dumps its
/// regions triggered (keyed by function name without its path).
///
/// # Errors
///
/// A region whose dump is missing, or a second region that executed fewer
/// instructions than the first.
pub fn per_op(plan: &Plan, dumps: &BTreeMap<String, Dump>) -> Result<RowIr, String> {
    let mut out = RowIr::new();
    for (variant, &ops) in &plan.ops {
        let slot = plan
            .slots
            .get(variant)
            .ok_or_else(|| format!("{}: no region slot for {variant}", plan.row))?;
        let dump = |suffix: &str| {
            let f = format!("cg_region_{slot}_{suffix}");
            dumps
                .get(&f)
                .ok_or_else(|| format!("{}: no callgrind dump for {f}", plan.row))
        };
        let (once, twice) = (dump("n")?, dump("2n")?);
        let extra = twice.total.checked_sub(once.total).ok_or_else(|| {
            format!(
                "{} {variant}: {} instructions for 2N < {} for N",
                plan.row, twice.total, once.total
            )
        })?;
        out.insert(
            variant.clone(),
            VariantIr {
                per_op: extra as f64 / (plan.n * ops.max(1)) as f64,
                // What the calling thread ran outside the region (between
                // the fence and the call) is the same in both dumps;
                // anything else outside the region's inclusive cost ran on
                // other threads.
                other_threads: once.total - once.inclusive.min(once.total)
                    != twice.total - twice.inclusive.min(twice.total),
            },
        );
    }
    Ok(out)
}

/// The plugin files the child loads (the parent's own).
#[derive(Clone, Debug)]
pub struct PluginFiles {
    /// `librust_plugin.so`.
    pub legacy: PathBuf,
    /// `libv2_plugin.so`.
    pub v2: PathBuf,
    /// `libring_anchor_plugin.so`.
    pub anchor: PathBuf,
}

/// Runs each of `variants` of row `name` under callgrind (this executable,
/// [`SUBCOMMAND`], one process per variant) and returns their instructions
/// per operation.
///
/// # Errors
///
/// valgrind failing, the child failing, or its dumps missing.
pub fn count_row(name: &str, variants: &[&str], files: &PluginFiles) -> Result<RowIr, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut out = RowIr::new();
    for variant in variants {
        let dir = std::env::temp_dir().join(format!(
            "nylon-callgrind-{}-{name}-{variant}",
            std::process::id(),
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let result = count_in(&exe, &dir, name, variant, files);
        let _ = std::fs::remove_dir_all(&dir);
        out.extend(result?);
    }
    Ok(out)
}

fn count_in(
    exe: &Path,
    dir: &Path,
    name: &str,
    variant: &str,
    files: &PluginFiles,
) -> Result<RowIr, String> {
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--dump-after={DUMP_PATTERN}"))
        .arg(format!(
            "--callgrind-out-file={}",
            dir.join("callgrind.out").display()
        ))
        .arg(exe)
        .arg(SUBCOMMAND)
        .arg(name)
        .arg("--variant")
        .arg(variant)
        .arg("--legacy")
        .arg(&files.legacy)
        .arg("--v2")
        .arg(&files.v2)
        .arg("--anchor")
        .arg(&files.anchor)
        .output()
        .map_err(|e| format!("valgrind: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.starts_with("==") && !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(format!("{name} {variant} under callgrind failed: {last}"));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let plan: Plan = stdout
        .lines()
        .find_map(|l| l.strip_prefix(PLAN_PREFIX))
        .ok_or_else(|| format!("{name}: the callgrind child printed no plan"))
        .and_then(|j| serde_json::from_str(j).map_err(|e| format!("{name}: plan: {e}")))?;
    let mut dumps = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        if let Some(dump) = parse_dump(&text) {
            let short = dump.function.rsplit("::").next().unwrap_or_default();
            dumps.insert(short.to_string(), dump);
        }
    }
    per_op(&plan, &dumps)
}

/// Instructions for people: `870`, `12.3 k`, `4.56 M`.
pub fn human(ir: f64) -> String {
    if !ir.is_finite() {
        "-".into()
    } else if ir >= 1e6 {
        format!("{:.2} M", ir / 1e6)
    } else if ir >= 1e4 {
        format!("{:.1} k", ir / 1e3)
    } else if ir >= 100.0 {
        format!("{ir:.0}")
    } else {
        format!("{ir:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump cut down from a real one (callgrind 3.19, `--dump-after`, the
    /// `request` row's `fast_legacy` variant): another thread's work
    /// (`start_thread`), the region with its call, the caller's context.
    /// Own costs: 36 + 108 + 7 + 2 + 300 + 12 + 4 + 480 = 949; the region's
    /// inclusive cost: 12 + 480 + 4 = 496.
    const DUMP: &str = "# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 18500
cmd:  ./nylon-transport __callgrind-row request --variant fast_legacy
part: 2


desc: I1 cache: 
desc: D1 cache: 
desc: LL cache: 

desc: Timerange: Basic block 573997 - 3997939
desc: Trigger: --dump-after=nylon_transport::bench::instructions::cg_region_fast_legacy_n

positions: line
events: Ir
summary: 949


ob=(2) ???
fl=(52) ???
fn=(1036) 0x000000000496b360
0 36
cob=(3) /usr/lib/x86_64-linux-gnu/libc.so.6
cfi=(173) ./malloc/./malloc/malloc.c
cfn=(1038) free
calls=36 3350 
0 108

ob=(3)
fl=(173)
fn=(1038)
3350 108

fl=(200) ./nptl/./nptl/pthread_create.c
fn=(1520) start_thread
336 7
+7 2
cfn=(1521) worker
calls=1 336 
* 300

fn=(1521)
-3 300

fn=(2122) nylon_transport::bench::instructions::cg_region_fast_legacy_n
0 12
cfn=(1890) nylon_transport::bench::rows::legacy_sessions::{{closure}}
calls=1 0 
0 480
0 4

fn=(1890)
0 480

fn=(1100) nylon_transport::main
cfn=(1256) nylon_transport::execute
calls=0 0 
0 496
1

totals: 949
";

    const REGION: &str = "nylon_transport::bench::instructions::cg_region_fast_legacy_n";

    #[test]
    fn a_dump_gives_its_trigger_total_and_the_trigger_s_inclusive_cost() {
        assert_eq!(
            parse_dump(DUMP),
            Some(Dump {
                function: REGION.into(),
                total: 949,
                inclusive: 496,
            })
        );
        let no_totals = DUMP.replace("totals: 949\n", "");
        assert_eq!(parse_dump(&no_totals).map(|d| d.total), Some(949));
        let at_exit = DUMP.replace(
            &format!("desc: Trigger: --dump-after={REGION}"),
            "desc: Trigger: Program termination",
        );
        assert_eq!(parse_dump(&at_exit), None, "only --dump-after dumps count");
        assert_eq!(parse_dump("garbage"), None);
    }

    #[test]
    fn the_cost_column_follows_the_positions() {
        let two = "desc: Trigger: --dump-after=f\npositions: instr line\nevents: Ir\n\
                   fn=(1) f\n0x10 3 5\n+2 * 7\ncfn=(2) g\ncalls=1 0x20 9\n0x11 3 11\n\
                   fn=(2)\n0x20 9 11\ntotals: 23\n";
        assert_eq!(
            parse_dump(two),
            Some(Dump {
                function: "f".into(),
                total: 23,
                inclusive: 23,
            })
        );
    }

    fn dump(total: u64, inclusive: u64) -> Dump {
        Dump {
            function: String::new(),
            total,
            inclusive,
        }
    }

    #[test]
    fn per_op_cancels_the_fixed_cost_and_tells_other_threads() {
        let plan = Plan {
            row: "r".into(),
            n: 200,
            ops: [("baseline".to_string(), 1), ("fast".to_string(), 1000)]
                .into_iter()
                .collect(),
            slots: [("baseline".to_string(), 0), ("fast".to_string(), 1)]
                .into_iter()
                .collect(),
        };
        // baseline: 5000 fixed, then 30 per iteration, 10 of them on
        // another thread; fast: 7000 fixed, then 9 per op of 1000, on one
        // thread, 6 of which the caller runs before entering the region.
        let dumps: BTreeMap<String, Dump> = [
            ("cg_region_0_n", dump(5_000 + 30 * 200, 5_000 + 20 * 200)),
            ("cg_region_0_2n", dump(5_000 + 30 * 400, 5_000 + 20 * 400)),
            (
                "cg_region_1_n",
                dump(7_000 + 9_000 * 200, 6_994 + 9_000 * 200),
            ),
            (
                "cg_region_1_2n",
                dump(7_000 + 9_000 * 400, 6_994 + 9_000 * 400),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ir = per_op(&plan, &dumps).unwrap();
        assert_eq!(
            ir,
            RowIr::from([
                (
                    "baseline".to_string(),
                    VariantIr {
                        per_op: 30.0,
                        other_threads: true
                    }
                ),
                (
                    "fast".to_string(),
                    VariantIr {
                        per_op: 9.0,
                        other_threads: false
                    }
                ),
            ])
        );
        let mut missing = dumps.clone();
        missing.remove("cg_region_1_2n");
        assert_eq!(
            per_op(&plan, &missing).unwrap_err(),
            "r: no callgrind dump for cg_region_1_2n"
        );
        let mut shrinking = dumps;
        shrinking.insert("cg_region_0_2n".into(), dump(1, 1));
        assert!(per_op(&plan, &shrinking).unwrap_err().contains("2N <"));
    }

    #[test]
    fn counts_for_people() {
        assert_eq!(human(12.34), "12.3");
        assert_eq!(human(870.2), "870");
        assert_eq!(human(12_345.0), "12.3 k");
        assert_eq!(human(4_560_000.0), "4.56 M");
        assert_eq!(human(f64::NAN), "-");
    }
}
