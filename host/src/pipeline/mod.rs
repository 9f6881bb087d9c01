//! The request pipeline: one path for every proxied request, streaming or not.
//!
//! Steps, in order; between them the route's [`Filter`]s run at their hooks (`filter.rs`). Each
//! step and each hook may end the request with a [`GatewayError`], answered in the OpenAI error
//! shape (`crate::error`).
//!
//! 1. **identify** — client IP from the socket, or from a trusted proxy's header
//!    ([`client_ip`]); request id (a trusted proxy's `x-request-id`, else a new one). Then
//!    **screen**: the client's hop-by-hop headers (and any its `Connection` names) are removed
//!    before anything else reads the request, and the head is checked and its path normalised
//!    ([`screen`]; 400/431).
//! 2. **route** — longest matching prefix of the normalised path; none → 404 `unknown_url`; a
//!    → hook `on_request` (edge protection: IP lists, CORS preflight, maintenance, limits by IP
//!    and route); then a method the route does not list → 405 `method_not_allowed` with `Allow`.
//! 3. **authenticate** — the client's key by HMAC id; missing or unknown → 401 `invalid_api_key`,
//!    the same answer for both so keys cannot be probed.
//! 4. **read body** — JSON bodies are read whole (bounded by `max_body`, 413 past it; `client_body`
//!    idle limit and `min_body_rate`, 408) because routing needs `model` and failover needs to
//!    replay the body. On a route whose upstreams restrict models, every body is read whole and
//!    probed as JSON whatever its Content-Type; one that names no readable model → 400
//!    `model_required` (a request without a body names no model and may go to any upstream).
//!    Other bodies (uploads) stream to the upstream under the same limits and are never replayed.
//!    → hook `on_authenticated`.
//! 5. **select** — the route's upstreams that serve the model and are not cooling down, healthy
//!    ones first; none serves the model → 404 `model_not_found`; all cooling → 429. If every
//!    serving upstream is marked unhealthy they are tried anyway (nginx does the same).
//!    → hook `on_select`.
//! 6. **forward** — up to `max_attempts` candidates in order: → hook `on_upstream_request`, send,
//!    (first SSE event if `stream_bootstrap`), → hook `on_upstream_response`. An attempt whose
//!    error is retryable (the request never reached the upstream: connect failure; a stream broken
//!    before its first event) or whose response a filter answers [`Verdict::Retry`] for moves on to
//!    the next candidate, if the body can be replayed. Otherwise, once sent, a timeout or a broken
//!    response is final (502/504): an LLM request may have been processed and billed. One
//!    attempt is `forward.rs`.
//! 7. **relay** — → hook `on_response_head` on the head the client gets (the upstream's, hop-by-hop
//!    headers removed, or the gateway's own error); the body is relayed frame by frame as it
//!    arrives (SSE events are never coalesced) under the `idle` limit, → hook `on_body_chunk` on
//!    each frame. A client that goes away drops the relay, which drops the upstream request at once
//!    (h1: connection closed; h2: stream reset). → hook `on_done` exactly once, however it ended.

pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod client_ip;
pub(crate) mod filter;
pub(crate) mod filters;
mod forward;
pub(crate) mod headers;
mod relay;
pub(crate) mod route;
pub(crate) mod screen;
pub(crate) mod session;
pub(crate) mod sse;
pub(crate) mod tokens;

use std::sync::Arc;

