//! The ip-binding adapter: calls the plugin's `check` after authentication.

use std::sync::Arc;

use super::{PolicyRef, denied};
use crate::config::Failsafe;
use crate::error::ErrorKind;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};
use crate::policy::PolicyError;
use crate::policy::authoring::binding_json;
use crate::policy::types::BindingDecision;
use crate::state::{Intercept, KEY_ID_PREFIX_LEN, Stores};

/// ip-binding: the first refusal ends the request and is written to the intercept log. When the
/// stores cannot answer, the deployment's failsafe decides (not `on_error`). A request the last
/// ip-binding policy of the route allowed counts as one use of the key's binding (batched).
pub(crate) struct IpBinding {
    pub(crate) policy: PolicyRef,
    pub(crate) stores: Arc<Stores>,
    /// The route's last ip-binding policy records the use.
    pub(crate) records_use: bool,
}

impl Filter for IpBinding {
    fn name(&self) -> &str {
        &self.policy.label
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        Step::later(async move {
            let view = s.policy_request();
            let began = std::time::Instant::now();
            let decision = self.policy.plugin.check(&view).await;
            s.ctx
                .record
                .policy_called(&self.policy.label, began, decision.is_err(), None);
            let replay = view.clone();
            self.policy
                .shadow(&s.request_id, &decision, binding_json, |p| async move {
                    p.check(&replay).await.map(binding_json)
                });
            match decision {
                Ok(BindingDecision::Allow) => {}
                Ok(BindingDecision::Deny(d)) => {
                    self.stores.record_intercept(
                        &view.key_id,
                        Intercept {
                            at_ms: crate::state::unix_ms(),
                            key_id_prefix: view.key_id.chars().take(KEY_ID_PREFIX_LEN).collect(),
                            bound_cidr: None,
                            attempted_ip: view.client_ip.to_string(),
                            method: s.head.method.to_string(),
                            path: s.head.uri.path().to_owned(),
                            reason: d.code.clone(),
                        },
                    );
                    return Err(denied(d));
                }
                Err(PolicyError::StoreUnavailable { source, .. }) => {
                    self.stores.note_failsafe();
                    match self.stores.failsafe() {
                        Failsafe::Closed => {
                            tracing::warn!(request_id = %s.request_id, error = %source, "stores unavailable; refused (failsafe closed)");
                            return Err(ErrorKind::StateUnavailable.into());
                        }
                        Failsafe::Open => {
                            tracing::warn!(request_id = %s.request_id, error = %source, "stores unavailable; let through unchecked (failsafe open)");
                        }
                    }
                }
                Err(e) => self.policy.failed(e)?,
            }
            if self.records_use {
                self.stores.record_use(&view.key_id, s.client_ip);
            }
            Ok(Flow::Continue)
        })
    }
}
