//! The quota adapter: shows the plugin the answers it watches; applies its cooldowns.

use std::sync::Arc;

use super::{PolicyRef, upstream_view};
use crate::pipeline::{Filter, HookResult, Hooks, Session, Step, UpstreamResponse, Verdict};
use crate::policy::ResponseInfo;
use crate::policy::authoring::quota_json;
use crate::policy::types::{AfterCooldown, CooldownScope, QuotaDecision};
use crate::state::{SharedCooldown, Stores};
use crate::upstream::Upstream;

/// quota: sees the responses it watches (and every bootstrapped stream), and may cool the
/// upstream down (shared with the cluster) and ask for another one.
pub(crate) struct Quota {
    pub(crate) policy: PolicyRef,
    pub(crate) stores: Arc<Stores>,
}

impl Filter for Quota {
    fn name(&self) -> &str {
        &self.policy.label
    }

    fn hooks(&self) -> Hooks {
        Hooks::UPSTREAM_RESPONSE
    }

    fn on_upstream_response<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        upstream: &'a Upstream,
        response: &'a UpstreamResponse<'_>,
    ) -> HookResult<'a, Verdict> {
        Step::later(async move {
            let plugin = &self.policy.plugin;
            if !plugin.watches(response.status.as_u16(), response.first_event.is_some()) {
                return Ok(Verdict::Continue);
            }
            let view = s.policy_request();
            let model = s.model();
            let up = upstream_view(upstream, model);
            let answer = Arc::new(ResponseInfo {
                upstream: upstream.name.to_string(),
                status: response.status.as_u16(),
                headers: response.headers.clone(),
                first_event: response.first_event.map(str::to_owned),
            });
            let began = std::time::Instant::now();
            let decision = plugin.on_response(&view, &up, &answer).await;
            let (replay, replay_up) = (view.clone(), up.clone());
            self.policy
                .shadow(&s.request_id, &decision, quota_json, |p| async move {
                    if !p.watches(answer.status, answer.first_event.is_some()) {
                        // What the gateway does for an answer the candidate does not watch.
                        return Ok(quota_json(QuotaDecision::Pass));
                    }
                    p.on_response(&replay, &replay_up, &answer)
                        .await
                        .map(quota_json)
                });
            let noted = decision.as_ref().ok().map(
                |d| serde_json::json!({"upstream": &*upstream.name, "verdict": quota_json(*d)}),
            );
            let verdict = match decision {
                Ok(QuotaDecision::Pass) => Ok(Verdict::Continue),
                Ok(QuotaDecision::RetryOther) => Ok(Verdict::Retry),
                Ok(QuotaDecision::Cooldown(c)) => {
                    let scope = match c.scope {
                        CooldownScope::Model => model,
                        CooldownScope::Upstream => None,
                    };
                    upstream.cool_down(scope, c.until_ms);
                    self.stores.share_cooldown(SharedCooldown {
                        upstream: upstream.name.to_string(),
                        model: scope.map(str::to_owned),
                        until_ms: c.until_ms,
                    });
                    tracing::info!(request_id = %s.request_id, upstream = %upstream.name, model = scope, until_ms = c.until_ms, "upstream cooling down");
                    Ok(if c.then == AfterCooldown::RetryOther {
                        Verdict::Retry
                    } else {
                        Verdict::Continue
                    })
                }
                Err(e) => self.policy.failed(e).map(|()| Verdict::Continue),
            };
            let failed = noted.is_none();
            s.ctx
                .record
                .policy_called(&self.policy.label, began, failed, noted);
            verdict
        })
    }
}
