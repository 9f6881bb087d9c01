//! Plain-HTTP upstream connections driven by the task of the request they carry.
//!
//! hyper-util's pooled client hands each request through a channel to a connection task: one
//! more task wake per exchange, a lazy connect future built and dropped per request, and a pool
//! shared behind an `Arc<Mutex>` keyed by URI parts. Here the request's own task polls the
//! connection: while it waits for the answer's head, then inside the answer body's
//! `poll_frame`. When the body is complete, the connection goes back to the worker's idle list.
//!
//! An idle connection is polled by nobody. It is checked when taken (a connection the upstream
//! closed reads its EOF then and is dropped), and [`sweep`] closes the ones idle for
//! [`IDLE_TIMEOUT`] and the ones their upstream closed. Idle time is counted in sweeps, so
//! freeing a connection reads no clock. Each data-plane worker has its own
//! [`Pool`], so a connection is only ever used on the thread that opened it.
//!
//! Only `http://` upstreams come here. `https://` ones stay on hyper-util's client, which
//! negotiates HTTP/2 by ALPN (one multiplexed connection matters more there than a task wake).
//! Measured in `bench/README.md` ("The upstream connection in the request's task").

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http::uri::{Authority, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use crate::listen::{BoxBody, BoxError};

/// How long an idle connection is kept (the same as the pooled client's).
pub const IDLE_TIMEOUT: Duration = super::client::POOL_IDLE_TIMEOUT;

/// Idle connections kept per upstream address and worker; a connection freed beyond that closes.
pub const MAX_IDLE_PER_HOST: usize = 256;

/// How often [`sweep`] looks at the idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Sweeps a connection stays idle before it is closed: at least [`IDLE_TIMEOUT`], at most one
/// sweep more.
const IDLE_SWEEPS: u64 = IDLE_TIMEOUT.as_secs() / SWEEP_EVERY.as_secs();

type Io = TokioIo<tokio::net::TcpStream>;

/// Why an exchange on a plain-HTTP connection failed before the answer's head.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("connect: {0}")]
    Connect(#[source] BoxError),
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
}

struct Conn {
    tx: http1::SendRequest<BoxBody>,
    conn: http1::Connection<Io, BoxBody>,
    /// How long the connect took; taken by the first answer (later ones report zero).
    connect: Option<Duration>,
}

impl Conn {
    /// Polls the connection once; false once it has ended (closed by the peer, or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        Pin::new(&mut self.conn).poll(cx).is_pending()
    }

    /// Reads what arrived while nobody polled it: true if it can carry a request now.
    fn usable(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.tx.is_ready()
    }
}

struct Idle {
    conn: Box<Conn>,
    /// [`Shelf::sweeps`] when it was freed.
    since: u64,
}

/// One upstream address's idle connections.
struct Host {
    authority: Authority,
    /// The `Host` header its requests carry (port only when not 80, as hyper-util writes it).
    host: HeaderValue,
    /// Oldest first; taken from the end, so the most recently used connection is reused.
    idle: Vec<Idle>,
}

/// One worker's idle connections, by upstream address, and the sweeps done so far.
#[derive(Default)]
struct Shelf {
    hosts: Vec<Host>,
    sweeps: u64,
}

type SharedShelf = Arc<Mutex<Shelf>>;

fn lock(shelf: &SharedShelf) -> std::sync::MutexGuard<'_, Shelf> {
    shelf.lock().unwrap_or_else(|p| p.into_inner())
}

/// Returns a connection whose answer is complete, unless its address already has
/// [`MAX_IDLE_PER_HOST`] idle ones.
fn put(shelf: &SharedShelf, authority: &Authority, conn: Box<Conn>) {
    let mut shelf = lock(shelf);
    let since = shelf.sweeps;
    if let Some(host) = shelf.hosts.iter_mut().find(|h| h.authority == *authority)
        && host.idle.len() < MAX_IDLE_PER_HOST
    {
        host.idle.push(Idle { conn, since });
    }
}

/// One worker's plain-HTTP connections, by upstream address.
#[derive(Clone)]
pub struct Pool {
    shelf: SharedShelf,
    connector: HttpConnector,
}

