//! What one request carries through the pipeline: the [`Session`] while the request is decided,
//! and its [`Ctx`] (the [`RequestRecord`] and filters' per-request data), which the response body
//! takes over and hands to [`super::Filter::on_done`] when the request ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::auth::ClientKey;
use super::route::{Route, Runtime};
pub use super::tokens::{RecordedTokens, TokenMeter, Tokens};
use crate::listen::ConnInfo;
use crate::policy::RequestInfo;
use crate::upstream::InFlight;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response was sent.
    Complete,
    /// The client went away before the response finished.
    ClientAborted,
    /// The upstream failed or went silent mid-body; the client got a truncated response.
    UpstreamAborted,
    /// The gateway answered itself with an error (refused, or could not proxy), and sent it.
    Refused,
    /// The gateway ended a stream it was relaying (a strict token limit), with a final error
    /// event.
    Cut,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::ClientAborted => "client_aborted",
            Self::UpstreamAborted => "upstream_aborted",
            Self::Refused => "refused",
            Self::Cut => "cut",
        }
    }
}

/// One call of a policy plugin during a request.
#[derive(Debug)]
pub struct PolicyCall {
    /// `plugin:NAME`.
    pub policy: Arc<str>,
    pub began: Instant,
    pub took: Duration,
    /// The call failed (trap, deadline, breaker); its `on_error` decided.
    pub failed: bool,
    /// What it decided, where the request log keeps it.
    pub decision: Option<serde_json::Value>,
}

/// The facts of one request, filled in as the pipeline learns them; what `on_done` filters
/// (the access log, later metrics and audit) read.
#[derive(Debug)]
pub struct RequestRecord {
    pub request_id: Arc<str>,
    pub start: Instant,
    pub client_ip: IpAddr,
    pub method: http::Method,
    /// The request's URI, its path normalised.
    pub uri: http::Uri,
    pub http_version: http::Version,
    /// The client's key, once authenticated (its name is bounded: a metrics label; its id is
    /// never logged whole).
    pub key: Option<Arc<ClientKey>>,
    pub route: Option<Arc<str>>,
    /// As the client named it, cut to `error::MAX_ECHO` characters.
    pub model: Option<Arc<str>>,
    /// The model the last attempt's body named, when not the client's: a transform renamed it
    /// (an alias) or the request fell back to it (`routes[].fallbacks`).
    pub routed_model: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub attempts: u32,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Time to open the upstream connection (0 when a pooled one was reused).
    pub upstream_connect: Option<Duration>,
    /// From the start of the request until the upstream's response head.
    pub upstream_head: Option<Duration>,
    /// From the start of the request until the first body byte went to the client.
    pub first_byte: Option<Duration>,
    /// Why the gateway answered itself, when it did (the error's `code`).
    pub error: Option<&'static str>,
    /// What answered instead of an upstream, or ended its answer: a pipeline step (`screen`,
    /// `route`, `auth`, `body`, `select`, `upstream`) or a filter (its name; a limit names
    /// itself, `limits:NAME`; a policy `plugin:NAME`).
    pub answered_by: Option<Arc<str>>,
    /// A policy's own refusal code, as the client got it (`error` is then `policy_denied`, a
    /// bounded metrics label).
    pub policy_code: Option<Arc<str>>,
    /// Each upstream attempt, in order.
    pub attempt_log: Vec<crate::state::Attempt>,
    /// Each policy call, in order: the request log's `decisions` and the trace's spans.
    pub policy_calls: Vec<PolicyCall>,
    /// Tokens the upstream's answer reported, set when the request ends (`tokens.rs`).
    pub tokens: Option<RecordedTokens>,
    /// The model the upstream's answer named (`tokens.rs`), set when the request ends.
    pub served_model: Option<Box<str>>,
    /// What those tokens cost, in billionths of `pricing.currency`: set in `on_done` by the
    /// `pricing` filter (first in the chain); `None` when the model has no price.
    pub cost_nanos: Option<u64>,
    pub outcome: Outcome,
    /// From `start` to the request's end: read once when it ends, before the `on_done` filters
    /// (zero until then).
    pub took: Duration,
    /// Unix ms when the request ended, read with `took` (0 until then).
    pub ended_ms: u64,
}

