//! Tollgate's plugin SDK.
//!
//! A plugin is a crate with `crate-type = ["cdylib", "rlib"]` that depends on this one with the
//! feature of its kind (`ip-binding`, `router`, `lean-router`, `quota`, `header-rewrite` or
//! `transform`), implements [`Plugin`] and its kind's trait, and calls [`export!`]:
//!
//! ```ignore
//! struct First;
//! impl tollgate_sdk::Plugin for First {
//!     fn configure(_config: String) -> Result<(), String> { Ok(()) }
//! }
//! impl tollgate_sdk::Router for First {
//!     fn select(_req: &Request, c: Vec<UpstreamView>) -> RouteDecision {
//!         RouteDecision::Pick((0..c.len() as u32).collect())
//!     }
//! }
//! tollgate_sdk::export!(First);
//! ```
//!
//! A router that decides from the candidates' figures alone (weights, load, latency, errors,
//! cooldowns) takes the `lean-router` feature and implements `LeanRouter`, whose `select` gets
//! [`Candidate`]s: no names or model lists are copied into the plugin, which saves about 2,000
//! instructions per candidate on every request. The gateway configures both as `kind: router`.
//!
//! Build with `cargo build --release --target wasm32-wasip2`; the `.wasm` in
//! `target/wasm32-wasip2/release/` is the component to list in the gateway's YAML.
//!
//! The [`Request`] and [`Response`] a call receives are handles into the host: each method call
//! (`request.key_id()`, `response.header("retry-after")`) fetches one field, so read what the
//! decision needs and nothing more. They only work inside the call (and only in the wasm build),
//! so keep the decision itself in plain functions over plain values, and unit-test those
//! natively, as the built-in plugins do.

#[cfg(not(any(
    feature = "ip-binding",
    feature = "router",
    feature = "lean-router",
    feature = "quota",
    feature = "header-rewrite",
    feature = "transform"
)))]
compile_error!(
    "enable exactly one of the features: ip-binding, router, lean-router, quota, header-rewrite, \
     transform"
);

#[cfg(feature = "ip-binding")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "ip-binding-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});
#[cfg(feature = "router")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "router-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});
#[cfg(feature = "lean-router")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "lean-router-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});
#[cfg(feature = "quota")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "quota-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});
#[cfg(feature = "header-rewrite")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "header-rewrite-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});
#[cfg(feature = "transform")]
wit_bindgen::generate!({
    path: "../../wit",
    world: "transform-policy",
    pub_export_macro: true,
    export_macro_name: "__export_component",
    default_bindings_module: "tollgate_sdk",
});

pub use exports::tollgate::policy::plugin::Guest as Plugin;
pub use tollgate::policy::types::*;
/// Host services: key-value store, bindings table, log, clock, upstream capacity.
pub mod host {
    pub use crate::tollgate::policy::bindings::{self, Binding, BindingMatch, BindingStatus};
    pub use crate::tollgate::policy::capacity::{self, Headroom};
    pub use crate::tollgate::policy::clock::now_ms;
    pub use crate::tollgate::policy::kv;
    pub use crate::tollgate::policy::log::{Level, log};
}

#[cfg(feature = "header-rewrite")]
pub use exports::tollgate::policy::header_rewrite::{Guest as HeaderRewrite, Phases};
#[cfg(feature = "ip-binding")]
pub use exports::tollgate::policy::ip_binding::Guest as IpBinding;
#[cfg(feature = "lean-router")]
pub use exports::tollgate::policy::lean_router::Guest as LeanRouter;
#[cfg(feature = "quota")]
pub use exports::tollgate::policy::quota::Guest as Quota;
#[cfg(feature = "router")]
pub use exports::tollgate::policy::router::Guest as Router;
#[cfg(feature = "transform")]
pub use exports::tollgate::policy::transform::{
    Answer, Guest as Transform, HeadEdit, RequestAction, RequestEdit, SseEvent,
};

/// Exports a type implementing [`Plugin`] and its kind's trait as the component's implementation.
/// Only wasm builds export anything, so the same crate also builds natively for unit tests.
#[macro_export]
macro_rules! export {
    ($ty:ident) => {
        #[cfg(target_arch = "wasm32")]
        $crate::__export_component!($ty);
        /// Native builds: checks that the type implements its kind's traits.
        #[cfg(not(target_arch = "wasm32"))]
        #[doc(hidden)]
        pub fn __tollgate_exported() {
            $crate::__assert_exportable::<$ty>()
        }
    };
}

