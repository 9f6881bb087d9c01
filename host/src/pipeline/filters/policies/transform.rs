//! The transform adapter: a route's transform plugins, as one filter, so that they run in
//! `policies` order on the request and in the reverse order on the response (the transform next
//! to the upstream sees its answer first).
//!
//! | hook | does |
//! |---|---|
//! | `on_request_body` | each transform's `on-request` with the body as the one before it left it: applies the path, headers and body it returns, or answers, or refuses; notes the transforms that asked for the response |
//! | `on_response_head` | those transforms' `on-response-head` (an upstream's answer only); an event stream is then handed event by event to `on_body_chunk`, any other answer is read whole for `on_response_body` |
//! | `on_response_body` | their `on-response-body` on the whole answer, before the head is sent |
//! | `on_body_chunk` | splits the stream into events and passes each through their `on-event` (holding the frame while the calls run, `Ctx::wait_for`); at the stream's end, `on-stream-end`; an unfinished event larger than every transform's `limits.max_body` ends the stream with an error event (`bad_upstream_response`) |
//!
//! A failed call is decided by the plugin's `on_error`: `skip` goes on without that transform
//! (for the rest of the request), `deny` fails the request: 503 before the response head, or an
//! error event that ends a stream. The request's log keeps one decision per transform for the
//! request and one for the response head; per-event calls are counted in the plugin's metrics.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header;
use http_body_util::{BodyExt, Full};
use serde_json::json;

use super::PolicyRef;
use crate::config::OnError;
use crate::error::ErrorKind;
use crate::pipeline::headers::content_type_is;
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Session, Step};
use crate::policy::transform::{RequestAction, SseEvent};
use crate::policy::view::{apply_ops, is_framing};
use crate::policy::{PolicyError, RequestInfo, ResponseInfo};
use crate::upstream::Upstream;

/// The route's transforms, in `policies` order.
pub(crate) struct Transforms {
    pub(crate) policies: Arc<[PolicyRef]>,
}

/// One request's transforms that asked for its response, with their state.
#[derive(Clone)]
struct Run {
    view: Arc<RequestInfo>,
    /// Index into the filter's policies, in request order, and the transform's state.
    active: Vec<Active>,
    /// The answer is an event stream: the bytes of its unfinished event.
    events: Option<BytesMut>,
    /// The largest event any active transform takes (their `limits.max_body`): an unfinished
    /// event past it ends the stream, so an upstream cannot make the gateway hold an endless
    /// event.
    event_limit: usize,
}

#[derive(Clone)]
struct Active {
    index: usize,
    state: Option<String>,
    /// A call failed and `on_error: skip` took it out of this request.
    skipped: bool,
}

/// A transform's answer that does not make sense (a path that is no path, a status that is no
/// status): counted as the plugin failing.
fn bad_result(p: &PolicyRef, what: String) -> PolicyError {
    PolicyError::Trap {
        plugin: p.plugin.spec.name.clone(),
        reason: what,
    }
}

impl Filter for Transforms {
    fn name(&self) -> &str {
        // One name for the filter; each call is recorded under its plugin's label.
        "transform"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST_BODY | Hooks::RESPONSE_HEAD | Hooks::RESPONSE_BODY | Hooks::BODY_CHUNK
    }

