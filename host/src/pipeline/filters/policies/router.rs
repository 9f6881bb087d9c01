//! The router adapter: calls the plugin's `select` once, with the candidates.

use std::sync::Arc;

use super::{PolicyRef, figures, upstream_view};
use crate::error::ErrorKind;
use crate::pipeline::{Filter, HookResult, Hooks, Session, Step};
use crate::policy::authoring::route_json;
use crate::policy::capacity::Headroom;
use crate::policy::types::RouteDecision;
use crate::policy::view::Candidates;
use crate::upstream::Upstream;

/// router: orders the candidates; `none` refuses the request (503 `no_upstream`).
pub(crate) struct Router {
    pub(crate) policy: PolicyRef,
}

impl Filter for Router {
    fn name(&self) -> &str {
        &self.policy.label
    }

    fn hooks(&self) -> Hooks {
        Hooks::SELECT
    }

    fn on_select<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        candidates: &'a mut Vec<Arc<Upstream>>,
    ) -> HookResult<'a> {
        Step::later(async move {
            let view = s.policy_request();
            let model = s.model();
            // A lean router (and a lean shadow) takes the candidates' figures alone: no name
            // or model list is built here or copied into the guest.
            let lean = self.policy.plugin.lean_router()
                && (self.policy.shadow.as_ref()).is_none_or(|s| s.candidate.lean_router());
            let views = if lean {
                Candidates::Figures(candidates.iter().map(|u| figures(u, model)).collect())
            } else {
                Candidates::Views(candidates.iter().map(|u| upstream_view(u, model)).collect())
            };
            // Only a router that reads headroom (imports `capacity`) costs these reads.
            let headroom = if self.policy.plugin.wants_capacity() {
                headroom(candidates).await
            } else {
                Vec::new()
            };
            let began = std::time::Instant::now();
            let decision = self
                .policy
                .plugin
                .select_with(&view, &views, headroom)
                .await;
            let replay = view.clone();
            self.policy
                .shadow(&s.request_id, &decision, route_json, |p| async move {
                    p.select(&replay, &views).await.map(route_json)
                });
            match decision {
                Ok(RouteDecision::Pick(order)) => {
                    *candidates = reorder(candidates, &order);
                    let names = candidates.iter().map(|u| (*u.name).into()).collect();
                    s.ctx.record.policy_called(
                        &self.policy.label,
                        began,
                        false,
                        Some(serde_json::Value::Array(names)),
                    );
                    if candidates.is_empty() {
                        return Err(
                            ErrorKind::NoUpstream("the router picked no candidate".into()).into(),
                        );
                    }
                    Ok(())
                }
                Ok(RouteDecision::None(reason)) => {
                    s.ctx.record.policy_called(
                        &self.policy.label,
                        began,
                        false,
                        Some(serde_json::json!({"none": reason})),
                    );
                    Err(ErrorKind::NoUpstream(reason).into())
                }
                Err(e) => {
                    s.ctx
                        .record
                        .policy_called(&self.policy.label, began, true, None);
                    self.policy.failed(e)
                }
            }
        })
    }
}

/// Each candidate's headroom, as the `capacity` import answers it.
async fn headroom(candidates: &[Arc<Upstream>]) -> Vec<(String, Headroom)> {
    let mut out = Vec::with_capacity(candidates.len());
    for u in candidates {
        let h = match &u.capacity {
            Some(c) => c.headroom().await,
            None => Default::default(),
        };
        out.push((
            u.name.to_string(),
            Headroom {
                requests: h.requests,
                tokens: h.tokens,
                monthly_tokens: h.monthly_tokens,
            },
        ));
    }
    out
}

/// The candidates in the router's order; out-of-range and repeated indices are ignored.
fn reorder(candidates: &[Arc<Upstream>], order: &[u32]) -> Vec<Arc<Upstream>> {
    let mut seen = vec![false; candidates.len()];
    order
        .iter()
        .filter_map(|&i| {
            let i = i as usize;
            (i < candidates.len() && !std::mem::replace(&mut seen[i], true))
                .then(|| candidates[i].clone())
        })
        .collect()
}
