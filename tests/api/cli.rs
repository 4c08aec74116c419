//! The command line, as a user runs it.

use std::process::{Command, Output};

use super::common::{c_library, rust_plugin_path};

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nylon-transport"))
        .args(args)
        .output()
        .expect("run the CLI")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn run_prints_phases_and_response_as_json() {
    let dir = tempdir();
    let req = dir.join("req.json");
    std::fs::write(
        &req,
        r#"{"method":"GET","path":"/p","query":"","host":"h","client_ip":"1.2.3.4",
            "headers":[["x-user","u"]],"body":"","params":{"a":"b"},
            "upstream":{"status":404,"headers":[["x-up","1"]],"body_chunks":["x","y"]}}"#,
    )
    .unwrap();
    let plugin = rust_plugin_path();
    let out = cli(&[
        "run",
        "--plugin",
        plugin.to_str().unwrap(),
        "--entry",
        "all_methods",
        "--request",
        req.to_str().unwrap(),
        "--payload",
        r#"{"key":"k"}"#,
        "--config",
        "{}",
        "--timeout-ms",
        "10000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    let outcomes: Vec<_> = v["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["next", "next", "next", "next", "next"]);
    assert_eq!(v["response"]["status"], 201);
    assert_eq!(v["response"]["body"], "xy");
    let headers = v["response"]["headers"].as_array().unwrap();
    assert_eq!(headers[0], serde_json::json!(["x-up", "1"]));
    assert!(headers.contains(&serde_json::json!(["x-params", "a=b"])));
    assert!(headers.contains(&serde_json::json!(["x-payload-key", "k"])));
}

#[test]
fn run_reports_a_timeout_and_a_streamed_response() {
    let plugin = rust_plugin_path();
    let p = plugin.to_str().unwrap();
    let v = json(&cli(&[
        "run",
        "--plugin",
        p,
        "--entry",
        "silent",
        "--timeout-ms",
        "50",
    ]));
    assert_eq!(v["phases"][0]["outcome"], "timeout");
    assert_eq!(v["response"]["status"], 504);
    let v = json(&cli(&["run", "--plugin", p, "--entry", "stream"]));
    assert_eq!(
        v["response"]["streamed_chunks"],
        serde_json::json!(["one", "two"])
    );
    let v = json(&cli(&["run", "--plugin", p, "--entry", "panic"]));
    assert_eq!(v["phases"][0]["outcome"], "error");
    assert_eq!(
        v["phases"][0]["message"],
        "plugin error: handler panicked: boom"
    );
}

#[test]
fn inspect_reports_the_abi_and_problems() {
    let out = cli(&["inspect", rust_plugin_path().to_str().unwrap()]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(v["abi"], "legacy");
    assert_eq!(v["symbols"].as_array().unwrap().len(), 6);
    assert_eq!(v["problems"], serde_json::json!([]));

    let out = cli(&["inspect", c_library("missing_shutdown").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(json(&out)["problems"][0]
        .as_str()
        .unwrap()
        .contains("shutdown"));
}

#[test]
fn errors_are_one_clear_line_never_a_panic() {
    let lib = c_library("missing_symbol");
    let cases: [&[&str]; 6] = [
        &[
            "run",
            "--plugin",
            "/no/such.so",
            "--entry",
            "x",
            "--transport",
            "slow",
        ],
        &["run", "--plugin", "/no/such.so", "--entry", "x"],
        &["run", "--plugin", lib.to_str().unwrap(), "--entry", "x"],
        &[
            "run",
            "--plugin",
            "/no/such.so",
            "--entry",
            "x",
            "--payload",
            "{not json",
        ],
        &["inspect", "/no/such.so"],
        &[
            "run",
            "--plugin",
            "/no/such.so",
            "--entry",
            "x",
            "--transport",
            "fast",
        ],
    ];
    for args in cases {
        let out = cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let out = cli(&[
        "run",
        "--plugin",
        rust_plugin_path().to_str().unwrap(),
        "--entry",
        "nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused to open a session for entry `nope`")
    );
}

fn tempdir() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn run_drives_a_v2_plugin_on_the_fast_transport() {
    let plugin = super::common::example_path("v2_plugin");
    let p = plugin.to_str().unwrap();
    let v = json(&cli(&[
        "run",
        "--plugin",
        p,
        "--entry",
        "end",
        "--transport",
        "fast",
    ]));
    assert_eq!(v["transport"], "fast-v2");
    assert_eq!(v["response"]["status"], 403);
    let out = cli(&["run", "--plugin", p, "--entry", "end"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("is a v2 plugin: it runs on --transport fast"));
    let out = cli(&["inspect", p]);
    assert!(out.status.success());
    assert_eq!(json(&out)["abi"], "v2");
}

#[test]
fn the_callgrind_child_runs_the_regions_of_one_row() {
    use super::common::example_path;
    let (legacy, v2, anchor) = (
        rust_plugin_path(),
        example_path("v2_plugin"),
        example_path("ring_anchor_plugin"),
    );
    let run = |row: &str, variant: &str| {
        cli(&[
            nylon_transport::bench::instructions::SUBCOMMAND,
            row,
            "--variant",
            variant,
            "--legacy",
            legacy.to_str().unwrap(),
            "--v2",
            v2.to_str().unwrap(),
            "--anchor",
            anchor.to_str().unwrap(),
        ])
    };
    // Natively (no valgrind here): the regions run, and the plan is printed.
    let out = run("ffi_call", "fast");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let plan = stdout
        .lines()
        .find_map(|l| l.strip_prefix("callgrind-plan: "))
        .unwrap_or_else(|| panic!("no plan in {stdout}"));
    let plan: nylon_transport::bench::instructions::Plan = serde_json::from_str(plan).unwrap();
    assert_eq!(plan.row, "ffi_call");
    assert_eq!(plan.n, 4, "1000 reads per iteration");
    assert_eq!(
        plan.ops.into_iter().collect::<Vec<_>>(),
        [("fast".into(), 1000)]
    );
    for (row, variant, message) in [
        (
            "no_such_row",
            "fast",
            "error: no benchmark row named no_such_row",
        ),
        ("lock", "anchor", "error: row lock has no variant anchor"),
    ] {
        let out = run(row, variant);
        assert_eq!(out.status.code(), Some(2));
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), message);
    }
}