use axum::response::IntoResponse;
use bytes::Bytes;
use http::{Method, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use self::body::{BodyError, GuardedBody};
pub use self::filter::{Chain, Filter, Flow, HookResult, Hooks, Step, UpstreamResponse, Verdict};
use self::headers::X_REQUEST_ID;
use self::relay::{Relay, Relayed, Tail};
use self::route::{Limits, Route, Runtime};
pub use self::session::{Ctx, Outcome, Resume, Session};
use self::session::{Probe, TokenMeter};
use crate::error::{ErrorKind, GatewayError, Source};
use crate::listen::{BoxBody, ConnInfo};
use crate::upstream::{Upstream, UpstreamClient};

/// Longest request id accepted from a trusted proxy.
const MAX_REQUEST_ID: usize = 128;

/// The request body as the forward step sees it.
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

/// Serves one proxied request on the config snapshot `rt`.
pub async fn handle(
    rt: &Runtime,
    client: &UpstreamClient,
    req: http::Request<Incoming>,
    conn: ConnInfo,
) -> http::Response<BoxBody> {
    let (head, body) = req.into_parts();

    // Step 1: identify.
    let trusted_peer = rt.client_ip.is_trusted(conn.peer.ip());
    let client_ip = rt.client_ip.resolve(conn.peer.ip(), &head.headers);
    let request_id: Arc<str> = head
        .headers
        .get(&X_REQUEST_ID)
        .filter(|_| trusted_peer)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID)
        .map_or_else(
            || {
                let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
                Arc::from(&*uuid::Uuid::new_v4().simple().encode_lower(&mut buf))
            },
            Into::into,
        );
    let mut s = Session::new(rt, conn, trusted_peer, client_ip, request_id, head);

    let result = run(&mut s, client, body).await;
    let chain = s.route.map_or(&rt.global, |r| &r.chain).clone();
    let (resp, from) = match result {
        Ok(answered) => answered,
        Err(e) => {
            s.ctx.record.answered_by(e.kind.step());
            (refuse(&mut s, e).map(Relayed::boxed), None)
        }
    };

    // Step 7: the head the client gets.
    let (mut head, mut body) = resp.into_parts();
    // A length the answer declared and a filter then removed is not promised to the client.
    let declared = head.headers.contains_key(header::CONTENT_LENGTH);
    for f in &chain.response_head {
        if let Err(e) = f.on_response_head(&mut s, &mut head, from.as_deref()).await {
            s.ctx.record.answered_by(f.name());
            if from.is_none() {
                tracing::warn!(request_id = %s.request_id, filter = f.name(), error = %e.log_line(), "filter failed on an error answer; ignored");
                continue;
            }
            // The upstream's answer is replaced by the filter's error; the remaining filters see
            // the error answer.
            let (h, b) = refuse(&mut s, e).into_parts();
            (head, body) = (h, Relayed::boxed(b));
        }
    }
    // An upstream's body a filter asked for whole: read before the head goes out, so what
    // `on_response_body` makes of it can still change the head.
    let mut rebuilt = false;
    if let (Some(limit), Some(_)) = (s.ctx.read_whole.take(), &from) {
        let rewritten = match read_whole_answer(body, limit).await {
            Ok(mut whole) => {
                let mut failed = None;
                for f in &chain.response_body {
                    if let Err(e) = f.on_response_body(&mut s, &mut head, &mut whole).await {
                        s.ctx.record.answered_by(f.name());
                        failed = Some(e);
                        break;
                    }
                }
                match failed {
                    None => {
                        head.headers.remove(header::CONTENT_LENGTH);
                        Ok(Relayed::boxed(
                            Full::new(whole)
                                .map_err(|never| match never {})
                                .boxed_unsync(),
                        ))
                    }
                    Some(e) => Err(e),
                }
            }
            Err(e) => {
                s.ctx.record.answered_by("relay");
                Err(e)
            }
        };
        rebuilt = true;
        body = match rewritten {
            Ok(b) => b,
            Err(e) => {
                let (h, b) = refuse(&mut s, e).into_parts();
                head = h;
                Relayed::boxed(b)
            }
        };
    }
    s.ctx.record.status = head.status.as_u16();
    if from.is_some() {
        s.ctx.meter = head
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|ct| TokenMeter::for_content_type(ct.as_bytes()));
    }
    if !chain.watches_body() && s.ctx.in_flight.is_none() {
        // Nothing to tell when it ends, no upstream to hold: the body goes out as it is.
        drop(s);
        return http::Response::from_parts(head, body.into_box());
    }
    let sized = rebuilt || !declared || head.headers.contains_key(header::CONTENT_LENGTH);
    let tail = Tail { ctx: s.ctx, chain };
    let relay = Relay::new(body, tail);
    let relay = if sized { relay } else { relay.without_length() };
    http::Response::from_parts(head, relay.boxed_unsync())
}

