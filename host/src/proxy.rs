//! The request pipeline: one path for every proxied request, streaming or not.
//!
//! Phases, in order (each may end the request with a [`GatewayError`]):
//!
//! 1. **identify** — client IP from the socket, or from the trusted proxy's header
//!    ([`crate::client_ip`]); request id (a trusted proxy's `x-request-id`, else a new one).
//!    Then **screen**: the client's hop-by-hop headers (and any its `Connection` names) are
//!    removed before anything else reads the request, and the head is checked and its path
//!    normalised ([`crate::screen`]; 400/431).
//! 2. **route** — longest matching prefix of the normalised path; none → 404 `unknown_url`; a
//!    method the route does not list → 405 `method_not_allowed` with `Allow`.
//! 3. **authenticate** — the client's key by HMAC id; missing or unknown → 401 `invalid_api_key`,
//!    the same answer for both so keys cannot be probed.
//! 4. **read body** — JSON bodies are read whole (bounded by `max_body`, 413 past it; `client_body`
//!    idle limit and `min_body_rate`, 408) because routing needs `model` and failover needs to
//!    replay the body. On a route whose upstreams restrict models, every body is read whole and
//!    probed as JSON whatever its Content-Type. Other bodies (uploads) stream to the upstream
//!    under the same limits and are never replayed.
//! 5. **select** — the route's upstreams that serve the model, healthy ones first; none serves the
//!    model → 404 `model_not_found`; a body on a model-restricted route that names no readable
//!    model → 400 `model_required` (a request without a body names no model and may go to any). If every serving upstream is marked unhealthy they are tried
//!    anyway (nginx does the same), since a stale mark is better than a certain failure.
//! 6. **forward** — up to `max_attempts` upstreams in order. A failure to *connect* moves on to the
//!    next one (the request was never sent, so it is safe to repeat), and so does a quota policy's
//!    `retry-other`/`cooldown` (the upstream refused it). Otherwise, once sent, a timeout or a
//!    broken response is final (502/504): an LLM request may have been processed and billed.
//! 7. **relay** — the response head goes back with hop-by-hop headers removed and the request id
//!    set; the body is relayed frame by frame as it arrives (SSE events are never coalesced),
//!    under the `idle` limit. A client that goes away drops the relay, which drops the upstream
//!    request at once (h1: connection closed; h2: stream reset).
//!
//! Each request writes one access-log line when it ends ([`crate::access_log`]).

use std::sync::Arc;

use axum::response::IntoResponse;
use bytes::Bytes;
use http::{HeaderValue, Method, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde::Deserialize;

use crate::access_log::{AccessRecord, Logged};
use crate::auth::ClientKey;
use crate::body::{BodyError, BoxBody, GuardedBody, Prefixed};
use crate::config::{Failsafe, OnError};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Limits, PolicyRef, Route, Runtime};
use crate::headers::{self, Forwarding, X_REQUEST_ID};
use crate::policy::PolicyError;
use crate::policy::types::{
    AfterCooldown, BindingDecision, CooldownScope, QuotaDecision, RouteDecision,
};
use crate::policy_view::{self, RequestInfo, ResponseInfo};
use crate::screen;
use crate::server::ConnInfo;
use crate::state::{Intercept, KEY_ID_PREFIX_LEN, SharedCooldown};
use crate::upstream::{ConnectTiming, Target, Upstream};

/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The fields of a JSON request body the gateway acts on; everything else is passed through
/// untouched.
#[derive(Deserialize, Default)]
struct Probe {
    model: Option<String>,
    stream: Option<bool>,
    prompt_cache_key: Option<String>,
    user: Option<String>,
}

/// The request body as the forward phase sees it.
enum RequestBody {
    /// Read whole; can be sent again to another upstream.
    Buffered(Bytes),
    /// Streamed through once.
    Streaming(Option<GuardedBody<Incoming>>),
}

impl RequestBody {
    fn replayable(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }

    fn take(&mut self) -> BoxBody {
        match self {
            Self::Buffered(b) => Full::new(b.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
            Self::Streaming(s) => match s.take() {
                Some(body) => body.map_err(Into::into).boxed_unsync(),
                None => http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            },
        }
    }
}

/// The response type of every request the gateway serves; the body is boxed exactly once.
pub type Response = http::Response<Logged<BoxBody>>;

pub async fn handle(gw: &Gateway, req: http::Request<Incoming>, conn: ConnInfo) -> Response {
    let rt = gw.runtime();
    let (parts, body) = req.into_parts();

    // Phase 1: identify.
    let trusted_peer = rt.client_ip.is_trusted(conn.peer.ip());
    let client_ip = rt.client_ip.resolve(conn.peer.ip(), &parts.headers);
    let request_id: Arc<str> = parts
        .headers
        .get(&X_REQUEST_ID)
        .filter(|_| trusted_peer)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
        .map_or_else(
            || uuid::Uuid::new_v4().simple().to_string().into(),
            Into::into,
        );
    let mut rec = Box::new(AccessRecord::new(
        rt.access_log,
        request_id.clone(),
        client_ip,
        &parts,
    ));

    let ctx = Ctx {
        gw,
        rt: &rt,
        conn,
        trusted_peer,
        client_ip,
        request_id: &request_id,
    };
    let result = ctx.run(parts, body, &mut rec).await;
    let mut resp = result.unwrap_or_else(|e| {
        if let GatewayError::ModelNotFound(m) = &e {
            rec.model = Some(crate::error::truncate(m).into_owned());
        }
        rec.error = Some(e.code());
        if e.source() == crate::error::Source::Internal {
            tracing::error!(request_id = %request_id, error = %e, "request failed");
        }
        e.into_response()
            .map(|b| b.map_err(Into::into).boxed_unsync())
    });
    rec.status = resp.status().as_u16();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().entry(X_REQUEST_ID).or_insert(v);
    }
    resp.map(|body| Logged::new(body, rec))
}

struct Ctx<'a> {
    gw: &'a Gateway,
    rt: &'a Runtime,
    conn: ConnInfo,
    trusted_peer: bool,
    client_ip: std::net::IpAddr,
    request_id: &'a Arc<str>,
}