    fn on_request_body<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        body: &'a mut Bytes,
    ) -> HookResult<'a, Flow> {
        Step::later(async move {
            // A fallback model's request runs this phase again: what an earlier run asked of
            // the answer does not hold for it.
            s.ctx.ext.remove::<Run>();
            let mut active = Vec::new();
            for (index, p) in self.policies.iter().enumerate() {
                // Transforms read text: a body that is not UTF-8 (an upload on a route that
                // probes every body) passes them by.
                let Ok(text) = std::str::from_utf8(body) else {
                    break;
                };
                let view = s.policy_request();
                let mut state = None;
                let began = std::time::Instant::now();
                let decision = p.plugin.transform_request(&view, text, &mut state).await;
                let summary = decision.as_ref().ok().map(request_summary);
                s.ctx
                    .record
                    .policy_called(&p.label, began, decision.is_err(), summary);
                let edit = match decision {
                    Ok(RequestAction::Forward(edit)) => edit,
                    Ok(RequestAction::Deny(d)) => return Err(super::denied(d)),
                    Ok(RequestAction::Answer(a)) => match answer(a) {
                        Some(resp) => return Ok(Flow::Answer(resp)),
                        None => {
                            p.failed(bad_result(p, "answered with an invalid status".into()))?;
                            continue;
                        }
                    },
                    Err(e) => {
                        p.failed(e)?;
                        continue;
                    }
                };
                if let Some(path) = &edit.path {
                    match with_path_and_query(&s.head.uri, path) {
                        Some(uri) => s.head.uri = uri,
                        None => {
                            p.failed(bad_result(p, format!("returned an invalid path {path:?}")))?;
                            continue;
                        }
                    }
                }
                apply_ops(&mut s.head.headers, edit.headers, &p.plugin.spec.name);
                if let Some(new) = edit.body {
                    *body = Bytes::from(new);
                    s.body_changed(body);
                } else if edit.path.is_some() {
                    s.body_changed(body);
                }
                if edit.response {
                    active.push(Active {
                        index,
                        state,
                        skipped: false,
                    });
                }
            }
            if !active.is_empty() {
                let view = s.policy_request();
                s.ctx.ext.insert(Run {
                    view,
                    active,
                    events: None,
                    event_limit: 0,
                });
            }
            Ok(Flow::Continue)
        })
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        let (Some(upstream), Some(_)) = (from, s.ctx.ext.get::<Run>()) else {
            // The gateway's own answers are not transformed.
            s.ctx.ext.remove::<Run>();
            return Step::Now(Ok(()));
        };
        Step::later(async move {
            let Some(mut run) = s.ctx.ext.remove::<Run>() else {
                return Ok(());
            };
            for a in run.active.iter_mut().rev() {
                let p = &self.policies[a.index];
                let response = Arc::new(ResponseInfo::from_head(&upstream.name, head));
                let began = std::time::Instant::now();
                let decision = p
                    .plugin
                    .transform_response_head(&run.view, &response, &mut a.state)
                    .await;
                s.ctx
                    .record
                    .policy_called(&p.label, began, decision.is_err(), None);
                match decision {
                    Ok(edit) => {
                        if let Some(status) = edit.status {
                            match http::StatusCode::from_u16(status) {
                                Ok(st) => head.status = st,
                                Err(_) => {
                                    let e = bad_result(p, format!("returned status {status}"));
                                    p.failed(e)?;
                                    a.skipped = true;
                                    continue;
                                }
                            }
                        }
                        apply_ops(&mut head.headers, edit.headers, &p.plugin.spec.name);
                    }
                    Err(e) => {
                        p.failed(e)?;
                        a.skipped = true;
                    }
                }
            }
            run.active.retain(|a| !a.skipped);
            if run.active.is_empty() {
                return Ok(());
            }
            // The body the client gets is not the upstream's: its length is the relay's.
            head.headers.remove(header::CONTENT_LENGTH);
            let limit = run
                .active
                .iter()
                .map(|a| self.policies[a.index].plugin.spec.max_body)
                .max()
                .unwrap_or(0);
            if content_type_is(&head.headers, "text/event-stream") {
                run.events = Some(BytesMut::new());
                run.event_limit = limit;
            } else {
                s.ctx.read_whole_body(limit);
            }
            s.ctx.ext.insert(run);
            Ok(())
        })
    }

    fn on_response_body<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        body: &'a mut Bytes,
    ) -> HookResult<'a> {
        let Some(mut run) = s.ctx.ext.remove::<Run>() else {
            return Step::Now(Ok(()));
        };
        Step::later(async move {
            let upstream = s
                .ctx
                .record
                .upstream
                .as_deref()
                .unwrap_or_default()
                .to_owned();
            for a in run.active.iter_mut().rev() {
                let p = &self.policies[a.index];
                if body.len() > p.plugin.spec.max_body {
                    return Err(ErrorKind::UpstreamProtocol.into());
                }
                let text = String::from_utf8_lossy(body);
                let response = Arc::new(ResponseInfo::from_head(&upstream, head));
                let decision = p
                    .plugin
                    .transform_response_body(&run.view, &response, &text, &mut a.state)
                    .await;
                match decision {
                    Ok(Some(new)) => *body = Bytes::from(new),
                    Ok(None) => {}
                    Err(e) => p.failed(e)?,
                }
            }
            Ok(())
        })
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, end: bool) {
        let Some(run) = ctx.ext.get_mut::<Run>() else {
            return;
        };
        let Some(pending) = run.events.as_mut() else {
            return;
        };
        pending.extend_from_slice(chunk);
        let mut blocks = split_events(pending);
        if end && !pending.is_empty() {
            // An unterminated last event is still an event.
            blocks.push(pending.split().freeze());
        }
        // An event no transform may take: what came before it still goes through them, then
        // the stream ends (the rest of the upstream's answer is not read).
        let oversized = pending.len() > run.event_limit;
        if oversized {
            *pending = BytesMut::new();
        }
        if blocks.is_empty() && !end && !oversized {
            *chunk = Bytes::new();
            return;
        }
        let Some(mut run) = ctx.ext.remove::<Run>() else {
            return;
        };
        let policies = self.policies.clone();
        ctx.wait_for(async move {
            let mut out = BytesMut::new();
            let mut cut = None;
            for block in blocks {
                match parse_event(&block) {
                    None => out.extend_from_slice(&block),
                    Some(event) => {
                        let top = run.active.len();
                        match pass(&policies, &mut run, vec![event], top).await {
                            Ok(events) => write_events(&mut out, &events),
                            Err(e) => {
                                cut = Some(e);
                                break;
                            }
                        }
                    }
                }
            }
            if end && cut.is_none() {
                // Each transform's closing events go through the ones after it on the way out.
                for k in (0..run.active.len()).rev() {
                    match stream_end(&policies, &mut run, k).await {
                        Ok(events) => write_events(&mut out, &events),
                        Err(e) => {
                            cut = Some(e);
                            break;
                        }
                    }
                }
            }
            Box::new(move |ctx: &mut Ctx, chunk: &mut Bytes| {
                if let Some(e) = cut {
                    tracing::warn!(request_id = %ctx.record.request_id, error = %e, "transform failed mid-stream; the stream is ended");
                    out.extend_from_slice(&crate::error::error_event(
                        "a policy failed while the response was being sent",
                        "server_error",
                        "policy_error",
                    ));
                    ctx.end_stream(out.freeze(), "policy_error");
                    return;
                }
                if oversized {
                    tracing::warn!(request_id = %ctx.record.request_id, limit = run.event_limit,
                        "an upstream's event is larger than its transforms take (limits.max_body); the stream is ended");
                    out.extend_from_slice(&crate::error::error_event(
                        "the upstream sent an event larger than this route's transforms take",
                        "server_error",
                        "bad_upstream_response",
                    ));
                    ctx.end_stream(out.freeze(), "bad_upstream_response");
                    return;
                }
                *chunk = out.freeze();
                ctx.ext.insert(run);
            }) as crate::pipeline::Resume
        });
    }
}

