//! The gateway's one YAML config file: typed structs, loading and validation.
//!
//! Loading has two phases. Deserialization (serde, `deny_unknown_fields`) rejects unknown keys and
//! wrong types, stopping at the first such error, which carries its YAML path and line. Validation
//! then checks what types cannot express (references between sections, duplicates, ranges) and
//! collects *every* error with its YAML path, so `tollgate check` lists them all at once.
//! This module depends on nothing else in the crate.

pub mod edge;
pub mod env;
pub mod env_file;
pub mod redis_url;
pub mod types;
mod validate;
pub use validate::{DEMO_ADMIN_PASSWORD, DEMO_KEY, DEMO_SECRET};

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest linear memory a plugin may be configured with (`plugins[].limits.memory`).
pub const MAX_PLUGIN_MEMORY: u64 = 256 << 20;

/// Most webhook delivery retries (`alerts.retries`).
pub const MAX_ALERT_RETRIES: u32 = 10;

/// Paths the gateway answers itself; routes may not claim them. An entry ending in `/` is a prefix.
pub const RESERVED_PATHS: [&str; 4] = ["/health", "/ready", "/metrics", "/admin/"];

/// Whether `path` is one of [`RESERVED_PATHS`] (never proxied, whatever the routes say).
pub fn is_reserved_path(path: &str) -> bool {
    RESERVED_PATHS.iter().any(|own| {
        if own.ends_with('/') {
            path.starts_with(own)
        } else {
            path == *own
        }
    })
}

/// The JSON Schema of the config file (draft 2020-12), for editors: `tollgate config schema`.
/// It checks shapes and types; what it cannot express (references between sections, ranges)
/// `tollgate check` reports.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

pub use edge::{
    AccessConfig, CorsConfig, Enforce, InFlightLimit, LimitBy, LimitScope, LimitsConfig,
    MaintenanceConfig, Rate, RequestLimit, ResponseHeadersConfig, TokenEstimate, TokenLimit,
};
pub use types::{
    ByteSize, CacheUrl, Cidr, DatabaseUrl, Duration, IpText, ListenAddr, Module, Secret,
    UpstreamUrl, canonical_ip,
};

/// The whole config file.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// WebAssembly policy plugins, referenced by name from routes.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Bindings, intercepts, caches and counters. Read at start only (a change needs a restart).
    #[serde(default)]
    pub storage: StorageConfig,
    /// Webhook alerts on repeated intercepts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The admin plane's own listener (operators, not LLM clients).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Request, token and concurrency limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// IP allow and deny lists for every route (checked before authentication); entries added
    /// through the admin API or `tollgate ip` join them.
    #[serde(default)]
    pub access: AccessConfig,
    /// Maintenance mode for every route.
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    /// Directory of the config file; relative plugin paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// The kind of a policy plugin: which WIT world it implements.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    IpBinding,
    Router,
    Quota,
    HeaderRewrite,
}

impl PluginKind {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IpBinding => "ip-binding",
            Self::Router => "router",
            Self::Quota => "quota",
            Self::HeaderRewrite => "header-rewrite",
        }
    }
}

/// A route's handling of usage in OpenAI streams (see `RouteConfig::stream_usage`).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StreamUsage {
    #[default]
    Pass,
    Inject,
}

/// What happens to a request when a plugin traps, times out or runs out of memory.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Fail closed: the client gets 503.
    #[default]
    Deny,
    /// Fail open: carry on as if the plugin were not there.
    Skip,
}

