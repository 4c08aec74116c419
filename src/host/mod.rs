//! The host side: loading plugins, the request/response trait, method
//! semantics and the request driver.

pub mod context;
pub mod dispatch;
pub mod driver;
pub mod loader;
pub mod registry;

pub use context::{HttpContext, MemoryContext, RequestSpec, UpstreamSpec, WsMessage, WsRecv};
pub use loader::{inspect, InspectReport, LegacyPlugin, LoadError};
