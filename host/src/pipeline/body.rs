//! Body plumbing shared by both directions of the proxy.
//!
//! [`GuardedBody`] enforces the two limits a relayed body needs: a maximum total size (request
//! bodies, `max_body`) and a maximum silence between frames (`client_body` for requests, `idle`
//! for upstream responses). Frames pass through one by one as they arrive; nothing is buffered, so
//! an SSE event is written to the client as soon as the upstream sends it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::listen::BoxError;

/// Why a guarded body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("no data for {0:?}")]
    Idle(Duration),
    #[error("body arrives slower than {0} bytes/s")]
    TooSlow(u64),
    #[error("body stream failed: {0}")]
    Stream(BoxError),
}

impl BodyError {
    /// Finds a `BodyError` anywhere in an error's source chain (hyper wraps body errors).
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        let mut cur = Some(err);
        while let Some(e) = cur {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(b);
            }
            cur = e.source();
        }
        None
    }
}

pin_project! {
    /// A body with a size cap, an idle timeout between frames and, optionally, a minimum rate.
    ///
    /// The timer is armed only when the body has to wait: a frame moves `deadline` (a plain
    /// field), and the sleep is reset to it when the inner body returns `Pending`. A body that
    /// arrives without waiting (most request bodies, most small answers) never touches the
    /// runtime's timer wheel.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Sleep,
        deadline: Instant,
        idle: Duration,
        limit: Option<u64>,
        seen: u64,
        start: Instant,
        min_rate: u64,
    }
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, idle: Duration, limit: Option<u64>) -> Self {
        let start = Instant::now();
        let deadline = start + idle;
        Self {
            inner,
            sleep: tokio::time::sleep_until(deadline),
            deadline,
            idle,
            limit,
            seen: 0,
            start,
            min_rate: 0,
        }
    }

    /// Also requires the body to arrive at `bytes_per_sec` on average, after a first `idle` of
    /// grace (0 = no minimum): a body trickled just fast enough to dodge `idle` is cut too.
    pub fn with_min_rate(mut self, bytes_per_sec: u64) -> Self {
        self.min_rate = bytes_per_sec;
        self
    }
}

/// When a body that has delivered `seen` bytes since `start` falls behind `rate`.
fn rate_deadline(start: Instant, grace: Duration, seen: u64, rate: u64) -> Option<Instant> {
    (rate > 0).then(|| start + grace + Duration::from_millis(seen.saturating_mul(1000) / rate))
}

impl<B> Body for GuardedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if let Some(limit) = *this.limit
                        && *this.seen > limit
                    {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                    }
                }
                let mut next = Instant::now() + *this.idle;
                if let Some(behind) =
                    rate_deadline(*this.start, *this.idle, *this.seen, *this.min_rate)
                {
                    next = next.min(behind);
                }
                *this.deadline = next;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Stream(e.into())))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.sleep.deadline() != *this.deadline {
                    this.sleep.as_mut().reset(*this.deadline);
                }
                ready!(this.sleep.poll(cx));
                let behind = rate_deadline(*this.start, *this.idle, *this.seen, *this.min_rate)
                    .is_some_and(|at| Instant::now() >= at);
                Poll::Ready(Some(Err(if behind {
                    BodyError::TooSlow(*this.min_rate)
                } else {
                    BodyError::Idle(*this.idle)
                })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// A body that first yields `prefix`, then everything `inner` yields: a response whose first
    /// bytes were read ahead (stream bootstrap) is relayed unchanged.
    pub struct Prefixed<B> {
        prefix: Option<Bytes>,
        #[pin]
        inner: B,
    }
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, inner: B) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            inner,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Prefixed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }
}

/// Reads `body` to its end and returns its data. A body that arrives in one frame (most request
/// bodies) is returned as that frame, without a copy or a buffer list; more frames are joined
/// into one buffer, sized by the body's hint.
pub async fn read_whole<B>(body: B) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await.transpose()? {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if let Some(buf) = &mut joined {
            buf.extend_from_slice(&data);
        } else if first.is_empty() {
            first = data;
        } else {
            let hint = usize::try_from(body.size_hint().lower()).unwrap_or(0);
            let mut buf = bytes::BytesMut::with_capacity(first.len() + data.len() + hint);
            buf.extend_from_slice(&first);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        }
    }
    Ok(joined.map_or(first, bytes::BytesMut::freeze))
}