/// The gateway's own answer for `e`, recorded; internal and upstream causes are logged here, once.
fn refuse(s: &mut Session<'_>, e: GatewayError) -> http::Response<BoxBody> {
    match &e.kind {
        ErrorKind::ModelNotFound(m) => {
            s.ctx.record.model = Some(Arc::from(&*crate::error::truncate(m)));
        }
        ErrorKind::PolicyDenied { code, .. } => s.ctx.record.policy_code = Some(Arc::from(&**code)),
        _ => {}
    }
    s.ctx.record.error = Some(e.code());
    match e.source() {
        _ if !e.needs_logging() => {}
        Source::Internal => {
            tracing::error!(request_id = %s.request_id, error = %e.log_line(), "request failed")
        }
        Source::Upstream if e.has_cause() => {
            tracing::warn!(request_id = %s.request_id, upstream = s.ctx.record.upstream.as_deref(), error = %e.log_line(), "upstream failed")
        }
        Source::Upstream | Source::Client => {}
    }
    e.into_response()
        .map(|b| b.map_err(Into::into).boxed_unsync())
}

/// Steps 1 (screen) to 6; the response to relay and the upstream that gave it (none when a
/// filter answered itself, [`Flow::Answer`]).
async fn run(
    s: &mut Session<'_>,
    client: &UpstreamClient,
    body: Incoming,
) -> Result<(http::Response<Relayed>, Option<Arc<Upstream>>), GatewayError> {
    let rt = s.rt;
    // Step 1, screen: sizes, framing, Host; then nothing below (filters included) sees the
    // client's hop-by-hop headers; then the path everything below sees.
    screen::check_head(
        s.head.version,
        &s.head.uri,
        &s.head.headers,
        rt.limits.max_header_size,
    )?;
    headers::strip_hop_by_hop(&mut s.head.headers, rt.limits.allow_obs_text);
    if let std::borrow::Cow::Owned(normal) =
        screen::normalize_path(s.head.uri.path()).map_err(ErrorKind::from)?
    {
        // A path that only normalises into the gateway's own (`/v1/../health`) is not proxied
        // either.
        if crate::config::is_reserved_path(&normal) {
            return Err(ErrorKind::NoRoute.into());
        }
        s.head.uri = with_path(&s.head.uri, &normal)?;
        s.ctx.record.uri = s.head.uri.clone();
    }

    // Step 2: route.
    let route = rt.route_for(s.head.uri.path()).ok_or(ErrorKind::NoRoute)?;
    s.route = Some(route);
    s.ctx.record.route = Some(route.prefix.clone());
    let chain = &*route.chain;
    // Edge filters first (a denied address learns nothing more; a CORS preflight is answered
    // whatever methods the route lists).
    for f in &chain.request {
        if let Flow::Answer(resp) = f.on_request(s).await.map_err(blame(s, f))? {
            s.ctx.record.answered_by(f.name());
            return Ok((resp.map(Relayed::boxed), None));
        }
    }
    if !route.methods.contains(&s.head.method) {
        return Err(ErrorKind::MethodNotAllowed {
            allow: route.allow.clone(),
        }
        .into());
    }

    // Step 3: authenticate.
    let key = rt
        .keys
        .authenticate(&s.head.headers)
        .inspect_err(|_| s.ctx.record.answered_by("auth"))?;
    s.ctx.record.key = Some(key.clone());
    s.key = Some(key);

    // Step 4: read body.
    let (mut body, probe) = read_body(&s.head, body, &rt.limits, route.restricts_models).await?;
    if let RequestBody::Buffered(b) = &body {
        s.ctx.record.bytes_in = b.len() as u64;
        if route.restricts_models && probe.model.is_none() && !b.is_empty() {
            return Err(ErrorKind::ModelRequired.into());
        }
    }
    s.ctx.record.model = probe
        .model
        .as_ref()
        .map(|m| match crate::error::truncate(m) {
            std::borrow::Cow::Borrowed(_) => m.clone(),
            std::borrow::Cow::Owned(cut) => Arc::from(cut),
        });
    s.probe = probe;
    for f in &chain.authenticated {
        if let Flow::Answer(resp) = f.on_authenticated(s).await.map_err(blame(s, f))? {
            s.ctx.record.answered_by(f.name());
            return Ok((resp.map(Relayed::boxed), None));
        }
    }
    // What the client sent, kept when a fallback model may need the request made again (on any
    // route with fallbacks: the model they are looked up by is known only after the
    // request-body filters, which may rename it).
    let original = match &body {
        RequestBody::Buffered(b) if !route.fallbacks.is_empty() => {
            Some((b.clone(), s.head.uri.clone(), s.head.headers.clone()))
        }
        _ => None,
    };
    if let RequestBody::Buffered(b) = &mut body {
        if let Some(resp) = request_body_phase(s, chain, b).await? {
            return Ok((resp, None));
        }
        s.ctx.record.bytes_in = b.len() as u64;
    }

    // Step 5: select.
    let mut candidates = select(route, s.model())?;
    for f in &chain.select {
        f.on_select(s, &mut candidates).await.map_err(blame(s, f))?;
    }
    if candidates.is_empty() {
        return Err(ErrorKind::NoUpstream("no candidate is left".into()).into());
    }

    // Step 6: forward, in order, while the client has received nothing; when every attempt at
    // the model failed retryably, the route's fallback models in turn, each with its own
    // candidates (the body names the model it is sent for).
    let fallbacks = route.fallbacks_for(s.model()).to_vec();
    let mut tried = 0;
    let mut last_error = None;
    for step in 0..=fallbacks.len() {
        if step > 0 {
            let model = &fallbacks[step - 1];
            let RequestBody::Buffered(b) = &mut body else {
                break;
            };
            // The client's request again, naming the next model, through the request-body
            // filters again: a transform sees it as it would a request for that model (and
            // translates it for that model's upstreams when they speak another API).
            let Some((client_body, uri, headers)) = &original else {
                break;
            };
            let Some(renamed) = with_model(client_body, model) else {
                break;
            };
            tracing::info!(request_id = %s.request_id, model = %model, "every attempt failed; falling back to the next model");
            *b = renamed;
            s.head.uri = uri.clone();
            s.head.headers = headers.clone();
            s.body_changed(b);
            if let Some(resp) = request_body_phase(s, chain, b).await? {
                return Ok((resp, None));
            }
            candidates = match select(route, Some(model)) {
                Ok(c) => c,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            for f in &chain.select {
                f.on_select(s, &mut candidates).await.map_err(blame(s, f))?;
            }
        }
        // A 429 or 5xx (or an error as a stream's first event) moves on while a later model
        // remains.
        let more_models = step < fallbacks.len() && body.replayable();
        let attempts = candidates.len().min(route.max_attempts as usize);
        for (i, upstream) in candidates.iter().take(attempts).enumerate() {
            let may_retry = body.replayable() && (i + 1 < attempts || more_models);
            let sent = forward::attempt(
                s,
                client,
                route,
                upstream,
                (may_retry, more_models),
                &mut body,
                tried,
            )
            .await;
            tried += 1;
            match sent {
                Ok(Some(resp)) => return Ok((resp, Some(upstream.clone()))),
                Ok(None) => continue,
                Err(e) if may_retry && e.is_retryable() => {
                    tracing::warn!(request_id = %s.request_id, upstream = %upstream.name, error = %e.log_line(), "attempt failed; trying the next upstream");
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ErrorKind::UpstreamConnect.into()))
}

/// A JSON body with its `model` replaced (for a fallback attempt); `None` if it is not a JSON
/// object.
fn with_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), serde_json::Value::String(model.to_owned()));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The `on_request_body` filters on a body read whole, in order; a filter's own answer, if one
/// answers.
async fn request_body_phase(
    s: &mut Session<'_>,
    chain: &Chain,
    body: &mut Bytes,
) -> Result<Option<http::Response<Relayed>>, GatewayError> {
    for f in &chain.request_body {
        if let Flow::Answer(resp) = f.on_request_body(s, body).await.map_err(blame(s, f))? {
            s.ctx.record.answered_by(f.name());
            return Ok(Some(resp.map(Relayed::boxed)));
        }
    }
    Ok(None)
}

/// For a hook's error: names the filter as what answered (unless it named itself).
fn blame<'s>(
    s: &'s mut Session<'_>,
    f: &'s Arc<dyn Filter>,
) -> impl FnOnce(GatewayError) -> GatewayError + 's {
    move |e| {
        s.ctx.record.answered_by(f.name());
        e
    }
}

