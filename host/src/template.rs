//! Payload templates: `${...}` expressions in config strings, compiled once at load and rendered
//! per request into a caller's reused buffer.
//!
//! A payload is a YAML value (map, list, scalar) rendered to JSON. A string holding `${...}`
//! renders as a JSON string whose expressions are replaced by their values, JSON-escaped (a
//! string that is exactly one expression too). Everything static (keys, numbers, constant
//! strings, `${env(X)}`, which is read at load) is JSON text prepared at load and copied as is.
//!
//! # Expressions
//!
//! Upstream Nylon's functions, with its semantics (the empty string is "false"):
//!
//! | expression | value |
//! |---|---|
//! | `'text'`, `"text"` | the text (no escapes inside) |
//! | `uuid(v4)`, `uuid(v7)` | a new UUID, lowercase, hyphenated |
//! | `request(client_ip \| method \| path \| host \| query)` | the request's client IP, method, path, host, raw query string |
//! | `header(name)` | the request header (case-insensitive), empty if absent |
//! | `query(key)` | the first `key=` of the query string, percent-decoded, `+` as space |
//! | `param(name)` | the route's `{name}` path parameter |
//! | `timestamp()` | now, RFC 3339 UTC with milliseconds (`2025-06-01T12:00:00.123Z`) |
//! | `env(NAME)` | the environment variable, read once at load; empty if unset |
//! | `or(a, b, ...)` | the first non-empty argument |
//! | `eq(a, b)` / `eq(a, b, c)` | if `a == b`: `a` / `c`; otherwise empty |
//! | `neq(a, b)` / `neq(a, b, c)` | if `a != b`: `a` / `c`; otherwise empty |
//! | `if_cond(c, t, e)` | `t` if `c` is non-empty, else `e` |
//! | `concat(a, b, ...)` | the arguments joined |
//! | `upper(a)`, `lower(a)`, `len(a)` | case mapping; byte length in decimal |
//! | `client_ip`, `var(client_ip)` | upstream's older spelling of `request(client_ip)` |
//!
//! Arguments nest (`${or(header(x-id), concat('gen-', uuid(v7)))}`). A name argument
//! (`header(x-id)`) may be bare or quoted. Unlike upstream, which renders an unknown function or
//! a malformed expression as nothing, every such mistake is an error at load.
//!
//! # Allocation
//!
//! [`Template::render`] and [`StrTemplate::render`] append to `out` and allocate nothing else:
//! intermediate values (`or`, `eq`, `upper`, JSON escaping) are built in `out`'s own tail and
//! moved into place.

use std::fmt;
use std::ops::Range;

use eval::{escape_tail, eval, write_json_str};
use parse::parse_string;

mod eval;
mod parse;

/// What a template reads from the request being served. The proxy implements it over its
/// request; tests implement it over fixed values.
pub trait TemplateInput {
    /// Appends the client's IP address, without port, to `out`.
    fn write_client_ip(&self, out: &mut Vec<u8>);
    /// The request method (`GET`).
    fn method(&self) -> &[u8];
    /// The request path, without the query string.
    fn path(&self) -> &[u8];
    /// The request host, as the client sent it.
    fn host(&self) -> &[u8];
    /// The raw query string, without `?`; empty when there is none.
    fn query_string(&self) -> &[u8];
    /// The first value of the request header `name` (given in lowercase; matching is
    /// case-insensitive).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The value of the route's path parameter `name`.
    fn param(&self, name: &str) -> Option<&[u8]>;
}

/// A compiled payload: a YAML value rendered to JSON per request.
#[derive(Clone, Debug)]
pub struct Template {
    ops: Box<[Op]>,
    statics: Box<[u8]>,
}

/// A compiled template string rendered as raw bytes (no JSON quoting or escaping), as a header
/// value of a header modifier.
#[derive(Clone, Debug)]
pub struct StrTemplate {
    parts: Box<[Expr]>,
}

/// A template that does not parse: what is wrong and the offending text.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct TemplateError {
    /// What is wrong.
    pub message: String,
    /// The whole string the template came from.
    pub text: String,
    /// The byte offset in `text` where the problem is.
    pub offset: usize,
}

#[derive(Clone, Debug)]
enum Op {
    /// Static JSON text: a range of `statics`.
    Bytes(Range<usize>),
    /// A JSON string: quote, the parts' values escaped, quote.
    Str(Box<[Expr]>),
}

/// A compiled expression; evaluating it appends its raw (unescaped) value to the buffer.
#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Lit(Box<str>),
    ClientIp,
    Method,
    Path,
    Host,
    QueryString,
    Header(Box<str>),
    Query(Box<str>),
    Param(Box<str>),
    Uuid4,
    Uuid7,
    Timestamp,
    Or(Box<[Expr]>),
    Eq(Box<[Expr]>),
    Neq(Box<[Expr]>),
    IfCond(Box<[Expr]>),
    Concat(Box<[Expr]>),
    Upper(Box<Expr>),
    Lower(Box<Expr>),
    Len(Box<Expr>),
}