/// `body` with each member of `defaults` added where the JSON object lacks it; `None` if the body
/// is not a JSON object or already has them all.
pub fn with_defaults(body: &[u8], defaults: &[(&'static str, serde_json::Value)]) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let obj = v.as_object_mut()?;
    let mut changed = false;
    for (name, value) in defaults {
        if !obj.contains_key(*name) {
            obj.insert((*name).to_owned(), value.clone());
            changed = true;
        }
    }
    changed
        .then(|| serde_json::to_vec(&v).ok().map(Bytes::from))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn passes_small_bodies_and_rejects_oversized_ones() {
        let ok = GuardedBody::new(
            Full::new(Bytes::from_static(b"12345")),
            Duration::from_secs(1),
            Some(5),
        );
        assert_eq!(ok.collect().await.unwrap().to_bytes(), "12345");
        let big = GuardedBody::new(
            Full::new(Bytes::from_static(b"123456")),
            Duration::from_secs(1),
            Some(5),
        );
        assert!(matches!(big.collect().await, Err(BodyError::TooLarge(5))));
    }

    #[tokio::test]
    async fn a_whole_body_is_its_one_frame_or_its_frames_joined() {
        let frames = |chunks: Vec<&'static str>| {
            StreamBody::new(futures_util::stream::iter(chunks.into_iter().map(|c| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(c.as_bytes())))
            })))
        };
        // One frame: that very buffer, not a copy.
        let one = Bytes::from_static(b"{\"model\":\"m\"}");
        let read = read_whole(Full::new(one.clone())).await.unwrap();
        assert_eq!(read.as_ptr(), one.as_ptr());
        assert_eq!(read, one);
        // Several frames (empty ones among them), in order, with trailers skipped.
        let read = read_whole(frames(vec!["", "ab", "", "c", "def"]))
            .await
            .unwrap();
        assert_eq!(read, "abcdef");
        let trailers = futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(http::HeaderMap::new())),
            Ok(Frame::data(Bytes::from_static(b"y"))),
        ]);
        assert_eq!(read_whole(StreamBody::new(trailers)).await.unwrap(), "xy");
        assert_eq!(read_whole(frames(vec![])).await.unwrap(), "");
        // The body's error comes back (the limit of a guarded body, here).
        let big = GuardedBody::new(frames(vec!["123", "456"]), Duration::from_secs(1), Some(5));
        assert!(matches!(read_whole(big).await, Err(BodyError::TooLarge(5))));
    }

    #[tokio::test(start_paused = true)]
    async fn silence_longer_than_idle_is_an_error_but_steady_frames_are_not() {
        let frames = futures_util::stream::unfold(0, |i| async move {
            if i == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(if i == 2 { 500 } else { 50 })).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        let mut body = std::pin::pin!(GuardedBody::new(
            StreamBody::new(frames),
            Duration::from_millis(100),
            None
        ));
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_ok());
        assert!(matches!(
            body.frame().await.unwrap(),
            Err(BodyError::Idle(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_trickled_under_the_idle_limit_is_cut_by_the_minimum_rate() {
        // One byte every 400 ms never trips a 500 ms idle limit, but is far below 100 B/s.
        let frames = futures_util::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Some((
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        let body = GuardedBody::new(StreamBody::new(frames), Duration::from_millis(500), None)
            .with_min_rate(100);
        let start = Instant::now();
        assert!(matches!(body.collect().await, Err(BodyError::TooSlow(100))));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(2),
            "{took:?}"
        );
        // The same trickle without a minimum rate keeps going past that.
        let frames = futures_util::stream::iter(0..5).then(|_| async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"x")))
        });
        let body = GuardedBody::new(StreamBody::new(frames), Duration::from_millis(500), None);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 5);
    }

    #[test]
    fn defaults_are_added_only_where_the_object_lacks_them() {
        let d = [("max_tokens", serde_json::json!(30))];
        let out = with_defaults(br#"{"model":"m"}"#, &d).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 30);
        assert_eq!(v["model"], "m");
        assert!(with_defaults(br#"{"max_tokens":5}"#, &d).is_none());
        assert!(with_defaults(b"[1]", &d).is_none());
        assert!(with_defaults(b"not json", &d).is_none());
    }
}