/// One WebAssembly policy plugin.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    pub kind: PluginKind,
    /// The component: `builtin:NAME` for a plugin shipped in the binary, or the path of a `.wasm`
    /// file, relative to the config file's directory.
    pub module: Module,
    /// Expected hex sha256 of the component; a different one is refused.
    #[serde(default, deserialize_with = "env::opt_string")]
    pub sha256: Option<String>,
    /// Passed to the plugin's `configure` as JSON, verbatim: no `${VAR}` expansion, because
    /// plugins use `${…}` for their own per-request templates (e.g. `${request_id}`).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    #[serde(default)]
    pub on_error: OnError,
    #[serde(default)]
    pub limits: PluginLimits,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Sandbox limits for one plugin.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Linear memory the plugin may grow to.
    pub memory: ByteSize,
    /// Longest a single call may run before it is stopped.
    pub deadline: Duration,
    /// Longest creating an instance may run: its start functions and `configure`. Separate from
    /// `deadline` because an interpreter (Python, JavaScript) needs a few ms to start, which a
    /// call must not; it runs once per instance (at load, and when a worn-out or failed one is
    /// replaced, then on the request that needs it).
    pub init_deadline: Duration,
    /// Largest module file accepted (checked before compiling).
    pub module_size: ByteSize,
    /// Calls one instance serves before it is replaced by a fresh one.
    pub max_calls: u32,
    /// Calls of this plugin running at once; further calls wait for a slot up to `queue_timeout`,
    /// then fail (the plugin's `on_error` decides).
    pub max_concurrency: u32,
    /// Longest a call waits for a free slot.
    pub queue_timeout: Duration,
    /// Circuit breaker: this many failures (deadline, trap, memory) within `breaker_window`
    /// stop calls to the plugin for `breaker_cooldown`; meanwhile `on_error` applies at once.
    /// 0 = no breaker.
    pub breaker_failures: u32,
    pub breaker_window: Duration,
    pub breaker_cooldown: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            memory: ByteSize(32 << 20),
            deadline: Duration(std::time::Duration::from_millis(5)),
            init_deadline: Duration(std::time::Duration::from_millis(100)),
            module_size: ByteSize(32 << 20),
            max_calls: 10_000,
            max_concurrency: 64,
            queue_timeout: Duration(std::time::Duration::from_millis(100)),
            breaker_failures: 5,
            breaker_window: Duration::secs(10),
            breaker_cooldown: Duration::secs(30),
        }
    }
}

/// The admin plane: `/metrics`, `/admin/api/…`, `/admin/ui/…` are served here and never on the
/// data-plane listener. Read at start only.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin listener at all.
    pub enabled: bool,
    /// Where it listens; keep it on loopback or a private network.
    pub listen: ListenAddr,
    /// Client networks allowed to reach the admin listener at all (in addition to the login);
    /// others get 403. Default: loopback only.
    pub allow: Vec<Cidr>,
    /// Operators who may log in to the admin API.
    pub users: Vec<AdminUser>,
    /// HS256 key that signs admin tokens (32+ characters). Unset: a random key per process, so
    /// tokens end with a restart and are not accepted by the other gateways of a cluster; set it
    /// (the same on every gateway) for a cluster.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of an admin token.
    pub token_ttl: Duration,
    /// Wrong passwords tolerated per user and client IP before logins are refused.
    pub lockout: LockoutConfig,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 8318))),
            allow: ["127.0.0.0/8", "::1/128"]
                .iter()
                .filter_map(|c| c.parse().ok().map(Cidr))
                .collect(),
            users: Vec::new(),
            jwt_secret: None,
            token_ttl: Duration::secs(30 * 60),
            lockout: LockoutConfig::default(),
        }
    }
}

/// An operator of the admin API. Exactly one of `password_hash` (preferred; an argon2 PHC string
/// from `tollgate admin hash-password`) or `password` (hashed at start; for passwords given
/// through the environment) is set.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUser {
    pub username: String,
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
}

/// Login lockout: `max_failures` wrong passwords for one user from one IP within `window` lock
/// that pair out for `duration`. Counted in the cache, so it holds across a cluster.
#[derive(Debug, Deserialize, Clone, Copy, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LockoutConfig {
    pub max_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::secs(30 * 60),
            duration: Duration::secs(30 * 60),
        }
    }
}

