//! Upstreams: the pooled HTTP client that reaches them, and each one's runtime state.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::BoxBody;
use crate::config::{AuthScheme, MockConfig, UpstreamConfig, UpstreamUrl};

/// How long an idle pooled upstream connection is kept. Below the 120 s many providers' load
/// balancers use, so we close first and never send on a connection they just dropped.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Connector = TimedConnector<hyper_rustls::HttpsConnector<HttpConnector>>;

/// The connection pool shared by every upstream and kept across config reloads.
#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<Connector, BoxBody>,
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
        Self { client }
    }

    pub fn request(
        &self,
        req: http::Request<BoxBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
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
            let timing = ConnectTiming {
                took: start.elapsed(),
                reported: Arc::new(AtomicBool::new(false)),
            };
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

/// Where an upstream's requests go.
pub enum Target {
    Http {
        url: UpstreamUrl,
        /// Header that carries the credential, ready to insert; `None` sends no credential.
        credential: Option<(http::HeaderName, HeaderValue)>,
    },
    Mock(MockConfig),
}

/// One configured upstream: passive health (nginx `max_fails` / `fail_timeout`), and the live
/// signals policies read (in-flight requests, latency and error averages, cooldowns).
pub struct Upstream {
    pub name: Arc<str>,
    pub target: Target,
    pub config: UpstreamConfig,
    fails: AtomicU32,
    /// Milliseconds since `epoch` until which the upstream is skipped; 0 when healthy.
    down_until_ms: AtomicU64,
    epoch: Instant,
    in_flight: Arc<AtomicU32>,
    /// EWMA of time to response head, microseconds.
    latency_ewma_us: AtomicU64,
    /// EWMA of failures (0.0–1.0), as f32 bits.
    error_rate: AtomicU32,
    /// Cooldowns: `None` = every model. Values are Unix milliseconds.
    cooldowns: std::sync::Mutex<std::collections::HashMap<Option<String>, u64>>,
    /// The latest end of any cooldown: while it is in the past, `cooling_until` answers without
    /// taking the lock (the common case, on every request).
    cooling_max_ms: AtomicU64,
}

/// Weight of a new sample in the moving averages: about the last ten requests count.
const EWMA_ALPHA: f64 = 0.2;

/// Counts a request in flight on an upstream until dropped.
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Upstream {
        let yaml = "name: a\nmock: {}\n";
        Upstream::new(yaml_serde::from_str(yaml).unwrap()).unwrap()
    }

    #[test]
    fn cooldowns_apply_per_model_or_to_every_model_and_expire() {
        let u = upstream();
        assert_eq!(u.cooling_until(Some("m")), 0);
        let later = unix_ms() + 60_000;
        u.cool_down(Some("m"), later);
        assert_eq!(u.cooling_until(Some("m")), later);
        assert_eq!(u.cooling_until(Some("other")), 0);
        u.cool_down(None, later + 1);
        assert_eq!(u.cooling_until(Some("other")), later + 1);
        u.cool_down(Some("x"), unix_ms().saturating_sub(1));
        assert_eq!(
            u.cooling_until(Some("x")),
            later + 1,
            "the all-models cooldown still applies"
        );
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, thiserror::Error)]
#[error("credential for upstream {0:?} is not a valid header value")]
pub struct BadCredential(pub String);

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, BadCredential> {
        let target = match (&config.url, &config.mock) {
            (Some(url), _) => {
                let credential = if config.credential.is_empty() {
                    None
                } else {
                    let (name, value) = match config.auth_scheme {
                        AuthScheme::Bearer => (
                            http::header::AUTHORIZATION,
                            format!("Bearer {}", config.credential.expose()),
                        ),
                        AuthScheme::XApiKey => (
                            http::HeaderName::from_static("x-api-key"),
                            config.credential.expose().to_owned(),
                        ),
                    };
                    let mut value = HeaderValue::from_str(&value)
                        .map_err(|_| BadCredential(config.name.clone()))?;
                    value.set_sensitive(true);
                    Some((name, value))
                };
                Target::Http {
                    url: url.clone(),
                    credential,
                }
            }
            (None, mock) => Target::Mock(mock.clone().unwrap_or_default()),
        };
        Ok(Self {
            name: config.name.as_str().into(),
            target,
            config,
            fails: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: Arc::new(AtomicU32::new(0)),
            latency_ewma_us: AtomicU64::new(0),
            error_rate: AtomicU32::new(0f32.to_bits()),
            cooldowns: std::sync::Mutex::new(std::collections::HashMap::new()),
            cooling_max_ms: AtomicU64::new(0),
        })
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn start_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn observe(&self, failed: bool) {
        let old = f32::from_bits(self.error_rate.load(Ordering::Relaxed)) as f64;
        let new = old + EWMA_ALPHA * (if failed { 1.0 } else { 0.0 } - old);
        self.error_rate
            .store((new as f32).to_bits(), Ordering::Relaxed);
    }

    /// Records the time to response head of a successful exchange.
    pub fn record_latency(&self, head: Duration) {
        let sample = head.as_micros() as f64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old as f64 + EWMA_ALPHA * (sample - old as f64)
        };
        self.latency_ewma_us.store(new as u64, Ordering::Relaxed);
    }

    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    pub fn error_rate(&self) -> f32 {
        f32::from_bits(self.error_rate.load(Ordering::Relaxed))
    }

    /// Cools the upstream down until `until_ms` (Unix ms) for `model`, or for every model.
    pub fn cool_down(&self, model: Option<&str>, until_ms: u64) {
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(model.map(str::to_owned)).or_insert(0);
        *entry = (*entry).max(until_ms);
        self.cooling_max_ms.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Unix ms until which the upstream is cooling for `model` (or for every model); 0 if not.
    pub fn cooling_until(&self, model: Option<&str>) -> u64 {
        let now = unix_ms();
        if self.cooling_max_ms.load(Ordering::Relaxed) <= now {
            return 0;
        }
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, until| *until > now);
        let all = map.get(&None).copied().unwrap_or(0);
        let one = model
            .and_then(|m| map.get(&Some(m.to_owned())).copied())
            .unwrap_or(0);
        all.max(one)
    }

    pub fn serves(&self, model: Option<&str>) -> bool {
        model.is_none_or(|m| self.config.serves(m))
    }

    pub fn weight(&self) -> u32 {
        self.config.weight
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_healthy(&self) -> bool {
        self.now_ms() >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// A response came back (below 500): the failure streak ends.
    pub fn record_success(&self) {
        self.observe(false);
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// A connect error, timeout or 5xx. After `max_fails` in a row the upstream is skipped for
    /// `fail_timeout`.
    pub fn record_failure(&self) {
        self.observe(true);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.max_fails {
            self.fails.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.config.fail_timeout.get().as_millis() as u64;
            self.down_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, for_ = ?self.config.fail_timeout, "upstream marked unhealthy");
        }
    }
}
