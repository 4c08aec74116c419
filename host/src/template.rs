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
use std::time::{SystemTime, UNIX_EPOCH};

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

// ---------------------------------------------------------------------------------------------
// Parsing

/// Splits `text` into literal parts and `${...}` expressions, compiled.
fn parse_string(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Expr>, TemplateError> {
    let err = |message: String, offset: usize| TemplateError {
        message,
        text: text.to_owned(),
        offset,
    };
    let bytes = text.as_bytes();
    let mut parts: Vec<Expr> = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && bytes.get(i + 1) == Some(&b'{') {
            let open = i;
            let mut p = Parser { text, pos: i + 2 };
            let ast = p.expr().map_err(|(m, at)| err(m, at))?;
            p.skip_ws();
            match p.peek() {
                Some(b'}') => p.pos += 1,
                Some(c) => {
                    return Err(err(
                        format!(
                            "expected `}}` to close the `${{` at byte {open}, found `{}`",
                            c as char
                        ),
                        p.pos,
                    ))
                }
                None => {
                    return Err(err(
                        format!("unterminated `${{` at byte {open}: no closing `}}`"),
                        open,
                    ))
                }
            }
            let expr = compile(&ast, env).map_err(|(m, at)| err(m, at))?;
            match expr {
                Expr::Lit(s) => lit.push_str(&s),
                e => {
                    if !lit.is_empty() {
                        parts.push(Expr::Lit(std::mem::take(&mut lit).into()));
                    }
                    parts.push(e);
                }
            }
            i = p.pos;
        } else {
            let next = text[i + 1..].find('$').map_or(bytes.len(), |n| i + 1 + n);
            lit.push_str(&text[i..next]);
            i = next;
        }
    }
    if !lit.is_empty() {
        parts.push(Expr::Lit(lit.into()));
    }
    Ok(parts)
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

type ParseResult<T> = Result<T, (String, usize)>;

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn expr(&mut self) -> ParseResult<Ast<'a>> {
        self.skip_ws();
        let at = self.pos;
        match self.peek() {
            Some(q @ (b'\'' | b'"')) => {
                let body = self.pos + 1;
                match self.text[body..].find(q as char) {
                    Some(n) => {
                        self.pos = body + n + 1;
                        Ok(Ast::Lit(&self.text[body..body + n]))
                    }
                    None => Err((
                        format!("unterminated string literal starting at byte {at}"),
                        at,
                    )),
                }
            }
            Some(c) if is_ident(c) => {
                while self.peek().is_some_and(is_ident) {
                    self.pos += 1;
                }
                let name = &self.text[at..self.pos];
                self.skip_ws();
                if self.peek() != Some(b'(') {
                    return Ok(Ast::Ident(name, at));
                }
                self.pos += 1;
                let mut args = Vec::new();
                self.skip_ws();
                if self.peek() == Some(b')') {
                    self.pos += 1;
                    return Ok(Ast::Call { name, args, at });
                }
                loop {
                    args.push(self.expr()?);
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b')') => {
                            self.pos += 1;
                            return Ok(Ast::Call { name, args, at });
                        }
                        Some(c) => {
                            return Err((
                                format!(
                                    "expected `,` or `)` in the arguments of `{name}`, found `{}`",
                                    c as char
                                ),
                                self.pos,
                            ))
                        }
                        None => {
                            return Err((
                                format!("unterminated argument list of `{name}`"),
                                self.pos,
                            ))
                        }
                    }
                }
            }
            Some(c) => Err((format!("expected an expression, found `{}`", c as char), at)),
            None => Err(("expected an expression, found the end".to_owned(), at)),
        }
    }
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.'
}

