//! The plugin-authoring runner behind `tollgate plugin test` (`inspect.rs` is `plugin inspect`).
//!
//! A cases file runs a plugin through the real runtime (same sandbox, same host imports, state
//! carried from case to case, so "first use binds, second IP is refused" can be written down):
//!
//! ```yaml
//! kind: ip-binding            # optional: inferred from the component's exports
//! config: {prefix_v4: 24}     # passed to configure
//! limits: {deadline: 5ms}     # optional: as plugins[].limits; unset keys are the gateway's defaults
//! cases:
//!   - name: first use binds
//!     request: {client_ip: 203.0.113.7}
//!     expect: allow
//!   - name: another network is refused
//!     request: {client_ip: 198.51.100.1}
//!     expect: {deny: {status: 403, code: ip_not_allowed}}
//! ```
//!
//! Routers take `candidates: [{name: a, weight: 2, in_flight: 0, latency_ewma_us: 0,
//! error_rate: 0, cooling_until_ms: 0, models: [], headroom: {requests, tokens,
//! monthly_tokens}}]` (`headroom`: what the `capacity` import answers for it); quota policies take `response: {status,
//! headers: {name: value}, first_event}`; header-rewrite takes `phase: request|response` and, for
//! responses, `upstream`, `response: {status, headers}`. `expect` is compared as a subset: fields
//! left out are not checked.
//!
//! A transform case is one request's life, with a fresh state: `body` (JSON, or a string) goes
//! to `on-request`; when that asks for the response, `response: {status, headers, body}` goes to
//! `on-response-head` and `on-response-body`, or `events: [{event, data}]` (data JSON or a
//! string) to `on-event` one by one and then `on-stream-end`. `expect` may check `request` (the
//! action, bodies parsed as JSON), `head`, `body` and `events` (every event the client would
//! get, in order).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};

use serde::Deserialize;
use serde_json::{Value, json};

use super::inspect::kind_of;
use super::types::{
    BindingDecision, CooldownScope, HeaderOp, QuotaDecision, RouteDecision, UpstreamView,
};
use super::{CodeOrigin, PluginKind, PluginSpec, PolicyEngine};
use crate::view::{Candidates, RequestInfo, ResponseInfo};
use tollgate_config::Module;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    kind: Option<PluginKind>,
    #[serde(default = "empty")]
    config: Value,
    /// The sandbox limits, as in the config file's `plugins[].limits`; unset ones are the
    /// gateway's defaults, so a plugin passes here only if it fits where it will run.
    #[serde(default)]
    limits: tollgate_config::PluginLimits,
    cases: Vec<Case>,
}

