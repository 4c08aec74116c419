//! The router: static over parameter over catch-all, backtracking, methods, hosts, selectors.

use nylon_host::route::{PatternError, Router, MAX_PARAMS};
use nylon_host::RouteError;

fn router(patterns: &[(&str, Option<&[&str]>)]) -> Router<usize> {
    let mut r = Router::new();
    for (i, (p, methods)) in patterns.iter().enumerate() {
        let methods: Option<Vec<String>> =
            methods.map(|m| m.iter().map(|s| s.to_string()).collect());
        r.insert_host("h", p, methods.as_deref(), i)
            .unwrap_or_else(|e| panic!("{p}: {e}"));
    }
    r
}

/// The index of the pattern `path` matches, with its params as `k=v,...`.
fn at(r: &Router<usize>, method: &str, path: &str) -> Result<(usize, String), RouteError> {
    r.at(b"h", None, method, path).map(|m| {
        let params: Vec<String> = m.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        (*m.value, params.join(","))
    })
}

fn ok(i: usize, params: &str) -> Result<(usize, String), RouteError> {
    Ok((i, params.to_owned()))
}

#[test]
fn exact_paths_match_exactly() {
    let r = router(&[("/", None), ("/a", None), ("/a/b", None), ("/a/", None)]);
    assert_eq!(at(&r, "GET", "/"), ok(0, ""));
    assert_eq!(at(&r, "GET", "/a"), ok(1, ""));
    assert_eq!(at(&r, "GET", "/a/b"), ok(2, ""));
    assert_eq!(at(&r, "GET", "/a/"), ok(3, ""));
    assert_eq!(at(&r, "GET", "/a/b/c"), Err(RouteError::NotFound));
    assert_eq!(at(&r, "GET", "/b"), Err(RouteError::NotFound));
    assert_eq!(at(&r, "GET", ""), Err(RouteError::NotFound));
    assert_eq!(at(&r, "GET", "a"), Err(RouteError::NotFound));
}

#[test]
fn parameters_bind_one_non_empty_segment() {
    let r = router(&[("/users/{id}", None), ("/users/{id}/posts/{post}", None)]);
    assert_eq!(at(&r, "GET", "/users/42"), ok(0, "id=42"));
    assert_eq!(at(&r, "GET", "/users/42/posts/7"), ok(1, "id=42,post=7"));
    assert_eq!(at(&r, "GET", "/users/"), Err(RouteError::NotFound));
    assert_eq!(at(&r, "GET", "/users/42/posts"), Err(RouteError::NotFound));
    // Not percent-decoded.
    assert_eq!(at(&r, "GET", "/users/a%20b"), ok(0, "id=a%20b"));
}

#[test]
fn catch_all_takes_the_rest_and_needs_one_character() {
    let r = router(&[("/static", None), ("/static/{*path}", None)]);
    assert_eq!(at(&r, "GET", "/static"), ok(0, ""));
    assert_eq!(at(&r, "GET", "/static/a"), ok(1, "path=a"));
    assert_eq!(
        at(&r, "GET", "/static/css/site/a.css"),
        ok(1, "path=css/site/a.css")
    );
    assert_eq!(at(&r, "GET", "/static/"), Err(RouteError::NotFound));
    let r = router(&[("/", None), ("/{*path}", None)]);
    assert_eq!(at(&r, "GET", "/"), ok(0, ""));
    assert_eq!(at(&r, "GET", "/x/y/"), ok(1, "path=x/y/"));
}

#[test]
fn static_beats_parameter_beats_catch_all() {
    let r = router(&[("/{*rest}", None), ("/a/{x}", None), ("/a/b", None)]);
    assert_eq!(at(&r, "GET", "/a/b"), ok(2, ""));
    assert_eq!(at(&r, "GET", "/a/c"), ok(1, "x=c"));
    assert_eq!(at(&r, "GET", "/a/c/d"), ok(0, "rest=a/c/d"));
    assert_eq!(at(&r, "GET", "/z"), ok(0, "rest=z"));
}

#[test]
fn matching_backtracks_and_drops_the_abandoned_params() {
    // `/a/b/d` enters the static `b` first, fails there, and must then take `{x}`.
    let r = router(&[("/a/b/c", None), ("/a/{x}/d", None), ("/{y}/{z}/e", None)]);
    assert_eq!(at(&r, "GET", "/a/b/c"), ok(0, ""));
    assert_eq!(at(&r, "GET", "/a/b/d"), ok(1, "x=b"));
    // Into `/a/{x}` (binds x), fails at `e`, backs out to `{y}/{z}`: x must not remain.
    assert_eq!(at(&r, "GET", "/a/b/e"), ok(2, "y=a,z=b"));
}

#[test]
fn methods_select_among_one_path_and_give_405() {
    let r = router(&[
        ("/item", Some(&["GET", "head"])),
        ("/item", Some(&["POST"])),
        ("/open", None),
    ]);
    assert_eq!(at(&r, "GET", "/item"), ok(0, ""));
    assert_eq!(at(&r, "HEAD", "/item"), ok(0, ""));
    assert_eq!(at(&r, "POST", "/item"), ok(1, ""));
    assert_eq!(at(&r, "DELETE", "/item"), Err(RouteError::MethodNotAllowed));
    assert_eq!(at(&r, "DELETE", "/open"), ok(2, ""));
    // A method-less fallback further down still serves the method.
    let r = router(&[("/x/y", Some(&["GET"])), ("/x/{*rest}", None)]);
    assert_eq!(at(&r, "PUT", "/x/y"), ok(1, "rest=y"));
}

