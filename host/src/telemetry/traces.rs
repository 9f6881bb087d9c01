//! `traces`: OpenTelemetry traces (`telemetry.otlp`; docs/tracing.md). One span per request
//! (kind server), with a child per upstream attempt (kind client) and per policy call (kind
//! internal), named and attributed after the GenAI semantic conventions, exported over
//! OTLP/HTTP in protobuf.
//!
//! | hook | does |
//! |---|---|
//! | `on_request` | starts the request's trace: a trusted peer's `traceparent` continues its trace (and its sampled flag decides); otherwise a new one, sampled at `sample_ratio` |
//! | `on_upstream_request` | gives the attempt its span id and sends `traceparent` (and a trusted peer's `tracestate`) to the upstream; a client's own are replaced |
//! | `on_done` | builds the spans from the request's record and hands them to the exporter |
//!
//! The spans are built when the request ends, from what the record holds (times, attempts,
//! policy calls, tokens), so the request path does no tracing work but three ids and a header.
//! The exporter (`otlp.rs`) keeps at most `max_queue` spans; past it, and when an export
//! fails, spans are dropped and counted (`tollgate_trace_spans_total`): a dead collector costs
//! the request path nothing.

use std::time::{Duration, Instant};

use http::HeaderValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};

use super::otlp::Exporter;
use crate::config::Config;
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Outcome, Session, Step};
use crate::upstream::Upstream;

pub(crate) struct Traces {
    exporter: Exporter,
    sample_ratio: f64,
}

/// The filter, when `telemetry.otlp` is set. Its exporter task lives as long as this config.
pub(crate) fn build(config: &Config) -> Option<Traces> {
    let otlp = config.telemetry.otlp.as_ref()?;
    Some(Traces {
        exporter: Exporter::start(otlp, config.server.timeouts.connect.get()),
        sample_ratio: otlp.sample_ratio,
    })
}

/// A request's trace (`Ctx::ext`).
#[derive(Clone)]
struct TraceCtx {
    trace_id: [u8; 16],
    /// The request's own span.
    span_id: [u8; 8],
    /// A trusted peer's span, the parent of the request's.
    parent: Option<[u8; 8]>,
    /// A trusted peer's `tracestate`.
    state: Option<String>,
    sampled: bool,
    /// Each attempt's span id, where its upstream is, and when it started.
    attempts: Vec<([u8; 8], String, Instant)>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    loop {
        for b in &mut out {
            *b = fastrand::u8(..);
        }
        // All zeros is invalid in W3C trace context.
        if out.iter().any(|&b| b != 0) {
            return out;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    out.iter().any(|&b| b != 0).then_some(out)
}

/// A W3C `traceparent` (version 00): trace id, parent span id, sampled.
fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], bool)> {
    let mut parts = v.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((unhex(trace)?, unhex(parent)?, flags & 1 == 1))
}

impl Traces {
    fn start(&self, s: Option<&Session<'_>>) -> TraceCtx {
        let incoming = s.filter(|s| s.trusted_peer).and_then(|s| {
            let tp = s.head.headers.get("traceparent")?.to_str().ok()?;
            let (trace, parent, sampled) = parse_traceparent(tp)?;
            let state = s
                .head
                .headers
                .get("tracestate")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Some((trace, parent, sampled, state))
        });
        match incoming {
            Some((trace_id, parent, sampled, state)) => TraceCtx {
                trace_id,
                span_id: random(),
                parent: Some(parent),
                state,
                sampled,
                attempts: Vec::new(),
            },
            None => TraceCtx {
                trace_id: random(),
                span_id: random(),
                parent: None,
                state: None,
                sampled: self.sample_ratio >= 1.0 || fastrand::f64() < self.sample_ratio,
                attempts: Vec::new(),
            },
        }
    }
}

impl Filter for Traces {
    fn name(&self) -> &str {
        "traces"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST | Hooks::UPSTREAM_REQUEST | Hooks::DONE
    }

