//! Edge protection: request and token rate limits, concurrency limits, IP allow/deny lists,
//! response (security) headers, CORS and maintenance mode. What each does on the request path is
//! in `docs/limits.md` ("Edge protection").

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::types::{Cidr, Duration};

/// `N/s`, `N/m`, `N/h` or `N/d` (also `r/s` style: `10r/s`): a count per period.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: std::time::Duration,
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .trim()
            .split_once('/')
            .ok_or("expected N/s, N/m, N/h or N/d")?;
        let n = n.trim().trim_end_matches('r');
        let count: u64 = n
            .parse()
            .map_err(|_| format!("{n:?} is not a whole number"))?;
        if count == 0 {
            return Err("the count must be at least 1".into());
        }
        let secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            other => return Err(format!("unknown unit {other:?} (s, m, h or d)")),
        };
        Ok(Self {
            count,
            period: std::time::Duration::from_secs(secs),
        })
    }
}

impl fmt::Display for Rate {
    /// As it is written: `10/s`, `600/m`, `5/h`, `1000/d`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "m",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::types::parse_expanded(d, "rate", "\"10/s\" or \"600/m\"")
    }
}

impl schemars::JsonSchema for Rate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "description": "a count per period: \"10/s\", \"600/m\", \"5/h\" or \"1000/d\""})
    }
}

/// What a limit counts separately.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Hash, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum LimitBy {
    /// The trusted client IP (checked before authentication).
    Ip,
    /// The client's API key.
    Key,
    /// The API key and the model the request names.
    KeyModel,
    /// The route: one limit shared by every client of the route.
    Route,
}

impl LimitBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Key => "key",
            Self::KeyModel => "key-model",
            Self::Route => "route",
        }
    }
}

/// All limits. Each list entry is one limit; a request must pass every limit that applies to it.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Request rate limits (nginx `limit_req`).
    pub requests: Vec<RequestLimit>,
    /// Token limits (tokens per minute, per day, …), reserved at admission and reconciled with
    /// the usage the upstream reports.
    pub tokens: Vec<TokenLimit>,
    /// Requests one key (or key × model) may have in flight at once, per gateway.
    pub in_flight: Vec<InFlightLimit>,
    /// Keys whose state each limit keeps in process; past it the least recently seen key is
    /// forgotten (its next request starts with a full bucket). With `storage.cache: redis://…`
    /// the state lives in Redis (shared by the cluster) and this bounds only the fallback.
    pub max_tracked_keys: usize,
    /// How a request's token reservation is estimated.
    pub estimate: TokenEstimate,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests: Vec::new(),
            tokens: Vec::new(),
            in_flight: Vec::new(),
            max_tracked_keys: 100_000,
            estimate: TokenEstimate::default(),
        }
    }
}

/// Which requests a limit applies to; empty lists mean all.
#[derive(Debug, Deserialize, serde::Serialize, Clone, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitScope {
    /// Route `path_prefix`es the limit applies to.
    pub routes: Vec<String>,
    /// Key names (`auth.keys[].name`) the limit applies to (not for `by: ip`).
    pub keys: Vec<String>,
}

/// One request rate limit, with nginx `limit_req` semantics.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestLimit {
    /// Names the limit in logs and metrics.
    pub name: String,
    pub by: LimitBy,
    /// Sustained rate, e.g. `10/s` or `600/m`.
    pub rate: Rate,
    /// Requests beyond the rate accepted at once (nginx `burst`).
    #[serde(default)]
    pub burst: u32,
    /// `true` (default): burst requests are served at once (nginx `nodelay`). `false`: they are
    /// delayed to the rate before they are forwarded.
    #[serde(default = "yes")]
    pub nodelay: bool,
    #[serde(default, flatten)]
    pub scope: LimitScope,
}

fn yes() -> bool {
    true
}

