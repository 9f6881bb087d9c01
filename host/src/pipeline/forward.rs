//! Step 6, one attempt: the outgoing headers (the filters' `on_upstream_request`, then the
//! forwarding headers), the send under `response_head`, the upstream's health, and, when the
//! route has quota filters, the response head (and first SSE event) they judge. How a failed send
//! maps to the client's answer, and which failures may be retried, is `send_failed`.

use std::sync::Arc;

use http_body_util::BodyExt;

use super::body::{BodyError, GuardedBody, Prefixed};
use super::headers::{self, Forwarding};
use super::relay::Relayed;
use super::route::Route;
use super::sse;
use super::{RequestBody, Session, UpstreamResponse, Verdict, is_event_stream};
use crate::error::{ErrorKind, GatewayError};
use crate::upstream::capacity::{Demand, Refused};
use crate::upstream::{SendError, Upstream, UpstreamBody, UpstreamClient};

/// One attempt on `upstream`: the response to relay, or `None` when a filter asked for the next
/// candidate and one may be tried. `(may_retry, fall_through)`: another attempt may follow; a
/// fallback model remains, so a 429 or 5xx answer (or an error as a stream's first event) is
/// itself a reason to move on.
pub(super) async fn attempt(
    s: &mut Session<'_>,
    client: &UpstreamClient,
    route: &Route,
    upstream: &Arc<Upstream>,
    (may_retry, fall_through): (bool, bool),
    body: &mut RequestBody,
    index: usize,
) -> Result<Option<http::Response<Relayed>>, GatewayError> {
    let chain = &*route.chain;
    s.ctx.record.upstream = Some(upstream.name.clone());
    s.ctx.record.attempts = index as u32 + 1;
    // The model this attempt asks for, when it is not the one the client named (a transform
    // renamed it, or this is a fallback): what usage and cost are counted for.
    s.ctx.record.routed_model = s
        .probe
        .model
        .clone()
        .filter(|m| s.ctx.record.model.as_deref() != Some(&**m));

    // The headers are needed again only if another attempt may follow.
    let mut headers = if may_retry {
        s.head.headers.clone()
    } else {
        std::mem::take(&mut s.head.headers)
    };
    for f in &chain.upstream_request {
        if let Err(e) = f.on_upstream_request(s, upstream, &mut headers).await {
            s.ctx.record.answered_by(f.name());
            return Err(e);
        }
    }
    headers::to_upstream(
        &mut headers,
        &Forwarding {
            client_ip: s.client_ip,
            peer_ip: s.conn.peer.ip(),
            trusted_peer: s.trusted_peer,
            tls: s.conn.tls,
            request_id: &s.request_id,
        },
    );
    let mut req = http::Request::new(body.take());
    *req.method_mut() = s.head.method.clone();
    *req.uri_mut() = s.head.uri.clone();
    *req.headers_mut() = headers;

    // The account's declared allowance: an attempt that does not fit is not sent.
    if let Some(cap) = upstream.capacity.as_ref().filter(|c| c.declared()) {
        let (prompt, completion) = s.estimate();
        let cost_nanos = if cap.counts_money() {
            s.model()
                .and_then(|m| s.rt.prices.price(m))
                .map(|p| p.cost_nanos(prompt, 0, completion))
        } else {
            None
        };
        let demand = Demand {
            tokens: prompt.saturating_add(completion),
            cost_nanos,
        };
        match cap.take(demand).await {
            Ok(taken) => crate::pipeline::filters::upstream_capacity::reserved(s, upstream, taken),
            Err(refused) => {
                s.ctx
                    .record
                    .attempted(&upstream.name, 0, Some("upstream_capacity"));
                return Err(capacity_refused(upstream, s.model(), refused));
            }
        }
    }
    s.ctx.in_flight = Some(upstream.start_request());
    let attempt_start = std::time::Instant::now();
    let sent = upstream.send(client, req, s.rt.limits.response_head).await;
    s.ctx.record.upstream_head = Some(s.ctx.record.start.elapsed());
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            let e = send_failed(upstream, e);
            s.ctx.record.attempted(&upstream.name, 0, Some(e.code()));
            return Err(e);
        }
    };
    s.ctx
        .record
        .attempted(&upstream.name, resp.status().as_u16(), None);
    s.ctx.record.upstream_connect = UpstreamBody::connect_time(&resp);
    if resp.status().is_server_error() {
        upstream.record_failure(format!("status {}", resp.status().as_u16()));
    } else {
        if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
            upstream.note_error("status 429");
        }
        upstream.record_success();
        upstream.record_latency(attempt_start.elapsed());
    }
    let (mut head, incoming) = resp.into_parts();
    if let Some(cap) = &upstream.capacity {
        cap.observe(&head.headers);
    }
    let guarded = GuardedBody::new(incoming, s.rt.limits.upstream_idle, None);
    headers::to_client(&mut head.headers);
    let refused =
        head.status == http::StatusCode::TOO_MANY_REQUESTS || head.status.is_server_error();
    if fall_through && refused {
        mark_last(s, "fallback");
        return Ok(None);
    }

    // A stream's first event is read ahead for the quota filters, and for a fallback (an error
    // before the first token moves on).
    if chain.upstream_response.is_empty() && !(fall_through && route.stream_bootstrap) {
        return Ok(Some(http::Response::from_parts(
            head,
            Relayed::upstream(guarded),
        )));
    }
    let mut relayed = guarded.map_err(Into::into).boxed_unsync();
    // A streamed answer may carry its error in the first event: read it first (when the route
    // asks) so filters can see it; the bytes read are relayed first, unchanged.
    let mut first_event = None;
    if route.stream_bootstrap && is_event_stream(&head.headers) {
        match sse::read_first_event(&mut relayed).await {
            Ok((read, event)) => {
                if fall_through && event.as_deref().is_some_and(is_error_event) {
                    mark_last(s, "fallback");
                    return Ok(None);
                }
                first_event = event;
                relayed = Prefixed::new(read, relayed).boxed_unsync();
            }
            Err(e) => {
                // Broken before its first event: nothing reached the client yet.
                upstream.record_failure("stream broke before its first event");
                let e = GatewayError::from(ErrorKind::UpstreamProtocol)
                    .caused_by(e)
                    .retryable();
                mark_last(s, e.code());
                return Err(e);
            }
        }
    }
    let answer = UpstreamResponse {
        status: head.status,
        headers: &head.headers,
        first_event: first_event.as_deref(),
    };
    let mut retry = false;
    for f in &chain.upstream_response {
        match f.on_upstream_response(s, upstream, &answer).await {
            Ok(Verdict::Retry) => {
                retry = true;
                break;
            }
            Ok(_) => {}
            Err(e) => {
                s.ctx.record.answered_by(f.name());
                return Err(e);
            }
        }
    }
    if retry && may_retry {
        mark_last(s, "retry");
        return Ok(None);
    }
    Ok(Some(http::Response::from_parts(
        head,
        Relayed::boxed(relayed),
    )))
}