/// Validates an expression and compiles it; constant subexpressions are folded.
fn compile(ast: &Ast<'_>, env: &dyn Fn(&str) -> Option<String>) -> ParseResult<Expr> {
    let (name, args, at) = match ast {
        Ast::Lit(s) => return Ok(Expr::Lit((*s).into())),
        Ast::Ident("client_ip", _) => return Ok(Expr::ClientIp),
        Ast::Ident(name, at) => {
            return Err((
                format!("unknown variable `{name}` (quote it for text: '{name}')"),
                *at,
            ))
        }
        Ast::Call { name, args, at } => (*name, args, *at),
    };
    let arity = |min: usize, max: usize| -> ParseResult<()> {
        if args.len() < min || args.len() > max {
            let want = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, usize::MAX) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            Err((
                format!("`{name}` takes {want} argument(s), got {}", args.len()),
                at,
            ))
        } else {
            Ok(())
        }
    };
    // A name argument: bare (`header(x-id)`) or quoted.
    let word = |i: usize| -> ParseResult<&str> {
        match &args[i] {
            Ast::Lit(s) | Ast::Ident(s, _) => Ok(s),
            Ast::Call { at, .. } => Err((format!("`{name}` takes a name, not an expression"), *at)),
        }
    };
    let all = |from: &[Ast<'_>]| -> ParseResult<Box<[Expr]>> {
        from.iter().map(|a| compile(a, env)).collect()
    };
    let expr = match name {
        "uuid" => {
            arity(1, 1)?;
            match word(0)? {
                "v4" => Expr::Uuid4,
                "v7" => Expr::Uuid7,
                v => return Err((format!("`uuid` takes v4 or v7, not `{v}`"), at)),
            }
        }
        "request" => {
            arity(1, 1)?;
            match word(0)? {
                "client_ip" => Expr::ClientIp,
                "method" => Expr::Method,
                "path" => Expr::Path,
                "host" => Expr::Host,
                "query" => Expr::QueryString,
                v => {
                    return Err((
                        format!(
                            "`request` takes client_ip, method, path, host or query, not `{v}`"
                        ),
                        at,
                    ))
                }
            }
        }
        "var" => {
            arity(1, 1)?;
            match word(0)? {
                "client_ip" => Expr::ClientIp,
                v => return Err((format!("`var` takes client_ip, not `{v}`"), at)),
            }
        }
        "header" => {
            arity(1, 1)?;
            Expr::Header(word(0)?.to_ascii_lowercase().into())
        }
        "query" => {
            arity(1, 1)?;
            Expr::Query(word(0)?.into())
        }
        "param" => {
            arity(1, 1)?;
            Expr::Param(word(0)?.into())
        }
        "env" => {
            arity(1, 1)?;
            Expr::Lit(env(word(0)?).unwrap_or_default().into())
        }
        "timestamp" => {
            arity(0, 0)?;
            Expr::Timestamp
        }
        "or" => {
            arity(1, usize::MAX)?;
            Expr::Or(all(args)?)
        }
        "eq" => {
            arity(2, 3)?;
            Expr::Eq(all(args)?)
        }
        "neq" => {
            arity(2, 3)?;
            Expr::Neq(all(args)?)
        }
        "if_cond" => {
            arity(3, 3)?;
            Expr::IfCond(all(args)?)
        }
        "concat" => {
            arity(1, usize::MAX)?;
            Expr::Concat(all(args)?)
        }
        "upper" | "lower" | "len" => {
            arity(1, 1)?;
            let a = Box::new(compile(&args[0], env)?);
            match name {
                "upper" => Expr::Upper(a),
                "lower" => Expr::Lower(a),
                _ => Expr::Len(a),
            }
        }
        _ => return Err((format!("unknown function `{name}`"), at)),
    };
    Ok(fold(expr))
}

/// Replaces an expression that reads nothing from the request by its value.
fn fold(expr: Expr) -> Expr {
    if is_const(&expr) && !matches!(expr, Expr::Lit(_)) {
        let mut out = Vec::new();
        eval(&expr, &NoRequest, &mut out);
        // Constants are made of config text, which is UTF-8; case mapping keeps it so.
        if let Ok(s) = String::from_utf8(out) {
            return Expr::Lit(s.into());
        }
    }
    expr
}

fn is_const(expr: &Expr) -> bool {
    match expr {
        Expr::Lit(_) => true,
        Expr::Or(a) | Expr::Eq(a) | Expr::Neq(a) | Expr::IfCond(a) | Expr::Concat(a) => {
            a.iter().all(is_const)
        }
        Expr::Upper(a) | Expr::Lower(a) | Expr::Len(a) => is_const(a),
        _ => false,
    }
}

/// The input of constant folding: folding only runs on expressions that read no input.
struct NoRequest;

