//! The header-rewrite adapter: applies the plugin's operations to outgoing requests and to
//! upstream answers' heads.

use std::sync::Arc;

use http::HeaderMap;

use super::PolicyRef;
use crate::pipeline::{Filter, HookResult, Hooks, Session, Step};
use crate::policy::ResponseInfo;
use crate::policy::authoring::ops_json;
use crate::policy::view::apply_ops;
use crate::upstream::Upstream;

/// header-rewrite: applies the plugin's header operations to each outgoing request and to the
/// upstream's response head (not to the gateway's own error answers). Each policy sees the
/// headers as the previous one left them.
pub(crate) struct HeaderRewrite {
    pub(crate) policy: PolicyRef,
}

impl Filter for HeaderRewrite {
    fn name(&self) -> &str {
        &self.policy.label
    }

    /// Only the phases the plugin has rules for (read once per loaded version).
    fn hooks(&self) -> Hooks {
        let mut h = Hooks::default();
        if self.policy.plugin.rewrites_requests() {
            h = h | Hooks::UPSTREAM_REQUEST;
        }
        if self.policy.plugin.rewrites_responses() {
            h = h | Hooks::RESPONSE_HEAD;
        }
        h
    }

    fn on_upstream_request<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        _upstream: &'a Upstream,
        headers: &'a mut HeaderMap,
    ) -> HookResult<'a> {
        Step::later(async move {
            let view = s.policy_request();
            let began = std::time::Instant::now();
            let decision = self.policy.plugin.rewrite_request(&view).await;
            s.ctx
                .record
                .policy_called(&self.policy.label, began, decision.is_err(), None);
            let replay = view.clone();
            self.policy
                .shadow(&s.request_id, &decision, ops_json, |p| async move {
                    p.rewrite_request(&replay).await.map(ops_json)
                });
            match decision {
                Ok(ops) => {
                    apply_ops(headers, ops, &self.policy.plugin.spec.name);
                    Ok(())
                }
                Err(e) => self.policy.failed(e),
            }
        })
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        Step::later(async move {
            let Some(upstream) = from else {
                return Ok(());
            };
            let view = s.policy_request();
            let answer = Arc::new(ResponseInfo::from_head(&upstream.name, head));
            let began = std::time::Instant::now();
            let decision = self.policy.plugin.rewrite_response(&view, &answer).await;
            s.ctx
                .record
                .policy_called(&self.policy.label, began, decision.is_err(), None);
            let replay = view.clone();
            self.policy
                .shadow(&s.request_id, &decision, ops_json, |p| async move {
                    p.rewrite_response(&replay, &answer).await.map(ops_json)
                });
            match decision {
                Ok(ops) => {
                    apply_ops(&mut head.headers, ops, &self.policy.plugin.spec.name);
                    Ok(())
                }
                Err(e) => self.policy.failed(e),
            }
        })
    }
}
