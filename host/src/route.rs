//! The router: from (host or selector header, method, path) to a route, built once at load.
//!
//! Path patterns use upstream Nylon's syntax (that of the `matchit` crate it uses):
//!
//! - `/users` matches exactly that path;
//! - `/users/{id}` matches one non-empty segment and binds it to `id`;
//! - `/static/{*path}` matches the rest of the path (one or more characters) and binds it to
//!   `path`; a catch-all ends the pattern.
//!
//! At each segment a static segment is preferred over a parameter, and a parameter over a
//! catch-all; matching backtracks, so `/a/{x}/c` and `/a/b/{y}` both work. Two patterns that
//! match the same paths for the same method (`/a/{x}` and `/a/{y}`) are rejected at load.
//!
//! Matching allocates nothing: parameters are slices of the request path, stored in a fixed
//! array of [`MAX_PARAMS`].

use std::collections::HashMap;
use std::fmt;

/// The most parameters one pattern may bind.
pub const MAX_PARAMS: usize = 8;

/// A router from (host, method, path) to a `T`.
#[derive(Debug)]
pub struct Router<T> {
    hosts: HashMap<Box<str>, usize>,
    headers: HashMap<Box<[u8]>, usize>,
    tables: Vec<PathTable<T>>,
}

/// The result of a successful match.
#[derive(Debug)]
pub struct Match<'r, 'p, T> {
    /// The value registered for the pattern.
    pub value: &'r T,
    /// The bound parameters.
    pub params: Params<'r, 'p>,
}

/// The path parameters of a match: names borrowed from the router, values from the request path.
#[derive(Clone, Copy)]
pub struct Params<'r, 'p> {
    items: [(&'r str, &'p str); MAX_PARAMS],
    len: usize,
}

/// Why a request matched no route.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum RouteError {
    /// No route for this host or no path of it matches (404).
    NotFound,
    /// A path matches but not for this method (405).
    MethodNotAllowed,
}

/// Why a pattern cannot be added.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum PatternError {
    /// The pattern is malformed; the message says how.
    Syntax(String),
    /// The pattern matches the same paths, for a common method, as one added before.
    Conflict(String),
}

#[derive(Debug)]
struct PathTable<T> {
    root: Node,
    values: Vec<Leaf<T>>,
}

#[derive(Debug)]
struct Leaf<T> {
    /// Uppercased methods; `None` accepts all.
    methods: Option<Vec<Box<str>>>,
    pattern: Box<str>,
    value: T,
}

#[derive(Debug, Default)]
struct Node {
    /// Static children by segment text.
    statics: Vec<(Box<str>, Node)>,
    /// `{name}` child: the name and the subtree.
    param: Option<(Box<str>, Box<Node>)>,
    /// `{*name}`: the name and the leaves (indices into `values`) ending here.
    catch_all: Option<(Box<str>, Vec<usize>)>,
    /// Leaves (indices into `values`) for a path ending at this node.
    ends: Vec<usize>,
}

