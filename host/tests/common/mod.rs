//! Shared fixtures of the end-to-end tests: the example plugins (built by
//! cargo or the C compiler on demand), a loopback upstream, and the
//! `nylon-serve` binary started on a free port with a generated config.
#![allow(dead_code)]

#[path = "../../../tests/support/cc.rs"]
mod cc;
#[path = "../ports/mod.rs"]
mod ports;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

pub(crate) mod suite;

/// The `server:` block of the tests' configs (`Proxy::start` fills in the
/// port).
pub(crate) const SERVER_YAML: &str = r#"server:
  listen: "127.0.0.1:{port}"
  threads: 2
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
"#;

/// The repository root (the host crate's parent).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// `target/<profile>/`, from this test binary's path.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// An example plugin of the root crate, built by cargo (once per process).
pub(crate) fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let path = profile_dir().join("examples").join(format!("lib{name}.so"));
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "nylon-transport",
            "--example",
            name,
        ])
        .current_dir(root());
        if profile_dir().ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build --example");
        assert!(
            status.success(),
            "building the example plugin {name} failed"
        );
        built.push(name.to_string());
    }
    path
}

/// The C example plugin (`examples/c_plugin/plugin.c`), compiled once.
pub(crate) fn c_plugin() -> PathBuf {
    cc::c_library(
        &root(),
        &root().join("examples/c_plugin/plugin.c"),
        &[],
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libc_plugin_e2e.so"),
    )
}

/// The root crate's crash plugin (`examples/c_plugin/crash.c`) with a
/// `silent` entry added (`host/tests/support/crash_silent.c`), compiled once.
/// Only ever loaded with `isolation: process`: its entries crash the process
/// that runs them.
pub(crate) fn crash_plugin() -> PathBuf {
    cc::c_library(
        &root(),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/crash_silent.c"),
        &[&root().join("examples/c_plugin/crash.c")],
        &PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libcrash_host.so"),
    )
}

/// The counters `nylon-serve` logs at exit (its `nylon-serve: stats` line).
pub(crate) fn stats(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .find(|l| l.starts_with("nylon-serve: stats "))
        .unwrap_or_else(|| panic!("no stats line:\n{log}"));
    serde_json::from_str(line.trim_start_matches("nylon-serve: stats ")).expect("stats")
}

/// A fresh directory for one test's files.
pub(crate) fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "e2e-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the scratch dir");
    dir
}

/// A loopback HTTP/1.1 upstream.
///
/// - `/chunks/N`: a chunked response of N chunks `c0 `, `c1 `, ...; each
///   chunk after the first waits for one permit of [`Upstream::gate`], so a
///   test can make sure every chunk reaches the proxy on its own.
/// - anything else: 200 with `x-upstream: 1` and the body
///   `upstream METHOD PATH id=X-REQUEST-ID body=BODY`.
pub(crate) struct Upstream {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Permits for `/chunks/N`'s chunks after the first.
    pub(crate) gate: Arc<Semaphore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts one on a free loopback port.
    pub(crate) async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let addr = listener.local_addr().expect("upstream address");
        let gate = Arc::new(Semaphore::new(0));
        let g = Arc::clone(&gate);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    let _ = serve_conn(stream, g).await;
                });
            }
        });
        Upstream { addr, gate, task }
    }
}

async fn serve_conn(stream: tokio::net::TcpStream, gate: Arc<Semaphore>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let (mut len, mut chunked, mut id) = (0usize, false, String::new());
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).await? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_ascii_lowercase(), v.trim());
                match n.as_str() {
                    "content-length" => len = v.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "x-request-id" => id = v.to_string(),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).await?;
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                r.read_exact(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            r.read_exact(&mut body).await?;
        }
        if let Some(n) = path.strip_prefix("/chunks/") {
            let n: usize = n.parse().unwrap_or(0);
            w.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
                .await?;
            for i in 0..n {
                if i > 0 {
                    match gate.acquire().await {
                        Ok(p) => p.forget(),
                        Err(_) => return Ok(()),
                    }
                }
                let c = format!("c{i} ");
                w.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                    .await?;
                w.flush().await?;
            }
            w.write_all(b"0\r\n\r\n").await?;
        } else {
            let text = format!(
                "upstream {method} {path} id={id} body={}",
                String::from_utf8_lossy(&body)
            );
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream: 1\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
                .as_bytes(),
            )
            .await?;
        }
        w.flush().await?;
    }
}

/// A free loopback port for a server a test starts (see `ports`).
pub(crate) fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    ports::pick(26000, 32000, &NEXT)
}

/// A running `nylon-serve`.
pub(crate) struct Proxy {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its stderr, captured to a file.
    pub(crate) log: PathBuf,
}

impl Proxy {
    /// Writes `config` (with `{port}` replaced by a free port) to `dir` and
    /// starts the binary with `args`; returns once it accepts connections.
    pub(crate) fn start(dir: &Path, config: &str, args: &[&str]) -> Proxy {
        let port = free_port();
        let path = dir.join("nylon.yaml");
        std::fs::write(&path, config.replace("{port}", &port.to_string()))
            .expect("write the config");
        let log = dir.join("nylon-serve.log");
        let stderr = std::fs::File::create(&log).expect("create the log");
        let child = Command::new(env!("CARGO_BIN_EXE_nylon-serve"))
            .arg("--config")
            .arg(&path)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start nylon-serve");
        let mut proxy = Proxy {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return proxy;
            }
            if let Some(st) = proxy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nylon-serve exited with {st} before listening:\n{}",
                    proxy.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nylon-serve did not listen within 30 s:\n{}",
                proxy.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A handle on a proxy another handle runs (for `url` only: it owns no
    /// process).
    pub(crate) fn for_port(port: u16) -> Proxy {
        Proxy {
            child: None,
            port,
            log: PathBuf::new(),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Its process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its resident memory in KiB (Linux `/proc`), 0 if unknown.
    pub(crate) fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Its stderr so far.
    pub(crate) fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The pids of the worker processes `nylon-serve` runs (its children
    /// whose command line is `... worker ...`), sorted.
    pub(crate) fn worker_pids(&self) -> Vec<u32> {
        children(self.pid())
            .into_iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| c.split(|b| *b == 0).any(|a| a == b"worker"))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Whether `nylon-serve` is still running.
    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends SIGTERM (a graceful shutdown) without waiting.
    pub(crate) fn signal_term(&self) {
        if let Some(child) = self.child.as_ref() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: a plain syscall on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Sends SIGTERM and waits up to 30 s for the exit.
    pub(crate) fn terminate(mut self) -> (ExitStatus, String) {
        self.signal_term();
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = child.try_wait().expect("wait for nylon-serve") {
                return (st, self.log_text());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!(
                    "nylon-serve did not exit within 30 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A failing test shows how the proxy saw it (and whether it was
            // still running).
            if std::thread::panicking() {
                let state = match c.try_wait() {
                    Ok(Some(st)) => format!("exited with {st}"),
                    _ => "running".to_string(),
                };
                eprintln!(
                    "nylon-serve on port {} ({state}) logged:\n{}",
                    self.port,
                    self.log_text()
                );
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The tests' HTTP client: pooled connections, a 30 s bound on every request.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

/// The live children of `pid` (from `/proc/*/stat`), sorted; zombies are
/// left out.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
        if ppid == pid && state != "Z" && state != "X" {
            out.push(child);
        }
    }
    out.sort_unstable();
    out
}

/// Sends `sig` to `pid`.
pub(crate) fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: a plain syscall; `pid` is a process this test started (or a
    // child of one), looked up just before.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after 30 s.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
