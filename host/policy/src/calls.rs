//! The calls into a plugin, one per policy kind's export, each through the pool and breaker.

use crate::types;
use crate::{
    KindGuest, Plugin, PolicyError, RequestInfo, ResponseInfo, request_handle, response_handle,
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

    /// router `select`.
    pub async fn select(
        &self,
        request: &Arc<RequestInfo>,
        candidates: &[types::UpstreamView],
    ) -> Result<types::RouteDecision, PolicyError> {
        let mut i = self.checkout(request, None).await?;
        let r = match &i.guest {
            KindGuest::Router(g) => {
                g.call_select(&mut i.store, request_handle(), candidates)
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
