//! `routes:`: path prefixes, their upstreams, policies and per-route settings.

use crate::AccessConfig;

use serde::Deserialize;

use crate::env;

/// A route's handling of usage in OpenAI streams (see `RouteConfig::stream_usage`).
#[derive(
    Debug, Deserialize, serde::Serialize, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum StreamUsage {
    #[default]
    Pass,
    Inject,
}

/// Maps a path prefix to a pool of upstreams.
#[derive(Debug, Deserialize, serde::Serialize, schemars::JsonSchema)]
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
    /// Bodies kept in the request log for this route, instead of the top-level `capture`.
    #[serde(default)]
    pub capture: Option<crate::CaptureConfig>,
    /// Maintenance mode for this route alone (see `maintenance`, whose `retry_after` and
    /// `message` it uses).
    #[serde(default)]
    pub maintenance: bool,
    /// Largest prompt a request may bring, in tokens estimated from its body's size
    /// (`limits.estimate.bytes_per_token`); a larger one gets 400 `context_length_exceeded`
    /// before any upstream is tried. Unset: no cap.
    #[serde(default)]
    pub max_request_tokens: Option<std::num::NonZeroU64>,
    /// Model fallbacks: model → the models to try next, in order (`gpt-4o: [gpt-4o-mini]`).
    /// When every attempt at a model fails retryably (connect error, 429, 5xx, an error event
    /// before the first token under `stream_bootstrap`), the request is sent again with the next
    /// model named in its body, to the route's upstreams that serve that model, each model with
    /// up to `max_attempts` attempts. Needs a body read whole (JSON).
    #[serde(default)]
    pub fallbacks: std::collections::BTreeMap<String, Vec<String>>,
}

impl RouteConfig {
    /// The models to try after `model`, in order (empty when none are configured).
    pub fn fallbacks_for(&self, model: &str) -> &[String] {
        self.fallbacks.get(model).map_or(&[], Vec::as_slice)
    }
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