/// The per-request context that outlives the decision: it travels with the response body.
pub struct Ctx {
    pub record: RequestRecord,
    /// Filters' own per-request data, keyed by type (e.g. state fed by `on_body_chunk` and read
    /// in `on_done`). Allocates only when a filter inserts something.
    pub ext: http::Extensions,
    /// Holds the upstream's in-flight count for as long as the response is relayed.
    pub(super) in_flight: Option<InFlight>,
    /// Reads the tokens of an upstream's answer as it is relayed.
    pub(super) meter: Option<TokenMeter>,
    /// Set by [`Ctx::end_stream`]: the last frame the client gets.
    pub(super) cut: Option<bytes::Bytes>,
    /// Set by [`Ctx::wait_for`]: what the relay waits for before the frame goes on.
    pub(super) wait: Option<Wait>,
    /// Set by [`Ctx::read_whole_body`]: the upstream's body is read whole, up to this many
    /// bytes, for the `on_response_body` filters.
    pub(super) read_whole: Option<usize>,
}

/// What an `on_body_chunk` filter does to the request once the wait it asked for is over (e.g.
/// record a grant, or [`Ctx::end_stream`]), with the frame it held (which it may replace).
pub type Resume = Box<dyn FnOnce(&mut Ctx, &mut bytes::Bytes) + Send>;

/// A wait an `on_body_chunk` filter asked for ([`Ctx::wait_for`]).
pub(super) type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = Resume> + Send>>;

impl Ctx {
    /// The tokens a streamed answer reported so far (for `on_body_chunk` filters that act while
    /// the stream runs); `None` before any count was seen and for a JSON answer, which is read at
    /// its end (then see `record.tokens`).
    pub fn tokens_seen(&self) -> Option<Tokens> {
        self.meter.as_ref().and_then(TokenMeter::seen)
    }

    /// `data:` events of a streamed answer relayed so far (0 for other answers).
    pub fn stream_events(&self) -> u64 {
        self.meter.as_ref().map_or(0, TokenMeter::events)
    }
}

impl Ctx {
    /// From an `on_body_chunk` filter: the frame being relayed is not sent; `last` is sent
    /// instead and ends the response (the upstream exchange is dropped), with `error` as the
    /// request's error code and the outcome [`Outcome::Cut`].
    pub fn end_stream(&mut self, last: bytes::Bytes, error: &'static str) {
        self.cut = Some(last);
        self.record.error = Some(error);
    }

    /// From an `on_body_chunk` filter: hold the frame being relayed until `until` completes (e.g.
    /// a round trip to the shared cache), then apply what it returns to this context, and only
    /// then run the filters after this one on the frame and send it. The upstream is not read
    /// meanwhile, so nothing passes the filter before it has decided. For the rare frame that
    /// needs it: a frame that does not wait costs nothing.
    pub fn wait_for(&mut self, until: impl std::future::Future<Output = Resume> + Send + 'static) {
        self.wait = Some(Box::pin(until));
    }

    /// From an `on_response_head` filter, on an upstream's answer: read its body whole (up to
    /// `limit` bytes; the largest limit asked for wins) and hand it to the `on_response_body`
    /// filters before the head is sent.
    pub fn read_whole_body(&mut self, limit: usize) {
        self.read_whole = Some(self.read_whole.map_or(limit, |l| l.max(limit)));
    }
}

impl RequestRecord {
    /// The model usage and cost are counted for: the one the upstream was asked for (after an
    /// alias or a fallback), else the one the client named.
    pub fn billed_model(&self) -> Option<&Arc<str>> {
        self.routed_model.as_ref().or(self.model.as_ref())
    }

    /// The normalised path.
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// Names what answered instead of an upstream, unless something already did (a filter may
    /// name itself more precisely before it refuses, e.g. `limits:per-ip`).
    pub fn answered_by(&mut self, by: &str) {
        if self.answered_by.is_none() {
            self.answered_by = Some(Arc::from(by));
        }
    }

