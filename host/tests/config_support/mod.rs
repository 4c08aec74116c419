//! Shared by the config tests: a request a template can read.
#![allow(dead_code, unreachable_pub)]

use nylon_host::{Template, TemplateInput};

/// A request with fixed values.
#[derive(Clone, Debug, Default)]
pub struct Req {
    pub ip: &'static str,
    pub method: &'static str,
    pub path: &'static str,
    pub host: &'static str,
    pub query: &'static str,
    pub headers: Vec<(&'static str, &'static [u8])>,
    pub params: Vec<(&'static str, &'static str)>,
}

impl Req {
    pub fn new() -> Self {
        Self {
            ip: "10.1.2.3",
            method: "GET",
            path: "/users/42",
            host: "api.example",
            query: "",
            ..Self::default()
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static [u8]) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn param(mut self, name: &'static str, value: &'static str) -> Self {
        self.params.push((name, value));
        self
    }

    pub fn query(mut self, q: &'static str) -> Self {
        self.query = q;
        self
    }
}

impl TemplateInput for Req {
    fn write_client_ip(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.ip.as_bytes());
    }
    fn method(&self) -> &[u8] {
        self.method.as_bytes()
    }
    fn path(&self) -> &[u8] {
        self.path.as_bytes()
    }
    fn host(&self) -> &[u8] {
        self.host.as_bytes()
    }
    fn query_string(&self) -> &[u8] {
        self.query.as_bytes()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        // The trait passes names in lowercase (a proxy's header map may rely on it).
        assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "header name `{name}` is not lowercase"
        );
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
    fn param(&self, name: &str) -> Option<&[u8]> {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
}

/// No environment variables.
pub fn no_env(_: &str) -> Option<String> {
    None
}

/// Renders `t` for `req` as a string.
pub fn render(t: &Template, req: &Req) -> String {
    let mut out = Vec::new();
    t.render(req, &mut out);
    String::from_utf8(out).expect("rendered JSON is UTF-8")
}

/// Compiles the YAML payload `yaml` (no environment) and renders it for `req`.
pub fn render_yaml(yaml: &str, req: &Req) -> String {
    let t = Template::parse_yaml(yaml, &no_env).unwrap_or_else(|e| panic!("{e}"));
    render(&t, req)
}
