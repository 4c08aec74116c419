//! Allocation counts on the fast paths, exact: a counting global allocator
//! that counts on every thread of the process while a check has it on.
//!
//! The binary has no test harness (`harness = false`): the harness's own
//! threads allocate while reporting, which a process-wide count would see.
//! The checks run in order from `main`.
//!
//! - The v2 request scenario with the example plugin linked in-process (so
//!   the plugin's allocations are counted too), session open and close
//!   included in every request.
//! - The legacy fast transport, host side: the legacy example plugin is a
//!   real `.so` with its own Rust runtime, whose allocations go to its own
//!   allocator and are not counted; every host allocation, on whichever
//!   thread it runs (the plugin's threads call back into the host), is.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nylon_transport::abi::legacy::Phase;
use nylon_transport::bench::context::{BenchContext, WsCodec};
use nylon_transport::host::loader::LegacyPlugin;
use nylon_transport::transport::{
    Fast, FastConfig, Isolated, IsolatedConfig, IsolatedPlugin, PhaseOutcome, SessionOptions,
    Transport, V2Plugin, V2,
};

#[path = "../examples/v2_plugin.rs"]
#[allow(dead_code, unreachable_pub)]
mod v2_example;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static COUNT: AtomicU64 = AtomicU64::new(0);

#[inline]
fn note() {
    if COUNTING.load(Ordering::Relaxed) {
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: delegates every operation to the system allocator unchanged; the
// bookkeeping touches only two atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: delegated to the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: delegated to the caller.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: delegated to the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: delegated to the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Counts the allocations made on every thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    COUNT.load(Ordering::SeqCst)
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// The checks in order; v2 first, so that threads the legacy plugin leaves
/// behind cannot run while the v2 count is taken.
fn main() {
    let checks: [(&str, fn()); 5] = [
        (
            "the counter counts on every thread",
            the_counter_counts_on_every_thread,
        ),
        (
            "a v2 request with open and close allocates nothing",
            a_v2_request_with_open_and_close_allocates_nothing,
        ),
        (
            "a legacy request on the fast host allocates nothing host side",
            a_legacy_request_on_the_fast_host_allocates_nothing_host_side,
        ),
        (
            "an isolated request allocates nothing host side",
            an_isolated_request_allocates_nothing_host_side,
        ),
        (
            "a 64 KiB chunk through a worker's slabs allocates nothing host side",
            a_large_chunk_through_slabs_allocates_nothing_host_side,
        ),
    ];
    for (name, check) in checks {
        check();
        println!("test {name} ... ok");
    }
}

/// Runs `warm_up` requests of the scenario (open, four phases, close) over
/// `t`, then counts the allocations of `n` more; returns the count and the
/// last request's response headers.
fn count_requests<T: Transport>(
    t: &T,
    plugin: &Arc<T::Plugin>,
    warm_up: u64,
    n: u64,
) -> (u64, Vec<(String, Vec<u8>)>) {
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let mut request = || {
        ctx.reset();
        let mut s = t
            .open(plugin, "scenario", SessionOptions::default())
            .unwrap();
        for phase in Phase::ALL {
            assert_eq!(
                t.run_phase(&mut s, phase, &mut ctx, TIMEOUT),
                PhaseOutcome::Next
            );
        }
        t.close(s);
    };
    // Warm-up: buffers grow, names are interned, session state is pooled.
    for _ in 0..warm_up {
        request();
    }
    let count = allocations(|| {
        for _ in 0..n {
            request();
        }
    });
    let headers = ctx
        .response_headers()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    (count, headers)
}

fn has(headers: &[(String, Vec<u8>)], name: &str, value: &[u8]) -> bool {
    headers.iter().any(|(n, v)| n == name && v == value)
}

fn a_v2_request_with_open_and_close_allocates_nothing() {
    let table = nylon_transport::sdk::v2::table::<v2_example::Example>();
    let plugin = Arc::new(V2Plugin::from_static(table, b"{}").unwrap());
    let (n, headers) = count_requests(&V2::default(), &plugin, 100, 10_000);
    assert_eq!(n, 0, "heap allocations in 10 000 requests");
    assert!(has(&headers, "x-scenario", b"1"));
    assert!(has(&headers, "x-status-class", b"ok"));
}

fn a_legacy_request_on_the_fast_host_allocates_nothing_host_side() {
    let (legacy, _, _) = nylon_transport::bench::find_plugins().unwrap();
    let plugin = Arc::new(LegacyPlugin::load(&legacy).unwrap());
    plugin.initialize(b"{}").unwrap();
    let fast = Fast::new(FastConfig::default());
    let (n, headers) = count_requests(&fast, &plugin, 200, 2_000);
    assert_eq!(n, 0, "host heap allocations in 2 000 legacy requests");
    assert!(has(&headers, "x-scenario", b"1"));
}

/// The v2 example plugin in one worker process.
fn v2_in_one_worker() -> Arc<IsolatedPlugin> {
    let (_, v2, _) = nylon_transport::bench::find_plugins().unwrap();
    IsolatedPlugin::start(
        &v2,
        b"{}",
        IsolatedConfig {
            workers: 1,
            worker_command: vec![
                env!("CARGO_BIN_EXE_nylon-transport").into(),
                "worker".into(),
            ],
            ..IsolatedConfig::default()
        },
    )
    .unwrap()
}

/// The v2 scenario through a worker process: every allocation of the host
/// process counts (the task's thread, the worker's dispatcher and
/// supervisor threads); the worker's own are in another process.
fn an_isolated_request_allocates_nothing_host_side() {
    let plugin = v2_in_one_worker();
    let (n, headers) = count_requests(&Isolated::new(), &plugin, 200, 2_000);
    assert_eq!(n, 0, "host heap allocations in 2 000 isolated requests");
    assert!(has(&headers, "x-scenario", b"1"));
    plugin.shutdown(TIMEOUT);
}

/// The v2 `body_rewrite` entry on a 64 KiB chunk through a worker: the
/// chunk goes out in a host slab and comes back (two bytes longer) in a
/// worker slab, copied straight into the context; slab leases come from the
/// pools built when the worker started.
fn a_large_chunk_through_slabs_allocates_nothing_host_side() {
    let plugin = v2_in_one_worker();
    let t = Isolated::new();
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let chunk = vec![b'c'; 64 << 10];
    let mut request = || {
        ctx.reset();
        nylon_transport::host::HttpContext::set_response_body(&mut ctx, &chunk);
        let mut s = t
            .open(&plugin, "body_rewrite", SessionOptions::default())
            .unwrap();
        assert_eq!(
            t.run_phase(&mut s, Phase::ResponseBodyFilter, &mut ctx, TIMEOUT),
            PhaseOutcome::Next
        );
        t.close(s);
        assert_eq!(
            nylon_transport::host::HttpContext::response_body(&ctx).len(),
            chunk.len() + 2
        );
    };
    for _ in 0..50 {
        request();
    }
    let before = plugin.stats();
    let n = allocations(|| {
        for _ in 0..500 {
            request();
        }
    });
    let after = plugin.stats();
    assert_eq!(
        n, 0,
        "host heap allocations in 500 requests with a 64 KiB chunk"
    );
    assert_eq!(after.slabs_sent - before.slabs_sent, 500, "{after:?}");
    assert_eq!(
        after.slabs_received - before.slabs_received,
        500,
        "{after:?}"
    );
    plugin.shutdown(TIMEOUT);
}

fn the_counter_counts_on_every_thread() {
    let n = allocations(|| {
        let v: Vec<u8> = Vec::with_capacity(10);
        std::hint::black_box(v);
        std::thread::scope(|s| {
            s.spawn(|| std::hint::black_box(Vec::<u8>::with_capacity(10)));
        });
    });
    // One here, one on the other thread, and whatever spawning a thread
    // allocates: at least two.
    assert!(n >= 2, "counted {n}");
}
