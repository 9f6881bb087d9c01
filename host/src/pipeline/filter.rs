//! The request lifecycle as a trait: every feature on the request path is a [`Filter`].
//!
//! In the spirit of Pingora's `ProxyHttp`, a filter implements the hooks of the phases it takes
//! part in and says which in [`Filter::hooks`]; the pipeline calls each phase's filters in order
//! and never calls a filter in a phase it did not name (so a hook it leaves at its default costs
//! nothing). Every hook has a default that does nothing.
//!
//! Phases, in the order a request meets them (see `pipeline/mod.rs` for the steps between them):
//!
//! | hook | runs | can |
//! |---|---|---|
//! | [`on_request`](Filter::on_request) | after routing, before authentication | refuse by client IP, path, method; answer ([`Flow::Answer`]) |
//! | [`on_authenticated`](Filter::on_authenticated) | key known, body read, model known | refuse by key or model; answer |
//! | [`on_request_body`](Filter::on_request_body) | after `on_authenticated`, on a body read whole | rewrite the body, path and headers sent upstream; answer |
//! | [`on_select`](Filter::on_select) | once, candidates chosen | reorder or drop candidates |
//! | [`on_upstream_request`](Filter::on_upstream_request) | before each attempt | change the outgoing headers |
//! | [`on_upstream_response`](Filter::on_upstream_response) | after each attempt's response head | ask for another upstream |
//! | [`on_response_head`](Filter::on_response_head) | once, on the head the client gets | change its status and headers; ask for the whole body ([`Ctx::read_whole_body`]) |
//! | [`on_response_body`](Filter::on_response_body) | once, on an upstream's whole body, when a filter asked for it | rewrite it (before the head is sent) |
//! | [`on_body_chunk`](Filter::on_body_chunk) | each relayed data frame, and once more at the end | observe, or replace the frame (never delay) |
//! | [`on_done`](Filter::on_done) | exactly once, when the request ends | record the outcome |
//!
//! A hook that returns an error ends the request with that error (an OpenAI-shaped answer; a
//! filter's own refusal is an [`crate::error::Refusal`]); from `on_upstream_response` an error is
//! final, a [`Verdict::Retry`] moves on to the next candidate when there is one and the body can
//! be replayed. Retrying is one mechanism: a failed attempt whose [`GatewayError::is_retryable`]
//! is set, or a `Retry` verdict. An answer ([`Flow::Answer`]) is not a refusal: the request ends
//! with that response (it still meets `on_response_head` and `on_done`), no error is recorded.
//!
//! A filter that names a hook in [`Filter::hooks`] but leaves it at its default is a mistake the
//! default catches: it fails a debug assertion the first time the pipeline calls it (the tests run
//! debug builds).

use std::future::{IntoFuture, Ready};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use http::HeaderMap;

use super::session::{Ctx, Session};
use crate::error::GatewayError;
use crate::upstream::Upstream;

/// The hooks a filter implements: the phases the pipeline calls it in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks(u16);

impl Hooks {
    pub const REQUEST: Self = Self(1);
    pub const AUTHENTICATED: Self = Self(1 << 1);
    pub const SELECT: Self = Self(1 << 2);
    pub const UPSTREAM_REQUEST: Self = Self(1 << 3);
    pub const UPSTREAM_RESPONSE: Self = Self(1 << 4);
    pub const RESPONSE_HEAD: Self = Self(1 << 5);
    pub const BODY_CHUNK: Self = Self(1 << 6);
    pub const DONE: Self = Self(1 << 7);
    pub const REQUEST_BODY: Self = Self(1 << 8);
    pub const RESPONSE_BODY: Self = Self(1 << 9);

    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Hooks {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// An upstream's response head as [`Filter::on_upstream_response`] sees it.
pub struct UpstreamResponse<'a> {
    pub status: http::StatusCode,
    pub headers: &'a HeaderMap,
    /// The first SSE event of a stream, when the route reads it before relaying
    /// (`stream_bootstrap`); an error sent inside a 200 stream shows here.
    pub first_event: Option<&'a str>,
}

/// What [`Filter::on_request`] and [`Filter::on_authenticated`] decide.
pub enum Flow {
    /// Go on (to the next filter, then the next step).
    Continue,
    /// End the request with this response, built by the filter (a CORS preflight's 204, a
    /// cached answer): no upstream is tried, no error is recorded. The head still meets the
    /// `on_response_head` filters (as the gateway's own answer, `from` = `None`).
    Answer(http::Response<crate::listen::BoxBody>),
}

/// What [`Filter::on_upstream_response`] decides about an attempt's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it (or let the next filter decide).
    Continue,
    /// Try the next candidate instead, if there is one and the body can be replayed; otherwise the
    /// response is relayed as it is.
    Retry,
}