#[cfg(feature = "header-rewrite")]
#[doc(hidden)]
pub use HeaderRewrite as __Kind;
#[cfg(feature = "ip-binding")]
#[doc(hidden)]
pub use IpBinding as __Kind;
#[cfg(feature = "lean-router")]
#[doc(hidden)]
pub use LeanRouter as __Kind;
#[cfg(feature = "quota")]
#[doc(hidden)]
pub use Quota as __Kind;
#[cfg(feature = "router")]
#[doc(hidden)]
pub use Router as __Kind;
#[cfg(feature = "transform")]
#[doc(hidden)]
pub use Transform as __Kind;

#[cfg(feature = "transform")]
impl RequestEdit {
    /// An edit that changes nothing and does not ask for the response (set the fields that
    /// change: `RequestEdit { body: Some(new), ..RequestEdit::unchanged() }`).
    pub fn unchanged() -> Self {
        Self {
            path: None,
            headers: Vec::new(),
            body: None,
            response: false,
        }
    }
}

#[cfg(feature = "transform")]
impl HeadEdit {
    /// A head edit that changes nothing.
    pub fn unchanged() -> Self {
        Self {
            status: None,
            headers: Vec::new(),
        }
    }
}

/// The time to compare the candidates' `cooling_until_ms` with, read from the host's clock only
/// when one of them is cooling. The host gives 0 for a candidate that is not cooling when the
/// call is made, so with none cooling (the usual case) every candidate is ready at any time and
/// the call makes no host call for the clock (about 600 instructions a request, counted in
/// Tollgate's bench/README.md).
#[cfg(any(feature = "router", feature = "lean-router"))]
pub fn cooling_clock<C: Cooling>(candidates: &[C]) -> u64 {
    if candidates.iter().any(|c| c.cooling_until_ms() != 0) {
        host::now_ms()
    } else {
        0
    }
}

/// A router's candidate as either form gives it: [`UpstreamView`] or [`Candidate`].
#[cfg(any(feature = "router", feature = "lean-router"))]
pub trait Cooling {
    /// Unix milliseconds until which the candidate cools down, 0 when it is not cooling.
    fn cooling_until_ms(&self) -> u64;
}
#[cfg(feature = "router")]
impl Cooling for UpstreamView {
    fn cooling_until_ms(&self) -> u64 {
        self.cooling_until_ms
    }
}
#[cfg(feature = "lean-router")]
impl Cooling for Candidate {
    fn cooling_until_ms(&self) -> u64 {
        self.cooling_until_ms
    }
}

/// The candidates' indices from `start` round to `start - 1` (`start` is taken modulo `len`), the
/// ones for which `cooling(i)` holds moved to the end in the same rotation: a router's answer
/// when it only rotates (round-robin) or keeps the configured order (fill-first, `start` 0). One
/// allocation, the answer itself: each allocation in a guest is a call into its allocator.
#[cfg(any(feature = "router", feature = "lean-router"))]
pub fn ready_first(start: u64, len: usize, cooling: impl Fn(usize) -> bool) -> Vec<u32> {
    let mut out = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    let start = (start % len as u64) as usize;
    let rotated = (0..len).map(|i| (start + i) % len);
    out.extend(rotated.clone().filter(|&i| !cooling(i)).map(|i| i as u32));
    out.extend(rotated.filter(|&i| cooling(i)).map(|i| i as u32));
    out
}

#[doc(hidden)]
pub fn __assert_exportable<T: Plugin + __Kind>() {}

/// serde, so a plugin needs no dependency of its own to read its config:
///
/// ```ignore
/// #[derive(tollgate_sdk::Deserialize, Default)]
/// #[serde(crate = "tollgate_sdk::serde", default)]
/// struct Config { prefer: String }
/// ```
pub use serde::{self, Deserialize};
/// serde_json, for plugins that read and write JSON bodies (transforms).
pub use serde_json;

/// Parses a plugin's JSON config into `T`, with an error message fit for `configure`.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T, String> {
    serde_json::from_str(config).map_err(|e| format!("invalid plugin config: {e}"))
}
