//! `server:`: the data plane's listener, connection and head limits, timeouts, TLS.

use crate::{
    ByteSize, Cidr, Config, CorsConfig, Duration, Errors, ListenAddr, MAX_WORKERS, Rate,
    ResponseHeadersConfig,
};
use std::path::PathBuf;

use serde::Deserialize;

/// Listener, client identity and limits.
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: ListenAddr,
    /// Threads serving the data plane, each with its own event loop and upstream connection
    /// pool, all accepting from the one listening socket; a connection goes to the thread that
    /// serves the fewest. 0 = one per CPU core.
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
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum RealIpHeader {
    /// Walk `X-Forwarded-For` from the right, skipping trusted proxies (nginx `real_ip_recursive on`).
    XForwardedFor,
    /// Take `X-Real-IP` as set by the trusted proxy.
    XRealIp,
}

/// Every timeout the gateway enforces.
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
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
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first), e.g. certbot's `fullchain.pem`.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

pub(crate) fn validate(c: &Config, e: &mut Errors) {
    let s = &c.server;
    if s.max_body.0 == 0 {
        e.add("server.max_body", "must be greater than 0");
    }
    if s.workers > MAX_WORKERS {
        e.add(
            "server.workers",
            format!("must be at most {MAX_WORKERS} (0 = one per CPU core)"),
        );
    }
    if s.max_connections == 0 {
        e.add("server.max_connections", "must be greater than 0");
    }
    if s.max_head_size.0 < 1024 {
        e.add("server.max_head_size", "must be at least 1KiB");
    }
    if http::HeaderName::from_bytes(s.request_id_header.as_bytes()).is_err() {
        e.add(
            "server.request_id_header",
            format!("{:?} is not an HTTP header name", s.request_id_header),
        );
    }
    if s.max_header_size.0 == 0 || s.max_header_size.0 > s.max_head_size.0 {
        e.add(
            "server.max_header_size",
            "must be greater than 0 and at most server.max_head_size",
        );
    }
    if s.http2_max_streams == 0 {
        e.add("server.http2_max_streams", "must be greater than 0");
    }
    let admin = &c.admin;
    if admin.enabled && admin.listen.0.port() != 0 && admin.listen == s.listen {
        e.add(
            "admin.listen",
            "must differ from server.listen (the admin plane has its own listener)",
        );
    }
    let t = &s.timeouts;
    for (name, d) in [
        ("client_header", t.client_header),
        ("client_idle", t.client_idle),
        ("client_write", t.client_write),
        ("client_body", t.client_body),
        ("tls_handshake", t.tls_handshake),
        ("http2_keepalive", t.http2_keepalive),
        ("http2_keepalive_timeout", t.http2_keepalive_timeout),
        ("connect", t.connect),
        ("response_head", t.response_head),
        ("idle", t.idle),
    ] {
        if d.get().is_zero() {
            e.add(format!("server.timeouts.{name}"), "must be greater than 0");
        }
    }
}
