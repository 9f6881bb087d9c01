//! Upstreams: each one's target and runtime state (health, in-flight, latency and error
//! averages, cooldowns: written and read in `health.rs`), and [`Upstream::send`], the one way a
//! request reaches one, whether it is a URL ([`client`]) or the built-in [`mock`].

pub mod capacity;
mod client;
mod h1;
mod health;
pub mod mock;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::HeaderValue;
use http_body_util::BodyExt;

pub use self::client::{ConnectTiming, ExchangeError, UpstreamClient};
use crate::config::{AuthScheme, MockConfig, UpstreamConfig, UpstreamUrl};
use crate::listen::BoxBody;

/// An upstream's response body: a pooled connection's, a plain-HTTP connection's driven by the
/// request's task, or the mock's (not boxed again).
pub enum UpstreamBody {
    Http(hyper::body::Incoming),
    H1(h1::H1Body),
    Mock(BoxBody),
}

impl UpstreamBody {
    /// How long connecting to the upstream took for `resp`, zero on a reused connection; `None`
    /// for a mock upstream.
    pub fn connect_time(resp: &http::Response<Self>) -> Option<std::time::Duration> {
        match resp.body() {
            Self::H1(b) => Some(b.connect_time()),
            Self::Http(_) => resp
                .extensions()
                .get::<ConnectTiming>()
                .map(ConnectTiming::take),
            Self::Mock(_) => None,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = crate::listen::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Http(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::H1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Mock(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Http(b) => b.is_end_stream(),
            Self::H1(b) => b.is_end_stream(),
            Self::Mock(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Http(b) => b.size_hint(),
            Self::H1(b) => b.size_hint(),
            Self::Mock(b) => b.size_hint(),
        }
    }
}

/// Why [`Upstream::send`] got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("no response head within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    #[error("cannot build the upstream URI")]
    Uri,
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
    /// Credentials set at run time (`state::CredentialMap`): one here wins over the config
    /// file's.
    credentials: crate::state::CredentialMap,
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
    /// The account's declared allowance and what its answers said of its headroom (set when
    /// the runtime is built, [`Upstream::with_capacity`]).
    pub capacity: Option<capacity::Capacity>,
    /// The last errors (failed attempts, quota answers), for the admin API.
    recent_errors:
        std::sync::Mutex<std::collections::VecDeque<(u64, std::borrow::Cow<'static, str>)>>,
}

/// Errors kept per upstream for operators.
pub const RECENT_ERRORS: usize = 10;

/// Counts a request in flight on an upstream until dropped.
pub struct InFlight(Arc<AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The mock's answer to `req`: it reads the JSON body (if any) the way an upstream would.
async fn respond_mock(cfg: &MockConfig, req: http::Request<BoxBody>) -> http::Response<BoxBody> {
    let (head, body) = req.into_parts();
    let json = match body.collect().await {
        Ok(c) => serde_json::from_slice(&c.to_bytes()).ok(),
        Err(_) => None,
    };
    let request_id = head
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    mock::respond(
        cfg,
        request_id,
        &head.method,
        head.uri.path(),
        json.as_ref(),
    )
}

/// The upstream request URI: the upstream's scheme, host and base path, then the client's path
/// and query. Without a base path the client's already-parsed path is reused as is.
fn upstream_uri(url: &UpstreamUrl, client: &http::Uri) -> Option<http::Uri> {
    let path_and_query = client
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let path_and_query = if url.base_path.is_empty() {
        path_and_query
    } else {
        format!("{}{}", url.base_path, path_and_query)
            .parse()
            .ok()?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(url.scheme.clone());
    parts.authority = Some(url.authority.clone());
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests;

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
            credentials: crate::state::CredentialMap::default(),
            fails: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: Arc::new(AtomicU32::new(0)),
            latency_ewma_us: AtomicU64::new(0),
            // NaN: no attempt observed yet (`error_rate_observed`).
            error_rate: AtomicU32::new(f32::NAN.to_bits()),
            cooldowns: std::sync::Mutex::new(std::collections::HashMap::new()),
            recent_errors: std::sync::Mutex::new(std::collections::VecDeque::new()),
            cooling_max_ms: AtomicU64::new(0),
            capacity: None,
        })
    }

    /// With its capacity counted in `stores` (`upstreams[].limits`, the providers' headers).
    pub fn with_capacity(mut self, stores: &Arc<crate::state::Stores>) -> Self {
        self.capacity = Some(capacity::Capacity::new(
            stores,
            &self.name,
            self.config.limits,
        ));
        self
    }

    /// With the credentials set at run time (shared by every upstream of the gateway).
    pub fn with_credentials(mut self, credentials: crate::state::CredentialMap) -> Self {
        self.credentials = credentials;
        self
    }

    /// The header carrying `credential` under this upstream's `auth_scheme`.
    fn credential_header(&self, credential: &str) -> Option<(http::HeaderName, HeaderValue)> {
        let (name, value) = match self.config.auth_scheme {
            AuthScheme::Bearer => (
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {credential}")),
            ),
            AuthScheme::XApiKey => (
                http::HeaderName::from_static("x-api-key"),
                HeaderValue::from_str(credential),
            ),
        };
        let mut value = value.ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }

    /// The fingerprint of the credential set at run time, if one is in force.
    pub fn stored_credential_fingerprint(&self) -> Option<String> {
        self.credentials
            .load()
            .get(&*self.name)
            .map(|c| crate::state::fingerprint(c.expose()))
    }

    /// Sends `req` to this upstream and returns its response head (the body follows as it
    /// arrives). `req` carries the client's path and query and the headers to forward; here the
    /// URI becomes the upstream's and its credential is set. The mock answers in process.
    pub async fn send(
        &self,
        client: &UpstreamClient,
        mut req: http::Request<BoxBody>,
        head_timeout: Duration,
    ) -> Result<http::Response<UpstreamBody>, SendError> {
        let (url, credential) = match &self.target {
            Target::Http { url, credential } => (url, credential),
            // Boxed: the in-process mock is for demos and tests, and its future would otherwise
            // enlarge every send's.
            Target::Mock(cfg) => {
                return Ok(Box::pin(respond_mock(cfg, req))
                    .await
                    .map(UpstreamBody::Mock));
            }
        };
        *req.uri_mut() = upstream_uri(url, req.uri()).ok_or(SendError::Uri)?;
        let stored = self.credentials.load();
        let stored = (!stored.is_empty())
            .then(|| stored.get(&*self.name))
            .flatten()
            .and_then(|c| self.credential_header(c.expose()));
        if let Some((name, value)) = stored.as_ref().or(credential.as_ref()) {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        // The exchange and its deadline side by side in this future: the exchange is moved once
        // (pinned here) where `timeout(…)` moved it into a `Timeout` and that again into this
        // future.
        let exchange = client.request(req);
        let deadline = tokio::time::sleep(head_timeout);
        tokio::pin!(exchange, deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                return Poll::Ready(r.map_err(SendError::from));
            }
            deadline
                .as_mut()
                .poll(cx)
                .map(|()| Err(SendError::Timeout(head_timeout)))
        })
        .await
    }

    /// Marks a request in flight until the returned guard is dropped.
    pub fn start_request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}
