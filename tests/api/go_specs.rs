//! Requests shared by the Go SDK's tests on both ABIs (`go.rs`, `go_legacy.rs`):
//! the same example plugins answer the same scripts on every transport.

use nylon_transport::host::context::WsEffect::{self, *};
use nylon_transport::host::RequestSpec;

/// A request from its JSON form.
pub(crate) fn spec(json: &str) -> RequestSpec {
    serde_json::from_str(json).expect("valid request spec")
}

/// The WebSocket client script: `n` numbered text messages, a binary one,
/// then "bye" (the plugin leaves the room and closes) and one more that must
/// never arrive.
pub(crate) fn ws_spec(n: usize) -> (RequestSpec, Vec<WsEffect>) {
    let mut msgs: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({ "text": format!("m{i}") }))
        .collect();
    msgs.push(serde_json::json!({"binary": [1, 2]}));
    msgs.push(serde_json::json!({"text": "bye"}));
    msgs.push(serde_json::json!({"text": "never"}));
    let spec = serde_json::from_value(serde_json::json!({
        "headers": [["Sec-WebSocket-Key", "k"]],
        "websocket": msgs,
    }))
    .unwrap();
    let mut want = vec![Join("lobby".into()), Text("welcome".into())];
    for i in 0..n {
        want.push(Text(format!("echo {}: m{i}", i + 1)));
        want.push(BroadcastText {
            room: "lobby".into(),
            text: format!("m{i}"),
        });
    }
    want.push(Binary(vec![1, 2]));
    want.push(BroadcastBinary {
        room: "lobby".into(),
        data: vec![1, 2],
    });
    want.push(Leave("lobby".into()));
    want.push(Close);
    (spec, want)
}

/// The scenario request of the benchmark's `request` row.
pub(crate) fn scenario_spec() -> RequestSpec {
    spec(
        r#"{"path":"/api/items","headers":[["host","a"],["user-agent","t"],["accept","*/*"],
            ["a","1"],["b","2"],["c","3"],["d","4"],["e","5"]],"client_ip":"1.2.3.4"}"#,
    )
}
