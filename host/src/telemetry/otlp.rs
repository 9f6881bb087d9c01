//! The OTLP/HTTP span exporter of `traces`: a bounded queue the request path pushes to without
//! waiting, and a task that sends the spans to the collector in protobuf batches. What became of
//! the spans is counted process-wide ([`STATS`], `tollgate_trace_spans_total`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use tokio::sync::mpsc;

use super::traces::text;
use crate::config::OtlpConfig;
use crate::upstream::UpstreamClient;

/// Spans in one export request.
const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What became of the spans the gateway made (process-wide: exporters come and go with
/// reloads). Read by `/metrics`.
#[derive(Default)]
pub(crate) struct TraceStats {
    pub(crate) exported: AtomicU64,
    /// The queue was full.
    pub(crate) dropped: AtomicU64,
    /// Their export failed (the collector is down, slow or refused them).
    pub(crate) failed: AtomicU64,
}

pub(crate) static STATS: TraceStats = TraceStats {
    exported: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    failed: AtomicU64::new(0),
};

/// Sends spans to the collector in batches, from a task of its own; the request path only
/// queues (never waits).
pub(crate) struct Exporter {
    queue: mpsc::Sender<Span>,
}

impl Exporter {
    pub(super) fn start(c: &OtlpConfig, connect_timeout: Duration) -> Self {
        let (queue, rx) = mpsc::channel(c.max_queue);
        let client = UpstreamClient::new(connect_timeout);
        let e = &c.endpoint;
        let url = format!("{}://{}{}", e.scheme, e.authority, e.base_path);
        let headers: Vec<(http::HeaderName, HeaderValue)> = c
            .headers
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    http::HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v.expose()).ok()?,
                ))
            })
            .collect();
        let resource = Resource {
            attributes: vec![
                text("service.name", &c.service_name),
                text("service.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Default::default()
        };
        tokio::spawn(export_loop(
            rx,
            client,
            url,
            headers,
            resource,
            c.timeout.get(),
        ));
        Self { queue }
    }

    pub(super) fn push(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            STATS.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Takes spans off the queue and exports them, `BATCH` at a time or every `FLUSH_EVERY`; ends
/// (after a last export) when the config that started it is gone.
async fn export_loop(
    mut rx: mpsc::Receiver<Span>,
    client: UpstreamClient,
    url: String,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    resource: Resource,
    timeout: Duration,
) {
    let client = Arc::new(client);
    let mut batch: Vec<Span> = Vec::with_capacity(BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_warning: Option<Instant> = None;
    loop {
        let open = tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    if batch.len() < BATCH {
                        continue;
                    }
                    true
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        if !batch.is_empty() {
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            let n = spans.len() as u64;
            let body = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "tollgate".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                            ..Default::default()
                        }),
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec();
            match tokio::time::timeout(timeout, send(&client, &url, &headers, body)).await {
                Ok(Ok(())) => {
                    STATS.exported.fetch_add(n, Ordering::Relaxed);
                }
                outcome => {
                    STATS.failed.fetch_add(n, Ordering::Relaxed);
                    // One line a minute at most: a dead collector must not flood the log.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        last_warning = Some(Instant::now());
                        let error = match outcome {
                            Ok(Err(e)) => e,
                            _ => "timed out".into(),
                        };
                        tracing::warn!(target: "telemetry", %url, %error, spans = n, "trace export failed; its spans are dropped");
                    }
                }
            }
        }
        if !open {
            return;
        }
    }
}

async fn send(
    client: &UpstreamClient,
    url: &str,
    headers: &[(http::HeaderName, HeaderValue)],
    body: Vec<u8>,
) -> Result<(), String> {
    let mut request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .header(http::header::USER_AGENT, "tollgate-otlp")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .map_err(|e| e.to_string())?;
    for (k, v) in headers {
        request.headers_mut().insert(k.clone(), v.clone());
    }
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the collector answered {}", response.status()))
    }
}