/// What a hook that may wait returns: its result now, or a future of it. Most filters decide
/// from what they hold (`Step::Now`, no allocation); those that wait on a plugin, a store or the
/// network return [`Step::later`]. The pipeline `.await`s either.
pub enum Step<'a, T> {
    Now(T),
    Later(BoxFuture<'a, T>),
}

impl<'a, T> Step<'a, T> {
    /// A result that needs waiting for.
    pub fn later(f: impl Future<Output = T> + Send + 'a) -> Self {
        Self::Later(Box::pin(f))
    }
}

impl<'a, T> IntoFuture for Step<'a, T> {
    type Output = T;
    type IntoFuture = Either<Ready<T>, BoxFuture<'a, T>>;

    fn into_future(self) -> Self::IntoFuture {
        match self {
            Self::Now(v) => Either::Left(std::future::ready(v)),
            Self::Later(f) => Either::Right(f),
        }
    }
}

/// What most hooks return: `Ok` to go on, or the error that ends the request.
pub type HookResult<'a, T = ()> = Step<'a, Result<T, GatewayError>>;

/// One feature on the request path. See the module documentation for the phases.
pub trait Filter: Send + Sync + 'static {
    /// Names the filter in logs.
    fn name(&self) -> &str;

    /// The hooks the pipeline calls; the others are never called.
    fn hooks(&self) -> Hooks;

    /// After the route is known, before the key is checked: the client IP, the method and the
    /// normalised path are known. An error refuses the request (no key was checked, so it is
    /// cheap to refuse here); [`Flow::Answer`] answers it. Default: [`Flow::Continue`].
    fn on_request<'a>(&'a self, _s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        debug_assert!(
            !self.hooks().contains(Hooks::REQUEST),
            "filter {} names on_request in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(Flow::Continue))
    }

    /// After authentication and after the body was read: the key, the model and the rest of the
    /// body probe are known. An error refuses the request; [`Flow::Answer`] answers it.
    /// Default: [`Flow::Continue`].
    fn on_authenticated<'a>(&'a self, _s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        debug_assert!(
            !self.hooks().contains(Hooks::AUTHENTICATED),
            "filter {} names on_authenticated in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(Flow::Continue))
    }

    /// After every `on_authenticated` hook, when the body was read whole (JSON, or any body on a
    /// route that must know the model): the filter may replace `body`, which is what every
    /// attempt sends upstream (the request's `bytes_in` follows), and change `s.head` (the path
    /// and headers every attempt sends). A filter that changes the body says so
    /// ([`Session::body_changed`]) so that the model and budget are read again. Not called for
    /// a streamed upload. An error refuses the request; [`Flow::Answer`] answers it. Default:
    /// [`Flow::Continue`].
    fn on_request_body<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _body: &'a mut Bytes,
    ) -> HookResult<'a, Flow> {
        debug_assert!(
            !self.hooks().contains(Hooks::REQUEST_BODY),
            "filter {} names on_request_body in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(Flow::Continue))
    }

    /// Once, with the route's upstreams that serve the model, healthy ones first; the filter may
    /// reorder or remove candidates (the first is tried first). An error refuses the request.
    /// Default: leaves the order.
    fn on_select<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _candidates: &'a mut Vec<Arc<Upstream>>,
    ) -> HookResult<'a> {
        debug_assert!(
            !self.hooks().contains(Hooks::SELECT),
            "filter {} names on_select in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(()))
    }

    /// Before each attempt, with the headers about to be sent to `upstream` (the client's, after
    /// the hop-by-hop ones were removed; forwarding headers and the upstream's credential are
    /// added after this hook, so a filter cannot change them). An error refuses the request.
    /// Default: nothing.
    fn on_upstream_request<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _upstream: &'a Upstream,
        _headers: &'a mut HeaderMap,
    ) -> HookResult<'a> {
        debug_assert!(
            !self.hooks().contains(Hooks::UPSTREAM_REQUEST),
            "filter {} names on_upstream_request in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(()))
    }

    /// After each attempt's response head (and first event, see [`UpstreamResponse`]), before
    /// anything reaches the client. [`Verdict::Retry`] asks for the next candidate; an error ends
    /// the request. Default: [`Verdict::Continue`].
    fn on_upstream_response<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _upstream: &'a Upstream,
        _response: &'a UpstreamResponse<'_>,
    ) -> HookResult<'a, Verdict> {
        debug_assert!(
            !self.hooks().contains(Hooks::UPSTREAM_RESPONSE),
            "filter {} names on_upstream_response in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(Verdict::Continue))
    }

    /// Once, on the head the client will receive: the chosen upstream's (`from` names it) or the
    /// gateway's own error answer (`from` is `None`). On an upstream's head an error replaces the
    /// response with the error's; on the gateway's own answer errors are logged and ignored.
    /// Default: nothing.
    fn on_response_head<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _head: &'a mut http::response::Parts,
        _from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        debug_assert!(
            !self.hooks().contains(Hooks::RESPONSE_HEAD),
            "filter {} names on_response_head in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(()))
    }

    /// Once, after every `on_response_head`, on the whole body of an upstream's answer, when a
    /// filter asked for it in `on_response_head` ([`Ctx::read_whole_body`]): the body is read
    /// (up to the limit asked for; past it the client gets 502) before the head is sent, so the
    /// filter may replace it and change the head. An error replaces the response with the
    /// error's. Default: nothing.
    fn on_response_body<'a>(
        &'a self,
        _s: &'a mut Session<'_>,
        _head: &'a mut http::response::Parts,
        _body: &'a mut Bytes,
    ) -> HookResult<'a> {
        debug_assert!(
            !self.hooks().contains(Hooks::RESPONSE_BODY),
            "filter {} names on_response_body in hooks() but does not implement it",
            self.name()
        );
        Step::Now(Ok(()))
    }

    /// Each data frame relayed to the client, as it passes (an SSE event is one or more frames),
    /// in chain order: a filter sees the frame as the filters before it left it, and may replace
    /// it (`*chunk = …`; an empty frame sends nothing). `end` is set on the last call, made when
    /// the upstream's body ends (on its last frame, or with an empty frame after it): a filter
    /// that held bytes back appends them then. Must be quick: the frame waits for it. Default:
    /// nothing.
    fn on_body_chunk(&self, _ctx: &mut Ctx, _chunk: &mut Bytes, _end: bool) {
        debug_assert!(
            !self.hooks().contains(Hooks::BODY_CHUNK),
            "filter {} names on_body_chunk in hooks() but does not implement it",
            self.name()
        );
    }

    /// Exactly once per request that reached the pipeline, when it ends, whatever ended it:
    /// `ctx.record.outcome` says how (complete, client aborted, upstream aborted, refused).
    /// Default: nothing.
    fn on_done(&self, _ctx: &mut Ctx) {
        debug_assert!(
            !self.hooks().contains(Hooks::DONE),
            "filter {} names on_done in hooks() but does not implement it",
            self.name()
        );
    }
}