/// Listener, client identity and limits.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    /// Threads serving the data plane, each with its own event loop and upstream connection
    /// pool, all accepting from the one listening socket. 0 = one per CPU core.
    pub workers: usize,
    pub tls: Option<TlsConfig>,
    /// Peers allowed to tell us the client's address in `real_ip_header`.
    pub trusted_proxies: Vec<Cidr>,
    pub real_ip_header: RealIpHeader,
    /// Largest request body accepted; larger ones get 413.
    pub max_body: ByteSize,
    /// Connections served at once. At the cap a new connection takes the slot of one that never
    /// completed a request head (oldest first), else of one idle between requests; with every
    /// connection busy it waits until one ends.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed as soon as they are
    /// accepted. Peers in `trusted_proxies` are exempt (they carry many clients). 0 = no cap.
    pub max_connections_per_ip: usize,
    /// Largest single request header (name and value); a larger one gets 431.
    pub max_header_size: ByteSize,
    /// Largest request head (request line and all headers); a larger one gets 431.
    pub max_head_size: ByteSize,
    /// Slowest average rate (bytes per second) a request body may arrive at, after a first
    /// `timeouts.client_body` of grace; a slower body gets 408. 0 = no minimum.
    pub min_body_rate: ByteSize,
    /// Accept HTTP/2 (ALPN `h2` over TLS, prior-knowledge h2c on plain TCP).
    pub http2: bool,
    /// Streams one HTTP/2 connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub http2_max_streams: u32,
    /// Streams an HTTP/2 client may cancel on one connection (a burst, refilled at a tenth of it
    /// per second) before the connection is closed with GOAWAY (reset flood guard).
    pub http2_max_cancels: u32,
    /// Response header that carries the request id on every answer (the upstream's own value
    /// under that name moves to `x-upstream-request-id`).
    pub request_id_header: String,
    /// New connections one client address may open, e.g. `20/s` (burst: the same count); more
    /// are closed as soon as they are accepted. Trusted proxies are exempt. Unset: no limit.
    pub new_connections_per_ip: Option<Rate>,
    /// Forward request header values with bytes outside visible ASCII, space and tab (obs-text,
    /// 0x80–0xFF, e.g. Latin-1 or raw UTF-8). Off: such headers are dropped when the request
    /// arrives, before policies and upstreams see them (servers disagree on what they mean).
    pub allow_obs_text: bool,
    /// Security headers on every answer.
    pub response_headers: ResponseHeadersConfig,
    /// Cross-origin access for browser clients; unset: none.
    pub cors: Option<CorsConfig>,
    pub timeouts: Timeouts,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 8317))),
            workers: 0,
            tls: None,
            trusted_proxies: Vec::new(),
            real_ip_header: RealIpHeader::XForwardedFor,
            max_body: ByteSize(50 * 1024 * 1024),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_header_size: ByteSize(8 << 10),
            max_head_size: ByteSize(32 << 10),
            min_body_rate: ByteSize(1 << 10),
            http2: true,
            http2_max_streams: 100,
            http2_max_cancels: 100,
            allow_obs_text: false,
            request_id_header: "x-request-id".to_owned(),
            new_connections_per_ip: None,
            response_headers: ResponseHeadersConfig::default(),
            cors: None,
            timeouts: Timeouts::default(),
        }
    }
}

/// Which header a trusted proxy uses to pass the client address.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RealIpHeader {
    /// Walk `X-Forwarded-For` from the right, skipping trusted proxies (nginx `real_ip_recursive on`).
    XForwardedFor,
    /// Take `X-Real-IP` as set by the trusted proxy.
    XRealIp,
}

