//! The Nylon host (temporary lib.rs until host-config lands).
pub mod ctx;
pub mod proxy;
pub mod transport;
