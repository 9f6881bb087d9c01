//! Tollgate: a gateway for OpenAI-compatible (and Anthropic-style) LLM APIs.
//!
//! The host is split by layer; each depends only on the ones listed before it (see
//! `docs/architecture.md` for the graph and the request path):
//!
//! | layer | where | what |
//! |---|---|---|
//! | config | crate `tollgate-config` | the YAML file: types, validation, JSON Schema |
//! | state | crate `tollgate-state` | stores: bindings, intercepts, usage, caches, plugin kv |
//! | policy | crate `tollgate-policy` | the WebAssembly plugin runtime and its host imports |
//! | [`error`] | here | the gateway's own answers in the OpenAI error shape |
//! | [`listen`] | here | TCP, TLS, HTTP/1.1 and HTTP/2, connection limits; knows no gateway |
//! | [`upstream`] | here | the pooled client, each upstream's health, the built-in mock |
//! | [`pipeline`] | here | the request phases and the [`pipeline::Filter`] trait |
//! | [`telemetry`] | here | logging setup and the access-log filter |
//! | [`gateway`] | here | the config snapshot, reloads, probes |
//! | [`service`] | here | operator operations shared by the admin API and the CLI (audited) |
//! | [`admin`] | here | the admin plane: `/metrics`, the admin API, its authentication |
//! | [`planes`] | here | the composition root: both listeners, each with its handler |
//! | [`cli`] | here | the binary's commands |
//!
//! The three lower layers are crates so an upward import cannot compile. Inside this crate
//! modules are `pub(crate)`; what the binary and the tests use is re-exported below.

pub(crate) mod admin;
pub mod cli;
pub(crate) mod error;
pub(crate) mod fs_watch;
pub(crate) mod gateway;
pub(crate) mod listen;
pub(crate) mod pipeline;
pub(crate) mod planes;
pub(crate) mod service;
pub(crate) mod telemetry;
pub(crate) mod upstream;

pub use tollgate_config as config;
pub use tollgate_policy as policy;
pub use tollgate_state as state;

pub use admin::auth::hash_password as admin_hash_password;
pub use config::Config;
pub use gateway::Gateway;
pub use gateway::reload;
pub use pipeline::auth::KeyRing;
pub use planes::Listeners;
pub use upstream::UpstreamClient;
pub use upstream::mock;