/// Every timeout the gateway enforces.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time a client has to send the complete request head (slowloris guard): from accept until
    /// the first request head, whatever the protocol, and for each later HTTP/1 head.
    pub client_header: Duration,
    /// Longest a connection may stay open with no request in flight (idle keep-alive, idle
    /// HTTP/2); then HTTP/1 is closed and HTTP/2 gets GOAWAY.
    pub client_idle: Duration,
    /// Longest the gateway may be unable to write anything to a client (a reader that stopped
    /// reading, an HTTP/2 stream with a zero window); then the exchange ends and the upstream
    /// request is cancelled.
    pub client_write: Duration,
    /// Longest gap between two chunks of a request body.
    pub client_body: Duration,
    /// Time a client has to finish the TLS handshake.
    pub tls_handshake: Duration,
    /// Interval of HTTP/2 PINGs to a client that has sent nothing for this long, to find dead
    /// peers (a client behind a NAT that dropped the flow, a host that vanished).
    pub http2_keepalive: Duration,
    /// How long an HTTP/2 PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// Time to open a TCP (and TLS) connection to an upstream.
    pub connect: Duration,
    /// Time from sending the request until the upstream's response head arrives.
    pub response_head: Duration,
    /// Longest gap between two chunks of an upstream response body (streams may last long;
    /// silence is what counts).
    pub idle: Duration,
    /// On SIGTERM/ctrl-c, how long in-flight requests and streams may take to finish.
    pub shutdown_grace: Duration,
    /// On SIGTERM/ctrl-c, how long the gateway goes on accepting and serving while `/ready`
    /// answers 503 `draining`, before it stops accepting: time for a load balancer that polls
    /// `/ready` to stop sending it traffic (0: stop accepting at once).
    pub drain_delay: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_header: Duration::secs(30),
            client_idle: Duration::secs(60),
            client_write: Duration::secs(60),
            client_body: Duration::secs(60),
            tls_handshake: Duration::secs(10),
            http2_keepalive: Duration::secs(30),
            http2_keepalive_timeout: Duration::secs(20),
            connect: Duration::secs(10),
            response_head: Duration::secs(300),
            idle: Duration::secs(300),
            shutdown_grace: Duration::secs(30),
            drain_delay: Duration::secs(0),
        }
    }
}

/// TLS termination. Files are re-read when they change on disk.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first), e.g. certbot's `fullchain.pem`.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client API keys.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Server secret: keys are identified by `HMAC-SHA256(secret, key)`. Changing it changes
    /// every key id.
    pub secret: Secret,
    pub keys: Vec<KeyConfig>,
}

/// One client API key, given either as the key itself or as its key id.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// The key as clients send it (use `${ENV}`).
    pub key: Option<Secret>,
    /// Hex `HMAC-SHA256(secret, key)` (`tollgate key-id`), so the file need not hold the key.
    pub key_id: Option<String>,
}

/// One upstream account or server.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    #[serde(deserialize_with = "env::string")]
    pub name: String,
    /// Base URL; exactly one of `url` and `mock` is set.
    pub url: Option<UpstreamUrl>,
    /// The built-in mock upstream (canned completions, for trying the gateway without an account).
    pub mock: Option<MockConfig>,
    /// Credential sent upstream in place of the client's key; empty sends none.
    #[serde(default)]
    pub credential: Secret,
    #[serde(default)]
    pub auth_scheme: AuthScheme,
    /// Models served: exact names or prefixes ending in `*`. Empty serves every model.
    #[serde(default)]
    pub models: Vec<String>,
    #[serde(default = "one")]
    pub weight: u32,
    /// Consecutive failures (connect error, timeout, 5xx) that mark the upstream unhealthy.
    #[serde(default = "three")]
    pub max_fails: u32,
    /// How long an unhealthy upstream is skipped before it is tried again.
    #[serde(default = "ten_seconds")]
    pub fail_timeout: Duration,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}
fn ten_seconds() -> Duration {
    Duration::secs(10)
}

/// How the upstream credential is presented.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AuthScheme {
    /// `Authorization: Bearer <credential>` (OpenAI and compatibles).
    #[default]
    Bearer,
    /// `x-api-key: <credential>` (Anthropic).
    XApiKey,
}

/// Built-in mock upstream behaviour.
#[derive(Debug, Deserialize, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Text of every completion.
    #[serde(deserialize_with = "env::string")]
    pub reply: String,
    /// Pause between streamed events, to make streaming visible.
    pub delay: Duration,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            reply: "Hello from Tollgate's built-in mock upstream. Configure a real upstream to talk to a model.".into(),
            delay: Duration(std::time::Duration::from_millis(20)),
        }
    }
}