fn empty() -> Value {
    json!({})
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    request: RequestFixture,
    #[serde(default)]
    candidates: Vec<CandidateFixture>,
    #[serde(default)]
    response: ResponseFixture,
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    upstream: String,
    /// Transforms: the request body.
    #[serde(default)]
    body: Option<Value>,
    /// Transforms: the upstream's events, when it streams.
    #[serde(default)]
    events: Option<Vec<EventFixture>>,
    expect: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFixture {
    #[serde(default)]
    event: Option<String>,
    data: Value,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Phase {
    #[default]
    Request,
    Response,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RequestFixture {
    id: String,
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
    client_ip: IpAddr,
    key_id: String,
    key_name: String,
    model: Option<String>,
    stream: bool,
    session_hint: Option<String>,
    estimated_tokens: u64,
    upstream_protocol: Option<tollgate_config::Protocol>,
}

impl Default for RequestFixture {
    fn default() -> Self {
        Self {
            id: "test-request".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: BTreeMap::new(),
            client_ip: IpAddr::from([127, 0, 0, 1]),
            key_id: "0".repeat(64),
            key_name: "test".into(),
            model: Some("gpt-4o-mini".into()),
            stream: false,
            session_hint: None,
            estimated_tokens: 0,
            upstream_protocol: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CandidateFixture {
    name: String,
    weight: Option<u32>,
    models: Vec<String>,
    in_flight: u32,
    latency_ewma_us: u64,
    error_rate: f32,
    cooling_until_ms: u64,
    /// What the `capacity` import answers for this candidate (each figure optional).
    headroom: HeadroomFixture,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
struct HeadroomFixture {
    requests: Option<u64>,
    tokens: Option<u64>,
    monthly_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ResponseFixture {
    status: u16,
    headers: BTreeMap<String, String>,
    first_event: Option<String>,
    /// Transforms: the upstream's body (JSON, or a string).
    body: Option<Value>,
}

impl Default for ResponseFixture {
    fn default() -> Self {
        Self {
            status: 200,
            headers: BTreeMap::new(),
            first_event: None,
            body: None,
        }
    }
}

/// A fixture body as the text a plugin gets: a string as it is, anything else as JSON.
fn body_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A body a plugin returned, as `expect` compares it: parsed when it is JSON.
fn body_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

pub fn events_json(events: &[super::transform::SseEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .map(|e| json!({"event": e.event, "data": body_json(&e.data)}))
            .collect(),
    )
}

/// A transform's request action, as `expect.request` compares it (a body parsed when JSON).
pub fn request_action_json(a: &super::transform::RequestAction) -> Value {
    use super::transform::RequestAction;
    match a {
        RequestAction::Forward(e) => json!({"forward": {
            "path": e.path,
            "headers": ops_json(e.headers.clone()),
            "body": e.body.as_deref().map(body_json),
            "response": e.response,
        }}),
        RequestAction::Answer(a) => json!({"answer": {
            "status": a.status,
            "headers": a.headers.iter().map(|h| json!({"name": h.name, "value": h.value})).collect::<Vec<_>>(),
            "body": body_json(&a.body),
        }}),
        RequestAction::Deny(d) => {
            json!({"deny": {"status": d.status, "code": d.code, "message": d.message}})
        }
    }
}

/// One transform case: the request, then (when asked) the response or the events. What each
/// step returned, or the error that stopped it.
async fn transform_case(
    plugin: &super::Plugin,
    req: &Arc<RequestInfo>,
    body: Option<&Value>,
    response_fixture: &ResponseFixture,
    upstream: &str,
    events: Option<Vec<EventFixture>>,
) -> Result<Value, String> {
    use super::transform::{RequestAction, SseEvent};
    let mut state = None;
    let mut out = serde_json::Map::new();
    let body = body.map(body_text).unwrap_or_default();
    let action = plugin
        .transform_request(req, &body, &mut state)
        .await
        .map_err(|e| e.to_string())?;
    out.insert("request".into(), request_action_json(&action));
    let RequestAction::Forward(edit) = action else {
        return Ok(Value::Object(out));
    };
    if !edit.response {
        return Ok(Value::Object(out));
    }
    let resp = Arc::new(response(upstream, response_fixture)?);
    let head = plugin
        .transform_response_head(req, &resp, &mut state)
        .await
        .map_err(|e| e.to_string())?;
    out.insert(
        "head".into(),
        json!({"status": head.status, "headers": ops_json(head.headers)}),
    );
    if let Some(events) = events {
        let mut sent = Vec::new();
        for e in events {
            let event = SseEvent {
                event: e.event,
                data: body_text(&e.data),
            };
            let more = plugin
                .transform_event(req, &event, &mut state)
                .await
                .map_err(|e| e.to_string())?;
            sent.extend(more);
        }
        let last = plugin
            .transform_stream_end(req, &mut state)
            .await
            .map_err(|e| e.to_string())?;
        sent.extend(last);
        out.insert("events".into(), events_json(&sent));
    } else if let Some(b) = &response_fixture.body {
        let text = body_text(b);
        let new = plugin
            .transform_response_body(req, &resp, &text, &mut state)
            .await
            .map_err(|e| e.to_string())?;
        out.insert("body".into(), body_json(new.as_deref().unwrap_or(&text)));
    }
    Ok(Value::Object(out))
}

fn header_map(map: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    map.iter()
        .map(|(n, v)| {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| format!("`{n}` is not a header name"))?;
            let value =
                HeaderValue::from_str(v).map_err(|_| format!("`{v}` is not a header value"))?;
            Ok((name, value))
        })
        .collect()
}

fn request(r: RequestFixture) -> Result<RequestInfo, String> {
    Ok(RequestInfo {
        id: r.id,
        method: r.method,
        path: r.path,
        headers: header_map(&r.headers)?,
        client_ip: r.client_ip,
        key_id: r.key_id,
        key_name: r.key_name,
        model: r.model,
        stream: r.stream,
        session_hint: r.session_hint,
        estimated_tokens: r.estimated_tokens,
        upstream_protocol: r.upstream_protocol.map(|p| p.as_str()),
    })
}

fn response(upstream: &str, r: &ResponseFixture) -> Result<ResponseInfo, String> {
    Ok(ResponseInfo {
        upstream: upstream.to_owned(),
        status: r.status,
        headers: header_map(&r.headers)?,
        first_event: r.first_event.clone(),
    })
}

/// Names the case a fixture error comes from.
fn in_case<T>(case: &str, r: Result<T, String>) -> Result<T, String> {
    r.map_err(|e| format!("case `{case}`: {e}"))
}

fn candidate(c: CandidateFixture) -> UpstreamView {
    UpstreamView {
        name: c.name,
        weight: c.weight.unwrap_or(1),
        models: c.models,
        in_flight: c.in_flight,
        latency_ewma_us: c.latency_ewma_us,
        error_rate: c.error_rate,
        cooling_until_ms: c.cooling_until_ms,
    }
}

/// A request with the fixture defaults and the given id (for tests and benchmarks).
pub fn sample_request(id: &str) -> Arc<RequestInfo> {
    Arc::new(
        request(RequestFixture {
            id: id.to_owned(),
            ..RequestFixture::default()
        })
        .expect("the defaults are valid"),
    )
}

/// A response from `upstream` with `status` and no headers (for tests and benchmarks).
pub fn sample_response(upstream: &str, status: u16) -> Arc<ResponseInfo> {
    Arc::new(ResponseInfo {
        upstream: upstream.to_owned(),
        status,
        headers: HeaderMap::new(),
        first_event: None,
    })
}

/// An upstream view with the fixture defaults (weight 1, idle, healthy) and the given name.
pub fn sample_upstream(name: &str) -> UpstreamView {
    candidate(CandidateFixture {
        name: name.to_owned(),
        ..CandidateFixture::default()
    })
}

/// Decisions as JSON, in the same shape `expect` uses.
pub fn binding_json(d: BindingDecision) -> Value {
    match d {
        BindingDecision::Allow => json!("allow"),
        BindingDecision::Deny(d) => {
            json!({"deny": {"status": d.status, "code": d.code, "message": d.message}})
        }
    }
}

pub fn route_json(d: RouteDecision) -> Value {
    match d {
        RouteDecision::Pick(order) => json!({"pick": order}),
        RouteDecision::None(reason) => json!({"none": reason}),
    }
}

pub fn quota_json(d: QuotaDecision) -> Value {
    match d {
        QuotaDecision::Pass => json!("pass"),
        QuotaDecision::RetryOther => json!("retry-other"),
        QuotaDecision::Cooldown(c) => json!({"cooldown": {
            "scope": match c.scope { CooldownScope::Model => "model", CooldownScope::Upstream => "upstream" },
            "until_ms": c.until_ms,
            "then": match c.then { super::types::AfterCooldown::RetryOther => "retry-other", super::types::AfterCooldown::Pass => "pass" },
        }}),
    }
}

pub fn ops_json(ops: Vec<HeaderOp>) -> Value {
    Value::Array(
        ops.into_iter()
            .map(|op| match op {
                HeaderOp::Set(h) => json!({"set": {"name": h.name, "value": h.value}}),
                HeaderOp::Append(h) => json!({"append": {"name": h.name, "value": h.value}}),
                HeaderOp::Remove(n) => json!({"remove": n}),
                HeaderOp::Rename((from, to)) => json!({"rename": {"from": from, "to": to}}),
            })
            .collect(),
    )
}

/// Whether `actual` has everything `expected` says (objects: listed keys; arrays: same length).
pub fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        (Value::Number(e), Value::Number(a)) => e.as_f64() == a.as_f64(),
        _ => expected == actual,
    }
}

/// One case's outcome.
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub actual: Value,
    pub expected: Value,
}

/// What a cases run found, and what it cost.
pub struct Report {
    pub results: Vec<CaseResult>,
    /// Compiling the component (once), or reading it from the compilation cache.
    pub compile: Duration,
    /// Whether it was compiled or read from the cache.
    pub code_origin: CodeOrigin,
    /// Linear memory of a configured instance, in bytes.
    pub instance_memory: u64,
    /// Creating and configuring the first instance (`configure` included).
    pub first_instance: Duration,
    /// Each case's wall time: one call into the plugin, or none where the gateway would skip it.
    pub case_times: Vec<Duration>,
}

/// Runs the cases file against the plugin `module`.
pub async fn run_cases(
    engine: &PolicyEngine,
    module: &Module,
    cases_path: &Path,
) -> Result<Report, String> {
    let text = std::fs::read_to_string(cases_path)
        .map_err(|e| format!("cannot read {}: {e}", cases_path.display()))?;
    let file: CasesFile =
        serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(&text))
            .map_err(|e| format!("{}: {e}", cases_path.display()))?;
    // The gateway's limits (or the file's), except that the breaker never opens and instances
    // are never recycled, so one failing case does not change how the next one runs.
    let mut spec = PluginSpec {
        config_json: file.config.to_string(),
        max_calls: u32::MAX,
        breaker_failures: 0,
        ..PluginSpec::with_limits(
            "under-test",
            file.kind.unwrap_or(PluginKind::Router),
            &file.limits,
        )
    };
    // Compiled once, whether or not the file names the kind.
    let (component, digest, (code_origin, compile)) =
        engine.compile(module, &spec).map_err(|e| e.to_string())?;
    let kind = match file.kind {
        Some(k) => k,
        None => {
            let exports: Vec<String> = component
                .component_type()
                .exports(engine.engine())
                .map(|(n, _)| n.to_owned())
                .collect();
            kind_of(&exports).ok_or("the component exports no tollgate:policy interface")?
        }
    };
    spec.kind = kind;
    let plugin = engine
        .prepare(
            component,
            (module.clone(), digest),
            spec,
            (code_origin, compile),
        )
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    plugin.validate().await.map_err(|e| e.to_string())?;
    let first_instance = started.elapsed();
    let instance_memory = plugin.instance_memory().unwrap_or(0);
    let mut results = Vec::new();
    let mut case_times = Vec::new();
    for case in file.cases {
        let started = Instant::now();
        // Calls the gateway would skip (a status the quota policy does not watch, a phase the
        // header rewrite does not rewrite) give what the gateway does instead: pass, no ops.
        let name = case.name.clone();
        let req = Arc::new(in_case(&name, request(case.request))?);
        let actual = match kind {
            PluginKind::IpBinding => plugin.check(&req).await.map(binding_json),
            PluginKind::Router => {
                let headroom = case
                    .candidates
                    .iter()
                    .map(|c| {
                        let h = c.headroom;
                        (
                            c.name.clone(),
                            super::capacity::Headroom {
                                requests: h.requests,
                                tokens: h.tokens,
                                monthly_tokens: h.monthly_tokens,
                            },
                        )
                    })
                    .collect();
                let cands = Candidates::Views(case.candidates.into_iter().map(candidate).collect());
                plugin
                    .select_with(&req, &cands, headroom)
                    .await
                    .map(route_json)
            }
            PluginKind::Quota => {
                let up = case
                    .candidates
                    .into_iter()
                    .next()
                    .map(candidate)
                    .unwrap_or_else(|| {
                        candidate(CandidateFixture {
                            name: "upstream".into(),
                            ..Default::default()
                        })
                    });
                let resp = Arc::new(in_case(&name, response(&up.name, &case.response))?);
                if plugin.watches(resp.status, resp.first_event.is_some()) {
                    plugin.on_response(&req, &up, &resp).await.map(quota_json)
                } else {
                    Ok(quota_json(QuotaDecision::Pass))
                }
            }
            PluginKind::HeaderRewrite => match case.phase {
                Phase::Request if plugin.rewrites_requests() => {
                    plugin.rewrite_request(&req).await.map(ops_json)
                }
                Phase::Response if plugin.rewrites_responses() => {
                    let resp = Arc::new(in_case(&name, response(&case.upstream, &case.response))?);
                    plugin.rewrite_response(&req, &resp).await.map(ops_json)
                }
                Phase::Request | Phase::Response => Ok(ops_json(Vec::new())),
            },
            PluginKind::Transform => {
                let upstream = if case.upstream.is_empty() {
                    "upstream"
                } else {
                    &case.upstream
                };
                let out = transform_case(
                    &plugin,
                    &req,
                    case.body.as_ref(),
                    &case.response,
                    upstream,
                    case.events,
                )
                .await;
                case_times.push(started.elapsed());
                let actual = out.unwrap_or_else(|e| json!({"error": e}));
                results.push(CaseResult {
                    passed: matches(&case.expect, &actual),
                    name: case.name,
                    actual,
                    expected: case.expect,
                });
                continue;
            }
        };
        case_times.push(started.elapsed());
        let actual = actual.unwrap_or_else(|e| json!({"error": e.to_string()}));
        results.push(CaseResult {
            passed: matches(&case.expect, &actual),
            name: case.name,
            actual,
            expected: case.expect,
        });
    }
    Ok(Report {
        results,
        compile,
        code_origin,
        instance_memory,
        first_instance,
        case_times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_match_as_subsets() {
        let actual =
            json!({"cooldown": {"scope": "model", "until_ms": 123, "then": "retry-other"}});
        assert!(matches(&json!({"cooldown": {"scope": "model"}}), &actual));
        assert!(!matches(
            &json!({"cooldown": {"scope": "upstream"}}),
            &actual
        ));
        assert!(matches(&json!({"pick": [1, 0]}), &json!({"pick": [1, 0]})));
        assert!(!matches(&json!({"pick": [1]}), &json!({"pick": [1, 0]})));
        assert!(matches(&json!("allow"), &json!("allow")));
    }
}
