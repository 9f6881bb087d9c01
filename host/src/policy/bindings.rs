//! The one place the WIT package is turned into Rust (`bindgen!`). Everything else in the host
//! uses these types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "host",
    imports: { default: async | trappable },
    exports: { default: async },
});

pub use self::exports::tollgate::policy::{header_rewrite, ip_binding, plugin, quota, router};
pub use self::tollgate::policy::types;
pub use self::tollgate::policy::{bindings as binding_store, clock, kv, log};