/// Step 1 for the gateway's own endpoints: the same head checks as proxied requests.
pub fn screen_own(limits: &Limits, req: &http::Request<Incoming>) -> Result<(), GatewayError> {
    screen::check_head(
        req.version(),
        req.uri(),
        req.headers(),
        limits.max_header_size,
    )
    .map_err(Into::into)
}

/// Phase 4. JSON is read whole (bounded); so is every body when the route must know the model
/// (`probe_any`); anything else streams.
async fn read_body(
    parts: &http::request::Parts,
    body: Incoming,
    limits: &Limits,
    probe_any: bool,
) -> Result<(RequestBody, Probe), GatewayError> {
    let too_large = ErrorKind::BodyTooLarge {
        limit: limits.max_body,
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body) {
        return Err(too_large.into());
    }
    let guarded = GuardedBody::new(body, limits.client_body_idle, Some(limits.max_body))
        .with_min_rate(limits.min_body_rate);
    let is_json = headers::content_type_is(&parts.headers, "application/json");
    let bodiless = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if !is_json && !bodiless && !probe_any {
        return Ok((RequestBody::Streaming(Some(guarded)), Probe::default()));
    }
    let bytes = match body::read_whole(guarded).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(_)) => return Err(too_large.into()),
        Err(e) => return Err(GatewayError::from(ErrorKind::ClientBody).caused_by(e)),
    };
    let probe = if bytes.is_empty() {
        Probe::default()
    } else if is_json {
        serde_json::from_slice(&bytes)
            .map_err(|e| GatewayError::from(ErrorKind::InvalidJson).caused_by(e))?
    } else {
        // Not declared JSON: whatever parses as a JSON object still names its model.
        serde_json::from_slice(&bytes).unwrap_or_default()
    };
    Ok((RequestBody::Buffered(bytes), probe))
}