/// Maps a path prefix to a pool of upstreams.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Requests whose path starts with this are served by the route; the longest prefix wins.
    #[serde(deserialize_with = "env::string")]
    pub path_prefix: String,
    /// Upstream names, in order of preference.
    pub upstreams: Vec<String>,
    /// Upstreams tried for one request when earlier ones fail before answering (or a quota
    /// policy asks for another).
    #[serde(default = "two")]
    pub max_attempts: u32,
    /// Hold a streamed (SSE) response until its first event and show that event to the route's
    /// quota policy, so an error sent inside a 200 stream can still fail over. Adds the time to
    /// the first event to the time to first byte.
    #[serde(default)]
    pub stream_bootstrap: bool,
    /// `inject`: streaming OpenAI chat/text completion requests that do not ask for usage get
    /// `stream_options.include_usage: true` (so their tokens are counted), and the usage-only
    /// chunk this adds is taken out before the client sees it. `pass` (default): bodies go as
    /// the client sent them.
    #[serde(default)]
    pub stream_usage: StreamUsage,
    /// Plugin names, run in this order within their phase: ip-binding, then header-rewrite, then
    /// the router (at most one), then quota (at most one) on each upstream answer.
    #[serde(default)]
    pub policies: Vec<String>,
    /// Shadow evaluation: live policy name → candidate plugin of the same kind. The candidate is
    /// called in the background with the live call's inputs after the live decision, which
    /// alone decides the request; the two decisions are compared (agreement and a sample of
    /// disagreements in the admin API and metrics). A candidate runs dry: it cannot make
    /// bindings, and its decisions are never applied.
    #[serde(default)]
    pub shadow: std::collections::BTreeMap<String, String>,
    /// Methods the route accepts; others get 405 with an `Allow` header.
    #[serde(default = "default_methods")]
    pub methods: Vec<HttpMethod>,
    /// IP allow and deny lists of this route, checked after the global ones (`access`).
    #[serde(default)]
    pub access: AccessConfig,
    /// Maintenance mode for this route alone (see `maintenance`, whose `retry_after` and
    /// `message` it uses).
    #[serde(default)]
    pub maintenance: bool,
    /// Largest prompt a request may bring, in tokens estimated from its body's size
    /// (`limits.estimate.bytes_per_token`); a larger one gets 400 `context_length_exceeded`
    /// before any upstream is tried. Unset: no cap.
    #[serde(default)]
    pub max_request_tokens: Option<std::num::NonZeroU64>,
}

fn two() -> u32 {
    2
}

fn default_methods() -> Vec<HttpMethod> {
    ["GET", "POST", "HEAD", "OPTIONS", "DELETE"]
        .into_iter()
        .map(|m| HttpMethod(http::Method::from_bytes(m.as_bytes()).expect("valid method")))
        .collect()
}

/// An HTTP method name, as written in the config (`GET`, `POST`, …; case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMethod(pub http::Method);

impl schemars::JsonSchema for HttpMethod {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HttpMethod".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[A-Z]+$",
            "description": "an HTTP method in capitals, e.g. GET or POST"
        })
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let raw = String::deserialize(d)?;
        if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(D::Error::custom(format!(
                "invalid method {raw:?} (expected e.g. GET or POST, in capitals)"
            )));
        }
        http::Method::from_bytes(raw.as_bytes())
            .map(Self)
            .map_err(|e| D::Error::custom(format!("invalid method {raw:?}: {e}")))
    }
}

/// What happens to a request the stores cannot decide (a first use while the database is down, or a
/// key neither the cache nor the database can answer for).
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Failsafe {
    /// Refuse with 503.
    #[default]
    Closed,
    /// Let it through (no binding is made) and log it.
    Open,
}