enum Segment<'a> {
    Static(&'a str),
    Param(&'a str),
    CatchAll(&'a str),
}

impl<T> Router<T> {
    /// Creates an empty router.
    pub fn new() -> Self {
        Self {
            hosts: HashMap::new(),
            headers: HashMap::new(),
            tables: Vec::new(),
        }
    }

    /// Adds `pattern` for requests whose host is `host` (lowercase, no port) and whose method is
    /// one of `methods` (uppercase; `None`: any).
    ///
    /// # Errors
    ///
    /// A malformed pattern, or one that conflicts with a pattern added before for this host.
    pub fn insert_host(
        &mut self,
        host: &str,
        pattern: &str,
        methods: Option<&[String]>,
        value: T,
    ) -> Result<(), PatternError> {
        let table = match self.hosts.get(host) {
            Some(&t) => t,
            None => {
                self.tables.push(PathTable::new());
                self.hosts
                    .insert(host.to_ascii_lowercase().into(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        self.tables[table].insert(pattern, methods, value)
    }

    /// Adds `pattern` for requests whose selector header has the value `header_value`.
    ///
    /// # Errors
    ///
    /// As [`Router::insert_host`].
    pub fn insert_header(
        &mut self,
        header_value: &str,
        pattern: &str,
        methods: Option<&[String]>,
        value: T,
    ) -> Result<(), PatternError> {
        let table = match self.headers.get(header_value.as_bytes()) {
            Some(&t) => t,
            None => {
                self.tables.push(PathTable::new());
                self.headers
                    .insert(header_value.as_bytes().into(), self.tables.len() - 1);
                self.tables.len() - 1
            }
        };
        self.tables[table].insert(pattern, methods, value)
    }

    /// Matches a request: the selector header's value first (when given and registered), else
    /// the host (a `:port` suffix is ignored, ASCII case is not significant).
    ///
    /// # Errors
    ///
    /// [`RouteError::NotFound`] or [`RouteError::MethodNotAllowed`].
    pub fn at<'r, 'p>(
        &'r self,
        host: &[u8],
        selector: Option<&[u8]>,
        method: &str,
        path: &'p str,
    ) -> Result<Match<'r, 'p, T>, RouteError> {
        if let Some(t) = selector.and_then(|s| self.headers.get(s)) {
            return self.tables[*t].at(method, path);
        }
        match self.host_table(host) {
            Some(t) => self.tables[t].at(method, path),
            None => Err(RouteError::NotFound),
        }
    }

    fn host_table(&self, host: &[u8]) -> Option<usize> {
        let host = strip_port(host);
        let mut lower = [0u8; 256];
        if host.len() > lower.len() {
            return None;
        }
        let lower = &mut lower[..host.len()];
        lower.copy_from_slice(host);
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        self.hosts.get(lower).copied()
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// `host` without a `:port` suffix (an IPv6 literal keeps its brackets).
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) if host[colon + 1..].iter().all(u8::is_ascii_digit) => &host[..colon],
        _ => host,
    }
}

impl<T> PathTable<T> {
    fn new() -> Self {
        Self {
            root: Node::default(),
            values: Vec::new(),
        }
    }

    /// Adds a pattern; on error the table is unchanged.
    fn insert(
        &mut self,
        pattern: &str,
        methods: Option<&[String]>,
        value: T,
    ) -> Result<(), PatternError> {
        let segments = parse_pattern(pattern)?;
        let methods: Option<Vec<Box<str>>> =
            methods.map(|m| m.iter().map(|m| m.to_ascii_uppercase().into()).collect());
        self.check(pattern, &segments, methods.as_deref())?;
        let leaf = self.values.len();
        let mut node = &mut self.root;
        for seg in &segments {
            match *seg {
                Segment::Static(s) => {
                    let i = match node.statics.iter().position(|(k, _)| &**k == s) {
                        Some(i) => i,
                        None => {
                            node.statics.push((s.into(), Node::default()));
                            node.statics.len() - 1
                        }
                    };
                    node = &mut node.statics[i].1;
                }
                Segment::Param(name) => {
                    node = &mut node
                        .param
                        .get_or_insert_with(|| (name.into(), Box::default()))
                        .1;
                }
                Segment::CatchAll(name) => {
                    node.catch_all
                        .get_or_insert_with(|| (name.into(), Vec::new()))
                        .1
                        .push(leaf);
                    break;
                }
            }
        }
        if !matches!(segments.last(), Some(Segment::CatchAll(_))) {
            node.ends.push(leaf);
        }
        self.values.push(Leaf {
            methods,
            pattern: pattern.into(),
            value,
        });
        Ok(())
    }

    /// Checks, without changing anything, that `pattern` can be added.
    fn check(
        &self,
        pattern: &str,
        segments: &[Segment<'_>],
        methods: Option<&[Box<str>]>,
    ) -> Result<(), PatternError> {
        let mut names: Vec<&str> = Vec::new();
        for seg in segments {
            if let Segment::Param(name) | Segment::CatchAll(name) = *seg {
                if names.contains(&name) {
                    return Err(PatternError::Syntax(format!(
                        "parameter `{name}` appears twice in `{pattern}`"
                    )));
                }
                names.push(name);
            }
        }
        if names.len() > MAX_PARAMS {
            return Err(PatternError::Syntax(format!(
                "`{pattern}` has {} parameters; at most {MAX_PARAMS} are supported",
                names.len()
            )));
        }
        let renamed = |kind: &str, name: &str, existing: &str| {
            PatternError::Conflict(format!(
                "`{pattern}` names the {kind} `{name}` where another pattern of this host names it `{existing}`"
            ))
        };
        // Follow the existing tree as far as the pattern goes; the leaves where it would end
        // must not accept a common method.
        let mut node = &self.root;
        let mut leaves: &[usize] = &[];
        for (i, seg) in segments.iter().enumerate() {
            let next = match *seg {
                Segment::Static(s) => node.statics.iter().find(|(k, _)| **k == *s).map(|(_, n)| n),
                Segment::Param(name) => match &node.param {
                    Some((existing, _)) if **existing != *name => {
                        return Err(renamed("parameter", name, existing))
                    }
                    Some((_, child)) => Some(&**child),
                    None => None,
                },
                Segment::CatchAll(name) => {
                    match &node.catch_all {
                        Some((existing, _)) if **existing != *name => {
                            return Err(renamed("catch-all", name, existing))
                        }
                        Some((_, l)) => leaves = l,
                        None => {}
                    }
                    break;
                }
            };
            match next {
                Some(n) => {
                    node = n;
                    if i + 1 == segments.len() {
                        leaves = &node.ends;
                    }
                }
                None => return Ok(()),
            }
        }
        for &other in leaves {
            let o = &self.values[other];
            if methods_overlap(o.methods.as_deref(), methods) {
                return Err(PatternError::Conflict(format!(
                    "`{pattern}` matches the same requests as `{}`",
                    o.pattern
                )));
            }
        }
        Ok(())
    }

    fn at<'r, 'p>(&'r self, method: &str, path: &'p str) -> Result<Match<'r, 'p, T>, RouteError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(RouteError::NotFound);
        };
        let mut params = Params::new();
        let mut path_matched = false;
        match self.walk(&self.root, rest, method, &mut params, &mut path_matched) {
            Some(leaf) => Ok(Match {
                value: &self.values[leaf].value,
                params,
            }),
            None if path_matched => Err(RouteError::MethodNotAllowed),
            None => Err(RouteError::NotFound),
        }
    }

    /// Matches `rest` (the path after a `/`) below `node`; `params` gets the bindings of the
    /// match found (and is restored on backtracking).
    fn walk<'r, 'p>(
        &'r self,
        node: &'r Node,
        rest: &'p str,
        method: &str,
        params: &mut Params<'r, 'p>,
        path_matched: &mut bool,
    ) -> Option<usize> {
        let (seg, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        // 1. A static segment.
        if let Some((_, child)) = node.statics.iter().find(|(k, _)| **k == *seg) {
            let found = match tail {
                None => self.pick(&child.ends, method, path_matched),
                Some(t) => self.walk(child, t, method, params, path_matched),
            };
            if found.is_some() {
                return found;
            }
        }
        // 2. A parameter: one non-empty segment.
        if let Some((name, child)) = &node.param {
            if !seg.is_empty() {
                let mark = params.len;
                params.push(name, seg);
                let found = match tail {
                    None => self.pick(&child.ends, method, path_matched),
                    Some(t) => self.walk(child, t, method, params, path_matched),
                };
                if found.is_some() {
                    return found;
                }
                params.len = mark;
            }
        }
        // 3. A catch-all: the rest, non-empty.
        if let Some((name, leaves)) = &node.catch_all {
            if !rest.is_empty() {
                if let Some(found) = self.pick(leaves, method, path_matched) {
                    params.push(name, rest);
                    return Some(found);
                }
            }
        }
        None
    }

    fn pick(&self, leaves: &[usize], method: &str, path_matched: &mut bool) -> Option<usize> {
        if !leaves.is_empty() {
            *path_matched = true;
        }
        leaves
            .iter()
            .copied()
            .find(|&l| match &self.values[l].methods {
                None => true,
                Some(ms) => ms.iter().any(|m| **m == *method),
            })
    }
}

fn methods_overlap(a: Option<&[Box<str>]>, b: Option<&[Box<str>]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

fn parse_pattern(pattern: &str) -> Result<Vec<Segment<'_>>, PatternError> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err(PatternError::Syntax(format!(
            "`{pattern}` does not start with `/`"
        )));
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if let Some(name) = inner.strip_prefix('*') {
                if !last {
                    return Err(PatternError::Syntax(format!(
                        "the catch-all `{{*{name}}}` in `{pattern}` must end the pattern"
                    )));
                }
                Segment::CatchAll(check_name(name, pattern)?)
            } else {
                Segment::Param(check_name(inner, pattern)?)
            }
        } else if part.contains(['{', '}']) {
            return Err(PatternError::Syntax(format!(
                "`{pattern}`: a parameter must be a whole segment (`/{{name}}`), not `{part}`"
            )));
        } else {
            Segment::Static(part)
        };
        segments.push(seg);
    }
    Ok(segments)
}

fn check_name<'a>(name: &'a str, pattern: &str) -> Result<&'a str, PatternError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(PatternError::Syntax(format!(
            "`{pattern}`: `{name}` is not a parameter name (letters, digits, `_`, `-`)"
        )));
    }
    Ok(name)
}

impl<'r, 'p> Params<'r, 'p> {
    fn new() -> Self {
        Self {
            items: [("", ""); MAX_PARAMS],
            len: 0,
        }
    }

    fn push(&mut self, name: &'r str, value: &'p str) {
        // The pattern was checked at insert to bind at most MAX_PARAMS names.
        debug_assert!(self.len < MAX_PARAMS);
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (name, value);
            self.len += 1;
        }
    }

    /// The value bound to `name` (as it appears in the path: not percent-decoded).
    pub fn get(&self, name: &str) -> Option<&'p str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// The bindings, in pattern order.
    pub fn iter(&self) -> impl Iterator<Item = (&'r str, &'p str)> + '_ {
        self.items[..self.len].iter().copied()
    }

    /// The number of bindings.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for Params<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotFound => "no route matches",
            Self::MethodNotAllowed => "the path matches but not for this method",
        })
    }
}

impl std::error::Error for RouteError {}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(m) | Self::Conflict(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PatternError {}
