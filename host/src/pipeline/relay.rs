//! The response body the client receives: the upstream's (or the gateway's own) body, relayed
//! frame by frame, shown to the `on_body_chunk` filters as it passes, and ending the request
//! exactly once for the `on_done` filters, however it ends. A filter may hold a frame while it
//! waits for something (`Ctx::wait_for`); the upstream is not read meanwhile.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::body::GuardedBody;
use super::filter::Chain;
use super::session::{Ctx, Outcome, RecordedTokens, Wait};
use crate::listen::{BoxBody, BoxError};
use crate::upstream::UpstreamBody;

pin_project! {
    /// The body of the answer the pipeline chose: an upstream's, under the `idle` guard (not
    /// boxed, so the relay boxes it once), or one already boxed (the gateway's own answers, a
    /// stream whose first event was read ahead).
    #[project = RelayedProj]
    pub enum Relayed {
        Upstream { #[pin] body: GuardedBody<UpstreamBody> },
        Boxed { body: BoxBody },
    }
}

impl Relayed {
    pub(super) fn upstream(body: GuardedBody<UpstreamBody>) -> Self {
        Self::Upstream { body }
    }

    pub(super) fn boxed(body: BoxBody) -> Self {
        Self::Boxed { body }
    }

    /// As the listener's body type, boxing only what is not boxed yet.
    pub(super) fn into_box(self) -> BoxBody {
        use http_body_util::BodyExt;
        match self {
            Self::Upstream { body } => body.map_err(Into::into).boxed_unsync(),
            Self::Boxed { body } => body,
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            RelayedProj::Upstream { body } => body.poll_frame(cx).map_err(Into::into),
            RelayedProj::Boxed { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Upstream { body } => body.is_end_stream(),
            Self::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Upstream { body } => body.size_hint(),
            Self::Boxed { body } => body.size_hint(),
        }
    }
}

/// The end of a request: its context and the filters to tell. Dropping it runs the `on_done`
/// filters, so a request that completes, fails, or is abandoned by its client mid-stream ends
/// exactly once, with the outcome that happened.
pub(super) struct Tail {
    pub(super) ctx: Box<Ctx>,
    pub(super) chain: Arc<Chain>,
}

impl Tail {
    fn finish(&mut self, outcome: Outcome) {
        self.ctx.record.outcome = match outcome {
            Outcome::Complete if self.ctx.record.error.is_some() => Outcome::Refused,
            other => other,
        };
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // The upstream's in-flight count ends with the relay, before anyone reads the record.
        self.ctx.in_flight = None;
        if let Some(meter) = self.ctx.meter.take() {
            let r = &mut self.ctx.record;
            let partial = !matches!(r.outcome, Outcome::Complete | Outcome::Refused);
            let (tokens, model) = meter.finish_with_model();
            r.tokens = tokens.map(|tokens| RecordedTokens { tokens, partial });
            r.served_model = model;
        }
        // The end, read once for every filter below.
        let r = &mut self.ctx.record;
        r.took = r.start.elapsed();
        r.ended_ms = crate::state::unix_ms();
        for f in &self.chain.done {
            f.on_done(&mut self.ctx);
        }
    }
}

pin_project! {
    /// A body relayed to the client under the request's filters.
    pub struct Relay<B> {
        #[pin]
        inner: B,
        tail: Option<Tail>,
        // A frame held while a filter waits (`Ctx::wait_for`).
        pending: Option<Pending>,
        // The inner body ended (it is not polled again).
        ended: bool,
        // The client's head keeps the length the inner body declares; a filter that changes the
        // body's length removes `Content-Length`, and then no length is promised.
        sized: bool,
    }
}

/// A frame the `on_body_chunk` filters are part way through, held while one of them waits.
struct Pending {
    data: Bytes,
    /// The upstream's body has ended (its last frame, or the call after it).
    end: bool,
    /// The call after the body's end (an empty frame the filters may fill).
    after_end: bool,
    /// The filter to run next once the wait is over.
    next: usize,
    wait: Wait,
}

impl<B: Body> Relay<B> {
    /// Promises no length to the client: the filters may change the body's (the head carries
    /// no `Content-Length`).
    pub(super) fn without_length(mut self) -> Self {
        self.sized = false;
        self
    }

    pub(super) fn new(inner: B, mut tail: Tail) -> Self {
        // hyper never polls a body that is already at its end; it is complete as handed over.
        if inner.is_end_stream() {
            tail.finish(Outcome::Complete);
        }
        Self {
            inner,
            tail: Some(tail),
            pending: None,
            ended: false,
            sized: true,
        }
    }
}

/// Runs the `on_body_chunk` filters from the `from`th on `data`, in chain order; the frame is
/// held if one asks to wait (its wait and the filter to run after it).
fn run_filters(tail: &mut Tail, data: &mut Bytes, end: bool, from: usize) -> Option<(Wait, usize)> {
    for (i, f) in tail.chain.body_chunk.iter().enumerate().skip(from) {
        f.on_body_chunk(&mut tail.ctx, data, end);
        if tail.ctx.cut.is_some() {
            tail.ctx.record.answered_by(f.name());
        }
        if let Some(wait) = tail.ctx.wait.take() {
            return Some((wait, i + 1));
        }
    }
    None
}

/// The filters are done with a frame: what the client gets (`None`: the body ends), with the
/// record and the request's end kept up to date.
fn release(
    slot: &mut Option<Tail>,
    ended: &mut bool,
    data: Bytes,
    end: bool,
    after_end: bool,
) -> Option<Frame<Bytes>> {
    let tail = slot.as_mut()?;
    if let Some(last) = tail.ctx.cut.take() {
        // A filter ended the stream: its last frame replaces this one.
        tail.ctx.record.bytes_out += last.len() as u64;
        tail.finish(Outcome::Cut);
        *slot = None;
        *ended = true;
        return (!last.is_empty()).then(|| Frame::data(last));
    }
    let rec = &mut tail.ctx.record;
    if rec.first_byte.is_none() && !data.is_empty() {
        rec.first_byte = Some(rec.start.elapsed());
    }
    rec.bytes_out += data.len() as u64;
    if after_end {
        tail.finish(Outcome::Complete);
        *slot = None;
        *ended = true;
        return (!data.is_empty()).then(|| Frame::data(data));
    }
    // hyper stops polling once the body reports its end.
    if end {
        tail.finish(Outcome::Complete);
        *slot = None;
    }
    Some(Frame::data(data))
}

impl<B: Body<Data = Bytes>> Body for Relay<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let mut inner = this.inner;
        loop {
            let Some(tail) = this.tail.as_mut() else {
                return inner.as_mut().poll_frame(cx);
            };
            // A frame a filter is waiting on goes on when the wait is over, through the filters
            // after it.
            if let Some(p) = this.pending.as_mut() {
                let resume = std::task::ready!(p.wait.as_mut().poll(cx));
                let Some(mut p) = this.pending.take() else {
                    unreachable!("polled above");
                };
                resume(&mut tail.ctx, &mut p.data);
                if tail.ctx.cut.is_some()
                    && let Some(f) = p
                        .next
                        .checked_sub(1)
                        .and_then(|i| tail.chain.body_chunk.get(i))
                {
                    tail.ctx.record.answered_by(f.name());
                }
                if let Some((wait, next)) = run_filters(tail, &mut p.data, p.end, p.next) {
                    *this.pending = Some(Pending { wait, next, ..p });
                    continue;
                }
                let frame = release(this.tail, this.ended, p.data, p.end, p.after_end);
                return Poll::Ready(frame.map(Ok));
            }
            return match inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) => {
                        // The meter sees the upstream's bytes; the filters see them in chain
                        // order and may replace them (`on_body_chunk`).
                        if let Some(meter) = &mut tail.ctx.meter {
                            meter.feed(&data);
                        }
                        let end = inner.is_end_stream();
                        if let Some((wait, next)) = run_filters(tail, &mut data, end, 0) {
                            *this.pending = Some(Pending {
                                data,
                                end,
                                after_end: false,
                                next,
                                wait,
                            });
                            continue;
                        }
                        let frame = release(this.tail, this.ended, data, end, false);
                        Poll::Ready(frame.map(Ok))
                    }
                    Err(other) => {
                        if inner.is_end_stream() {
                            tail.finish(Outcome::Complete);
                            *this.tail = None;
                        }
                        Poll::Ready(Some(Ok(other)))
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    tail.finish(Outcome::UpstreamAborted);
                    *this.tail = None;
                    Poll::Ready(Some(Err(e)))
                }
                Poll::Ready(None) => {
                    // The end after the last frame: the filters' last call, with an empty frame
                    // they may fill with what they held back.
                    let mut rest = Bytes::new();
                    if let Some((wait, next)) = run_filters(tail, &mut rest, true, 0) {
                        *this.pending = Some(Pending {
                            data: rest,
                            end: true,
                            after_end: true,
                            next,
                            wait,
                        });
                        continue;
                    }
                    let frame = release(this.tail, this.ended, rest, true, true);
                    Poll::Ready(frame.map(Ok))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        // While the filters have not had their last call, the end is not reported: hyper then
        // polls once more and the last call happens (a filter may still send held bytes).
        self.ended || (self.inner.is_end_stream() && self.tail.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::pipeline::{Filter, Hooks};

    /// Counts `on_done` calls and remembers the outcomes and the chunks it saw.
    #[derive(Default)]
    struct Probe {
        done: AtomicUsize,
        outcomes: Mutex<Vec<Outcome>>,
        chunks: AtomicUsize,
        /// Calls marked as the last.
        ends: AtomicUsize,
    }

    struct Watch(Arc<Probe>);

    impl Filter for Watch {
        fn name(&self) -> &str {
            "watch"
        }
        fn hooks(&self) -> crate::pipeline::Hooks {
            Hooks::BODY_CHUNK | Hooks::DONE
        }
        fn on_body_chunk(&self, _ctx: &mut Ctx, _chunk: &mut Bytes, end: bool) {
            self.0.chunks.fetch_add(1, Ordering::SeqCst);
            self.0.ends.fetch_add(usize::from(end), Ordering::SeqCst);
        }
        fn on_done(&self, ctx: &mut Ctx) {
            self.0.done.fetch_add(1, Ordering::SeqCst);
            self.0.outcomes.lock().unwrap().push(ctx.record.outcome);
        }
    }

    fn relay(
        frames: Vec<Result<&'static str, &'static str>>,
        probe: &Arc<Probe>,
        refused: bool,
    ) -> Relay<BoxBody> {
        let stream = futures_util::stream::iter(frames.into_iter().map(|f| {
            f.map(|s| http_body::Frame::data(Bytes::from_static(s.as_bytes())))
                .map_err(BoxError::from)
        }));
        let head = http::Request::new(()).into_parts().0;
        let mut ctx = Ctx::new("id".into(), "127.0.0.1".parse().unwrap(), &head);
        if refused {
            ctx.record.error = Some("bad_request");
        }
        let chain = Arc::new(Chain::new([
            Arc::new(Watch(probe.clone())) as Arc<dyn Filter>
        ]));
        Relay::new(
            StreamBody::new(stream).boxed_unsync(),
            Tail {
                ctx: Box::new(ctx),
                chain,
            },
        )
    }

    #[tokio::test]
    async fn every_ending_tells_on_done_exactly_once_with_its_outcome() {
        let probe = Arc::new(Probe::default());
        // Complete.
        let body = relay(vec![Ok("a"), Ok("b")], &probe, false);
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"ab");
        // The upstream broke off.
        let body = relay(vec![Ok("a"), Err("reset")], &probe, false);
        assert!(body.collect().await.is_err());
        // The client left after the first frame.
        let mut body = relay(vec![Ok("a"), Ok("b")], &probe, false);
        assert!(body.frame().await.is_some());
        drop(body);
        // The gateway's own answer, sent whole.
        let body = relay(vec![Ok("{}")], &probe, true);
        body.collect().await.unwrap();
        assert_eq!(probe.done.load(Ordering::SeqCst), 4);
        assert_eq!(
            *probe.outcomes.lock().unwrap(),
            [
                Outcome::Complete,
                Outcome::UpstreamAborted,
                Outcome::ClientAborted,
                Outcome::Refused
            ]
        );
        // Each frame, plus a last call with an empty frame where a body ended (these bodies cannot
        // tell their last frame): the complete one and the gateway's answer, not the broken or
        // abandoned ones.
        assert_eq!(
            probe.chunks.load(Ordering::SeqCst),
            (2 + 1) + 1 + 1 + (1 + 1)
        );
        assert_eq!(probe.ends.load(Ordering::SeqCst), 2);
    }

    /// Waits on the frames `b` and `c` (a timer standing for a round trip): after `b` it marks
    /// the request, after `c` it ends the stream.
    struct Waiter;

    #[derive(Clone)]
    struct Marked;

    impl Filter for Waiter {
        fn name(&self) -> &str {
            "waiter"
        }
        fn hooks(&self) -> crate::pipeline::Hooks {
            Hooks::BODY_CHUNK
        }
        fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, _end: bool) {
            let cut = match &chunk[..] {
                b"b" => false,
                b"c" => true,
                _ => return,
            };
            ctx.wait_for(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Box::new(move |ctx: &mut Ctx, _: &mut Bytes| {
                    if cut {
                        ctx.end_stream(Bytes::from_static(b"X"), "cut");
                    } else {
                        ctx.ext.insert(Marked);
                    }
                }) as crate::pipeline::session::Resume
            });
        }
    }

    /// Runs after the waiter: appends `!` to a frame once the request is marked.
    struct Excl;

    impl Filter for Excl {
        fn name(&self) -> &str {
            "excl"
        }
        fn hooks(&self) -> crate::pipeline::Hooks {
            Hooks::BODY_CHUNK
        }
        fn on_body_chunk(&self, ctx: &mut Ctx, chunk: &mut Bytes, _end: bool) {
            if ctx.ext.get::<Marked>().is_some() && !chunk.is_empty() {
                *chunk = Bytes::from([&chunk[..], b"!"].concat());
            }
        }
    }

    /// A frame a filter waits on is held (the next is not read), then goes through the filters
    /// after it with what the wait decided; a wait may end the stream.
    #[tokio::test]
    async fn a_waiting_filter_holds_its_frame_and_the_rest_run_after_the_wait() {
        let probe = Arc::new(Probe::default());
        let stream =
            futures_util::stream::iter(["a", "b", "z", "c", "never"].map(|s| {
                Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(s.as_bytes())))
            }));
        let head = http::Request::new(()).into_parts().0;
        let ctx = Ctx::new("id".into(), "127.0.0.1".parse().unwrap(), &head);
        let chain = Arc::new(Chain::new([
            Arc::new(Waiter) as Arc<dyn Filter>,
            Arc::new(Excl),
            Arc::new(Watch(probe.clone())),
        ]));
        let body = Relay::new(
            StreamBody::new(stream).boxed_unsync(),
            Tail {
                ctx: Box::new(ctx),
                chain,
            },
        );
        let out = body.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"ab!z!X");
        // The filters after the waiter saw a, b, z and c (as after a cut without a wait: the
        // frame is replaced afterwards); `never` was never read.
        assert_eq!(probe.chunks.load(Ordering::SeqCst), 4);
        assert_eq!(*probe.outcomes.lock().unwrap(), [Outcome::Cut]);
    }
}
