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

mod io;
mod per_ip;
pub(crate) mod tls;
pub(crate) mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch as signal};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use self::tls::TlsError;
use crate::config::ServerConfig;
use io::ClientIo;
use per_ip::PerIpLimit;
use watch::{ConnLimits, ConnWatch, Signal, Verdict};

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
        let serving = accept_loop(self.shared.clone(), self.listener, handler, stop_rx);
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
    /// and everything it causes (its requests, its upstream connections, their timers) stay on
    /// the thread that accepted it: no request wakes another thread.
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
        for n in 0..self.shared.workers {
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
                                accept_loop(shared, listener, make_handler(), stop).await;
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

/// One thread's accept loop: serves connections until `stop` turns true, then closes its copy
/// of the listener and drains its connections within the grace period.
async fn accept_loop<H: Handler>(
    shared: Arc<Shared>,
    listener: TcpListener,
    handler: H,
    stop: signal::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut waiter = stop;
    let stopped = async move {
        let _ = waiter.wait_for(|s| *s).await;
    };
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip_permit = match shared.per_ip.acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                per_ip::refuse(tcp, peer, why, shared.tls.is_some());
                continue;
            }
        };
        let permit = match shared.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::select! {
                _ = &mut stopped => break,
                permit = shared.make_room() => permit,
            },
        };
        let _ = tcp.set_nodelay(true);
        let conn = Connection {
            handler: handler.clone(),
            shared: shared.clone(),
            peer,
        };
        let watch = ConnWatch::new(shared.limits);
        shared.register(&watch);
        conns.spawn(async move {
            conn.run(tcp, watch).await;
            drop((permit, ip_permit));
        });
        // Reap finished connection tasks so the set does not grow without bound.
        while conns.try_join_next().is_some() {}
    }

    drop(listener);
    // Every loop tells every connection (its own and the others'): raising twice is harmless.
    for watch in shared.live_conns() {
        watch.raise(Signal::Drain);
    }
    tracing::info!(in_flight = conns.len(), grace = ?shared.grace, "shutting down: draining connections");
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(shared.grace, drained).await.is_err() {
        tracing::warn!(
            left = conns.len(),
            "grace period over; closing remaining connections"
        );
    }
    conns.shutdown().await;
}

/// The answer to a stream opened after its connection cancelled too many (GOAWAY is on its way).
fn abusive_refusal() -> Response {
    use http_body_util::BodyExt;
    crate::error::error_response(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "this connection cancelled too many streams and is closing; open a new one",
        "server_error",
        "too_many_cancelled_streams",
    )
    .map(|b| b.map_err(Into::into).boxed_unsync())
}

impl Shared {
    /// Adds a new connection to the registry.
    fn register(&self, watch: &Arc<ConnWatch>) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if conns.len() == conns.capacity() {
            // Forget closed connections before the list grows (amortised: it at most doubles).
            conns.retain(|w| w.strong_count() > 0);
        }
        conns.push(Arc::downgrade(watch));
    }

    fn live_conns(&self) -> Vec<Arc<ConnWatch>> {
        let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.iter().filter_map(Weak::upgrade).collect()
    }

    /// At `max_connections` with a client accepted: tells the connection that holds its slot for
    /// the least ([`ConnWatch::shed_rank`]) to close, and waits for a slot, choosing again every
    /// [`SHED_RETRY`]. With every connection busy, this is a wait for one to end.
    async fn make_room(&self) -> tokio::sync::OwnedSemaphorePermit {
        loop {
            let victim = {
                let conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
                conns
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter_map(|w| w.shed_rank().map(|rank| (rank, w)))
                    .min_by_key(|(rank, _)| *rank)
            };
            if let Some((rank, watch)) = victim {
                tracing::debug!(
                    rank = rank.0,
                    "max_connections reached: shedding a connection"
                );
                watch.raise(Signal::Shed);
            }
            let wait = tokio::time::timeout(SHED_RETRY, self.permits.clone().acquire_owned());
            if let Ok(permit) = wait.await {
                return permit.expect("semaphore is never closed");
            }
        }
    }
}

struct Connection<H> {
    handler: H,
    shared: Arc<Shared>,
    peer: SocketAddr,
}