/// Phase 5: the route's upstreams that serve `model` and are not cooling down, healthy ones
/// first. None serves the model → 404; all of those are cooling → 429 with the shortest wait.
fn select(route: &Route, model: Option<&str>) -> Result<Vec<Arc<Upstream>>, GatewayError> {
    let mut ready = Vec::with_capacity(route.upstreams.len());
    let mut serving = false;
    let mut soonest = u64::MAX;
    for u in route.upstreams.iter().filter(|u| u.serves(model)) {
        serving = true;
        match u.cooling_until(model) {
            0 => ready.push(u.clone()),
            until => soonest = soonest.min(until),
        }
    }
    if !serving {
        return Err(ErrorKind::ModelNotFound(model.unwrap_or_default().to_owned()).into());
    }
    if ready.is_empty() {
        let wait_ms = soonest.saturating_sub(crate::state::unix_ms());
        return Err(ErrorKind::AllCooling {
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        }
        .into());
    }
    // Healthy first, each group in configured order (a stable sort).
    if ready.iter().any(|u| !u.is_healthy()) {
        ready.sort_by_cached_key(|u| !u.is_healthy());
    }
    Ok(ready)
}

/// An upstream's body read whole for the `on_response_body` filters: past `limit` bytes, or
/// broken or silent (the `idle` guard) on the way, the client gets 502.
async fn read_whole_answer(body: Relayed, limit: usize) -> Result<Bytes, GatewayError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(GatewayError::from(ErrorKind::UpstreamProtocol).caused_by(e)),
    }
}

/// The request URI with its path replaced (the query is kept).
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, GatewayError> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| GatewayError::from(ErrorKind::Internal))?,
    );
    http::Uri::from_parts(parts).map_err(|_| ErrorKind::Internal.into())
}

fn is_event_stream(h: &http::HeaderMap) -> bool {
    headers::content_type_is(h, "text/event-stream")
}
