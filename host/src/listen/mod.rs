//! The listener: accepts TCP connections, terminates TLS, serves HTTP/1.1 and HTTP/2, and drains
//! gracefully.
//!
//! Per connection: a permit from the client address's cap (`max_connections_per_ip`; trusted
//! proxies are exempt) and one from the connection cap (`max_connections`). At that cap the
//! listener sheds: it closes the connection that holds a slot for the least (one that never
//! completed a request head, oldest first; then one idle between requests), so silent or
//! trickling sockets cannot keep a client waiting; a connection with a request in flight is never
//! shed, and a new one waits for one of those to end. Then the TLS handshake (bounded by
//! `tls_handshake`), then hyper's auto protocol detection (ALPN `h2`, or the h2 preface on plain
//! TCP, else HTTP/1.1). From accept on, the connection's watchdog ([`watch`]) bounds it: a first
//! request head within `client_header` whatever the protocol, no request in flight for at most
//! `client_idle`, a client that takes nothing for `client_write` is cut, and an HTTP/2 client that
//! cancels streams faster than `http2_max_cancels` allows gets GOAWAY.
//!
//! Shutdown: stop accepting, mark the gateway draining (`/ready` fails), ask every connection to
//! finish its in-flight requests and close (HTTP/1: after the current response; HTTP/2: GOAWAY),
//! and after `shutdown_grace` cut whatever is left.
//!
//! Files: this one (the `Server`, its settings and the `Handler` trait), `accept.rs` (the accept
//! loop and the connection registry it sheds from), `conn.rs` (one connection under its
//! watchdog), `watch/` (the watchdog; `stream.rs`: a response body as it sees it), `io.rs` (the
//! client socket, and the answers hyper makes before the handler), `per_ip.rs`, `tls.rs`.

mod accept;
mod balance;
mod conn;
mod io;
mod per_ip;
pub(crate) mod tls;
pub(crate) mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch as signal};
use tokio_rustls::TlsAcceptor;

use self::tls::TlsError;
use crate::config::ServerConfig;
use accept::accept_loop;
use conn::Connection;
use per_ip::PerIpLimit;
use watch::{ConnLimits, ConnWatch};

/// After a GOAWAY for abuse (reset flood), how long the connection's streams may still run.
const ABUSE_GRACE: Duration = Duration::from_secs(1);
/// At `max_connections`, how long a new connection waits for the slot of the connection shed
/// for it before another is chosen (the chosen one may have started a request meanwhile).
const SHED_RETRY: Duration = Duration::from_millis(50);
/// The body type every response the listeners send, and every upstream request, carries.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, BoxError>;

/// A body with nothing in it.
pub fn empty_body() -> BoxBody {
    use http_body_util::BodyExt;
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a listener's handler returns.
pub type Response = http::Response<BoxBody>;

/// Facts about the connection a request arrived on, given to the handler with every request.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// What a listener serves: one request in, one response out. The listener knows nothing else of
/// the gateway; the data plane and the admin plane are two handlers (`crate::planes`).
pub trait Handler: Clone + Send + Sync + Unpin + 'static {
    fn handle(
        &self,
        req: http::Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response> + Send;

    /// The header lines (`name: value\r\n` each) this plane puts on every answer, for the
    /// answers the listener writes itself before any request reaches [`Handler::handle`]
    /// (hyper's 400/414/431 to a malformed head, `io.rs`). Called only when one is written.
    fn socket_error_headers(&self, _tls: bool) -> Vec<u8> {
        Vec::new()
    }
}

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
    /// The admin plane's settings cannot be used (e.g. the demo password off loopback).
    #[error("{0}")]
    Admin(String),
}

/// A bound listener, ready to serve.
pub struct Server {
    listener: TcpListener,
    cert_watch: Option<tokio::task::JoinHandle<()>>,
    /// The certificate's reload counts, with TLS.
    cert_reloads: Option<Arc<crate::fs_watch::Reloads>>,
    shared: Arc<Shared>,
}

/// What every accept loop of one listener shares: the settings and the connection caps.
struct Shared {
    tls: Option<TlsAcceptor>,
    builder: auto::Builder<TokioExecutor>,
    permits: Arc<Semaphore>,
    /// Every connection being served, by every accept loop: drained at shutdown, and where a
    /// connection to shed is found at `max_connections`.
    conns: Mutex<Vec<Weak<ConnWatch>>>,
    per_ip: Arc<PerIpLimit>,
    limits: ConnLimits,
    tls_handshake: Duration,
    grace: Duration,
    /// Serving on, `/ready` draining, before accepting stops (`timeouts.drain_delay`).
    drain_delay: Duration,
    workers: usize,
}

impl Server {
    /// The certificate's reload counts (a TLS listener only), for the gateway's metrics.
    pub(crate) fn cert_reloads(&self) -> Option<Arc<crate::fs_watch::Reloads>> {
        self.cert_reloads.clone()
    }

