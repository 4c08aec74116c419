//! A private `redis-server` for a test: Debian's `/usr/bin/redis-server` (or
//! `redis-server` on the PATH) on a free loopback port, no persistence
//! (`--save "" --appendonly no`), killed when dropped. Missing: a skip with a
//! message, except under `CI=true`, where it is a failure.
#![allow(dead_code)]

// A test binary may hold `common`'s copy too; each copy keeps its own range.
#[allow(clippy::duplicate_mod)]
#[path = "../ports/mod.rs"]
mod ports;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub(crate) struct RedisServer {
    child: Option<Child>,
    /// Its loopback port.
    pub(crate) port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

fn binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/redis-server");
    if debian.exists() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.exists())
    })
}

impl RedisServer {
    /// Starts one, or returns `None` (after saying why) when redis-server is
    /// not installed and this is not CI.
    pub(crate) fn start(test: &str) -> Option<Self> {
        let Some(bin) = binary() else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(
                !ci,
                "{test}: redis-server is not installed (CI=true: scripts/deps.sh installs it)"
            );
            eprintln!(
                "SKIPPED {test}: redis-server is not installed (apt-get install redis-server)"
            );
            return None;
        };
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nylon-redis-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // Apart from `common::free_port`'s range (a test may use both).
        let port = ports::pick(20000, 26000, &NEXT);
        let mut s = Self {
            child: None,
            port,
            dir,
            bin,
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.client().get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on port {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL) and waits for the process.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills it and starts a new, empty one on the same port.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client of it.
    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("client")
    }

    /// A blocking connection to it.
    pub(crate) fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect to redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `secs` seconds with `what`.
pub(crate) async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