#[test]
fn conflicts_are_rejected_at_insert() {
    let mut r = Router::new();
    r.insert_host("h", "/a/{id}", None, 0).unwrap();
    r.insert_host("h", "/m", Some(&["GET".into()]), 1).unwrap();
    let conflict =
        |r: &mut Router<i32>, p: &str, m: Option<&[String]>| match r.insert_host("h", p, m, 9) {
            Err(PatternError::Conflict(msg)) => msg,
            other => panic!("{p}: {other:?}"),
        };
    assert_eq!(
        conflict(&mut r, "/a/{id}", None),
        "`/a/{id}` matches the same requests as `/a/{id}`"
    );
    assert_eq!(
        conflict(&mut r, "/a/{key}", None),
        "`/a/{key}` names the parameter `key` where another pattern of this host names it `id`"
    );
    assert_eq!(
        conflict(&mut r, "/m", None),
        "`/m` matches the same requests as `/m`"
    );
    assert_eq!(
        conflict(&mut r, "/m", Some(&["get".into()])),
        "`/m` matches the same requests as `/m`"
    );
    // Another method, or another host, is fine.
    r.insert_host("h", "/m", Some(&["POST".into()]), 2).unwrap();
    r.insert_host("other", "/a/{key}", None, 3).unwrap();
}

#[test]
fn malformed_patterns_are_rejected() {
    let mut r = Router::new();
    let many = (0..=MAX_PARAMS)
        .map(|i| format!("/{{p{i}}}"))
        .collect::<String>();
    let too_many = format!("`{many}` has 9 parameters; at most 8 are supported");
    for (p, want) in [
        ("a", "`a` does not start with `/`"),
        (
            "/a/{}",
            "`/a/{}`: `` is not a parameter name (letters, digits, `_`, `-`)",
        ),
        (
            "/a/{b c}",
            "`/a/{b c}`: `b c` is not a parameter name (letters, digits, `_`, `-`)",
        ),
        (
            "/a/x{id}",
            "`/a/x{id}`: a parameter must be a whole segment (`/{name}`), not `x{id}`",
        ),
        (
            "/{*a}/b",
            "the catch-all `{*a}` in `/{*a}/b` must end the pattern",
        ),
        ("/{a}/{a}", "parameter `a` appears twice in `/{a}/{a}`"),
        (&many, &too_many),
    ] {
        match r.insert_host("h", p, None, 0) {
            Err(PatternError::Syntax(msg)) => assert_eq!(msg, want),
            other => panic!("{p}: {other:?}"),
        }
    }
}

#[test]
fn a_rejected_pattern_leaves_the_router_unchanged() {
    let mut r = Router::new();
    r.insert_host("h", "/a/{id}", None, 0).unwrap();
    // Each fails after a prefix that could have been added: nothing of it may remain.
    assert!(r.insert_host("h", "/{x}/{x}", None, 1).is_err());
    assert!(r.insert_host("h", "/b/{y}/{*y}", None, 2).is_err());
    assert!(r.insert_host("h", "/c/{z}/{id}/{z}", None, 3).is_err());
    // So another name at those positions is no conflict, and nothing half-added matches.
    r.insert_host("h", "/{other}/q", None, 4).unwrap();
    r.insert_host("h", "/b/{w}", None, 5).unwrap();
    assert_eq!(r.at(b"h", None, "GET", "/b/1").map(|m| *m.value), Ok(5));
    assert_eq!(
        r.at(b"h", None, "GET", "/c/1/2/3").map(|m| *m.value),
        Err(RouteError::NotFound)
    );
    assert_eq!(r.at(b"h", None, "GET", "/z/q").map(|m| *m.value), Ok(4));
}

#[test]
fn hosts_ignore_port_and_case_and_selectors_come_first() {
    let mut r = Router::new();
    r.insert_host("api.example", "/", None, 1).unwrap();
    r.insert_host("[::1]", "/", None, 2).unwrap();
    r.insert_header("canary", "/", None, 3).unwrap();
    let v = |host: &[u8], sel: Option<&[u8]>| r.at(host, sel, "GET", "/").map(|m| *m.value);
    assert_eq!(v(b"api.example", None), Ok(1));
    assert_eq!(v(b"API.Example:8443", None), Ok(1));
    assert_eq!(v(b"[::1]:80", None), Ok(2));
    assert_eq!(v(b"[::1]", None), Ok(2));
    assert_eq!(v(b"api.example", Some(b"canary")), Ok(3));
    assert_eq!(v(b"api.example", Some(b"other")), Ok(1));
    assert_eq!(v(b"nope", None), Err(RouteError::NotFound));
    assert_eq!(v(b"", None), Err(RouteError::NotFound));
    assert_eq!(v(&[b'a'; 300], None), Err(RouteError::NotFound));
    assert_eq!(v(b"api.example\xff", None), Err(RouteError::NotFound));
}
