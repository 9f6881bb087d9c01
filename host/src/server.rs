//! The listener: accepts TCP connections, terminates TLS, serves HTTP/1.1 and HTTP/2, and drains
//! gracefully.
//!
//! Per connection: a permit from the connection cap, then the TLS handshake (bounded by
//! `tls_handshake`), then hyper's auto protocol detection (ALPN `h2`, or the h2 preface on plain
//! TCP, else HTTP/1.1). HTTP/1 request heads must arrive within `client_header` (slowloris).
//!
//! Shutdown: stop accepting, mark the gateway draining (`/ready` fails), ask every connection to
//! finish its in-flight requests and close (HTTP/1: after the current response; HTTP/2: GOAWAY),
//! and after `shutdown_grace` cut whatever is left.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::access_log::Logged;
use crate::config::ServerConfig;
use crate::gateway::{ConnInfo, Gateway};
use crate::tls::{self, TlsError};

/// Interval of HTTP/2 PINGs to a client that has sent nothing, to find dead peers.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot watch certificate files: {0}")]
    Watch(std::io::Error),
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    cert_watch: Option<tokio::task::JoinHandle<()>>,
    builder: auto::Builder<TokioExecutor>,
    max_connections: usize,
    tls_handshake: Duration,
    grace: Duration,
}

impl Server {
    /// Binds the configured address and loads TLS material.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServeError> {
        let addr = config.listen.0;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let (tls, cert_watch) = match &config.tls {
            Some(t) => {
                let (server_config, certs) = tls::server_config(t, config.http2)?;
                let watch = certs.spawn_watcher().map_err(ServeError::Watch)?;
                (Some(TlsAcceptor::from(server_config)), Some(watch))
            }
            None => (None, None),
        };
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.timeouts.client_header.get())
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_timeout(Duration::from_secs(20));
        if !config.http2 {
            builder = builder.http1_only();
        }
        Ok(Self {
            listener,
            tls,
            cert_watch,
            builder,
            max_connections: config.max_connections,
            tls_handshake: config.timeouts.tls_handshake.get(),
            grace: config.timeouts.shutdown_grace.get(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains.
    pub async fn serve(self, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
        let router = gateway.own_endpoints();
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(self.max_connections));
        let mut conns = JoinSet::new();
        let builder = Arc::new(self.builder);
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                gateway: gateway.clone(),
                router: router.clone(),
                builder: builder.clone(),
                tls: self.tls.clone(),
                tls_handshake: self.tls_handshake,
                peer,
            };
            let watcher = graceful.watcher();
            conns.spawn(async move {
                conn.run(tcp, watcher).await;
                drop(permit);
            });
            // Reap finished connection tasks so the set does not grow without bound.
            while conns.try_join_next().is_some() {}
        }

        drop(self.listener);
        gateway.start_draining();
        if let Some(w) = self.cert_watch {
            w.abort();
        }
        tracing::info!(in_flight = conns.len(), grace = ?self.grace, "shutting down: draining connections");
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                left = conns.len(),
                "grace period over; closing remaining connections"
            );
        }
        conns.shutdown().await;
        // Write what the request path queued (usage, intercepts) before the process exits.
        gateway.stores.shutdown().await;
    }
}

struct Connection {
    gateway: Arc<Gateway>,
    router: axum::Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    tls_handshake: Duration,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, tcp: TcpStream, watcher: hyper_util::server::graceful::Watcher) {
        let info = ConnInfo {
            peer: self.peer,
            tls: self.tls.is_some(),
        };
        let (gateway, router) = (self.gateway, self.router);
        // Proxied requests go straight to the pipeline; axum serves the gateway's own endpoints.
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let gateway = gateway.clone();
            let mut router = router.clone();
            async move {
                if Gateway::is_own_endpoint(req.uri().path()) {
                    let resp = router.call(req).await?;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|b| Logged::untracked(b.map_err(Into::into).boxed_unsync())),
                    )
                } else {
                    Ok(crate::proxy::handle(&gateway, req, info).await)
                }
            }
        });
        let result = match self.tls {
            Some(acceptor) => {
                match tokio::time::timeout(self.tls_handshake, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        watcher
                            .watch(
                                self.builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .into_owned(),
                            )
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
            None => {
                watcher
                    .watch(
                        self.builder
                            .serve_connection(TokioIo::new(tcp), service)
                            .into_owned(),
                    )
                    .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}