    /// Binds the configured address and loads TLS material.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServeError> {
        let addr = config.listen.0;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let (tls, cert_watch, cert_reloads) = match &config.tls {
            Some(t) => {
                let (server_config, certs) = tls::server_config(t, config.http2)?;
                let reloads = certs.reloads.clone();
                let watch = certs.spawn_watcher().map_err(ServeError::Watch)?;
                (
                    Some(TlsAcceptor::from(server_config)),
                    Some(watch),
                    Some(reloads),
                )
            }
            None => (None, None, None),
        };
        let head = config.max_head_size.0.clamp(8192, u64::from(u32::MAX)) as usize;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // Heads are timed by the watchdog (`client_header`), not by a boxed timer per request.
            .header_read_timeout(None)
            // The read buffer bounds the whole head: past it hyper answers 431.
            .max_buf_size(head)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(config.timeouts.http2_keepalive.get())
            .keep_alive_timeout(config.timeouts.http2_keepalive_timeout.get())
            .max_concurrent_streams(config.http2_max_streams)
            .max_header_list_size(head as u32);
        if !config.http2 {
            builder = builder.http1_only();
        }
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        Ok(Self {
            listener,
            cert_watch,
            cert_reloads,
            shared: Arc::new(Shared {
                tls,
                builder,
                permits: Arc::new(Semaphore::new(config.max_connections)),
                conns: Mutex::new(Vec::new()),
                per_ip: Arc::new(PerIpLimit::new(
                    config.max_connections_per_ip,
                    config.trusted_proxies.clone(),
                    config.new_connections_per_ip,
                )),
                limits: ConnLimits {
                    client_header: config.timeouts.client_header.get(),
                    client_idle: config.timeouts.client_idle.get(),
                    client_write: config.timeouts.client_write.get(),
                    upstream_idle: config.timeouts.idle.get(),
                    max_cancels: config.http2_max_cancels,
                },
                tls_handshake: config.timeouts.tls_handshake.get(),
                grace: config.timeouts.shutdown_grace.get(),
                drain_delay: config.timeouts.drain_delay.get(),
                workers,
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves `handler` on the current runtime until `shutdown` completes, then calls
    /// `on_drain` and drains.
    pub async fn serve<H: Handler>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
        on_drain: impl FnOnce(),
    ) {
        let (stop_tx, stop_rx) = signal::channel(false);
        let serving = accept_loop(self.shared.clone(), self.listener, handler, stop_rx, None);
        let signal = async {
            shutdown.await;
            on_drain();
            let _ = stop_tx.send(true);
        };
        tokio::join!(serving, signal);
        if let Some(w) = self.cert_watch {
            w.abort();
        }
    }

    /// Serves on `server.workers` threads, each running its own single-threaded runtime with
    /// its own handler (`make_handler` runs on that thread, so per-thread state such as an
    /// upstream connection pool lives there) and accepting from the same socket. A connection
    /// goes to the thread that serves the fewest (`balance.rs`: the one that accepted it, or
    /// another it hands the socket to), and everything it causes (its requests, its upstream
    /// connections, their timers) stays there: no request wakes another thread.
    ///
    /// Until `shutdown` completes; then `on_drain` is called once and every thread drains.
    pub async fn serve_per_thread<H: Handler>(
        self,
        make_handler: impl Fn() -> H + Send + Sync + 'static,
        shutdown: impl Future<Output = ()>,
        on_drain: impl FnOnce(),
    ) {
        let (stop_tx, stop_rx) = signal::channel(false);
        let drain_delay = self.shared.drain_delay;
        let make_handler = Arc::new(make_handler);
        let std_listener = match self.listener.into_std() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot hand the listener to the workers");
                return;
            }
        };
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
        for (n, worker) in balance::Balance::workers(self.shared.workers)
            .into_iter()
            .enumerate()
        {
            let listener = match std_listener.try_clone() {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, worker = n, "cannot share the listener");
                    break;
                }
            };
            let shared = self.shared.clone();
            let stop = stop_rx.clone();
            let make_handler = make_handler.clone();
            let done = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("tollgate-worker-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!(error = %e, worker = n, "cannot start a worker");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                accept_loop(shared, listener, make_handler(), stop, Some(worker))
                                    .await;
                            }
                            Err(e) => tracing::error!(error = %e, worker = n, "cannot listen"),
                        }
                    });
                    drop(done);
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, worker = n, "cannot start a worker thread");
            }
        }
        drop(done_tx);
        drop(std_listener);
        shutdown.await;
        on_drain();
        if !drain_delay.is_zero() {
            // Still accepting and serving: `/ready` says draining, so load balancers move away.
            tracing::info!(delay = ?drain_delay, "shutting down: draining, still accepting until the delay ends");
            tokio::time::sleep(drain_delay).await;
        }
        let _ = stop_tx.send(true);
        // Every worker has ended when the last one drops its sender.
        let _ = done_rx.recv().await;
        if let Some(w) = self.cert_watch {
            w.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers with the name of the thread that serves the request.
    #[derive(Clone)]
    struct ThreadName;

    impl Handler for ThreadName {
        async fn handle(&self, _req: http::Request<Incoming>, _conn: ConnInfo) -> Response {
            let name = std::thread::current().name().unwrap_or_default().to_owned();
            http::Response::new(
                http_body_util::Full::new(bytes::Bytes::from(name))
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        }
    }

    /// Connections that are all waiting when the workers start are the burst one worker would
    /// otherwise accept alone (it drains the queue before the other runs): they end up split
    /// evenly, and each is served where it was counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connections_is_split_evenly_between_the_workers() {
        let config = ServerConfig {
            listen: crate::config::ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            workers: 2,
            ..ServerConfig::default()
        };
        let server = Server::bind(&config).await.unwrap();
        let addr = server.local_addr();
        let mut clients = Vec::new();
        for _ in 0..20 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.serve_per_thread(
            || ThreadName,
            async {
                let _ = stopped.await;
            },
            || {},
        ));
        let mut served = std::collections::BTreeMap::<String, usize>::new();
        for mut c in clients {
            c.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut answer = String::new();
            c.read_to_string(&mut answer).await.unwrap();
            let name = answer.rsplit("\r\n\r\n").next().unwrap().to_owned();
            *served.entry(name).or_default() += 1;
        }
        let _ = stop.send(());
        serving.await.unwrap();
        // Within one: both workers may accept at once and each keep a connection on a tie.
        assert_eq!(served.len(), 2, "{served:?}");
        assert!(served.values().all(|n| (9..=11).contains(n)), "{served:?}");
    }
}
