//! The plugin transport engine of the Nylon reverse proxy: the layer between a
//! Rust host and plugins loaded as shared libraries.
//!
//! It loads today's plugins unchanged through the legacy ABI
//! ([`abi::legacy`]), drives their phases over a [`host::HttpContext`] the
//! embedding proxy implements, and carries the messages over a
//! [`transport::Transport`]. [`sdk`] is the plugin side, for plugins written in
//! Rust.
//!
//! ```no_run
//! use std::sync::Arc;
//! use nylon_transport::host::{driver, LegacyPlugin, MemoryContext, RequestSpec};
//! use nylon_transport::transport::Baseline;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let plugin = Arc::new(LegacyPlugin::load("target/debug/examples/librust_plugin.so")?);
//! plugin.initialize(b"{}")?;
//! let mut ctx = MemoryContext::new(RequestSpec::default(), None);
//! let report = driver::run_request(
//!     &Baseline::new(), &plugin, "all_methods", &mut ctx, None, Default::default(),
//! )?;
//! println!("{:?}", report.outcomes());
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    clippy::undocumented_unsafe_blocks,
    clippy::unnecessary_safety_comment
)]

pub mod abi;
pub mod bench;
pub mod channel;
pub mod codec;
mod futex;
pub mod fuzzing;
pub mod host;
pub mod intern;
pub mod pool;
pub mod ring;
pub mod sdk;
mod spawn;
mod sync;
pub mod transport;
pub mod ws;
