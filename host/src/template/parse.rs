//! Template parsing: `${...}` expressions split out of a string, validated and compiled into
//! [`Expr`]s, constant parts folded.

use super::{eval::eval, Ast, Expr, TemplateError, TemplateInput};

/// Splits `text` into literal parts and `${...}` expressions, compiled.
pub(super) fn parse_string(
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
            let mut p = Parser {
                text,
                pos: i + 2,
                depth: 0,
            };
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

/// The deepest nesting of calls an expression may have (parsing and evaluation recurse).
const MAX_DEPTH: usize = 32;

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    /// Calls open around the current position.
    depth: usize,
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
                if self.depth == MAX_DEPTH {
                    return Err((format!("calls nest deeper than {MAX_DEPTH} levels"), at));
                }
                self.depth += 1;
                let args = self.args(name, at);
                self.depth -= 1;
                args
            }
            Some(c) => Err((format!("expected an expression, found `{}`", c as char), at)),
            None => Err(("expected an expression, found the end".to_owned(), at)),
        }
    }

    /// The arguments of the call `name` (at byte `at`), after its `(`.
    fn args(&mut self, name: &'a str, at: usize) -> ParseResult<Ast<'a>> {
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
                None => return Err((format!("unterminated argument list of `{name}`"), self.pos)),
            }
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