impl Ctx<'_> {
    /// The intercept-log entry for a refused request.
    fn intercept(&self, parts: &http::request::Parts, key_id: &str, code: &str) -> Intercept {
        Intercept {
            at_ms: crate::upstream::unix_ms(),
            key_id_prefix: key_id.chars().take(KEY_ID_PREFIX_LEN).collect(),
            bound_cidr: None,
            attempted_ip: self.client_ip.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            reason: code.to_owned(),
        }
    }

    async fn run(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        rec: &mut AccessRecord,
    ) -> Result<http::Response<BoxBody>, GatewayError> {
        // Phase 1, screen: sizes, framing, Host; then nothing below (policies included) sees the
        // client's hop-by-hop headers; then the path everything below sees.
        screen::check_head(
            parts.version,
            &parts.uri,
            &parts.headers,
            self.rt.limits.max_header_size,
        )?;
        headers::strip_hop_by_hop(&mut parts.headers);
        if let std::borrow::Cow::Owned(normal) = screen::normalize_path(parts.uri.path())? {
            // A path that only normalises into the gateway's own (`/v1/../admin/…`) is not
            // proxied either.
            if Gateway::is_own_endpoint(&normal) {
                return Err(GatewayError::NoRoute);
            }
            parts.uri = with_path(&parts.uri, &normal)?;
            rec.path = normal;
        }

        // Phase 2: route.
        let route = self
            .rt
            .route_for(parts.uri.path())
            .ok_or(GatewayError::NoRoute)?;
        rec.route = Some(route.prefix.clone());
        if !route.methods.contains(&parts.method) {
            return Err(GatewayError::MethodNotAllowed {
                allow: route.allow.clone(),
            });
        }

        // Phase 3: authenticate.
        let key: Arc<ClientKey> = self
            .rt
            .keys
            .authenticate(&parts.headers)
            .ok_or(GatewayError::Unauthorized)?;
        rec.key_prefix = Some(key.id.prefix());

        // Phase 4: read body.
        let (mut body, probe) =
            read_body(&parts, body, &self.rt.limits, route.restricts_models).await?;
        if let RequestBody::Buffered(b) = &body {
            rec.bytes_in = b.len() as u64;
            if route.restricts_models && probe.model.is_none() && !b.is_empty() {
                return Err(GatewayError::ModelRequired);
            }
        }
        rec.model = probe
            .model
            .as_deref()
            .map(|m| crate::error::truncate(m).into_owned());

        // Policies see the request as one shared `RequestInfo`, built once and only on routes
        // that have any.
        let policies = &route.policies;
        let model = probe.model.as_deref();
        let view = (!policies.is_empty()).then(|| {
            Arc::new(RequestInfo {
                model: probe.model.clone(),
                stream: probe.stream.unwrap_or(false),
                session_hint: probe
                    .prompt_cache_key
                    .clone()
                    .or_else(|| probe.user.clone()),
                ..RequestInfo::new(
                    self.request_id,
                    &parts,
                    self.client_ip,
                    key.id.to_hex(),
                    &key.name,
                )
            })
        });

        if let Some(view) = &view {
            // Phase 4a: ip-binding policies, in order; the first refusal ends the request and is
            // written to the intercept log. A request every policy allowed counts as a use of the
            // key's binding (batched). When the stores cannot answer, the failsafe decides.
            let stores = &self.gw.stores;
            for p in &policies.ip_binding {
                match p.plugin.check(view).await {
                    Ok(BindingDecision::Allow) => {}
                    Ok(BindingDecision::Deny(d)) => {
                        stores.record_intercept(
                            &view.key_id,
                            self.intercept(&parts, &view.key_id, &d.code),
                        );
                        return Err(denied(d));
                    }
                    Err(PolicyError::StoreUnavailable { source, .. }) => {
                        stores.note_failsafe();
                        match stores.failsafe() {
                            Failsafe::Closed => {
                                tracing::warn!(request_id = %self.request_id, error = %source, "stores unavailable; refused (failsafe closed)");
                                return Err(GatewayError::StateUnavailable);
                            }
                            Failsafe::Open => {
                                tracing::warn!(request_id = %self.request_id, error = %source, "stores unavailable; let through unchecked (failsafe open)");
                            }
                        }
                    }
                    Err(_) => on_error(p)?,
                }
            }
            if !policies.ip_binding.is_empty() {
                stores.record_use(&view.key_id, self.client_ip);
            }
            // Phase 4b: request header rewrites, in order (policies that rewrite only responses
            // are not called).
            for p in &policies.header_rewrite {
                if !p.plugin.rewrites_requests() {
                    continue;
                }
                match p.plugin.rewrite_request(view).await {
                    Ok(ops) => policy_view::apply_ops(&mut parts.headers, ops, &p.plugin.spec.name),
                    Err(_) => on_error(p)?,
                }
            }
        }

        // Phase 5: select, then let the router order the candidates.
        let mut candidates = select(route, model)?;
        if let (Some(router), Some(view)) = (&policies.router, &view) {
            let views: Vec<_> = candidates
                .iter()
                .map(|u| policy_view::upstream_view(u, model))
                .collect();
            match router.plugin.select(view, &views).await {
                Ok(RouteDecision::Pick(order)) => {
                    candidates = reorder(&candidates, &order);
                    if candidates.is_empty() {
                        return Err(GatewayError::NoUpstream(
                            "the router picked no candidate".into(),
                        ));
                    }
                }
                Ok(RouteDecision::None(reason)) => return Err(GatewayError::NoUpstream(reason)),
                Err(_) => on_error(router)?,
            }
        }

        // Phase 6: forward, in order; a connect failure or a quota decision moves on to the next
        // candidate while the client has received nothing.
        let attempts = candidates.len().min(route.max_attempts as usize);
        for (i, upstream) in candidates.iter().take(attempts).enumerate() {
            rec.upstream = Some(upstream.name.clone());
            rec.attempts = i as u32 + 1;
            let may_retry = body.replayable() && i + 1 < attempts;
            let mut resp = match self
                .forward(upstream, &mut parts, may_retry, &mut body, rec)
                .await
            {
                Err(GatewayError::UpstreamConnect) if may_retry => {
                    tracing::warn!(request_id = %self.request_id, upstream = %upstream.name, "connect failed; trying next upstream");
                    continue;
                }
                other => other?,
            };
            let Some(view) = &view else { return Ok(resp) };
            if let Some(q) = &policies.quota {
                // Stream bootstrap: read ahead to the first event so the policy can see an error
                // sent inside a 200 stream; the bytes read are relayed first, unchanged.
                let mut first_event = None;
                if route.stream_bootstrap && is_event_stream(resp.headers()) {
                    let (head, mut stream) = resp.into_parts();
                    match crate::body::read_first_event(&mut stream).await {
                        Ok((read, event)) => {
                            first_event = event;
                            resp = http::Response::from_parts(
                                head,
                                Prefixed::new(read, stream).boxed_unsync(),
                            );
                        }
                        Err(_) => {
                            // Broken before its first event: nothing reached the client yet.
                            upstream.record_failure();
                            if may_retry {
                                continue;
                            }
                            return Err(GatewayError::UpstreamProtocol);
                        }
                    }
                }
                // Only the responses the policy watches (and every bootstrapped stream) are
                // shown to it; the others pass.
                let retry = if !q
                    .plugin
                    .watches(resp.status().as_u16(), first_event.is_some())
                {
                    false
                } else {
                    let up = policy_view::upstream_view(upstream, model);
                    let answer = Arc::new(ResponseInfo::new(&upstream.name, &resp, first_event));
                    match q.plugin.on_response(view, &up, &answer).await {
                        Ok(QuotaDecision::Pass) => false,
                        Ok(QuotaDecision::RetryOther) => true,
                        Ok(QuotaDecision::Cooldown(c)) => {
                            let scope = match c.scope {
                                CooldownScope::Model => model,
                                CooldownScope::Upstream => None,
                            };
                            upstream.cool_down(scope, c.until_ms);
                            self.gw.stores.share_cooldown(SharedCooldown {
                                upstream: upstream.name.to_string(),
                                model: scope.map(str::to_owned),
                                until_ms: c.until_ms,
                            });
                            tracing::info!(request_id = %self.request_id, upstream = %upstream.name, model = scope, until_ms = c.until_ms, "upstream cooling down");
                            c.then == AfterCooldown::RetryOther
                        }
                        Err(_) => {
                            on_error(q)?;
                            false
                        }
                    }
                };
                if retry && may_retry {
                    continue;
                }
            }
            // Phase 7a: response header rewrites, in order (policies that rewrite only requests
            // are not called). Each one sees the headers as the previous one left them.
            for p in &policies.header_rewrite {
                if !p.plugin.rewrites_responses() {
                    continue;
                }
                let answer = Arc::new(ResponseInfo::new(&upstream.name, &resp, None));
                match p.plugin.rewrite_response(view, &answer).await {
                    Ok(ops) => policy_view::apply_ops(resp.headers_mut(), ops, &p.plugin.spec.name),
                    Err(_) => on_error(p)?,
                }
            }
            return Ok(resp);
        }
        Err(GatewayError::UpstreamConnect)
    }

    /// Sends the request to one upstream and returns its response, ready to relay (phase 6, 7).
    async fn forward(
        &self,
        upstream: &Upstream,
        parts: &mut http::request::Parts,
        may_retry: bool,
        body: &mut RequestBody,
        rec: &mut AccessRecord,
    ) -> Result<http::Response<BoxBody>, GatewayError> {
        let (url, credential) = match &upstream.target {
            Target::Mock(cfg) => {
                rec.in_flight = Some(upstream.start_request());
                let json = match body {
                    RequestBody::Buffered(b) => serde_json::from_slice(b).ok(),
                    RequestBody::Streaming(_) => None,
                };
                let resp = crate::mock::respond(
                    cfg,
                    self.request_id,
                    &parts.method,
                    parts.uri.path(),
                    json.as_ref(),
                );
                rec.upstream_head = Some(rec.start.elapsed());
                return Ok(self.relay(resp));
            }
            Target::Http { url, credential } => (url, credential.as_ref()),
        };

        let uri = upstream_uri(url, &parts.uri)?;
        let mut req = http::Request::builder()
            .method(parts.method.clone())
            .uri(uri)
            .body(body.take())
            .map_err(|_| GatewayError::Internal)?;
        // The headers are needed again only if another attempt may follow.
        *req.headers_mut() = if may_retry {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        headers::to_upstream(
            req.headers_mut(),
            &Forwarding {
                client_ip: self.client_ip,
                peer_ip: self.conn.peer.ip(),
                trusted_peer: self.trusted_peer,
                tls: self.conn.tls,
                request_id: self.request_id,
                credential,
            },
        );

        rec.in_flight = Some(upstream.start_request());
        let attempt_start = std::time::Instant::now();
        let sent =
            tokio::time::timeout(self.rt.limits.response_head, self.gw.client.request(req)).await;
        rec.upstream_head = Some(rec.start.elapsed());
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(classify_send_error(upstream, &e, self.request_id)),
            Err(_elapsed) => {
                upstream.record_failure();
                return Err(GatewayError::UpstreamTimeout);
            }
        };
        rec.upstream_connect = resp
            .extensions()
            .get::<ConnectTiming>()
            .map(ConnectTiming::take);
        if resp.status().is_server_error() {
            upstream.record_failure();
        } else {
            upstream.record_success();
            upstream.record_latency(attempt_start.elapsed());
        }
        let (head, incoming) = resp.into_parts();
        let relayed = GuardedBody::new(incoming, self.rt.limits.upstream_idle, None)
            .map_err(Into::into)
            .boxed_unsync();
        Ok(self.relay(http::Response::from_parts(head, relayed)))
    }

    /// Phase 7: the upstream's response as the client will see it.
    fn relay(&self, mut resp: http::Response<BoxBody>) -> http::Response<BoxBody> {
        let id = HeaderValue::from_str(self.request_id).unwrap_or(HeaderValue::from_static("-"));
        headers::to_client(resp.headers_mut(), &id);
        resp
    }
}

