//! Tollgate: a gateway for OpenAI-compatible (and Anthropic-style) LLM APIs.
//!
//! The host is a library so the binary and the tests drive the same code. Dependencies point one
//! way: [`config`] knows nothing else; [`auth`], [`client_ip`], [`tls`] and [`upstream`] know only
//! the config; [`proxy`] wires them into the request pipeline; [`gateway`] holds the state that
//! pipeline reads; [`server`] accepts connections for any [`server::Handler`]; [`app`] runs the
//! data plane and the [`admin`] plane on their two listeners; [`cli`] is the binary's front.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod cli;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod mock;
pub mod policy;
pub mod policy_view;
pub mod proxy;
pub mod reload;
pub mod screen;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;

pub use config::Config;
pub use gateway::Gateway;
pub use server::Server;
