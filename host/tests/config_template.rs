//! Payload templates: every function, nesting, JSON shape and escaping.

mod config_support;

use config_support::{no_env, render, render_yaml, Req};
use nylon_host::{StrTemplate, Template};

fn one(expr: &str, req: &Req) -> String {
    // A literal block scalar: the expression's quotes need no YAML escaping.
    let json = render_yaml(&format!("|-\n  {expr}\n"), req);
    serde_json::from_str::<String>(&json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn static_payload_renders_as_json_once_at_load() {
    let t = Template::parse_yaml(
        "{a: 1, b: [true, null, 1.5, -7], c: x, \"q\\\"k\": 'v', nested: {e: [], f: {}}}",
        &no_env,
    )
    .unwrap();
    let want = r#"{"a":1,"b":[true,null,1.5,-7],"c":"x","q\"k":"v","nested":{"e":[],"f":{}}}"#;
    assert_eq!(t.as_static(), Some(want.as_bytes()));
    assert_eq!(render(&t, &Req::new()), want);
}

#[test]
fn a_string_that_is_one_expression_renders_as_a_json_string() {
    let req = Req::new().param("id", "42");
    assert_eq!(render_yaml("${param(id)}", &req), r#""42""#);
    assert_eq!(
        render_yaml("{id: '${param(id)}', n: 1}", &req),
        r#"{"id":"42","n":1}"#
    );
    assert_eq!(
        render_yaml("[a, '${param(id)}', b]", &req),
        r#"["a","42","b"]"#
    );
    assert_eq!(
        render_yaml("id: ${param(id)}\nn: 1\n", &req),
        r#"{"id":"42","n":1}"#
    );
}

#[test]
fn literal_text_around_expressions_is_kept() {
    let req = Req::new().header("x-user", b"ann");
    assert_eq!(one("user-${header(x-user)}!", &req), "user-ann!");
    assert_eq!(one("$ {x} $x ${header(x-user)}$", &req), "$ {x} $x ann$");
    assert_eq!(one("${header(x-user)}${header(x-user)}", &req), "annann");
}

#[test]
fn request_reads_client_ip_method_path_host_and_query() {
    let req = Req::new().query("a=1&b=2");
    assert_eq!(one("${request(client_ip)}", &req), "10.1.2.3");
    assert_eq!(one("${request(method)}", &req), "GET");
    assert_eq!(one("${request(path)}", &req), "/users/42");
    assert_eq!(one("${request(host)}", &req), "api.example");
    assert_eq!(one("${request(query)}", &req), "a=1&b=2");
    // Upstream's older spellings.
    assert_eq!(one("${client_ip}", &req), "10.1.2.3");
    assert_eq!(one("${var(client_ip)}", &req), "10.1.2.3");
}

#[test]
fn header_is_case_insensitive_and_empty_when_absent() {
    let req = Req::new().header("X-Request-Id", b"abc");
    assert_eq!(one("${header(x-request-id)}", &req), "abc");
    assert_eq!(one("${header(X-REQUEST-ID)}", &req), "abc");
    assert_eq!(one("${header('x-request-id')}", &req), "abc");
    assert_eq!(one("<${header(x-missing)}>", &req), "<>");
}

#[test]
fn query_decodes_the_first_matching_key() {
    let req = Req::new().query("a=1&b=hello+world%21&c&k%20x=sp&a=2&bad=%zz%4");
    assert_eq!(one("${query(a)}", &req), "1");
    assert_eq!(one("${query(b)}", &req), "hello world!");
    assert_eq!(one("<${query(c)}>", &req), "<>");
    assert_eq!(one("<${query(zz)}>", &req), "<>");
    assert_eq!(one("${query(\"k x\")}", &req), "sp");
    assert_eq!(one("${query(bad)}", &req), "%zz%4");
}

#[test]
fn param_reads_the_route_parameter() {
    let req = Req::new().param("id", "42").param("rest", "a/b");
    assert_eq!(
        one("${param(id)}:${param(rest)}:${param(none)}", &req),
        "42:a/b:"
    );
}

#[test]
fn uuid_v4_and_v7_are_fresh_lowercase_hyphenated() {
    let req = Req::new();
    for (expr, version) in [("${uuid(v4)}", '4'), ("${uuid(v7)}", '7')] {
        let a = one(expr, &req);
        let b = one(expr, &req);
        assert_ne!(a, b, "{expr} repeated a value");
        for u in [&a, &b] {
            let parsed = uuid::Uuid::parse_str(u).unwrap();
            assert_eq!(
                parsed.hyphenated().to_string(),
                *u,
                "not lowercase hyphenated"
            );
            assert_eq!(u.chars().nth(14), Some(version), "{u}");
            assert!(
                matches!(u.chars().nth(19), Some('8' | '9' | 'a' | 'b')),
                "{u}"
            );
        }
    }
    // v7 sorts by time.
    let a = one("${uuid(v7)}", &req);
    std::thread::sleep(std::time::Duration::from_millis(2));
    let b = one("${uuid(v7)}", &req);
    assert!(a < b, "{a} !< {b}");
}

#[test]
fn timestamp_is_rfc3339_utc_millis_of_now() {
    let before = std::time::SystemTime::now();
    let ts = one("${timestamp()}", &Req::new());
    let after = std::time::SystemTime::now();
    assert_eq!(ts.len(), 24, "{ts}");
    let b = ts.as_bytes();
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16], b[19], b[23]),
        (b'-', b'-', b'T', b':', b':', b'.', b'Z'),
        "{ts}"
    );
    // The rendered instant lies between the two readings (to the millisecond).
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
    };
    let parse = |s: &str| -> u64 {
        let n = |r: std::ops::Range<usize>| s[r].parse::<u64>().unwrap();
        let (y, mo, d) = (n(0..4), n(5..7), n(8..10));
        // Days from civil (Hinnant), for the check only.
        let y2 = if mo <= 2 { y - 1 } else { y };
        let era = y2 / 400;
        let yoe = y2 - era * 400;
        let mp = (mo + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000 + n(20..23)
    };
    let t = parse(&ts);
    assert!(ms(before) <= t && t <= ms(after), "{ts}");
}