/// The upstream request URI: the upstream's scheme, host and base path, then the client's path
/// and query. Without a base path the client's already-parsed path is reused as is.
fn upstream_uri(
    url: &crate::config::UpstreamUrl,
    client: &http::Uri,
) -> Result<http::Uri, GatewayError> {
    let path_and_query = client
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let path_and_query = if url.base_path.is_empty() {
        path_and_query
    } else {
        format!("{}{}", url.base_path, path_and_query)
            .parse()
            .map_err(|_| GatewayError::Internal)?
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(url.scheme.clone());
    parts.authority = Some(url.authority.clone());
    parts.path_and_query = Some(path_and_query);
    http::Uri::from_parts(parts).map_err(|_| GatewayError::Internal)
}

/// Maps a failed upstream exchange to what the client is told, and charges the upstream's health
/// where the upstream is to blame.
fn classify_send_error(
    upstream: &Upstream,
    e: &hyper_util::client::legacy::Error,
    request_id: &str,
) -> GatewayError {
    if let Some(body_err) = BodyError::find(e) {
        // The client's body failed while we streamed it; the upstream is not to blame.
        return match body_err {
            BodyError::TooLarge(limit) => GatewayError::BodyTooLarge { limit: *limit },
            BodyError::Idle(_) | BodyError::TooSlow(_) | BodyError::Stream(_) => {
                GatewayError::ClientBody
            }
        };
    }
    upstream.record_failure();
    if e.is_connect() {
        tracing::warn!(request_id, upstream = %upstream.name, error = %error_chain(e), "upstream connect failed");
        GatewayError::UpstreamConnect
    } else {
        tracing::warn!(request_id, upstream = %upstream.name, error = %error_chain(e), "upstream exchange failed");
        GatewayError::UpstreamProtocol
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The request URI with its path replaced (the query is kept).
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, GatewayError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().map_err(|_| GatewayError::Internal)?);
    http::Uri::from_parts(parts).map_err(|_| GatewayError::Internal)
}

/// Phase 1 for the gateway's own endpoints: the same head checks as proxied requests.
pub fn screen_own(gw: &Gateway, req: &http::Request<Incoming>) -> Result<(), GatewayError> {
    screen::check_head(
        req.version(),
        req.uri(),
        req.headers(),
        gw.runtime().limits.max_header_size,
    )
}

/// An error answer outside the pipeline (no access record).
pub fn untracked_error(e: GatewayError) -> Response {
    e.into_response()
        .map(|b| Logged::untracked(b.map_err(Into::into).boxed_unsync()))
}

/// Phase 4. JSON is read whole (bounded); so is every body when the route must know the model
/// (`probe_any`); anything else streams.
async fn read_body(
    parts: &http::request::Parts,
    body: Incoming,
    limits: &Limits,
    probe_any: bool,
) -> Result<(RequestBody, Probe), GatewayError> {
    let too_large = GatewayError::BodyTooLarge {
        limit: limits.max_body,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(too_large);
    }
    let guarded = GuardedBody::new(body, limits.client_body_idle, Some(limits.max_body))
        .with_min_rate(limits.min_body_rate);
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.len() >= 16 && ct[..16].eq_ignore_ascii_case("application/json"));
    let bodiless = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if !is_json && !bodiless && !probe_any {
        return Ok((RequestBody::Streaming(Some(guarded)), Probe::default()));
    }
    let bytes = match guarded.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(BodyError::TooLarge(_)) => return Err(too_large),
        Err(_) => return Err(GatewayError::ClientBody),
    };
    let probe = if bytes.is_empty() {
        Probe::default()
    } else if is_json {
        serde_json::from_slice(&bytes).map_err(|_| GatewayError::InvalidJson)?
    } else {
        // Not declared JSON: whatever parses as a JSON object still names its model.
        serde_json::from_slice(&bytes).unwrap_or_default()
    };
    Ok((RequestBody::Buffered(bytes), probe))
}