impl Pool {
    /// A pool connecting with `connector`; spawns its [`sweep`] when a runtime is running.
    pub fn new(connector: HttpConnector) -> Self {
        let pool = Self {
            shelf: SharedShelf::default(),
            connector,
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep(Arc::downgrade(&pool.shelf)));
        }
        pool
    }

    /// A usable idle connection to `authority`, and the `Host` header to send.
    fn take(&self, authority: &Authority) -> (Option<Box<Conn>>, HeaderValue) {
        let mut shelf = lock(&self.shelf);
        let hosts = &mut shelf.hosts;
        let host = match hosts.iter().position(|h| h.authority == *authority) {
            Some(i) => &mut hosts[i],
            None => {
                hosts.push(Host {
                    authority: authority.clone(),
                    host: host_header(authority),
                    idle: Vec::new(),
                });
                hosts.last_mut().expect("just pushed")
            }
        };
        while let Some(Idle { mut conn, .. }) = host.idle.pop() {
            if conn.usable() {
                return (Some(conn), host.host.clone());
            }
        }
        (None, host.host.clone())
    }

    /// A new connection, boxed once: it moves between the pool and answers without copying its
    /// buffers.
    async fn connect(&self, uri: &Uri) -> Result<Box<Conn>, H1Error> {
        let start = Instant::now();
        let io = tower_service::Service::call(&mut self.connector.clone(), uri.clone())
            .await
            .map_err(|e| H1Error::Connect(e.into()))?;
        let connect = Some(start.elapsed());
        let (tx, conn) = http1::handshake(io).await?;
        Ok(Box::new(Conn { tx, conn, connect }))
    }

    /// Sends `req` (an absolute `http://` URI) on an idle or a new connection, driving the
    /// connection in this task; the answer's body keeps driving it.
    pub async fn send(
        &self,
        mut req: http::Request<BoxBody>,
    ) -> Result<http::Response<H1Body>, H1Error> {
        let uri = req.uri().clone();
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| H1Error::Connect("upstream URI without an authority".into()))?;
        let (idle, host) = self.take(&authority);
        req.headers_mut().entry(http::header::HOST).or_insert(host);
        *req.uri_mut() = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        let (mut conn, reused) = match idle {
            Some(conn) => (conn, true),
            None => (self.connect(&uri).await?, false),
        };
        let (head, alive) = match exchange(&mut conn, req).await {
            Ok(answer) => answer,
            // The upstream closed the idle connection as the request went out, before any of
            // it was written: once more on a new connection (as hyper-util's client does).
            Err(mut e) if reused && e.message().is_some() => {
                let req = e.take_message().expect("checked");
                conn = self.connect(&uri).await?;
                exchange(&mut conn, req).await.map_err(|e| e.into_error())?
            }
            Err(e) => return Err(e.into_error().into()),
        };
        let mut head = head.map(|body| H1Body {
            body,
            conn: None,
            shelf: self.shelf.clone(),
            authority,
            connect: conn.connect.take().unwrap_or_default(),
        });
        if alive {
            head.body_mut().conn = Some(conn);
        }
        Ok(head)
    }
}

/// Sends `req` on `conn`, polling the connection until the answer's head; also says whether the
/// connection is still open. On an error, the request comes back if none of it was written.
async fn exchange(
    conn: &mut Conn,
    req: http::Request<BoxBody>,
) -> Result<
    (http::Response<Incoming>, bool),
    hyper::client::conn::TrySendError<http::Request<BoxBody>>,
> {
    let Conn { tx, conn, .. } = conn;
    let mut answer = std::pin::pin!(tx.try_send_request(req));
    let mut alive = true;
    let head = std::future::poll_fn(|cx| {
        if alive {
            alive = Pin::new(&mut *conn).poll(cx).is_pending();
        }
        answer.as_mut().poll(cx)
    })
    .await?;
    Ok((head, alive))
}

/// `Host` for `authority`: without the port when it is HTTP's default.
fn host_header(authority: &Authority) -> HeaderValue {
    let value = match authority.port_u16() {
        Some(80) => authority.host(),
        _ => authority.as_str(),
    };
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

/// Every [`SWEEP_EVERY`]: closes idle connections older than [`IDLE_TIMEOUT`] and those their
/// upstream closed. Ends when the pool is dropped.
async fn sweep(shelf: Weak<Mutex<Shelf>>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(shelf) = shelf.upgrade() else { return };
        let mut shelf = lock(&shelf);
        shelf.sweeps += 1;
        let now = shelf.sweeps;
        for host in &mut shelf.hosts {
            host.idle
                .retain_mut(|i| now - i.since <= IDLE_SWEEPS && i.conn.usable());
        }
    }
}

/// An answer's body from a plain-HTTP upstream. Polling it drives the connection; once the body
/// is complete the connection returns to the pool, and if the body is dropped before that the
/// connection is closed.
pub struct H1Body {
    body: Incoming,
    conn: Option<Box<Conn>>,
    shelf: SharedShelf,
    authority: Authority,
    connect: Duration,
}

impl H1Body {
    /// How long connecting took for this answer: zero on a reused connection (nginx's
    /// `$upstream_connect_time`). Carried here rather than in the response's extensions, which
    /// would cost three allocations per answer.
    pub fn connect_time(&self) -> Duration {
        self.connect
    }

    fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(mut conn) = self.conn.take()
            && conn.drive(cx)
            && conn.tx.is_ready()
        {
            put(&self.shelf, &self.authority, conn);
        }
    }
}

/// A body dropped complete (hyper does not poll an empty one) still frees its connection.
impl Drop for H1Body {
    fn drop(&mut self) {
        if self.body.is_end_stream() {
            self.release(&mut Context::from_waker(Waker::noop()));
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn
            && !conn.drive(cx)
        {
            this.conn = None;
        }
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        // hyper's server stops polling once `is_end_stream` is true: release the connection
        // with the last frame rather than at a `None` that may never be asked for.
        if matches!(frame, Poll::Ready(None)) || this.body.is_end_stream() {
            this.release(cx);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_header_leaves_out_http_s_default_port_only() {
        let host = |a: &str| host_header(&a.parse().unwrap());
        assert_eq!(host("models.internal"), "models.internal");
        assert_eq!(host("models.internal:80"), "models.internal");
        assert_eq!(host("127.0.0.1:8000"), "127.0.0.1:8000");
        assert_eq!(host("[::1]:8000"), "[::1]:8000");
    }
}