    /// Notes a call of the policy `label` that started at `began`: whether it failed, and what
    /// it decided where that is worth keeping (a router's order, a quota verdict).
    pub fn policy_called(
        &mut self,
        label: &Arc<str>,
        began: Instant,
        failed: bool,
        decision: Option<serde_json::Value>,
    ) {
        self.policy_calls.push(PolicyCall {
            policy: label.clone(),
            began,
            took: began.elapsed(),
            failed,
            decision,
        });
    }

    /// Notes an upstream attempt that ended with `status` (0: none) or `error`.
    pub(crate) fn attempted(
        &mut self,
        upstream: &Arc<str>,
        status: u16,
        error: Option<&'static str>,
    ) {
        self.attempt_log.push(crate::state::Attempt {
            upstream: upstream.clone(),
            status,
            error,
            ms: self.start.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
        });
    }
}

impl Ctx {
    pub(super) fn new(
        request_id: Arc<str>,
        client_ip: IpAddr,
        parts: &http::request::Parts,
    ) -> Self {
        Self {
            record: RequestRecord {
                request_id,
                start: Instant::now(),
                client_ip,
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                http_version: parts.version,
                key: None,
                route: None,
                model: None,
                routed_model: None,
                upstream: None,
                attempts: 0,
                status: 0,
                bytes_in: 0,
                bytes_out: 0,
                upstream_connect: None,
                upstream_head: None,
                first_byte: None,
                error: None,
                answered_by: None,
                policy_code: None,
                attempt_log: Vec::new(),
                policy_calls: Vec::new(),
                tokens: None,
                served_model: None,
                cost_nanos: None,
                // Until the body says otherwise: a context dropped before its response reached
                // the client belongs to a client that left.
                outcome: Outcome::ClientAborted,
                took: Duration::ZERO,
                ended_ms: 0,
            },
            ext: http::Extensions::new(),
            in_flight: None,
            meter: None,
            cut: None,
            wait: None,
            read_whole: None,
        }
    }
}

/// The fields of a JSON request body the gateway acts on; everything else passes untouched.
#[derive(Deserialize, Default, Debug)]
pub struct Probe {
    /// Read into its shared form at once (one allocation), as the request's record keeps it.
    #[serde(default, deserialize_with = "shared_str")]
    pub model: Option<Arc<str>>,
    pub stream: Option<bool>,
    pub prompt_cache_key: Option<String>,
    pub user: Option<String>,
    /// Completion budgets, for token limit reservations.
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    /// The Responses API's budget.
    pub max_output_tokens: Option<u64>,
}

impl Probe {
    /// The completion budget the request names, if any.
    pub fn completion_budget(&self) -> Option<u64> {
        self.max_completion_tokens
            .or(self.max_tokens)
            .or(self.max_output_tokens)
    }
}

/// A JSON string (or null) as an `Arc<str>`, copied once from the body whether or not it had
/// escapes.
fn shared_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    struct Shared;
    impl<'v> serde::de::Visitor<'v> for Shared {
        type Value = Option<Arc<str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Arc::from(v)))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'v>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(Shared)
}