/// Phase 5: the route's upstreams that serve `model` and are not cooling down, healthy ones
/// first. None serves the model → 404; all of those are cooling → 429 with the shortest wait.
fn select(route: &Route, model: Option<&str>) -> Result<Vec<Arc<Upstream>>, GatewayError> {
    let serving: Vec<&Arc<Upstream>> = route.upstreams.iter().filter(|u| u.serves(model)).collect();
    if serving.is_empty() {
        return Err(GatewayError::ModelNotFound(
            model.unwrap_or_default().to_owned(),
        ));
    }
    let (ready, cooling): (Vec<_>, Vec<_>) = serving
        .into_iter()
        .partition(|u| u.cooling_until(model) == 0);
    if ready.is_empty() {
        let soonest = cooling
            .iter()
            .map(|u| u.cooling_until(model))
            .filter(|&t| t > 0)
            .min()
            .unwrap_or(0);
        let wait_ms = soonest.saturating_sub(crate::upstream::unix_ms());
        return Err(GatewayError::AllCooling {
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        });
    }
    let (mut healthy, unhealthy): (Vec<_>, Vec<_>) =
        ready.into_iter().cloned().partition(|u| u.is_healthy());
    healthy.extend(unhealthy);
    Ok(healthy)
}

/// The candidates in the router's order; out-of-range and repeated indices are ignored.
fn reorder(candidates: &[Arc<Upstream>], order: &[u32]) -> Vec<Arc<Upstream>> {
    let mut seen = vec![false; candidates.len()];
    order
        .iter()
        .filter_map(|&i| {
            let i = i as usize;
            (i < candidates.len() && !std::mem::replace(&mut seen[i], true))
                .then(|| candidates[i].clone())
        })
        .collect()
}

fn is_event_stream(h: &http::HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"))
}

/// A policy failed: its `on_error` decides whether the request goes on.
fn on_error(p: &PolicyRef) -> Result<(), GatewayError> {
    match p.on_error {
        OnError::Deny => Err(GatewayError::PolicyFailed),
        OnError::Skip => Ok(()),
    }
}

/// A policy's refusal as the client will see it; a status outside 400–599 becomes 403.
fn denied(d: crate::policy::types::Denial) -> GatewayError {
    let status = http::StatusCode::from_u16(d.status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .unwrap_or(http::StatusCode::FORBIDDEN);
    GatewayError::PolicyDenied {
        status,
        code: d.code,
        message: d.message,
    }
}