/// `events` through the active transforms below `top` (response order: from the one next to
/// the upstream towards the client), each event of one becoming zero or more of the next.
async fn pass(
    policies: &[PolicyRef],
    run: &mut Run,
    mut events: Vec<SseEvent>,
    top: usize,
) -> Result<Vec<SseEvent>, PolicyError> {
    for k in (0..top).rev() {
        let a = &mut run.active[k];
        if a.skipped {
            continue;
        }
        let p = &policies[a.index];
        let mut next = Vec::with_capacity(events.len());
        for e in &events {
            match p.plugin.transform_event(&run.view, e, &mut a.state).await {
                Ok(more) => next.extend(more),
                Err(err) => {
                    if p.on_error == OnError::Deny {
                        return Err(err);
                    }
                    // skip: this transform is out; the events pass it unchanged.
                    a.skipped = true;
                    next = events;
                    break;
                }
            }
        }
        events = next;
    }
    Ok(events)
}

/// The `k`th active transform's closing events, through the ones after it.
async fn stream_end(
    policies: &[PolicyRef],
    run: &mut Run,
    k: usize,
) -> Result<Vec<SseEvent>, PolicyError> {
    let a = &mut run.active[k];
    if a.skipped {
        return Ok(Vec::new());
    }
    let p = &policies[a.index];
    match p.plugin.transform_stream_end(&run.view, &mut a.state).await {
        Ok(events) if events.is_empty() => Ok(events),
        Ok(events) => pass(policies, run, events, k).await,
        Err(err) => {
            if p.on_error == OnError::Deny {
                return Err(err);
            }
            a.skipped = true;
            Ok(Vec::new())
        }
    }
}

/// The complete events at the front of `buf` (each with its blank line), taken out of it.
fn split_events(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut blocks = Vec::new();
    while let Some(end) = event_end(buf) {
        blocks.push(buf.split_to(end).freeze());
    }
    blocks
}