/// One request while the pipeline decides it.
pub struct Session<'a> {
    /// The config snapshot the request started with; it keeps it to the end.
    pub rt: &'a Runtime,
    pub conn: ConnInfo,
    /// The socket peer is a trusted proxy (its forwarding headers were believed).
    pub trusted_peer: bool,
    pub client_ip: IpAddr,
    pub request_id: Arc<str>,
    /// The request head: hop-by-hop headers removed, path normalised.
    pub head: http::request::Parts,
    /// Set from routing on.
    pub route: Option<&'a Route>,
    /// Set from authentication on.
    pub key: Option<Arc<ClientKey>>,
    /// Set when the body was read (empty when it streams).
    pub probe: Probe,
    /// The request as policies see it, built on first use ([`Session::policy_request`]).
    policy_view: Option<Arc<RequestInfo>>,
    pub ctx: Box<Ctx>,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        rt: &'a Runtime,
        conn: ConnInfo,
        trusted_peer: bool,
        client_ip: IpAddr,
        request_id: Arc<str>,
        head: http::request::Parts,
    ) -> Self {
        let ctx = Box::new(Ctx::new(request_id.clone(), client_ip, &head));
        Self {
            rt,
            conn,
            trusted_peer,
            client_ip,
            request_id,
            head,
            route: None,
            key: None,
            probe: Probe::default(),
            policy_view: None,
            ctx,
        }
    }

    /// The request as WebAssembly policies see it: built once, on the first call (after
    /// authentication), and shared by every policy of the request.
    pub fn policy_request(&mut self) -> Arc<RequestInfo> {
        if let Some(v) = &self.policy_view {
            return v.clone();
        }
        let (key_id, key_name) = self
            .key
            .as_ref()
            .map_or((String::new(), ""), |k| (k.hex.to_string(), &*k.name));
        let view = Arc::new(RequestInfo {
            model: self.probe.model.as_deref().map(str::to_owned),
            stream: self.probe.stream.unwrap_or(false),
            session_hint: self
                .probe
                .prompt_cache_key
                .clone()
                .or_else(|| self.probe.user.clone()),
            estimated_tokens: self.estimated_tokens(),
            upstream_protocol: self.upstream_protocol(),
            ..RequestInfo::new(
                &self.request_id,
                &self.head,
                self.client_ip,
                key_id,
                key_name,
            )
        });
        self.policy_view = Some(view.clone());
        view
    }

    /// From an `on_request_body` filter that replaced the body or the path: the model, stream
    /// flag and budget are read again from `body`, and the policies' view of the request is
    /// rebuilt on its next use, so routing and the filters after this one see the new request.
    /// The record keeps the model the client named.
    pub fn body_changed(&mut self, body: &[u8]) {
        self.probe = serde_json::from_slice(body).unwrap_or_default();
        self.policy_view = None;
    }

    /// What the route's upstreams that serve the model speak, when they all speak one API.
    pub fn upstream_protocol(&self) -> Option<&'static str> {
        let route = self.route?;
        let model = self.model();
        let mut serving = route.upstreams.iter().filter(|u| u.serves(model));
        let first = serving.next()?.config.protocol;
        serving
            .all(|u| u.config.protocol == first)
            .then_some(first.as_str())
    }

    /// The tokens this request may use: its prompt estimated from the body's size plus its
    /// completion budget (what upstream capacity and `request.estimated-tokens` count).
    pub fn estimated_tokens(&self) -> u64 {
        let (prompt, completion) = self.estimate();
        prompt.saturating_add(completion)
    }

    /// [`Session::estimated_tokens`] in its two parts, which are priced apart: the prompt
    /// (from the body's size) and the completion budget (`max_tokens`, else 0).
    pub fn estimate(&self) -> (u64, u64) {
        (
            self.ctx
                .record
                .bytes_in
                .div_ceil(self.rt.limits.bytes_per_token.max(1)),
            self.probe.completion_budget().unwrap_or(0),
        )
    }

    /// The model the client named, if any (in full; the record may hold it truncated).
    pub fn model(&self) -> Option<&str> {
        self.probe.model.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: &str) -> Result<Probe, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn the_probe_reads_the_model_escaped_or_not_and_only_as_a_string() {
        let p = probe(
            r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-4o","stream":true}"#,
        )
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("gpt-4o"));
        assert_eq!(p.stream, Some(true));
        assert_eq!(
            probe(r#"{"model":"a\"b\u00e9"}"#).unwrap().model.as_deref(),
            Some("a\"bé")
        );
        assert_eq!(probe(r#"{"model":null}"#).unwrap().model, None);
        assert_eq!(probe(r#"{"stream":false}"#).unwrap().model, None);
        for bad in [
            r#"{"model":5}"#,
            r#"{"model":["m"]}"#,
            r#"{"model":{"m":1}}"#,
        ] {
            assert!(probe(bad).is_err(), "{bad}");
        }
    }
}
