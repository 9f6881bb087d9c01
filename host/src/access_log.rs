//! One structured line per request on the `access` tracing target, with nginx-style timings.
//!
//! The [`AccessRecord`] travels with the request: the handler fills it in, hands it to the response
//! body ([`Logged`]), and whoever holds it last writes the line when dropping it. So a request
//! that completes, fails, or is abandoned by its client mid-stream is logged exactly once, with
//! the outcome that actually happened.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response was sent.
    Complete,
    /// The client went away before the response finished.
    ClientAborted,
    /// The upstream failed or went silent mid-body; the client got a truncated response.
    UpstreamAborted,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Complete => "complete",
            Self::ClientAborted => "client_aborted",
            Self::UpstreamAborted => "upstream_aborted",
        }
    }
}

pub struct AccessRecord {
    pub enabled: bool,
    pub request_id: Arc<str>,
    pub start: Instant,
    pub client_ip: IpAddr,
    pub method: http::Method,
    pub path: String,
    pub http_version: http::Version,
    pub key_prefix: Option<String>,
    pub route: Option<Arc<str>>,
    pub model: Option<String>,
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
    /// Why the gateway answered itself, when it did.
    pub error: Option<&'static str>,
    /// Holds the upstream's in-flight count for as long as the response is relayed.
    pub in_flight: Option<crate::upstream::InFlight>,
    pub outcome: Outcome,
}

impl AccessRecord {
    pub fn new(
        enabled: bool,
        request_id: Arc<str>,
        client_ip: IpAddr,
        parts: &http::request::Parts,
    ) -> Self {
        Self {
            enabled,
            request_id,
            start: Instant::now(),
            client_ip,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            http_version: parts.version,
            key_prefix: None,
            route: None,
            model: None,
            upstream: None,
            attempts: 0,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_connect: None,
            upstream_head: None,
            first_byte: None,
            error: None,
            in_flight: None,
            // Until the body says otherwise: a record dropped before its response was handed to
            // the client belongs to a client that left.
            outcome: Outcome::ClientAborted,
        }
    }
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: "access",
            request_id = %self.request_id,
            client_ip = %self.client_ip,
            method = %self.method,
            path = %self.path,
            http = ?self.http_version,
            key = self.key_prefix.as_deref(),
            route = self.route.as_deref(),
            model = self.model.as_deref(),
            upstream = self.upstream.as_deref(),
            attempts = self.attempts,
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            total_ms = ms(Some(self.start.elapsed())),
            upstream_connect_ms = ms(self.upstream_connect),
            upstream_head_ms = ms(self.upstream_head),
            first_byte_ms = ms(self.first_byte),
            error = self.error,
            outcome = self.outcome.as_str(),
        );
    }
}

pin_project! {
    /// A response body that counts what it relays and completes the access record.
    pub struct Logged<B> {
        #[pin]
        inner: B,
        record: Option<Box<AccessRecord>>,
    }
}

impl<B> Logged<B> {
    /// A body that is relayed without an access record (the gateway's own endpoints).
    pub fn untracked(inner: B) -> Self {
        Self {
            inner,
            record: None,
        }
    }

    pub fn new(inner: B, mut record: Box<AccessRecord>) -> Self
    where
        B: Body,
    {
        // hyper never polls a body that is already at its end; it is complete as handed over.
        if inner.is_end_stream() {
            record.outcome = Outcome::Complete;
        }
        Self {
            inner,
            record: Some(record),
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let polled = inner.as_mut().poll_frame(cx);
        if let Some(rec) = this.record.as_deref_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        if rec.first_byte.is_none() && !data.is_empty() {
                            rec.first_byte = Some(rec.start.elapsed());
                        }
                        rec.bytes_out += data.len() as u64;
                    }
                    // hyper stops polling once the body reports its end.
                    if inner.is_end_stream() {
                        rec.outcome = Outcome::Complete;
                        this.record.take();
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    rec.outcome = Outcome::UpstreamAborted;
                    this.record.take();
                }
                Poll::Ready(None) => {
                    rec.outcome = Outcome::Complete;
                    this.record.take();
                }
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
