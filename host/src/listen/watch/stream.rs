//! A response body as the watchdog sees it: [`Watched`] keeps its request in flight until the
//! body ends and, on HTTP/2, records when hyper last took a frame so that a stream the client
//! stopped reading can be cancelled from outside (dropping the body drops the upstream request).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{ConnWatch, RequestGuard};
use crate::listen::{BoxBody, BoxError};

pub(super) fn encode(ms: u64, waiting: bool) -> u64 {
    ms << 1 | u64::from(waiting)
}

pub(super) fn decode(v: u64) -> (u64, bool) {
    (v >> 1, v & 1 == 1)
}

/// The response body type every connection relays.
type Inner = BoxBody;

/// One response body as the watchdog sees it.
pub(super) struct Stream {
    /// When hyper last polled the body (ms since the connection's start) and whether it is
    /// waiting on the client (a frame or the head was handed over and not yet followed by a poll).
    pub(super) state: AtomicU64,
    /// The body itself, so the watchdog can drop it (and the upstream request) from outside.
    body: Mutex<Option<Inner>>,
    cancelled: AtomicBool,
}

impl Stream {
    pub(super) fn cancel(&self) {
        if !self.cancelled.swap(true, Ordering::Relaxed) {
            tracing::debug!("client took no data for client_write; exchange cancelled");
            let body = self.body.lock().unwrap_or_else(|p| p.into_inner()).take();
            drop(body);
        }
    }
}

/// The client stopped taking the response for `client_write`.
#[derive(Debug, thiserror::Error)]
#[error("client took no data for client_write")]
pub struct ClientStalled;

/// A response body under the watchdog: finishes its request's guard when it ends, and on HTTP/2
/// records each poll.
pub struct Watched {
    body: Watch,
    guard: Option<RequestGuard>,
}

enum Watch {
    /// HTTP/1: hyper polls the body whenever the socket takes data, so a client that stops
    /// reading blocks the socket's writes, and the connection's `client_write` rule closes it
    /// (which drops this body). Nothing is recorded per poll.
    Plain(Inner),
    /// HTTP/2: flow control can stall one stream while the connection flows, so each stream's
    /// polls are recorded for the `client_write` rule of streams.
    Stream(Arc<Stream>),
}

impl Watched {
    fn finish(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.finished = true;
        }
    }

    fn with_body<T>(&self, f: impl FnOnce(Option<&Inner>) -> T) -> T {
        match &self.body {
            Watch::Plain(b) => f(Some(b)),
            Watch::Stream(s) => f(s.body.lock().unwrap_or_else(|p| p.into_inner()).as_ref()),
        }
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(guard) = &this.guard else {
            return Poll::Ready(None);
        };
        let polled = match &mut this.body {
            Watch::Plain(b) => Pin::new(b).poll_frame(cx),
            Watch::Stream(stream) => {
                let now = guard.conn.now_ms();
                let polled = {
                    let mut body = stream.body.lock().unwrap_or_else(|p| p.into_inner());
                    match body.as_mut() {
                        Some(b) => Pin::new(b).poll_frame(cx),
                        None => Poll::Ready(Some(Err(ClientStalled.into()))),
                    }
                };
                let waiting = matches!(polled, Poll::Ready(Some(Ok(_))));
                stream.state.store(encode(now, waiting), Ordering::Relaxed);
                polled
            }
        };
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.is_end_stream() => this.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.with_body(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_body(|b| b.map_or_else(SizeHint::default, Body::size_hint))
    }
}

impl ConnWatch {
    /// Wraps a response body so that its request counts as in flight until the body ends, and,
    /// on HTTP/2 (`stream`), so that a stream the client stops taking is noticed. A body that is
    /// already complete (hyper will not poll it) finishes its request at once.
    pub fn watch_body(self: &Arc<Self>, body: Inner, guard: RequestGuard, stream: bool) -> Watched {
        let done = body.is_end_stream();
        if !stream || done {
            let mut w = Watched {
                body: Watch::Plain(body),
                guard: Some(guard),
            };
            if done {
                w.finish();
            }
            return w;
        }
        let stream = Arc::new(Stream {
            state: AtomicU64::new(encode(self.now_ms(), true)),
            body: Mutex::new(Some(body)),
            cancelled: AtomicBool::new(false),
        });
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.len() >= 32 {
            streams.retain(|s| s.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&stream));
        Watched {
            body: Watch::Stream(stream),
            guard: Some(guard),
        }
    }
}