/// When a token limit acts on a stream.
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Enforce {
    /// At admission only: a request that overruns its reservation finishes, and the overrun is
    /// charged (the next requests wait longer).
    #[default]
    Admission,
    /// Also while the answer streams: a stream that passes its reservation is ended with a final
    /// SSE error event.
    Strict,
}

/// One token rate limit.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenLimit {
    pub name: String,
    /// `key` or `key-model`.
    pub by: LimitBy,
    /// Tokens (prompt and completion) per period, e.g. `100000/m` or `2000000/d`.
    pub tokens: Rate,
    #[serde(default)]
    pub enforce: Enforce,
    #[serde(default, flatten)]
    pub scope: LimitScope,
}

/// One concurrency limit.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InFlightLimit {
    pub name: String,
    /// `key` or `key-model`.
    pub by: LimitBy,
    /// Requests in flight at once (until their answer has been relayed or abandoned).
    pub max: u32,
    #[serde(default, flatten)]
    pub scope: LimitScope,
}

/// The reservation of a request at admission: its `max_completion_tokens` (or `max_tokens`, or
/// `max_output_tokens`, or `default_max_tokens` when it names none) plus its body size divided by
/// `bytes_per_token`.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TokenEstimate {
    pub bytes_per_token: u32,
    pub default_max_tokens: u32,
    /// A request under a token limit that names no completion budget is forwarded with
    /// `default_max_tokens` as its budget (`max_completion_tokens` for chat completions,
    /// `max_output_tokens` for responses, `max_tokens` otherwise), so an upstream that honours it
    /// cannot produce more than was reserved. Off: forwarded as sent; the overrun is charged
    /// after the answer.
    pub clamp: bool,
}

impl Default for TokenEstimate {
    fn default() -> Self {
        Self {
            bytes_per_token: 4,
            default_max_tokens: 1024,
            clamp: true,
        }
    }
}

/// IP allow and deny lists. The most specific network that matches the client decides (a deny
/// wins a tie); a client no entry matches is allowed, unless `allow` has entries.
#[derive(Debug, Deserialize, serde::Serialize, Clone, Default, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub allow: Vec<Cidr>,
    pub deny: Vec<Cidr>,
}

/// Headers set on every data-plane answer, the gateway's own errors included.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseHeadersConfig {
    /// `Strict-Transport-Security` value, sent only on TLS connections; empty sends none.
    pub hsts: String,
    /// Header name → value, set on every answer (replacing an upstream's value of that name).
    pub set: BTreeMap<String, String>,
}

impl Default for ResponseHeadersConfig {
    fn default() -> Self {
        Self {
            hsts: String::new(),
            set: [
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "DENY"),
                ("referrer-policy", "no-referrer"),
                ("cache-control", "no-store"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }
    }
}

/// Cross-origin access for browser clients. Absent: no CORS headers; preflights are routed like
/// any request.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `*` for any.
    pub allow_origins: Vec<String>,
    #[serde(default = "cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default = "cors_headers")]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (not with `*`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "cors_max_age")]
    pub max_age: Duration,
}

fn cors_methods() -> Vec<String> {
    ["GET", "POST", "OPTIONS"].map(String::from).to_vec()
}
fn cors_headers() -> Vec<String> {
    [
        "authorization",
        "content-type",
        "x-api-key",
        "anthropic-version",
        "x-request-id",
    ]
    .map(String::from)
    .to_vec()
}
fn cors_max_age() -> Duration {
    Duration::secs(600)
}

/// Maintenance mode: proxied requests get 503 `service_unavailable` with `Retry-After`, while
/// `/health` stays up and `/ready` answers 503 `maintenance`. Also a live setting of the admin
/// API (`maintenance`), which turns it on for every gateway of a cluster.
#[derive(Debug, Deserialize, serde::Serialize, Clone, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    pub enabled: bool,
    /// What `Retry-After` tells clients.
    pub retry_after: Duration,
    pub message: String,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            retry_after: Duration::secs(300),
            message: "the service is down for maintenance; retry later".into(),
        }
    }
}