/// A list of filters split by hook, in order: what the pipeline iterates in each phase.
#[derive(Default)]
pub struct Chain {
    pub(super) request: Vec<Arc<dyn Filter>>,
    pub(super) authenticated: Vec<Arc<dyn Filter>>,
    pub(super) request_body: Vec<Arc<dyn Filter>>,
    pub(super) select: Vec<Arc<dyn Filter>>,
    pub(super) upstream_request: Vec<Arc<dyn Filter>>,
    pub(super) upstream_response: Vec<Arc<dyn Filter>>,
    pub(super) response_head: Vec<Arc<dyn Filter>>,
    pub(super) response_body: Vec<Arc<dyn Filter>>,
    pub(super) body_chunk: Vec<Arc<dyn Filter>>,
    pub(super) done: Vec<Arc<dyn Filter>>,
}

impl Chain {
    /// The chain of `filters`, each phase keeping their order.
    pub fn new(filters: impl IntoIterator<Item = Arc<dyn Filter>>) -> Self {
        let mut c = Self::default();
        for f in filters {
            let h = f.hooks();
            let lists: [(Hooks, &mut Vec<Arc<dyn Filter>>); 10] = [
                (Hooks::REQUEST, &mut c.request),
                (Hooks::AUTHENTICATED, &mut c.authenticated),
                (Hooks::REQUEST_BODY, &mut c.request_body),
                (Hooks::SELECT, &mut c.select),
                (Hooks::UPSTREAM_REQUEST, &mut c.upstream_request),
                (Hooks::UPSTREAM_RESPONSE, &mut c.upstream_response),
                (Hooks::RESPONSE_HEAD, &mut c.response_head),
                (Hooks::RESPONSE_BODY, &mut c.response_body),
                (Hooks::BODY_CHUNK, &mut c.body_chunk),
                (Hooks::DONE, &mut c.done),
            ];
            for (hook, list) in lists {
                if h.contains(hook) {
                    list.push(f.clone());
                }
            }
        }
        c
    }

