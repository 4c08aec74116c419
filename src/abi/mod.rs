//! ABI definitions shared by the host and the plugin SDK.
//!
//! [`legacy`] is the exact C ABI of today's Nylon plugins (`legacy-abi.md`): the
//! [`FfiBuffer`](legacy::FfiBuffer) message, the callback type, the six exported
//! symbols, the 41 method ids and the phases.

pub mod legacy;
pub mod v2;