    fn on_request<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        let t = self.start(Some(s));
        s.ctx.ext.insert(t);
        Step::Now(Ok(Flow::Continue))
    }

    fn on_upstream_request<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        upstream: &'a Upstream,
        headers: &'a mut http::HeaderMap,
    ) -> HookResult<'a> {
        if let Some(t) = s.ctx.ext.get_mut::<TraceCtx>() {
            let span: [u8; 8] = random();
            let value = format!(
                "00-{}-{}-{}",
                hex(&t.trace_id),
                hex(&span),
                if t.sampled { "01" } else { "00" }
            );
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert("traceparent", v);
            }
            // A client's own trace state is not passed on; a trusted peer's is.
            headers.remove("tracestate");
            if let Some(state) = t
                .state
                .as_deref()
                .and_then(|v| HeaderValue::from_str(v).ok())
            {
                headers.insert("tracestate", state);
            }
            // A built-in mock upstream has no address: its name stands in.
            let address = upstream
                .config
                .url
                .as_ref()
                .map_or_else(|| upstream.name.to_string(), |u| u.authority.to_string());
            t.attempts.push((span, address, Instant::now()));
        }
        Step::Now(Ok(()))
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let t = match ctx.ext.remove::<TraceCtx>() {
            Some(t) => t,
            // Refused before routing: a trace of its own.
            None => self.start(None),
        };
        if !t.sampled {
            return;
        }
        for span in spans(&t, ctx) {
            self.exporter.push(span);
        }
    }
}

pub(super) fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(super) fn text(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_owned()))
}

fn int(key: &str, value: u64) -> KeyValue {
    kv(
        key,
        any_value::Value::IntValue(value.min(i64::MAX as u64) as i64),
    )
}

/// `gen_ai.operation.name` and `gen_ai.provider.name` of an API path, when it is one.
fn operation(path: &str) -> Option<(&'static str, &'static str)> {
    let p = path.trim_end_matches('/');
    if p.ends_with("/chat/completions") || p.ends_with("/responses") {
        Some(("chat", "openai"))
    } else if p.ends_with("/messages") {
        Some(("chat", "anthropic"))
    } else if p.ends_with("/completions") {
        Some(("text_completion", "openai"))
    } else if p.ends_with("/embeddings") {
        Some(("embeddings", "openai"))
    } else {
        None
    }
}

