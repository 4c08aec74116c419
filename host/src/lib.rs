//! The Nylon host's configuration: a YAML file in upstream Nylon's shape, decoded once at
//! start-up into typed structs, with payload templates compiled for per-request rendering and a
//! router from (host, path) to a route.
//!
//! The modules `config`, `template` and `route` are plain Rust, independent of Pingora
//! (`docs/host-config.md` documents the file). The proxy (`nylon-serve`) reads a [`Config`],
//! loads each [`config::PluginConfig`], checks every referenced entry with
//! [`Config::check_entries`], and per request calls [`Config::route`] and
//! [`template::Template::render`].
//!
//! ```
//! use nylon_host::Config;
//!
//! let yaml = r#"
//! plugins:
//!   - name: auth
//!     type: ffi
//!     file: ./libauth.so
//! services:
//!   - name: api
//!     service_type: http
//!     endpoints:
//!       - ip: 127.0.0.1
//!         port: 3000
//! routes:
//!   - route: { type: host, value: localhost }
//!     name: app
//!     middleware:
//!       - plugin: auth
//!         entry: check
//!         payload: { ip: "${request(client_ip)}" }
//!     paths:
//!       - path: ["/users/{id}"]
//!         service: { name: api }
//! "#;
//! let config = Config::parse(yaml, "inline.yaml")?;
//! let m = config.route(b"localhost", None, "GET", "/users/42").expect("a route");
//! assert_eq!(m.params.get("id"), Some("42"));
//! # Ok::<(), nylon_host::ConfigError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod config;
pub mod ctx;
pub mod proxy;
pub mod route;
pub mod serve;
pub mod template;
pub mod transport;
pub mod ws;

pub use config::{Config, ConfigError, ConfigErrorKind, Isolation, IsolationConfig, Location};
pub use route::{Params, RouteError};
pub use template::{StrTemplate, Template, TemplateInput};
