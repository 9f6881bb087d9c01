//! The filters the gateway ships: built-in ones, and one adapter per WebAssembly plugin kind.
//!
//! A route's chain is, in order: built-in filters that run first, the route's policies (their
//! adapters, [`policies`]), the route's own built-ins ([`stream_usage`]), then built-in filters
//! that run last (`gateway/runtime.rs` assembles it, since the built-ins include the telemetry
//! layer's). Within one hook the chain's
//! order is the call order, so a quota policy's retry decision comes before any response rewrite.
//! To add a built-in filter: see `docs/architecture.md`, "How to add a filter".

pub(crate) mod access;
pub(crate) mod budgets;
pub(crate) mod cors;
pub(crate) mod entitlements;
pub(crate) mod key_limits;
pub(crate) mod limits;
pub(crate) mod maintenance;
pub(crate) mod max_request_tokens;
pub(crate) mod policies;
pub(crate) mod pricing;
pub(crate) mod request_id;
pub(crate) mod response_headers;
pub(crate) mod shadow;
pub(crate) mod stream_usage;
pub(crate) mod upstream_capacity;