    /// Whether any filter needs the relayed body or the end of the request.
    pub(super) fn watches_body(&self) -> bool {
        !self.body_chunk.is_empty() || !self.done.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str, Hooks);

    impl Filter for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn hooks(&self) -> Hooks {
            self.1
        }
    }

    #[test]
    fn a_chain_calls_each_filter_only_in_its_phases_and_keeps_order() {
        let chain = Chain::new([
            Arc::new(Named("a", Hooks::REQUEST | Hooks::DONE)) as Arc<dyn Filter>,
            Arc::new(Named("b", Hooks::DONE)),
            Arc::new(Named("c", Hooks::REQUEST | Hooks::BODY_CHUNK)),
        ]);
        let names =
            |l: &[Arc<dyn Filter>]| l.iter().map(|f| f.name().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&chain.request), ["a", "c"]);
        assert_eq!(names(&chain.done), ["a", "b"]);
        assert_eq!(names(&chain.body_chunk), ["c"]);
        assert!(chain.select.is_empty() && chain.response_head.is_empty());
        assert!(chain.watches_body());
        assert!(!Chain::new([]).watches_body());
    }

    /// A filter that names a hook it does not implement fails the first time the hook runs
    /// (debug builds, as the tests are).
    #[test]
    #[should_panic(expected = "names on_body_chunk in hooks() but does not implement it")]
    fn a_hook_named_but_not_implemented_is_caught() {
        let f = Named("forgetful", Hooks::BODY_CHUNK);
        let head = http::Request::new(()).into_parts().0;
        let mut ctx = Ctx::new("id".into(), "127.0.0.1".parse().unwrap(), &head);
        f.on_body_chunk(&mut ctx, &mut Bytes::new(), true);
    }

    #[test]
    fn an_unnamed_default_hook_is_silent() {
        let f = Named("quiet", Hooks::DONE);
        let head = http::Request::new(()).into_parts().0;
        let mut ctx = Ctx::new("id".into(), "127.0.0.1".parse().unwrap(), &head);
        f.on_body_chunk(&mut ctx, &mut Bytes::new(), true);
    }

    #[test]
    fn the_request_body_hook_has_its_list() {
        let chain =
            Chain::new([Arc::new(Named("rewrite", Hooks::REQUEST_BODY)) as Arc<dyn Filter>]);
        assert_eq!(chain.request_body.len(), 1);
        assert!(chain.request.is_empty() && chain.authenticated.is_empty());
    }
}