/// Just past the blank line that ends the first event in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        let b = buf[i];
        if b == b'\n' || b == b'\r' {
            let next = if b == b'\r' && buf.get(i + 1) == Some(&b'\n') {
                i + 2
            } else if b == b'\r' && i + 1 == buf.len() {
                // A CR at the end may be half of a CRLF: wait for the next byte.
                return None;
            } else {
                i + 1
            };
            if i == line_start && line_start > 0 {
                return Some(next);
            }
            if i == line_start {
                // A blank line before any field: skip it.
                line_start = next;
                i = next;
                continue;
            }
            line_start = next;
            i = next;
        } else {
            i += 1;
        }
    }
    None
}

/// An event's name and data; `None` for a block with no `data:` (comments, a bare `id:`), which
/// is relayed as it is.
fn parse_event(block: &[u8]) -> Option<SseEvent> {
    let text = std::str::from_utf8(block).ok()?;
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.split(['\n', '\r']).filter(|l| !l.is_empty()) {
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_owned()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    Some(SseEvent { event, data: data? })
}

/// Events in the wire format: `event:` when named, one `data:` line per line of data.
fn write_events(out: &mut BytesMut, events: &[SseEvent]) {
    for e in events {
        if let Some(name) = &e.event {
            out.put_slice(b"event: ");
            out.put_slice(name.as_bytes());
            out.put_u8(b'\n');
        }
        for line in e.data.split('\n') {
            out.put_slice(b"data: ");
            out.put_slice(line.as_bytes());
            out.put_u8(b'\n');
        }
        out.put_u8(b'\n');
    }
}

/// A transform's own answer as a response; `None` for a status that is not one.
fn answer(a: crate::policy::transform::Answer) -> Option<http::Response<crate::listen::BoxBody>> {
    let status = http::StatusCode::from_u16(a.status).ok()?;
    let mut resp = http::Response::new(
        Full::new(Bytes::from(a.body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    for h in a.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_str(&h.value),
        ) && !is_framing(&n)
        {
            // The gateway frames the answer (its length is the body's).
            resp.headers_mut().append(n, v);
        }
    }
    Some(resp)
}

/// `uri` with its path and query replaced by `pq` (which must be an origin-form path).
fn with_path_and_query(uri: &http::Uri, pq: &str) -> Option<http::Uri> {
    if !pq.starts_with('/') {
        return None;
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

/// What the request log keeps of an `on-request` decision: never the body.
fn request_summary(a: &RequestAction) -> serde_json::Value {
    match a {
        RequestAction::Forward(e) => json!({"forward": {
            "path": e.path,
            "headers": e.headers.len(),
            "body": e.body.as_ref().map(String::len),
            "response": e.response,
        }}),
        RequestAction::Answer(a) => json!({"answer": {"status": a.status}}),
        RequestAction::Deny(d) => json!({"deny": {"status": d.status, "code": d.code}}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_at_blank_lines_whatever_the_line_ends() {
        let mut buf = BytesMut::from(
            &b"data: a\n\n\r\nevent: x\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: unfinished"[..],
        );
        let blocks = split_events(&mut buf);
        let events: Vec<_> = blocks.iter().filter_map(|b| parse_event(b)).collect();
        assert_eq!(events.len(), 3, "{blocks:?}");
        assert_eq!(events[0].data, "a");
        assert_eq!(
            (events[1].event.as_deref(), &*events[1].data),
            (Some("x"), "b")
        );
        assert_eq!(events[2].data, "c\nd");
        assert_eq!(&buf[..], b"data: unfinished");
    }

    #[test]
    fn a_cr_at_the_end_waits_for_its_lf() {
        let mut buf = BytesMut::from(&b"data: a\r\n\r"[..]);
        assert!(split_events(&mut buf).is_empty());
        buf.extend_from_slice(b"\n");
        assert_eq!(split_events(&mut buf).len(), 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn comments_are_not_events_and_events_are_written_back() {
        assert!(parse_event(b": keep-alive\n\n").is_none());
        let mut out = BytesMut::new();
        write_events(
            &mut out,
            &[
                SseEvent {
                    event: Some("message_stop".into()),
                    data: "{}".into(),
                },
                SseEvent {
                    event: None,
                    data: "a\nb".into(),
                },
            ],
        );
        assert_eq!(
            &out[..],
            b"event: message_stop\ndata: {}\n\ndata: a\ndata: b\n\n"
        );
    }

    #[test]
    fn a_path_must_be_a_path() {
        let uri: http::Uri = "http://x/v1/messages?beta=true".parse().unwrap();
        assert_eq!(
            with_path_and_query(&uri, "/v1/chat/completions").unwrap(),
            "http://x/v1/chat/completions"
        );
        assert!(with_path_and_query(&uri, "v1").is_none());
        assert!(with_path_and_query(&uri, "/a b").is_none());
    }
}