/// Stores: see `tollgate::state`.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Source of truth for bindings and the intercept log.
    pub database: DatabaseUrl,
    /// Cache, counters and plugin key-value data. Never the source of truth for bindings.
    /// `memory`, or Redis: one server, Sentinel or Cluster (docs/state.md, "Redis").
    pub cache: CacheUrl,
    /// TLS to Redis (`rediss…` URLs): the CA to trust instead of the system's, and a client
    /// certificate for mutual TLS.
    pub redis_tls: RedisTls,
    pub failsafe: Failsafe,
    /// How often batched `last_used` updates and intercepts are written.
    pub flush_interval: Duration,
    /// How long a binding read from the database is served from the cache.
    pub binding_cache_ttl: Duration,
    /// Active bindings unused for this many days are archived (0 = never); the key binds afresh
    /// on its next request. Banned keys are never archived.
    pub archive_days: u32,
    /// How often the archive job runs.
    pub retention_interval: Duration,
    /// Longest a single database or cache operation may take before it counts as a failure.
    pub op_timeout: Duration,
    /// Where compiled plugins are kept (wasmtime's compilation cache, keyed by the module's
    /// bytes, the wasmtime build and its settings), so a restart does not compile an unchanged
    /// plugin again. `auto`: `$CACHE_DIRECTORY` (systemd's `CacheDirectory=`), else
    /// `$XDG_CACHE_HOME/tollgate`, else `$HOME/.cache/tollgate`; `off`: no cache; else a
    /// directory (relative to the config file). Entries are loaded as machine code: it must be
    /// writable only by the gateway's user (created 0700; one writable by group or others is
    /// not used). Read at start.
    pub plugin_cache: PluginCache,
}

/// `storage.plugin_cache`: `auto`, `off` or a directory.
#[derive(Debug, Deserialize, Clone, PartialEq, Eq, schemars::JsonSchema)]
#[serde(transparent)]
pub struct PluginCache(pub String);

impl Default for PluginCache {
    fn default() -> Self {
        Self("auto".into())
    }
}

impl PluginCache {
    /// The directory to use, if any: `base` resolves a relative path; `env` reads the
    /// environment (`std::env::var_os` outside tests).
    pub fn dir(
        &self,
        base: &Path,
        env: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Option<PathBuf> {
        match self.0.as_str() {
            "off" | "" => None,
            "auto" => {
                let set = |name: &str| env(name).filter(|v| !v.is_empty()).map(PathBuf::from);
                // systemd may list several directories, separated by ':'; the first is ours.
                if let Some(d) = set("CACHE_DIRECTORY") {
                    let first = d
                        .to_string_lossy()
                        .split(':')
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    return Some(PathBuf::from(first));
                }
                set("XDG_CACHE_HOME")
                    .filter(|d| d.is_absolute())
                    .map(|d| d.join("tollgate"))
                    .or_else(|| set("HOME").map(|h| h.join(".cache/tollgate")))
            }
            dir => Some(base.join(dir)),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            database: DatabaseUrl::Sqlite("tollgate.db".into()),
            cache: CacheUrl::Memory,
            failsafe: Failsafe::Closed,
            flush_interval: Duration::secs(2),
            binding_cache_ttl: Duration::secs(300),
            archive_days: 90,
            retention_interval: Duration::secs(3600),
            op_timeout: Duration(std::time::Duration::from_millis(1000)),
            plugin_cache: PluginCache::default(),
            redis_tls: RedisTls::default(),
        }
    }
}

/// `storage.redis_tls`: certificates for `rediss…` caches. Paths are relative to the config
/// file. Read at start.
#[derive(Debug, Deserialize, Clone, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTls {
    /// PEM file of the CA(s) that signed the Redis servers' certificates; the system's trust
    /// store when unset.
    #[serde(deserialize_with = "env::opt_path")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain, for servers that require one (`tls-auth-clients yes`).
    #[serde(deserialize_with = "env::opt_path")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(deserialize_with = "env::opt_path")]
    pub key: Option<PathBuf>,
}

