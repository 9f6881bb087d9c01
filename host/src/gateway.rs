//! The gateway as a value: built from a [`Config`], served by [`crate::server`], testable in process.
//!
//! Everything derived from the config lives in a [`Runtime`] snapshot behind an `ArcSwap`. A request
//! takes the snapshot once at its start and uses it to the end, so a config reload never changes the
//! rules under a request in flight. The upstream connection pool lives outside the snapshot and
//! survives reloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use serde_json::json;

use crate::auth::KeyRing;
use crate::client_ip::ClientIpResolver;
use crate::config::Config;
use crate::upstream::{BadCredential, Upstream, UpstreamClient};

/// Facts about the connection a request arrived on, attached by the server to every request.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// A path prefix and the upstreams that serve it.
pub struct Route {
    pub prefix: Arc<str>,
    /// In configured order of preference.
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_attempts: u32,
}

/// Limits applied on the request path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: u64,
    pub client_body_idle: Duration,
    pub response_head: Duration,
    pub upstream_idle: Duration,
}

/// Everything the request path needs from one version of the config.
pub struct Runtime {
    pub keys: KeyRing,
    pub client_ip: ClientIpResolver,
    /// Longest prefix first, so the first match is the most specific.
    pub routes: Vec<Route>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub limits: Limits,
    pub access_log: bool,
}

impl Runtime {
    pub fn new(config: &Config) -> Result<Self, BadCredential> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route {
                prefix: r.path_prefix.as_str().into(),
                upstreams: r
                    .upstreams
                    .iter()
                    .filter_map(|name| upstreams.iter().find(|u| &*u.name == name).cloned())
                    .collect(),
                max_attempts: r.max_attempts,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let s = &config.server;
        Ok(Self {
            keys: KeyRing::new(&config.auth),
            client_ip: ClientIpResolver::new(s.trusted_proxies.clone(), s.real_ip_header),
            routes,
            upstreams,
            limits: Limits {
                max_body: s.max_body.0,
                client_body_idle: s.timeouts.client_body.get(),
                response_head: s.timeouts.response_head.get(),
                upstream_idle: s.timeouts.idle.get(),
            },
            access_log: config.logging.access_log,
        })
    }

    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| path.starts_with(&*r.prefix))
    }
}

pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    pub(crate) client: UpstreamClient,
    draining: AtomicBool,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Arc<Self>, BadCredential> {
        Ok(Arc::new(Self {
            runtime: ArcSwap::from_pointee(Runtime::new(config)?),
            client: UpstreamClient::new(config.server.timeouts.connect.get()),
            draining: AtomicBool::new(false),
        }))
    }

    /// The config snapshot a new request should use.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Marks the gateway as shutting down: `/ready` fails so load balancers stop sending traffic.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The gateway's own endpoints (`/health`, `/ready`); everything else is proxied.
    pub fn own_endpoints(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/health", get(health))
            .route("/ready", get(ready))
            .with_state(self.clone())
    }

    /// Whether `path` is answered by [`Gateway::own_endpoints`] rather than proxied.
    pub fn is_own_endpoint(path: &str) -> bool {
        crate::config::RESERVED_PATHS.iter().any(|own| {
            if own.ends_with('/') {
                path.starts_with(own)
            } else {
                path == *own
            }
        })
    }
}

/// Liveness: the process is up and serving HTTP.
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness: not draining, and the state of every upstream.
async fn ready(State(gw): State<Arc<Gateway>>) -> Response {
    let rt = gw.runtime();
    let upstreams: Vec<_> = rt
        .upstreams
        .iter()
        .map(|u| json!({"name": &*u.name, "healthy": u.is_healthy()}))
        .collect();
    let draining = gw.draining.load(Ordering::Relaxed);
    let status = if draining {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body =
        json!({"status": if draining { "draining" } else { "ready" }, "upstreams": upstreams});
    (status, axum::Json(body)).into_response()
}
