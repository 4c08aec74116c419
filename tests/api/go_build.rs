//! Builds the Go SDK's example plugins (`sdk/go/examples/<name>`) with the
//! Go toolchain, once per test process, as `c_library` builds the C ones.
//!
//! `go_library("echo", &[])` builds the v2 backend;
//! `go_library("echo", &["nylon_legacy"])` the legacy one. The toolchain is
//! `$GO` when set, else `go` on the PATH. Without a toolchain a test calls
//! [`go_or_skip`] first: outside CI it prints a loud message and the test
//! returns early; under CI (`CI` set) the absence fails the test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The Go command: `$GO`, else `go`.
pub(crate) fn go_command() -> String {
    std::env::var("GO").unwrap_or_else(|_| "go".into())
}

/// Whether a Go toolchain runs here.
fn go_present() -> bool {
    Command::new(go_command())
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// True when the Go toolchain is present. Without it: false, after a loud
/// message, outside CI; a panic under CI, where the toolchain is installed
/// and its absence is a failure.
pub(crate) fn go_or_skip(test: &str) -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *PRESENT.get_or_init(go_present) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: the Go toolchain (`{}`) is missing, and CI must build the Go plugins",
        go_command()
    );
    eprintln!(
        "\n=====================================================================\n\
         SKIPPED {test}: no Go toolchain (`{}` does not run).\n\
         Install golang-go (Go >= 1.19) to run the Go SDK tests.\n\
         =====================================================================\n",
        go_command()
    );
    false
}

/// The Go command `go ARGS...`, run in `sdk/go` with the environment the
/// builds use; panics with its output when it fails.
pub(crate) fn go_in_sdk(args: &[&str]) {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    let output = go(&out_dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run `{} {}`: {e}", go_command(), args.join(" ")));
    assert!(
        output.status.success(),
        "`go {}` in sdk/go failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `go` command in `sdk/go`: cgo on, no module proxy, the local toolchain.
fn go(out_dir: &Path) -> Command {
    let mut cmd = Command::new(go_command());
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk/go"))
        .env("CGO_ENABLED", "1")
        // No module proxy is reachable, and the SDK needs none.
        .env("GOPROXY", "off")
        .env(
            "GOFLAGS",
            // The caller's flags (for example `-race`) are kept.
            format!("-mod=mod {}", std::env::var("GOFLAGS").unwrap_or_default()),
        )
        .env("GOTOOLCHAIN", "local");
    if std::env::var_os("GOCACHE").is_none()
        && std::env::var_os("HOME").is_none()
        && std::env::var_os("XDG_CACHE_HOME").is_none()
    {
        cmd.env("GOCACHE", out_dir.join("cache"));
    }
    cmd
}

/// The shared library of Go example `example`, built with build `tags`
/// (`go build -buildmode=c-shared`) once per test process. Go's build cache
/// makes a rebuild of an unchanged example a link only.
pub(crate) fn go_library(example: &str, tags: &[&str]) -> PathBuf {
    static BUILT: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!(
        "{example}{}",
        tags.iter().map(|t| format!("-{t}")).collect::<String>()
    );
    if let Some(p) = built.get_or_insert_with(HashMap::new).get(&key) {
        return p.clone();
    }
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    std::fs::create_dir_all(&out_dir).expect("create the Go output directory");
    let out = out_dir.join(format!("lib{key}.so"));
    let mut cmd = go(&out_dir);
    cmd.args(["build", "-buildmode=c-shared", "-trimpath"]);
    if !tags.is_empty() {
        cmd.arg(format!("-tags={}", tags.join(",")));
    }
    cmd.arg("-o").arg(&out).arg(format!("./examples/{example}"));
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "run `{}` to build the Go example {example}: {e}",
            go_command()
        )
    });
    assert!(
        output.status.success(),
        "building the Go example {example} (tags {tags:?}) failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    built
        .get_or_insert_with(HashMap::new)
        .insert(key, out.clone());
    out
}
