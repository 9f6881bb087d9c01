//! The calls into a plugin, one per policy kind's export, each through the pool and breaker.

use crate::types;
use crate::view::Candidates;
use crate::wit::transform;
use crate::{
    KindGuest, Plugin, PolicyError, RequestInfo, ResponseInfo, request_handle, response_handle,
    state_handle,
};
use std::sync::Arc;

impl Plugin {
    pub(crate) fn kind_mismatch(&self) -> PolicyError {
        PolicyError::Trap {
            plugin: self.spec.name.clone(),
            reason: "called as the wrong policy kind".into(),
        }
    }

    /// ip-binding `check`.
    pub async fn check(
        &self,
        request: &Arc<RequestInfo>,
    ) -> Result<types::BindingDecision, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::IpBinding(g) => g.call_check(&mut i.store, request_handle()).await,
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// router (or lean-router) `select`.
    pub async fn select(
        &self,
        request: &Arc<RequestInfo>,
        candidates: &Candidates,
    ) -> Result<types::RouteDecision, PolicyError> {
        self.select_with(request, candidates, Vec::new()).await
    }

    /// router (or lean-router) `select`, with the candidates' `headroom` lent to the call (for a
    /// plugin that [`Plugin::wants_capacity`]). A `router` needs [`Candidates::Views`]; a lean
    /// router takes either.
    pub async fn select_with(
        &self,
        request: &Arc<RequestInfo>,
        candidates: &Candidates,
        headroom: Vec<(String, crate::wit::capacity::Headroom)>,
    ) -> Result<types::RouteDecision, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        i.store.data_mut().headroom = headroom;
        let r = match (&i.guest, candidates) {
            (KindGuest::Router(g), Candidates::Views(views)) => {
                g.call_select(&mut i.store, request_handle(), views).await
            }
            (KindGuest::LeanRouter(g), c) => {
                g.call_select(&mut i.store, request_handle(), &c.figures())
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// quota `on-response`. The caller checks [`Plugin::watches`] first.
    pub async fn on_response(
        &self,
        request: &Arc<RequestInfo>,
        upstream: &types::UpstreamView,
        response: &Arc<ResponseInfo>,
    ) -> Result<types::QuotaDecision, PolicyError> {
        let mut i = self.checkout(request, Some(response)).await?;
        let r = match &i.guest {
            KindGuest::Quota(g) => {
                g.call_on_response(&mut i.store, request_handle(), upstream, response_handle())
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// header-rewrite `on-request`. The caller checks [`Plugin::rewrites_requests`] first.
    pub async fn rewrite_request(
        &self,
        request: &Arc<RequestInfo>,
    ) -> Result<Vec<types::HeaderOp>, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::HeaderRewrite(g) => g.call_on_request(&mut i.store, request_handle()).await,
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }

    /// header-rewrite `on-response`. The caller checks [`Plugin::rewrites_responses`] first.
    pub async fn rewrite_response(
        &self,
        request: &Arc<RequestInfo>,
        response: &Arc<ResponseInfo>,
    ) -> Result<Vec<types::HeaderOp>, PolicyError> {
        let mut i = self.checkout(request, Some(response)).await?;
        let r = match &i.guest {
            KindGuest::HeaderRewrite(g) => {
                g.call_on_response(&mut i.store, request_handle(), response_handle())
                    .await
            }
            _ => return Err(self.kind_mismatch()),
        };
        self.checkin(i, r)
    }
}

/// The transform calls. Each lends the guest the request's `state` for the call and takes it
/// back (as the guest left it, also when the call fails).
impl Plugin {
    async fn transform_call<R>(
        &self,
        request: &Arc<RequestInfo>,
        response: Option<&Arc<ResponseInfo>>,
        state: &mut Option<String>,
        call: impl AsyncFnOnce(
            &transform::Guest,
            &mut wasmtime::Store<crate::imports::InstanceData>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let mut i = self.checkout(request, response).await?;
        i.store.data_mut().transform_state = state.take();
        let KindGuest::Transform(g) = &i.guest else {
            return Err(self.kind_mismatch());
        };
        let r = call(g, &mut i.store).await;
        *state = i.store.data_mut().transform_state.take();
        self.checkin(i, r)
    }

    /// transform `on-request`.
    pub async fn transform_request(
        &self,
        request: &Arc<RequestInfo>,
        body: &str,
        state: &mut Option<String>,
    ) -> Result<transform::RequestAction, PolicyError> {
        self.transform_call(request, None, state, async |g, store| {
            g.call_on_request(store, request_handle(), body, state_handle())
                .await
        })
        .await
    }

    /// transform `on-response-head`.
    pub async fn transform_response_head(
        &self,
        request: &Arc<RequestInfo>,
        response: &Arc<ResponseInfo>,
        state: &mut Option<String>,
    ) -> Result<transform::HeadEdit, PolicyError> {
        self.transform_call(request, Some(response), state, async |g, store| {
            g.call_on_response_head(store, request_handle(), response_handle(), state_handle())
                .await
        })
        .await
    }

    /// transform `on-response-body`.
    pub async fn transform_response_body(
        &self,
        request: &Arc<RequestInfo>,
        response: &Arc<ResponseInfo>,
        body: &str,
        state: &mut Option<String>,
    ) -> Result<Option<String>, PolicyError> {
        self.transform_call(request, Some(response), state, async |g, store| {
            g.call_on_response_body(
                store,
                request_handle(),
                response_handle(),
                body,
                state_handle(),
            )
            .await
        })
        .await
    }

    /// transform `on-event`.
    pub async fn transform_event(
        &self,
        request: &Arc<RequestInfo>,
        event: &transform::SseEvent,
        state: &mut Option<String>,
    ) -> Result<Vec<transform::SseEvent>, PolicyError> {
        self.transform_call(request, None, state, async |g, store| {
            g.call_on_event(store, request_handle(), event, state_handle())
                .await
        })
        .await
    }

    /// transform `on-stream-end`.
    pub async fn transform_stream_end(
        &self,
        request: &Arc<RequestInfo>,
        state: &mut Option<String>,
    ) -> Result<Vec<transform::SseEvent>, PolicyError> {
        self.transform_call(request, None, state, async |g, store| {
            g.call_on_stream_end(store, request_handle(), state_handle())
                .await
        })
        .await
    }
}