/// Alerts on repeated intercepts: when one key is refused `threshold` times within `window`, a
/// JSON document is POSTed to `webhook`, once per key per window.
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhook: Option<UpstreamUrl>,
    pub threshold: u32,
    pub window: Duration,
    /// Delivery attempts after the first (0–10, default 5). The waits double from 500 ms up to
    /// 30 s, each shortened by a random part of up to half (jitter).
    pub retries: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            threshold: 5,
            window: Duration::secs(600),
            retries: 5,
        }
    }
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `tollgate=debug`.
    #[serde(deserialize_with = "env::string")]
    pub level: String,
    pub format: LogFormat,
    /// One JSON line per request on the `access` target.
    pub access_log: bool,
    /// Write the log (access and audit lines included) to rotated files instead of stderr, for
    /// hosts without journald.
    pub file: Option<LogFileConfig>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Json,
            access_log: true,
            file: None,
        }
    }
}

/// Rotated log files: `path`, then `path.1` (newest) to `path.<max_files>`. A file is rotated when
/// it passes `max_total_size / (max_files + 1)`, so all of them together stay within
/// `max_total_size` (plus at most one line).
#[derive(Debug, Deserialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogFileConfig {
    /// Relative paths are resolved against the config file's directory.
    pub path: PathBuf,
    #[serde(default = "default_log_total")]
    pub max_total_size: ByteSize,
    /// Rotated files kept besides the current one.
    #[serde(default = "default_log_files")]
    pub max_files: u32,
}

fn default_log_total() -> ByteSize {
    ByteSize(1 << 30)
}

fn default_log_files() -> u32 {
    9
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Json,
    Text,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path such as `routes[0].upstreams[1]`; empty for the document itself.
    pub path: String,
    /// 1-based line and column, when known.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        match self.location {
            Some((line, col)) => write!(f, "{path} (line {line}, column {col}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    pub source_name: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`, expanding `${VAR}` from the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let name = path.display().to_string();
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            source_name: name.clone(),
            errors: vec![ConfigError {
                path: String::new(),
                location: None,
                message: format!("cannot read file: {e}"),
            }],
        })?;
        let mut config = Self::parse(&text, &name, Box::new(env_file::var))?;
        config.base_dir = base_dir;
        Ok(config)
    }

    /// `path` as given, or relative to the config file's directory.
    /// `module` with a relative file path made relative to the config file's directory.
    pub fn resolve_module(&self, module: &Module) -> Module {
        match module {
            Module::File(path) => Module::File(self.resolve(path)),
            builtin @ Module::Builtin(_) => builtin.clone(),
        }
    }

    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Parses and validates `text`; `lookup` supplies `${VAR}` values.
    pub fn parse(
        text: &str,
        source_name: &str,
        lookup: env::EnvSource,
    ) -> Result<Self, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            source_name: source_name.to_owned(),
            errors,
        };
        let config = env::with_lookup(lookup, || deserialize(text)).map_err(|e| fail(vec![e]))?;
        let errors = validate::validate(&config);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(fail(errors))
        }
    }
}

fn deserialize(text: &str) -> Result<Config, ConfigError> {
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let mut path = err.path().to_string();
        if path == "." {
            path.clear();
        }
        let inner = err.into_inner();
        let location = inner.location().map(|l| (l.line(), l.column()));
        let mut message = inner.to_string();
        // The location is reported separately; drop the parser's own " at line N column M".
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // The parser prefixes its own, coarser path ("server.trusted_proxies: …"); ours is exact.
        if let Some((theirs, rest)) = message.split_once(": ")
            && !theirs.contains(' ')
            && path.starts_with(theirs)
        {
            message = rest.to_owned();
        }
        // A syntax error has no key yet; serde_path_to_error marks that segment `?`.
        while let Some(stripped) = path.strip_suffix(".?").or_else(|| path.strip_suffix('?')) {
            path = stripped.to_owned();
        }
        ConfigError {
            path,
            location,
            message,
        }
    })
}

impl UpstreamConfig {
    /// Whether this upstream serves `model` (exact name or `prefix*`; empty list serves all).
    pub fn serves(&self, model: &str) -> bool {
        self.models.is_empty()
            || self.models.iter().any(|m| match m.strip_suffix('*') {
                Some(prefix) => model.starts_with(prefix),
                None => m == model,
            })
    }
}

#[cfg(test)]
mod tests;
