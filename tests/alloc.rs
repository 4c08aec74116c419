//! Allocation counts on the fast path, exact: a counting global allocator
//! (per thread) around the brief's request scenario with a v2 plugin linked
//! in-process, so the plugin's allocations are counted too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use nylon_transport::abi::legacy::Phase;
use nylon_transport::bench::context::{BenchContext, WsCodec};
use nylon_transport::transport::{PhaseOutcome, Transport, V2Plugin, V2};

#[path = "../examples/v2_plugin.rs"]
#[allow(dead_code, unreachable_pub)]
mod v2_example;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator may run during thread teardown.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: delegates every operation to the system allocator unchanged; the
// bookkeeping touches only thread-locals of plain integers.
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

/// Counts the allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    COUNT.with(Cell::get)
}

#[test]
fn the_request_scenario_allocates_nothing_in_steady_state() {
    let table = nylon_transport::sdk::v2::table::<v2_example::Example>();
    let plugin = Arc::new(V2Plugin::from_static(table, b"{}").unwrap());
    let v2 = V2::default();
    let entry = plugin.entry_id("scenario").unwrap();
    let mut ctx = BenchContext::scenario(WsCodec::Fast);
    let mut session = v2.open_entry(&plugin, entry).unwrap();
    let mut request = |session: &mut _| {
        ctx.reset();
        v2.reopen(session, entry).unwrap();
        for phase in Phase::ALL {
            assert_eq!(
                v2.run_phase(session, phase, &mut ctx, std::time::Duration::from_secs(5)),
                PhaseOutcome::Next
            );
        }
    };
    // Warm-up: buffers grow, names are interned, session boxes are recycled.
    for _ in 0..100 {
        request(&mut session);
    }
    let n = allocations(|| {
        for _ in 0..10_000 {
            request(&mut session);
        }
    });
    assert_eq!(n, 0, "heap allocations in 10 000 steady-state requests");
    let headers: Vec<_> = ctx
        .response_headers()
        .map(|(n, v)| (n.to_string(), v.to_vec()))
        .collect();
    assert!(headers.iter().any(|(n, v)| n == "x-scenario" && v == b"1"));
    v2.close(session);
}

#[test]
fn the_counter_does_count() {
    let n = allocations(|| {
        let v: Vec<u8> = Vec::with_capacity(10);
        std::hint::black_box(v);
    });
    assert_eq!(n, 1);
}
