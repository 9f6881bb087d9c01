//! The application: the data-plane and admin-plane listeners, each with its [`Handler`], started
//! together and drained together.
//!
//! | listener | config | serves |
//! |---|---|---|
//! | data plane | `server.listen` | `/health`, `/ready`, and every route (the proxy pipeline) |
//! | admin plane | `admin.listen` (off with `admin.enabled: false`) | [`crate::admin::router`] |
//!
//! Both listeners get the same connection protections (`crate::listen`); the admin one has no TLS
//! and no trusted proxies: keep it on loopback or a private network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower_service::Service;

use crate::admin::auth::AdminAuth;
use crate::config::{Config, ServerConfig};
use crate::gateway::Gateway;
use crate::listen::{ConnInfo, Handler, Response, ServeError, Server};
use crate::pipeline;
use crate::upstream::UpstreamClient;

/// The data plane: the gateway's own probes, and the proxy pipeline for everything else.
#[derive(Clone)]
pub struct DataPlane {
    gateway: Arc<Gateway>,
    own: Router,
    /// This worker thread's upstream connection pool.
    client: UpstreamClient,
}

impl Handler for DataPlane {
    async fn handle(&self, req: http::Request<Incoming>, conn: ConnInfo) -> Response {
        if crate::config::is_reserved_path(req.uri().path()) {
            let mut resp = own_endpoint(&self.gateway, self.own.clone(), req).await;
            self.gateway
                .runtime()
                .response_headers
                .apply(resp.headers_mut(), conn.tls);
            resp
        } else {
            let rt = self.gateway.runtime();
            pipeline::handle(&rt, &self.client, req, conn).await
        }
    }

    fn socket_error_headers(&self, tls: bool) -> Vec<u8> {
        self.gateway.runtime().response_headers.lines(tls)
    }
}

/// The admin plane.
#[derive(Clone)]
pub struct AdminPlane {
    gateway: Arc<Gateway>,
    router: Router,
    auth: Arc<AdminAuth>,
}

impl Handler for AdminPlane {
    async fn handle(&self, mut req: http::Request<Incoming>, conn: ConnInfo) -> Response {
        // `admin.allow` before anything else: other networks learn nothing about the plane.
        if !self.auth.allows(conn.peer.ip()) {
            let denied = crate::admin::error::ApiError::new(
                http::StatusCode::FORBIDDEN,
                "forbidden",
                "the admin plane is not open to this address (admin.allow)",
            );
            return axum::response::IntoResponse::into_response(denied)
                .map(|b| b.map_err(Into::into).boxed_unsync());
        }
        req.extensions_mut().insert(conn);
        own_endpoint(&self.gateway, self.router.clone(), req).await
    }
}

/// A request the gateway answers itself through an axum router, after the same head screening
/// proxied requests get.
async fn own_endpoint(
    gateway: &Gateway,
    mut router: Router,
    req: http::Request<Incoming>,
) -> Response {
    if let Err(e) = pipeline::screen_own(&gateway.runtime().limits, &req) {
        return axum::response::IntoResponse::into_response(e)
            .map(|b| b.map_err(Into::into).boxed_unsync());
    }
    match router.call(req).await {
        Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
        Err(never) => match never {},
    }
}

/// Both listeners, bound.
pub struct Listeners {
    data: Server,
    admin: Option<(Server, Arc<AdminAuth>)>,
}

impl Listeners {
    /// Binds `server.listen` and, unless turned off, `admin.listen`.
    pub async fn bind(config: &Config) -> Result<Self, ServeError> {
        let data = Server::bind(&config.server).await?;
        let admin = if config.admin.enabled {
            let admin_server = ServerConfig {
                listen: config.admin.listen,
                tls: None,
                trusted_proxies: Vec::new(),
                ..ServerConfig::default()
            };
            let auth = AdminAuth::new(&config.admin).map_err(ServeError::Admin)?;
            Some((Server::bind(&admin_server).await?, auth))
        } else {
            None
        };
        Ok(Self { data, admin })
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(s, _)| s.local_addr())
    }

    /// Serves both planes until `shutdown` completes, drains both (the gateway reports itself
    /// draining on `/ready`), then flushes what the request path queued to the stores.
    pub async fn serve(self, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
        if let Some(reloads) = self.data.cert_reloads() {
            // The first TLS listener to serve this gateway is the one its metrics report.
            let _ = gateway.metrics.tls_reloads.set(reloads);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let worker_gateway = gateway.clone();
        let data = move || DataPlane {
            own: worker_gateway.own_endpoints(),
            client: worker_gateway.worker_client(),
            gateway: worker_gateway.clone(),
        };
        let draining = gateway.clone();
        let data_plane = self
            .data
            .serve_per_thread(data, stopped(stop_rx.clone()), move || {
                draining.start_draining()
            });
        let admin_plane = async {
            if let Some((admin, auth)) = self.admin {
                let _ = gateway.reload_part.set(auth.clone());
                let plane = AdminPlane {
                    router: crate::admin::router(gateway.clone(), auth.clone()),
                    gateway: gateway.clone(),
                    auth,
                };
                admin.serve(plane, stopped(stop_rx.clone()), || {}).await;
            }
        };
        let signal = async {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(data_plane, admin_plane, signal);
        // Write what the request path queued (usage, intercepts) before the process exits.
        gateway.stores.shutdown().await;
    }
}