/// Whether a stream's first event is an error (OpenAI's `{"error": …}`, Anthropic's
/// `{"type": "error", …}`): nothing was generated.
fn is_error_event(data: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(data).is_ok_and(|v| v.get("error").is_some())
}

/// Marks the last attempt as failed with `error` after its head came.
fn mark_last(s: &mut Session<'_>, error: &'static str) {
    if let Some(last) = s.ctx.record.attempt_log.last_mut() {
        last.error = Some(error);
    }
}

/// The error of an attempt its upstream's allowance refused (retryable: the next candidate may
/// take it).
fn capacity_refused(upstream: &Upstream, model: Option<&str>, refused: Refused) -> GatewayError {
    match refused {
        Refused::Full { wait_ms } => GatewayError::from(ErrorKind::AllCooling {
            retry_after_secs: wait_ms.div_ceil(1000).max(1),
        }),
        Refused::Unpriced => crate::error::Refusal::new(
            http::StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_priced",
            format!(
                "the upstream {} has a monthly budget and the model {:?} has no price (pricing:)",
                upstream.name,
                crate::error::truncate(model.unwrap_or(""))
            ),
        )
        .into(),
    }
    .retryable()
}

/// Maps a failed send to what the client is told, and charges the upstream's health where the
/// upstream is to blame. Only a connect failure is retryable: the request never left.
pub(super) fn send_failed(upstream: &Upstream, e: SendError) -> GatewayError {
    if let SendError::Exchange(inner) = &e
        && let Some(body_err) = BodyError::find(inner)
    {
        // The client's body failed while we streamed it; the upstream is not to blame.
        let kind = match body_err {
            BodyError::TooLarge(limit) => ErrorKind::BodyTooLarge { limit: *limit },
            BodyError::Idle(_) | BodyError::TooSlow(_) | BodyError::Stream(_) => {
                ErrorKind::ClientBody
            }
        };
        return GatewayError::from(kind).caused_by(e);
    }
    upstream.record_failure(match &e {
        SendError::Timeout(_) => "no response head in time",
        SendError::Exchange(inner) if inner.is_connect() => "connect failed",
        SendError::Exchange(_) => "broken response",
        SendError::Uri => "bad URI",
    });
    match &e {
        SendError::Timeout(_) => GatewayError::from(ErrorKind::UpstreamTimeout).caused_by(e),
        SendError::Exchange(inner) if inner.is_connect() => {
            GatewayError::from(ErrorKind::UpstreamConnect)
                .caused_by(e)
                .retryable()
        }
        SendError::Exchange(_) => GatewayError::from(ErrorKind::UpstreamProtocol).caused_by(e),
        SendError::Uri => GatewayError::from(ErrorKind::Internal).caused_by(e),
    }
}