#[test]
fn env_is_read_once_at_load() {
    let env = |name: &str| (name == "APP").then(|| "prod\"1".to_owned());
    let t = Template::parse_yaml("{app: '${env(APP)}', none: 'x${env(NOPE)}y'}", &env).unwrap();
    // Read at load: the payload is static JSON, escaped.
    assert_eq!(
        t.as_static(),
        Some(br#"{"app":"prod\"1","none":"xy"}"#.as_slice())
    );
}

#[test]
fn or_returns_the_first_non_empty_argument() {
    let req = Req::new().header("x-b", b"B");
    assert_eq!(one("${or(header(x-a), header(x-b), 'c')}", &req), "B");
    assert_eq!(one("${or(header(x-a), 'fallback')}", &req), "fallback");
    assert_eq!(one("<${or(header(x-a), header(x-z))}>", &req), "<>");
    assert_eq!(one("${or('', '', 'third')}", &req), "third");
}

#[test]
fn eq_and_neq_follow_upstream() {
    let req = Req::new().header("x-a", b"same").header("x-b", b"same");
    // eq(a, b): a when equal, else empty; eq(a, b, c): c when equal, else empty.
    assert_eq!(one("${eq(header(x-a), header(x-b))}", &req), "same");
    assert_eq!(one("${eq(header(x-a), header(x-b), 'yes')}", &req), "yes");
    assert_eq!(one("<${eq(header(x-a), 'other')}>", &req), "<>");
    assert_eq!(one("<${eq(header(x-a), 'other', 'yes')}>", &req), "<>");
    assert_eq!(
        one(
            "${request(client_ip)}-${eq(request(client_ip), '10.1.2.3', 'local')}",
            &req
        ),
        "10.1.2.3-local"
    );
    // Two empty values are equal.
    assert_eq!(
        one("${eq(header(x-none), '', 'both-empty')}", &req),
        "both-empty"
    );
    // neq mirrors it.
    assert_eq!(one("${neq(header(x-a), 'other')}", &req), "same");
    assert_eq!(
        one("${neq(header(x-a), 'other', 'differs')}", &req),
        "differs"
    );
    assert_eq!(
        one("<${neq(header(x-a), header(x-b), 'differs')}>", &req),
        "<>"
    );
}

#[test]
fn if_cond_concat_upper_lower_len() {
    let req = Req::new().header("x-a", "Mixed Straße".as_bytes());
    assert_eq!(one("${if_cond(header(x-a), 'then', 'else')}", &req), "then");
    assert_eq!(one("${if_cond(header(x-z), 'then', 'else')}", &req), "else");
    assert_eq!(
        one("${concat('a', header(x-z), '-', param(p), 'b')}", &req),
        "a-b"
    );
    assert_eq!(one("${upper(header(x-a))}", &req), "MIXED STRASSE");
    assert_eq!(one("${lower(header(x-a))}", &req), "mixed straße");
    assert_eq!(one("${len(header(x-a))}", &req), "13");
    assert_eq!(one("${len(header(x-z))}", &req), "0");
}

#[test]
fn expressions_nest() {
    let req = Req::new().param("id", "ab");
    assert_eq!(
        one("${or(header(x-id), concat('gen-', upper(param(id)), '-', len(concat(param(id), 'xyz'))))}", &req),
        "gen-AB-5"
    );
    let req = req.header("x-id", b"given");
    assert_eq!(
        one(
            "${or(header(x-id), concat('gen-', upper(param(id))))}",
            &req
        ),
        "given"
    );
    assert_eq!(
        one(
            "${eq(or(header(x-none), 'k'), lower('K'), concat(param(id), param(id)))}",
            &req
        ),
        "abab"
    );
}

#[test]
fn constant_expressions_fold_at_load() {
    let t = Template::parse_yaml(
        "'${concat(upper(\"a\"), or(\"\", \"b\"), len(\"xyz\"))}'",
        &no_env,
    )
    .unwrap();
    assert_eq!(t.as_static(), Some(br#""Ab3""#.as_slice()));
    let t = Template::parse_yaml("'${header(x)}'", &no_env).unwrap();
    assert_eq!(t.as_static(), None);
}

#[test]
fn request_values_are_json_escaped() {
    let req = Req::new()
        .header("x-evil", b"a\"b\\c\nd\re\tf\x01g\x7fh\x08\x0c")
        .header("x-bin", b"ok\xff\xfe!")
        .header("x-uni", "é😀\u{2028}".as_bytes());
    let json = render_yaml(
        "{v: '${header(x-evil)}', b: 'pre ${header(x-bin)}', u: '${header(x-uni)}'}",
        &req,
    );
    assert_eq!(
        json,
        "{\"v\":\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\x7fh\\b\\f\",\"b\":\"pre ok\u{FFFD}\u{FFFD}!\",\"u\":\"é😀\u{2028}\"}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["v"], "a\"b\\c\nd\re\tf\u{1}g\u{7f}h\u{8}\u{c}");
    assert_eq!(v["b"], "pre ok\u{FFFD}\u{FFFD}!");
    assert_eq!(v["u"], "é😀\u{2028}");
}

#[test]
fn literal_text_with_quotes_is_escaped_too() {
    let req = Req::new().header("x", b"v");
    let json = render_yaml(r#"'say "${header(x)}" \ done'"#, &req);
    assert_eq!(json, r#""say \"v\" \\ done""#);
}

#[test]
fn rendering_appends_to_the_buffer() {
    let t = Template::parse_yaml("{a: '${header(x)}'}", &no_env).unwrap();
    let mut out = b"prefix\"\\".to_vec();
    t.render(&Req::new().header("x", b"\""), &mut out);
    assert_eq!(out, b"prefix\"\\{\"a\":\"\\\"\"}");
}

#[test]
fn str_template_renders_raw_bytes() {
    let t = StrTemplate::parse("id=${or(header(x-id), 'none')} \"q\"", &no_env).unwrap();
    let mut out = Vec::new();
    t.render(&Req::new().header("x-id", b"a\"b"), &mut out);
    assert_eq!(out, b"id=a\"b \"q\"");
    assert_eq!(
        StrTemplate::parse("plain", &no_env).unwrap().as_static(),
        Some("plain")
    );
}

#[test]
fn template_mistakes_are_errors_with_the_offending_text() {
    let cases = [
        ("${nope(x)}", "unknown function `nope` (at byte 2 of `${nope(x)}`)"),
        ("a ${header(x)", "unterminated `${` at byte 2: no closing `}` (at byte 2 of `a ${header(x)`)"),
        ("${header(x) y}", "expected `}` to close the `${` at byte 0, found `y` (at byte 12 of `${header(x) y}`)"),
        ("${eq('a', 'b', 'c', 'd')}", "`eq` takes 2 to 3 argument(s), got 4 (at byte 2 of `${eq('a', 'b', 'c', 'd')}`)"),
        ("${uuid(v5)}", "`uuid` takes v4 or v7, not `v5` (at byte 2 of `${uuid(v5)}`)"),
        ("${request(port)}", "`request` takes client_ip, method, path, host or query, not `port` (at byte 2 of `${request(port)}`)"),
        ("${or(header(a), unknown)}", "unknown variable `unknown` (quote it for text: 'unknown') (at byte 16 of `${or(header(a), unknown)}`)"),
        ("${concat('a}", "unterminated string literal starting at byte 9 (at byte 9 of `${concat('a}`)"),
        ("${header(concat('a'))}", "`header` takes a name, not an expression (at byte 9 of `${header(concat('a'))}`)"),
        ("${}", "expected an expression, found `}` (at byte 2 of `${}`)"),
        ("${timestamp(x)}", "`timestamp` takes 0 argument(s), got 1 (at byte 2 of `${timestamp(x)}`)"),
        ("${or(a b)}", "expected `,` or `)` in the arguments of `or`, found `b` (at byte 7 of `${or(a b)}`)"),
    ];
    for (text, want) in cases {
        let yaml = format!("v: \"{text}\"");
        let err = Template::parse_yaml(&yaml, &no_env).expect_err(text);
        assert_eq!(
            err.to_string(),
            format!("<payload>:1:4: v: bad template: {want}"),
            "{text}"
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let nested = |depth: usize| format!("${{{}'x'{}}}", "upper(".repeat(depth), ")".repeat(depth));
    // 32 levels compile (and fold to a constant).
    let t = StrTemplate::parse(&nested(32), &no_env).unwrap();
    assert_eq!(t.as_static(), Some("X"));
    // 33 are refused at the call that goes too deep.
    let err = StrTemplate::parse(&nested(33), &no_env).unwrap_err();
    assert_eq!(
        (err.message.as_str(), err.offset),
        ("calls nest deeper than 32 levels", 2 + 32 * 6)
    );
}
