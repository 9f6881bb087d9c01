//! OpenTelemetry traces: the spans a collector started by the test receives over OTLP/HTTP
//! (protobuf, decoded here with the protocol's own crate), their GenAI attributes and parent/child
//! links, the `traceparent` the upstream sees, a trusted peer's trace continued, and a dead
//! collector that costs requests nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use tollgate_tests::{
    CLIENT_KEY, DeadPort, MockUpstream, TestGateway, chat_body, client, client_from, config_yaml,
    eventually, plugin, policy_config_yaml,
};

/// An OTLP/HTTP receiver on loopback: the spans it was sent, and the headers of the last export.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Span>>>,
    headers: Arc<Mutex<Option<http::HeaderMap>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let headers: Arc<Mutex<Option<http::HeaderMap>>> = Arc::default();
        let (s, h) = (spans.clone(), headers.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |got: http::HeaderMap, body: Bytes| {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    for rs in request.resource_spans {
                        let service = rs.resource.unwrap().attributes;
                        assert!(service.iter().any(|kv| kv.key == "service.name"));
                        for ss in rs.scope_spans {
                            s.lock().unwrap().extend(ss.spans);
                        }
                    }
                    *h.lock().unwrap() = Some(got);
                    ExportTraceServiceResponse::default().encode_to_vec()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            addr,
            spans,
            headers,
        }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// The first span of `kind` received.
    fn first(&self, kind: SpanKind) -> Span {
        self.spans()
            .into_iter()
            .find(|s| s.kind == kind as i32)
            .unwrap_or_else(|| panic!("no {kind:?} span"))
    }
}