fn unix_ns(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

fn error_status(message: &str) -> Option<Status> {
    Some(Status {
        code: status::StatusCode::Error as i32,
        message: message.to_owned(),
    })
}

/// The request's span and its children, from the record.
fn spans(t: &TraceCtx, ctx: &Ctx) -> Vec<Span> {
    let r = &ctx.record;
    let now = std::time::SystemTime::now();
    let took = r.start.elapsed();
    let start = now.checked_sub(took).unwrap_or(now);
    let at = |i: Instant| unix_ns(start + i.saturating_duration_since(r.start));
    let op = operation(r.path());
    let model = r.model.as_deref();
    let name = match (op, model) {
        (Some((op, _)), Some(m)) => format!("{op} {m}"),
        (Some((op, _)), None) => op.to_owned(),
        (None, _) => format!("{} {}", r.method, r.route.as_deref().unwrap_or("")),
    };
    let mut attributes = vec![
        text("http.request.method", r.method.as_str()),
        text("url.path", r.path()),
        int("http.response.status_code", u64::from(r.status)),
        text("client.address", &r.client_ip.to_string()),
        text("tollgate.request_id", &r.request_id),
        text("tollgate.outcome", r.outcome.as_str()),
    ];
    if let Some((op, provider)) = op {
        attributes.push(text("gen_ai.operation.name", op));
        attributes.push(text("gen_ai.provider.name", provider));
    }
    if let Some(m) = model {
        attributes.push(text("gen_ai.request.model", m));
    }
    if let Some(m) = r.served_model.as_deref() {
        attributes.push(text("gen_ai.response.model", m));
    }
    if let Some(route) = r.route.as_deref() {
        attributes.push(text("tollgate.route", route));
    }
    if let Some(k) = &r.key {
        attributes.push(text("tollgate.key.name", &k.name));
    }
    if let Some(u) = r.upstream.as_deref() {
        attributes.push(text("tollgate.upstream", u));
    }
    if let Some(tk) = r.tokens {
        attributes.push(int("gen_ai.usage.input_tokens", tk.tokens.input));
        attributes.push(int("gen_ai.usage.output_tokens", tk.tokens.output));
    }
    if let Some(by) = r.answered_by.as_deref() {
        attributes.push(text("tollgate.answered_by", by));
    }
    let failed = r.error.map(str::to_owned).or_else(|| {
        (r.status >= 500 || r.outcome == Outcome::UpstreamAborted).then(|| {
            if r.status >= 500 {
                r.status.to_string()
            } else {
                r.outcome.as_str().to_owned()
            }
        })
    });
    if let Some(e) = &failed {
        attributes.push(text("error.type", e));
    }
    let end = unix_ns(now);
    let mut out = Vec::with_capacity(1 + t.attempts.len() + r.policy_calls.len());
    out.push(Span {
        trace_id: t.trace_id.to_vec(),
        span_id: t.span_id.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        trace_state: t.state.clone().unwrap_or_default(),
        name: name.clone(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: unix_ns(start),
        end_time_unix_nano: end,
        attributes,
        status: failed.as_deref().and_then(error_status),
        ..Default::default()
    });
    let last = t.attempts.len().saturating_sub(1);
    for (i, (id, address, began)) in t.attempts.iter().enumerate() {
        let logged = r.attempt_log.get(i);
        let mut attributes = vec![text("server.address", address)];
        if let Some(a) = logged {
            attributes.push(text("tollgate.upstream", &a.upstream));
            if a.status > 0 {
                attributes.push(int("http.response.status_code", u64::from(a.status)));
            }
        }
        if let Some((op, provider)) = op {
            attributes.push(text("gen_ai.operation.name", op));
            attributes.push(text("gen_ai.provider.name", provider));
        }
        if let Some(m) = model {
            attributes.push(text("gen_ai.request.model", m));
        }
        if i == last
            && let Some(m) = r.served_model.as_deref()
        {
            attributes.push(text("gen_ai.response.model", m));
        }
        // The last attempt lasts as long as its answer was relayed; an earlier one until its
        // head (or failure).
        let ended = match logged {
            Some(a) if i < last => unix_ns(start + Duration::from_millis(u64::from(a.ms))),
            _ => end,
        };
        let error = logged.and_then(|a| {
            a.error
                .map(str::to_owned)
                .or_else(|| (a.status >= 500).then(|| a.status.to_string()))
        });
        if let Some(e) = &error {
            attributes.push(text("error.type", e));
        }
        out.push(Span {
            trace_id: t.trace_id.to_vec(),
            span_id: id.to_vec(),
            parent_span_id: t.span_id.to_vec(),
            name: name.clone(),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: at(*began),
            end_time_unix_nano: ended.max(at(*began)),
            attributes,
            status: error.as_deref().and_then(error_status),
            ..Default::default()
        });
    }
    for call in &r.policy_calls {
        out.push(Span {
            trace_id: t.trace_id.to_vec(),
            span_id: random::<8>().to_vec(),
            parent_span_id: t.span_id.to_vec(),
            name: call.policy.to_string(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: at(call.began),
            end_time_unix_nano: at(call.began + call.took),
            attributes: vec![text("tollgate.policy", &call.policy)],
            status: call
                .failed
                .then(|| error_status("the policy failed"))
                .flatten(),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_strictly() {
        let (trace, parent, sampled) =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&parent), "00f067aa0ba902b7");
        assert!(sampled);
        for bad in [
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
    }
}