impl TemplateInput for NoRequest {
    fn write_client_ip(&self, _: &mut Vec<u8>) {}
    fn method(&self) -> &[u8] {
        b""
    }
    fn path(&self) -> &[u8] {
        b""
    }
    fn host(&self) -> &[u8] {
        b""
    }
    fn query_string(&self) -> &[u8] {
        b""
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn param(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// Appends the raw value of `expr` to `out`.
fn eval<I: TemplateInput + ?Sized>(expr: &Expr, input: &I, out: &mut Vec<u8>) {
    match expr {
        Expr::Lit(s) => out.extend_from_slice(s.as_bytes()),
        Expr::ClientIp => input.write_client_ip(out),
        Expr::Method => out.extend_from_slice(input.method()),
        Expr::Path => out.extend_from_slice(input.path()),
        Expr::Host => out.extend_from_slice(input.host()),
        Expr::QueryString => out.extend_from_slice(input.query_string()),
        Expr::Header(name) => {
            if let Some(v) = input.header(name) {
                out.extend_from_slice(v);
            }
        }
        Expr::Query(key) => query_value(input.query_string(), key.as_bytes(), out),
        Expr::Param(name) => {
            if let Some(v) = input.param(name) {
                out.extend_from_slice(v);
            }
        }
        Expr::Uuid4 => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            out.extend_from_slice(
                uuid::Uuid::new_v4()
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .as_bytes(),
            );
        }
        Expr::Uuid7 => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            out.extend_from_slice(
                uuid::Uuid::now_v7()
                    .hyphenated()
                    .encode_lower(&mut buf)
                    .as_bytes(),
            );
        }
        Expr::Timestamp => {
            let mut buf = [0u8; 24];
            out.extend_from_slice(format_timestamp(SystemTime::now(), &mut buf));
        }
        Expr::Or(args) => {
            for a in args.iter() {
                let mark = out.len();
                eval(a, input, out);
                if out.len() > mark {
                    return;
                }
            }
        }
        Expr::Eq(args) | Expr::Neq(args) => {
            let want_equal = matches!(expr, Expr::Eq(_));
            let start = out.len();
            eval(&args[0], input, out);
            let mid = out.len();
            eval(&args[1], input, out);
            let equal = out[start..mid] == out[mid..];
            out.truncate(mid);
            if equal == want_equal {
                if let Some(then) = args.get(2) {
                    out.truncate(start);
                    eval(then, input, out);
                }
            } else {
                out.truncate(start);
            }
        }
        Expr::IfCond(args) => {
            let start = out.len();
            eval(&args[0], input, out);
            let truthy = out.len() > start;
            out.truncate(start);
            eval(&args[if truthy { 1 } else { 2 }], input, out);
        }
        Expr::Concat(args) => {
            for a in args.iter() {
                eval(a, input, out);
            }
        }
        Expr::Upper(a) | Expr::Lower(a) => {
            let start = out.len();
            eval(a, input, out);
            map_case_tail(out, start, matches!(expr, Expr::Upper(_)));
        }
        Expr::Len(a) => {
            let start = out.len();
            eval(a, input, out);
            let n = out.len() - start;
            out.truncate(start);
            write_decimal(out, n as u64);
        }
    }
}

/// Appends the percent-decoded value of the first `key=` in `query` (`+` decodes to a space).
fn query_value(query: &[u8], key: &[u8], out: &mut Vec<u8>) {
    for pair in query.split(|&b| b == b'&') {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        if decoded_eq(k, key) {
            percent_decode_into(v, out);
            return;
        }
    }
}

/// Decodes one byte of form-urlencoded text at `s[i..]`: the byte and how many input bytes it took.
fn decode_at(s: &[u8], i: usize) -> (u8, usize) {
    match s[i] {
        b'+' => (b' ', 1),
        b'%' => match (s.get(i + 1).and_then(hex), s.get(i + 2).and_then(hex)) {
            (Some(h), Some(l)) => (h << 4 | l, 3),
            _ => (b'%', 1),
        },
        b => (b, 1),
    }
}

fn hex(c: &u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < raw.len() {
        let (b, n) = decode_at(raw, i);
        if want.get(j) != Some(&b) {
            return false;
        }
        i += n;
        j += 1;
    }
    j == want.len()
}

fn percent_decode_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < raw.len() {
        let (b, n) = decode_at(raw, i);
        out.push(b);
        i += n;
    }
}

