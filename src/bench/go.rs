//! The Go plugins of the `request_go` row, built by the bench itself with
//! `go build -buildmode=c-shared` from `sdk/go/`.
//!
//! Go 1.23 (`/usr/lib/go-1.23/bin/go`, Debian's `golang-1.23-go`) is used when
//! it is installed, else the `go` on `PATH`; the row's note says which.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::rows::{legacy_request, v2_request};
use super::Row;
use crate::host::loader::LegacyPlugin;
use crate::transport::{Baseline, Fast, FastConfig, V2Plugin};

/// Where Debian's `golang-1.23-go` puts its `go`.
const GO_1_23: &str = "/usr/lib/go-1.23/bin/go";

/// The Go toolchain the bench builds with: its path and `go version` line.
pub fn toolchain() -> Option<(PathBuf, String)> {
    let candidates = [PathBuf::from(GO_1_23), PathBuf::from("go")];
    candidates.into_iter().find_map(|go| {
        let out = Command::new(&go).arg("version").output().ok()?;
        if !out.status.success() {
            return None;
        }
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Some((go, v))
    })
}

/// Builds the Go package `pkg` (relative to `sdk/go/`) with `tags` into
/// `<target>/<profile>/go/lib<name>.so` and returns the path. `go build`
/// caches, so an unchanged plugin costs little.
///
/// # Errors
///
/// A message with the compiler's output when the build fails.
pub fn build(go: &Path, pkg: &str, tags: &str, name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut dir = exe.parent().ok_or("no binary directory")?.to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let out = dir.join("go").join(format!("lib{name}.so"));
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/go");
    let mut cmd = Command::new(go);
    cmd.current_dir(&module)
        .env("CGO_ENABLED", "1")
        .env("GOTOOLCHAIN", "local")
        // No module proxy is reachable, and the SDK needs none.
        .env("GOPROXY", "off");
    if std::env::var_os("GOCACHE").is_none()
        && std::env::var_os("HOME").is_none()
        && std::env::var_os("XDG_CACHE_HOME").is_none()
    {
        cmd.env("GOCACHE", dir.join("go").join("cache"));
    }
    let output = cmd
        .args(["build", "-buildmode=c-shared", "-trimpath"])
        .arg(format!("-tags={tags}"))
        .arg("-o")
        .arg(&out)
        .arg(format!("./{pkg}"))
        .output()
        .map_err(|e| format!("running {}: {e}", go.display()))?;
    if !output.status.success() {
        return Err(format!(
            "go build ./{pkg} (tags `{tags}`) failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(out)
}

fn load_legacy(path: &Path) -> Result<Arc<LegacyPlugin>, String> {
    let p = LegacyPlugin::load(path).map_err(|e| e.to_string())?;
    p.initialize(b"{}").map_err(|e| e.to_string())?;
    Ok(Arc::new(p))
}

/// The `request_go` row: the request scenario in Go, same plugin logic on
/// every variant, one session opened and closed per request.
///
/// - baseline: a plugin in today's upstream-SDK style
///   (`sdk/go/internal/todaystyle`) on the baseline host;
/// - `fast_legacy`: our Go SDK built for the legacy ABI (`-tags nylon_legacy`)
///   on the fast host;
/// - fast: our Go SDK on v2;
/// - `today_fast`: the today's-style plugin on the fast host (what the host
///   alone gains).
///
/// # Errors
///
/// A message when Go is missing or a plugin does not build or load.
pub fn request_row() -> Result<Row, String> {
    let (go, version) = toolchain().ok_or("no Go toolchain (`go` or /usr/lib/go-1.23/bin/go)")?;
    let today = load_legacy(&build(&go, "internal/todaystyle", "", "go_todaystyle")?)?;
    let sdk_legacy = load_legacy(&build(
        &go,
        SCENARIO_PKG,
        "nylon_legacy",
        "go_scenario_legacy",
    )?)?;
    let sdk_v2_path = build(&go, SCENARIO_PKG, "", "go_scenario_v2")?;
    let sdk_v2 = Arc::new(V2Plugin::load(&sdk_v2_path, b"{}").map_err(|e| e.to_string())?);
    let fast = || Fast::new(FastConfig::default());
    let mut row = Row::new(
        "request_go",
        "-",
        "< 2 µs",
        legacy_request(Baseline::new(), today.clone(), "scenario"),
        v2_request(sdk_v2)?,
    )
    .with(
        "fast_legacy",
        legacy_request(fast(), sdk_legacy, "scenario"),
    )
    .with("today_fast", legacy_request(fast(), today, "scenario"));
    row.note =
        Box::leak(format!("{} Built with {version}.", super::note("request_go")).into_boxed_str());
    Ok(row)
}

/// The Go SDK's scenario example, built once per ABI.
const SCENARIO_PKG: &str = "examples/scenario";
