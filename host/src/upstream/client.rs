//! The HTTP client that reaches every upstream (and the alert webhook), kept across config
//! reloads, and the connect-time measurement behind `upstream_connect_ms`. `http://` targets go
//! through [`h1`](super::h1) (the request's task drives the connection); `https://` ones through
//! hyper-util's pooled client (TLS, HTTP/2 by ALPN).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{UpstreamBody, h1};
use crate::listen::BoxBody;
use crate::state::{Delivery, Webhook};

/// How long an idle pooled upstream connection is kept. Below the 120 s many providers' load
/// balancers use, so we close first and never send on a connection they just dropped.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = TimedConnector<hyper_rustls::HttpsConnector<HttpConnector>>;

/// One data-plane worker's connections to every upstream, kept across config reloads.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, BoxBody>,
    h1: h1::Pool,
}

/// Why an exchange got no answer head.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Pooled(#[from] hyper_util::client::legacy::Error),
    #[error(transparent)]
    H1(#[from] h1::H1Error),
}

impl ExchangeError {
    /// The connection could not be made: the request never left, so another upstream may take it.
    pub fn is_connect(&self) -> bool {
        match self {
            Self::Pooled(e) => e.is_connect(),
            Self::H1(e) => matches!(e, h1::H1Error::Connect(_)),
        }
    }
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = HttpsConnectorBuilder::new();
        // System roots where the OS has them; the bundled Mozilla roots otherwise (slim containers).
        let builder = match builder.with_native_roots() {
            Ok(b) => b,
            Err(_) => HttpsConnectorBuilder::new().with_webpki_roots(),
        };
        let h1 = h1::Pool::new(http.clone());
        let https = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(TimedConnector(https));
        Self { client, h1 }
    }

    /// One small exchange with a JSON (or any text) answer, read whole (at most 1 MiB) within
    /// `timeout`: for the control plane's own calls (an OpenID provider, the CLI's admin API
    /// client), never for proxied traffic. The answer's status and body as JSON (a body that is
    /// not JSON comes back as a JSON string).
    pub async fn exchange_json(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(http::HeaderName, String)],
        body: Option<(&'static str, Bytes)>,
        timeout: Duration,
    ) -> Result<(http::StatusCode, serde_json::Value), String> {
        const MAX: usize = 1 << 20;
        let mut req = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        let bytes = match body {
            Some((content_type, b)) => {
                req = req.header(http::header::CONTENT_TYPE, content_type);
                b
            }
            None => Bytes::new(),
        };
        let req = req
            .body(
                Full::new(bytes)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let value = if body.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or_else(|_| {
                    serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                })
            };
            Ok((status, value))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(timeout)))?
    }

    /// Sends `req` (an absolute URI) and waits for the answer's head.
    pub async fn request(
        &self,
        req: http::Request<BoxBody>,
    ) -> Result<http::Response<UpstreamBody>, ExchangeError> {
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTP) {
            return Ok(self.h1.send(req).await?.map(UpstreamBody::H1));
        }
        Ok(self.client.request(req).await?.map(UpstreamBody::Http))
    }
}

/// Connect time of the connection a response came on, reported for its first response only, so a
/// reused pooled connection counts as 0 (nginx's `$upstream_connect_time` semantics).
#[derive(Clone, Debug)]
pub struct ConnectTiming {
    took: Duration,
    reported: Arc<AtomicBool>,
}

impl ConnectTiming {
    pub(super) fn new(took: Duration) -> Self {
        Self {
            took,
            reported: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn take(&self) -> Duration {
        if self.reported.swap(true, Ordering::Relaxed) {
            Duration::ZERO
        } else {
            self.took
        }
    }
}

/// Wraps a connector to time each new connection.
#[derive(Clone)]
pub struct TimedConnector<C>(C);

impl<C> tower_service::Service<Uri> for TimedConnector<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = TimedConn<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let start = Instant::now();
        let fut = self.0.call(uri);
        Box::pin(async move {
            let io = fut.await?;
            let timing = ConnectTiming::new(start.elapsed());
            Ok(TimedConn { io, timing })
        })
    }
}

pin_project_lite::pin_project! {
    pub struct TimedConn<T> {
        #[pin]
        io: T,
        timing: ConnectTiming,
    }
}

impl<T: Connection> Connection for TimedConn<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.timing.clone())
    }
}

impl<T: hyper::rt::Read> hyper::rt::Read for TimedConn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write> hyper::rt::Write for TimedConn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}

/// Alerts are delivered through the same pool.
impl Webhook for UpstreamClient {
    fn post_json(&self, uri: &str, body: Bytes) -> Delivery<'_> {
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "tollgate-alerts")
            .body(Full::new(body).map_err(|e| match e {}).boxed_unsync());
        Box::pin(async move {
            let request = request.map_err(|e| e.to_string())?;
            self.request(request)
                .await
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        })
    }
}