/// An expression as written, before validation.
#[derive(Debug)]
enum Ast<'a> {
    Lit(&'a str),
    Ident(&'a str, usize),
    Call {
        name: &'a str,
        args: Vec<Ast<'a>>,
        at: usize,
    },
}

impl Template {
    /// Compiles a payload written as YAML (`text` holds one value, as under `payload:`);
    /// `${env(NAME)}` reads `env` now. The proxy gets its payloads from [`crate::Config`]; this
    /// is for tools and tests.
    ///
    /// # Errors
    ///
    /// A [`crate::ConfigError`] at the offending value, named in `<payload>`.
    pub fn parse_yaml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, crate::ConfigError> {
        crate::config::decode::payload(
            text,
            std::sync::Arc::from(std::path::Path::new("<payload>")),
            env,
        )
    }

    /// Appends the payload, as JSON, to `out`, reading request values from `input`.
    ///
    /// Allocates nothing beyond growing `out`.
    pub fn render<I: TemplateInput + ?Sized>(&self, input: &I, out: &mut Vec<u8>) {
        for op in self.ops.iter() {
            match op {
                Op::Bytes(r) => out.extend_from_slice(&self.statics[r.clone()]),
                Op::Str(parts) => {
                    out.push(b'"');
                    let start = out.len();
                    for p in parts.iter() {
                        eval(p, input, out);
                    }
                    escape_tail(out, start);
                    out.push(b'"');
                }
            }
        }
    }

    /// The JSON text when the payload reads nothing from the request (render it once).
    pub fn as_static(&self) -> Option<&[u8]> {
        match &*self.ops {
            [] => Some(&[]),
            [Op::Bytes(r)] => Some(&self.statics[r.clone()]),
            _ => None,
        }
    }
}

impl StrTemplate {
    /// Compiles `text`; `${env(NAME)}` reads `env` now.
    ///
    /// # Errors
    ///
    /// A [`TemplateError`] for a malformed `${...}`, an unknown function or variable, or a bad
    /// argument.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, TemplateError> {
        Ok(Self {
            parts: parse_string(text, env)?.into_boxed_slice(),
        })
    }

    /// Appends the value, raw (not escaped), to `out`. Allocates nothing beyond growing `out`.
    ///
    /// The bytes come from the request and are not checked: a caller that makes a header of them
    /// must refuse control characters (a percent-decoded `query(...)` can hold CR LF), as
    /// `http::HeaderValue::from_bytes` does.
    pub fn render<I: TemplateInput + ?Sized>(&self, input: &I, out: &mut Vec<u8>) {
        for p in self.parts.iter() {
            eval(p, input, out);
        }
    }

    /// The value when the template reads nothing from the request.
    pub fn as_static(&self) -> Option<&str> {
        match &*self.parts {
            [] => Some(""),
            [Expr::Lit(s)] => Some(s),
            _ => None,
        }
    }
}

/// Builds a [`Template`] from a walk over a YAML value (the config decoder drives it).
#[derive(Debug, Default)]
pub(crate) struct Builder {
    ops: Vec<Op>,
    statics: Vec<u8>,
    /// Static bytes not yet closed into an `Op::Bytes`: `statics[pending..]`.
    pending: usize,
    /// Per open container: how many items so far.
    counts: Vec<usize>,
    /// A key was written; its value comes next.
    after_key: bool,
}

impl Builder {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Counts an item of the open container, writing the comma before all but the first.
    fn item(&mut self) {
        if let Some(n) = self.counts.last_mut() {
            if *n > 0 {
                self.statics.push(b',');
            }
            *n += 1;
        }
    }

    /// Starts a value: a map's value follows its key with no comma; anything else is an item.
    fn value_start(&mut self) {
        if self.after_key {
            self.after_key = false;
        } else {
            self.item();
        }
    }

    pub(crate) fn begin_map(&mut self) {
        self.value_start();
        self.statics.push(b'{');
        self.counts.push(0);
    }

    /// Writes `"key":`; the value follows with its own call.
    pub(crate) fn key(&mut self, key: &str) {
        self.item();
        write_json_str(&mut self.statics, key.as_bytes());
        self.statics.push(b':');
        self.after_key = true;
    }

    pub(crate) fn end_map(&mut self) {
        self.counts.pop();
        self.statics.push(b'}');
    }

    pub(crate) fn begin_seq(&mut self) {
        self.value_start();
        self.statics.push(b'[');
        self.counts.push(0);
    }

    pub(crate) fn end_seq(&mut self) {
        self.counts.pop();
        self.statics.push(b']');
    }

    pub(crate) fn null(&mut self) {
        self.value_start();
        self.statics.extend_from_slice(b"null");
    }

    pub(crate) fn bool(&mut self, b: bool) {
        self.value_start();
        self.statics
            .extend_from_slice(if b { b"true" } else { b"false" });
    }

    pub(crate) fn int(&mut self, i: i64) {
        self.value_start();
        self.statics.extend_from_slice(i.to_string().as_bytes());
    }

    /// Writes a finite float; `false` for NaN or an infinity (not JSON).
    pub(crate) fn float(&mut self, f: f64) -> bool {
        if !f.is_finite() {
            return false;
        }
        self.value_start();
        self.statics.extend_from_slice(format!("{f:?}").as_bytes());
        true
    }

    /// A string taken literally (a plugin's `config:`).
    pub(crate) fn raw_string(&mut self, s: &str) {
        self.value_start();
        write_json_str(&mut self.statics, s.as_bytes());
    }

    /// A string that may hold `${...}`.
    pub(crate) fn template_string(
        &mut self,
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), TemplateError> {
        let parts = parse_string(s, env)?;
        self.value_start();
        match &*parts {
            [] => self.statics.extend_from_slice(b"\"\""),
            [Expr::Lit(l)] => write_json_str(&mut self.statics, l.as_bytes()),
            _ => {
                self.flush();
                self.ops.push(Op::Str(parts.into_boxed_slice()));
            }
        }
        Ok(())
    }

    fn flush(&mut self) {
        if self.statics.len() > self.pending {
            self.ops.push(Op::Bytes(self.pending..self.statics.len()));
            self.pending = self.statics.len();
        }
    }

    pub(crate) fn finish(mut self) -> Template {
        self.flush();
        Template {
            ops: self.ops.into_boxed_slice(),
            statics: self.statics.into_boxed_slice(),
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in `{}`", self.message, self.text)
    }
}

impl std::error::Error for TemplateError {}
