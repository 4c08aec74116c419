//! Compiles a C plugin of the repository for a test, once per test process.
//! Shared by the root crate's tests and the host crate's (by `#[path]`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Compiles `src` against the repository's `include/` into the shared
/// library `out`, unless `out` is newer than `src` and every file of `deps`
/// (files `src` includes). One compile at a time per process.
pub(crate) fn c_library(repo: &Path, src: &Path, deps: &[&Path], out: &Path) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let built = out.metadata().and_then(|m| m.modified()).ok();
    let fresh = built.is_some()
        && std::iter::once(src)
            .chain(deps.iter().copied())
            .all(|f| built >= f.metadata().and_then(|m| m.modified()).ok());
    if !fresh {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let status = Command::new(cc)
            .args([
                "-shared", "-fPIC", "-O2", "-pthread", "-Wall", "-Werror", "-std=c11",
            ])
            .arg("-I")
            .arg(repo.join("include"))
            .arg("-o")
            .arg(out)
            .arg(src)
            .status()
            .expect("run the system C compiler");
        assert!(status.success(), "compiling {} failed", src.display());
    }
    out.to_path_buf()
}