/// A chat request from `from` carrying a trace of its own (`tracestate: vendor=STATE`).
async fn traced_chat(from: reqwest::Client, gw: &TestGateway, state: &str) -> u16 {
    from.post(gw.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("tracestate", format!("vendor={state}"))
        .json(&chat_body(false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn attr(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(Value::StringValue(s)) => s,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(Value::IntValue(i)) => i,
        other => panic!("{key}: {other:?} in {span:?}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn yaml(upstreams: &[String], server: &str, collector: &str) -> String {
    format!(
        "{}telemetry:\n  otlp:\n    endpoint: {collector}\n    headers: {{x-collector-key: secret-123}}\n",
        config_yaml(upstreams, server)
    )
}

/// A proxied request is one server span with GenAI attributes, its upstream attempt a client
/// span beneath it whose id the upstream received in `traceparent`; the export carries the
/// configured headers.
#[tokio::test]
async fn a_request_is_a_server_span_with_its_attempt_beneath_it() {
    let (collector, mock) = (Collector::start().await, MockUpstream::start().await);
    let gw = TestGateway::start(&yaml(
        &[mock.url()],
        "",
        &format!("http://{}/v1/traces", collector.addr),
    ))
    .await;
    // A client's own trace is not continued: it is not a trusted peer.
    assert_eq!(traced_chat(client(), &gw, "client").await, 200);
    assert!(eventually(Duration::from_secs(5), || collector.spans().len() >= 2).await);
    let (server, attempt) = (
        &collector.first(SpanKind::Server),
        &collector.first(SpanKind::Client),
    );
    let model = chat_body(false)["model"].as_str().unwrap().to_owned();
    assert_eq!(server.name, format!("chat {model}"));
    assert_eq!(text(server, "gen_ai.operation.name"), "chat");
    assert_eq!(text(server, "gen_ai.provider.name"), "openai");
    assert_eq!(text(server, "gen_ai.request.model"), model);
    // The mock answers with the model it was asked for: read from its answer.
    assert_eq!(text(server, "gen_ai.response.model"), model);
    assert_eq!(int(server, "gen_ai.usage.input_tokens"), 8);
    assert_eq!(int(server, "gen_ai.usage.output_tokens"), 2);
    assert_eq!(int(server, "http.response.status_code"), 200);
    assert_eq!(text(server, "tollgate.key.name"), "tester");
    assert!(attr(server, "error.type").is_none());
    assert!(server.parent_span_id.is_empty(), "a new trace");
    assert_ne!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(server.end_time_unix_nano > server.start_time_unix_nano);

    assert_eq!(attempt.trace_id, server.trace_id);
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(
        text(attempt, "server.address"),
        mock.url()["http://".len()..]
    );
    assert_eq!(int(attempt, "http.response.status_code"), 200);
    assert_eq!(text(attempt, "gen_ai.response.model"), model);
    assert!(attempt.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(attempt.end_time_unix_nano <= server.end_time_unix_nano);
    // What the upstream received: this trace, the attempt's span, sampled; not the client's
    // trace state.
    let seen = mock.last_headers();
    assert_eq!(
        seen["traceparent"],
        format!("00-{}-{}-01", hex(&server.trace_id), hex(&attempt.span_id))
    );
    assert!(seen.get("tracestate").is_none());
    let export = collector.headers.lock().unwrap().clone().unwrap();
    assert_eq!(export["x-collector-key"], "secret-123");
    assert_eq!(export["content-type"], "application/x-protobuf");
}

/// A trusted peer's `traceparent` is continued (its span is the parent), its `tracestate` is
/// passed on; a failover shows both attempts, the failed one with its `error.type`; a refused
/// request is a span with `error.type` too.
#[tokio::test]
async fn a_trusted_peers_trace_is_continued_and_failures_carry_their_error_type() {
    let (collector, dead, mock) = (
        Collector::start().await,
        DeadPort::new(),
        MockUpstream::start().await,
    );
    let gw = TestGateway::start(&yaml(
        &[dead.url(), mock.url()],
        "  trusted_proxies: [127.0.0.2]",
        &format!("http://{}/v1/traces", collector.addr),
    ))
    .await;
    assert_eq!(
        traced_chat(client_from("127.0.0.2"), &gw, "peer").await,
        200
    );
    assert!(eventually(Duration::from_secs(5), || collector.spans().len() >= 3).await);
    let spans = collector.spans();
    let server = &collector.first(SpanKind::Server);
    assert_eq!(hex(&server.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(attempts.len(), 2);
    assert_eq!(text(attempts[0], "error.type"), "upstream_unavailable");
    assert_eq!(text(attempts[0], "tollgate.upstream"), "u0");
    assert_eq!(text(attempts[1], "tollgate.upstream"), "u1");
    assert!(attempts.iter().all(|a| a.parent_span_id == server.span_id));
    let seen = mock.last_headers();
    assert_eq!(
        seen["traceparent"],
        format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&attempts[1].span_id)
        )
    );
    assert_eq!(seen["tracestate"], "vendor=peer");

    // A refusal: one span, the error code as its error type, what refused it.
    let before = collector.spans().len();
    let refused = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth("sk-wrong")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(eventually(Duration::from_secs(5), || collector.spans().len() > before).await);
    let spans = collector.spans();
    let span = spans.last().unwrap();
    assert_eq!(text(span, "error.type"), "invalid_api_key");
    assert_eq!(text(span, "tollgate.answered_by"), "auth");
    assert_eq!(int(span, "http.response.status_code"), 401);
}

/// Each policy call is an internal span beneath the request's, named after the policy, within
/// the request's time.
#[tokio::test]
async fn policy_calls_are_spans_beneath_the_request() {
    let (collector, a, b) = (
        Collector::start().await,
        MockUpstream::start().await,
        MockUpstream::start().await,
    );
    let yaml = format!(
        "{}telemetry:\n  otlp:\n    endpoint: http://{}/v1/traces\n",
        policy_config_yaml(
            &[a.url(), b.url()],
            &[plugin("first", "router", "tollgate_fill_first", "{}")],
            &["first"],
        ),
        collector.addr
    );
    let gw = TestGateway::start(&yaml).await;
    assert_eq!(gw.chat().await.status(), 200);
    assert!(eventually(Duration::from_secs(5), || collector.spans().len() >= 3).await);
    let (server, policy) = (
        collector.first(SpanKind::Server),
        collector.first(SpanKind::Internal),
    );
    assert_eq!(policy.name, "plugin:first");
    assert_eq!(policy.parent_span_id, server.span_id);
    assert!(policy.start_time_unix_nano >= server.start_time_unix_nano);
    assert!(policy.end_time_unix_nano <= server.end_time_unix_nano);
    assert!(policy.end_time_unix_nano >= policy.start_time_unix_nano);
}

/// `sample_ratio: 0` exports nothing (the upstream still gets an unsampled `traceparent`); a
/// collector that is down costs the requests nothing and its spans are counted as failed.
#[tokio::test]
async fn unsampled_and_dead_collectors_cost_requests_nothing() {
    let (collector, mock) = (Collector::start().await, MockUpstream::start().await);
    let unsampled = TestGateway::start(&format!(
        "{}    sample_ratio: 0\n",
        yaml(
            &[mock.url()],
            "",
            &format!("http://{}/v1/traces", collector.addr)
        )
    ))
    .await;
    assert_eq!(unsampled.chat().await.status(), 200);
    let tp = mock.last_headers()["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(collector.spans().is_empty());

    let dead = DeadPort::new();
    let gw = TestGateway::start(&yaml(
        &[mock.url()],
        "",
        &format!("{}/v1/traces", dead.url()),
    ))
    .await;
    let failed_before = failed(&gw).await;
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(gw.chat().await.status(), 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        tollgate_tests::eventually_async(Duration::from_secs(5), || async {
            failed(&gw).await >= failed_before + 40
        })
        .await,
        "20 requests, 2 spans each, counted as failed: {}",
        failed(&gw).await
    );
}

async fn failed(gw: &TestGateway) -> u64 {
    let metrics = gw.metrics().await;
    metrics
        .lines()
        .find(|l| l.starts_with("tollgate_trace_spans_total{result=\"failed\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"))
}