fn write_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Upper- or lowercases `out[start..]` in place (Unicode case mapping; bytes that are not
/// UTF-8 are kept).
fn map_case_tail(out: &mut Vec<u8>, start: usize, upper: bool) {
    if out[start..].is_ascii() {
        if upper {
            out[start..].make_ascii_uppercase();
        } else {
            out[start..].make_ascii_lowercase();
        }
        return;
    }
    let mapped_len = |c: char| -> usize {
        if upper {
            c.to_uppercase().map(char::len_utf8).sum()
        } else {
            c.to_lowercase().map(char::len_utf8).sum()
        }
    };
    let mut len = 0;
    for chunk in out[start..].utf8_chunks() {
        len += chunk.valid().chars().map(mapped_len).sum::<usize>() + chunk.invalid().len();
    }
    // Map into the space after the value, then move it down.
    let end = out.len();
    out.resize(end + len, 0);
    let (src, dst) = out[start..].split_at_mut(end - start);
    let mut w = 0;
    for chunk in src.utf8_chunks() {
        for c in chunk.valid().chars() {
            let mut put = |m: char| {
                w += m.encode_utf8(&mut dst[w..]).len();
            };
            if upper {
                c.to_uppercase().for_each(&mut put);
            } else {
                c.to_lowercase().for_each(&mut put);
            }
        }
        let bad = chunk.invalid();
        dst[w..w + bad.len()].copy_from_slice(bad);
        w += bad.len();
    }
    out.copy_within(end.., start);
    out.truncate(start + len);
}

/// The JSON-escaped length of one byte of valid UTF-8 text.
fn escaped_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// JSON-escapes `out[start..]` in place: quotes, backslashes and control characters are escaped,
/// bytes that are not UTF-8 become U+FFFD.
fn escape_tail(out: &mut Vec<u8>, start: usize) {
    let mut len = 0;
    let mut changed = false;
    for chunk in out[start..].utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            let n = escaped_len(b);
            changed |= n != 1;
            len += n;
        }
        if !chunk.invalid().is_empty() {
            changed = true;
            len += 3;
        }
    }
    if !changed {
        return;
    }
    let end = out.len();
    out.resize(end + len, 0);
    let (src, dst) = out[start..].split_at_mut(end - start);
    let mut w = 0;
    for chunk in src.utf8_chunks() {
        for &b in chunk.valid().as_bytes() {
            w += escape_byte(b, &mut dst[w..]);
        }
        if !chunk.invalid().is_empty() {
            dst[w..w + 3].copy_from_slice("\u{FFFD}".as_bytes());
            w += 3;
        }
    }
    out.copy_within(end.., start);
    out.truncate(start + len);
}

/// Writes the JSON escape of `b` (a byte of valid UTF-8) at the start of `dst`; returns its length.
fn escape_byte(b: u8, dst: &mut [u8]) -> usize {
    let two = |c: u8, dst: &mut [u8]| {
        dst[0] = b'\\';
        dst[1] = c;
        2
    };
    match b {
        b'"' => two(b'"', dst),
        b'\\' => two(b'\\', dst),
        b'\n' => two(b'n', dst),
        b'\r' => two(b'r', dst),
        b'\t' => two(b't', dst),
        0x08 => two(b'b', dst),
        0x0c => two(b'f', dst),
        0..=0x1f => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            dst[..4].copy_from_slice(b"\\u00");
            dst[4] = HEX[usize::from(b >> 4)];
            dst[5] = HEX[usize::from(b & 0xf)];
            6
        }
        _ => {
            dst[0] = b;
            1
        }
    }
}

/// Appends `s` as a JSON string (quoted, escaped) to `out`.
pub(crate) fn write_json_str(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.extend_from_slice(s);
    escape_tail(out, start);
    out.push(b'"');
}

/// Formats `t` as RFC 3339 UTC with milliseconds (`2025-06-01T12:00:00.123Z`) into `buf`.
fn format_timestamp(t: SystemTime, buf: &mut [u8; 24]) -> &[u8] {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let millis = since.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let put = |buf: &mut [u8; 24], at: usize, v: u64, width: usize| {
        let mut v = v;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(buf, 0, y as u64, 4);
    buf[4] = b'-';
    put(buf, 5, u64::from(m), 2);
    buf[7] = b'-';
    put(buf, 8, u64::from(d), 2);
    buf[10] = b'T';
    put(buf, 11, rem / 3600, 2);
    buf[13] = b':';
    put(buf, 14, rem % 3600 / 60, 2);
    buf[16] = b':';
    put(buf, 17, rem % 60, 2);
    buf[19] = b'.';
    put(buf, 20, u64::from(millis), 3);
    buf[23] = b'Z';
    &buf[..]
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in `{}`", self.message, self.text)
    }
}

impl std::error::Error for TemplateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_formats_known_instants() {
        let mut buf = [0u8; 24];
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_748_779_200_123);
        assert_eq!(format_timestamp(t, &mut buf), b"2025-06-01T12:00:00.123Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_007);
        assert_eq!(format_timestamp(t, &mut buf), b"2000-02-29T00:00:00.007Z");
        assert_eq!(
            format_timestamp(UNIX_EPOCH, &mut buf),
            b"1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn escape_tail_escapes_only_the_tail() {
        let mut out = b"keep\"".to_vec();
        out.extend_from_slice(b"a\"b\\c\n\x01\xffz");
        escape_tail(&mut out, 5);
        assert_eq!(out, b"keep\"a\\\"b\\\\c\\n\\u0001\xef\xbf\xbdz");
    }

    #[test]
    fn case_mapping_handles_non_ascii_and_bad_bytes() {
        let mut out = b"x:".to_vec();
        out.extend_from_slice("straße\u{ff}".as_bytes());
        out.push(0xfe);
        map_case_tail(&mut out, 2, true);
        let mut want = b"x:".to_vec();
        want.extend_from_slice("STRASSE\u{178}".as_bytes());
        want.push(0xfe);
        assert_eq!(out, want);
    }
}
