//! The one place the WIT package is turned into Rust (`bindgen!`). Everything else in the host
//! uses these types.
//!
//! Imports that may wait on a store (`kv`, `bindings`) are async; the rest (the request and
//! response accessors, `log`, `clock`) answer from memory and are plain calls, which are cheaper.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "host",
    imports: {
        "tollgate:policy/types": trappable,
        "tollgate:policy/log": trappable,
        "tollgate:policy/clock": trappable,
        "tollgate:policy/capacity": trappable,
        default: async | trappable,
    },
    exports: { default: async },
    with: {
        "tollgate:policy/types.request": crate::view::RequestInfo,
        "tollgate:policy/types.response": crate::view::ResponseInfo,
        "tollgate:policy/types.transform-state": crate::view::TransformState,
    },
});

pub use self::exports::tollgate::policy::{
    header_rewrite, ip_binding, lean_router, plugin, quota, router, transform,
};
pub use self::tollgate::policy::types;
pub use self::tollgate::policy::{bindings as binding_store, capacity, clock, kv, log};
