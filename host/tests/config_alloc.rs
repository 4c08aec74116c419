//! Rendering a template and matching a route allocate nothing (beyond growing the caller's
//! buffer), counted exactly by a global allocator that counts the calls of the thread that armed
//! it (the test harness's own threads allocate concurrently and are not counted).

mod config_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use config_support::{no_env, Req};
use nylon_host::{Config, StrTemplate, Template};

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `const` thread-locals without a destructor: reading them never allocates.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            COUNT.with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting
// touches only thread-locals that need no allocation.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: delegated to the caller.
        unsafe { System.alloc(layout) }
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

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note();
        // SAFETY: delegated to the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The allocator calls (alloc, realloc, dealloc) `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    f();
    ARMED.with(|a| a.set(false));
    COUNT.with(Cell::get)
}

/// A payload that calls every template function, nests them, escapes and case-maps non-ASCII.
const EVERYTHING: &str = r#"
ip: ${request(client_ip)}
line: "${request(method)} ${request(path)}?${request(query)} @ ${request(host)}"
user: ${or(header(x-user), 'anonymous')}
evil: ${header(x-evil)}
page: ${query(page)}
name: ${query(name)}
id: ${param(id)}
v4: ${uuid(v4)}
v7: ${uuid(v7)}
at: ${timestamp()}
env: ${env(HOME_REGION)}
eq: ${eq(header(x-user), 'ann', 'is-ann')}
eq2: ${eq(param(id), '42')}
neq: ${neq(request(method), 'POST', 'not-post')}
cond: ${if_cond(header(x-none), 'yes', concat('no-', upper(header(x-city))))}
lower: ${lower(header(x-city))}
len: ${len(header(x-evil))}
nested: ${or(header(x-none), eq(header(x-none), ''), concat('gen-', uuid(v7), '-', len(param(id))))}
static: [1, 2.5, true, null, "text"]
"#;

fn request() -> Req {
    Req::new()
        .query("page=2&name=J%C3%BCrgen+K")
        .param("id", "42")
        .header("x-user", b"ann")
        .header("x-evil", b"q\"u\\o\nte\x01\xff")
        .header("x-city", "Zürich".as_bytes())
}

#[test]
fn the_counter_counts() {
    assert_eq!(allocations(|| drop(Vec::<u8>::with_capacity(10))), 2);
    assert_eq!(allocations(|| ()), 0);
}

#[test]
fn rendering_into_a_warm_buffer_allocates_nothing() {
    let env = |name: &str| (name == "HOME_REGION").then(|| "eu".to_owned());
    let t = Template::parse_yaml(EVERYTHING, &env).unwrap();
    let req = request();
    let mut out = Vec::new();
    t.render(&req, &mut out);
    // Sanity: it is the JSON we think.
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["name"], "Jürgen K");
    assert_eq!(v["cond"], "no-ZÜRICH");
    assert_eq!(v["evil"], "q\"u\\o\nte\u{1}\u{FFFD}");
    assert_eq!(v["eq2"], "42");
    assert_eq!(v["env"], "eu");
    let first_len = out.len();
    for _ in 0..100 {
        out.clear();
        assert_eq!(allocations(|| t.render(&req, &mut out)), 0);
        assert_eq!(out.len(), first_len);
    }
}

#[test]
fn rendering_into_a_cold_buffer_allocates_only_its_growth() {
    let t = Template::parse_yaml(EVERYTHING, &no_env).unwrap();
    let req = request();
    let mut warm = Vec::new();
    t.render(&req, &mut warm);
    // With capacity for the output and the largest scratch tail, one allocation: the buffer.
    let mut out = Vec::new();
    let n = allocations(|| {
        out.reserve_exact(warm.capacity());
        t.render(&req, &mut out);
    });
    assert_eq!(n, 1);
}

#[test]
fn header_templates_render_without_allocating() {
    let t = StrTemplate::parse(
        "${or(header(x-none), concat('gen-', uuid(v7)))}/${lower(header(x-city))}",
        &no_env,
    )
    .unwrap();
    let req = request();
    let mut out = Vec::new();
    t.render(&req, &mut out);
    for _ in 0..100 {
        out.clear();
        assert_eq!(allocations(|| t.render(&req, &mut out)), 0);
    }
}

#[test]
fn routing_allocates_nothing() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/nylon.yaml"))
        .unwrap();
    let c = Config::parse_with_env(&text, "nylon.yaml", &no_env).unwrap();
    let mut seen = 0;
    let n = allocations(|| {
        for (host, sel, method, path) in [
            (&b"localhost"[..], None, "GET", "/echo/42"),
            (b"LOCALHOST:8088", None, "GET", "/static/css/a.css"),
            (b"127.0.0.1", None, "POST", "/stream"),
            (b"localhost", Some(&b"my-svc"[..]), "GET", "/a/b"),
            (b"unknown", None, "GET", "/"),
        ] {
            if let Ok(m) = c.route(host, sel, method, path) {
                seen += m.params.len() + m.path.middleware.len();
            }
        }
    });
    assert_eq!(n, 0);
    // (params + middleware): echo 1 + 4, static 1 + 3, stream 0 + 3, by-header 1 + 0.
    assert_eq!(seen, 5 + 4 + 3 + 1);
}