impl<H: Handler> Connection<H> {
    async fn run(self, tcp: TcpStream, watch: Arc<ConnWatch>) {
        let info = ConnInfo {
            peer: self.peer,
            tls: self.shared.tls.is_some(),
        };
        let handler = self.handler.clone();
        let conn_watch = watch.clone();
        // Every response body holds its request as in flight until it ends; HTTP/2 bodies are
        // also watched for a stalled stream (`watch::Watched`).
        let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
            let handler = handler.clone();
            let watch = conn_watch.clone();
            let guard = watch.request();
            let h2 = req.version() == http::Version::HTTP_2;
            async move {
                // Asked when the stream's task first runs, not as hyper accepts it: the resets
                // that arrived in the same read as this stream's HEADERS woke their streams'
                // tasks first, so their cancels are counted by now.
                if watch.abusive() {
                    let resp = abusive_refusal();
                    return Ok(resp.map(|b| watch.watch_body(b, guard, h2)));
                }
                // Boxed once: hyper moves the service future it is given (into its in-flight
                // slot), and the request's whole pipeline state is several KiB.
                let resp = Box::pin(handler.handle(req, info)).await;
                Ok::<_, std::convert::Infallible>(resp.map(|b| watch.watch_body(b, guard, h2)))
            }
        });
        match self.shared.tls.clone() {
            Some(acceptor) => {
                let deadline = self
                    .shared
                    .tls_handshake
                    .min(self.shared.limits.client_header);
                let shed = std::future::poll_fn(|cx| watch.poll_shed(cx));
                let handshake = tokio::select! {
                    h = tokio::time::timeout(deadline, acceptor.accept(tcp)) => h,
                    () = shed => {
                        tracing::debug!(peer = %self.peer, "shed during the TLS handshake (max_connections)");
                        return;
                    }
                };
                match handshake {
                    Ok(Ok(stream)) => {
                        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                        let io =
                            ClientIo::new(stream, watch.clone(), self.handler.clone(), true, h2);
                        self.serve(io, service, watch).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                    }
                }
            }
            None => {
                let io = ClientIo::new(tcp, watch.clone(), self.handler.clone(), false, false);
                self.serve(io, service, watch).await;
            }
        }
    }

    /// Drives one connection under its watchdog and the server's drain signal. Each wake-up
    /// polls the connection, then the watchdog's signal bits, then one timer (the next check, or
    /// the hard stop after an abuse GOAWAY, whichever is first).
    async fn serve<I, S>(&self, io: ClientIo<I, H>, service: S, watch: Arc<ConnWatch>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                http::Request<Incoming>,
                Response = http::Response<watch::Watched>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        enum Event<E> {
            Ended(Result<(), E>),
            Raised(u8),
            Due,
        }
        let conn = self
            .shared
            .builder
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let mut closing = false;
        let mut hard_stop: Option<tokio::time::Instant> = None;
        let mut next = tokio::time::Instant::now();
        let timer = tokio::time::sleep_until(next);
        tokio::pin!(timer);
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
                match watch.poll_signals(cx) {
                    0 => {}
                    raised => return Poll::Ready(Event::Raised(raised)),
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Event::Due),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            let now = tokio::time::Instant::now();
            match event {
                Event::Ended(result) => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                Event::Raised(raised) => {
                    if Signal::Drain.is_in(raised) && !closing {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    if Signal::Abuse.is_in(raised) && hard_stop.is_none() {
                        tracing::warn!(peer = %self.peer, "client cancelled too many streams; GOAWAY");
                        if !closing {
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        hard_stop = Some(now + ABUSE_GRACE);
                    }
                    if Signal::Rearm.is_in(raised) {
                        next = now;
                    }
                    if Signal::Shed.is_in(raised) && !watch.busy() {
                        tracing::debug!(peer = %self.peer, "connection shed (max_connections)");
                        return;
                    }
                }
                Event::Due if hard_stop.is_some_and(|t| now >= t) => return,
                Event::Due => {
                    let (verdict, at) = watch.check();
                    next = at.into();
                    match verdict {
                        Verdict::Continue => {}
                        Verdict::Close(why) => {
                            tracing::debug!(peer = %self.peer, why, "connection closed");
                            return;
                        }
                        Verdict::Drain(why) if !closing => {
                            tracing::debug!(peer = %self.peer, why, "connection closing");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Verdict::Drain(_) => {}
                    }
                }
            }
            let due = hard_stop.map_or(next, |stop| stop.min(next));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
        }
    }
}
