//! Shadow evaluation: a candidate plugin called beside one of a route's live policies
//! (`routes[].shadow: {live: candidate}`), to try a new policy on real traffic before switching
//! to it.
//!
//! When it runs: right after the live policy's call returned a decision, with the same inputs
//! (the same request view, candidates or response). The candidate's call is a task of its own on
//! the request's thread: the request never waits for it and never sees its decision. The two
//! decisions are compared as JSON (the shape `plugin test` cases use; a cooldown's `until_ms`
//! is left out, since it is a time): [`ShadowStats`] counts agreements, disagreements, failed
//! candidate calls and calls skipped because `max_concurrency` candidate calls were already
//! running, and keeps the last [`SAMPLE`] disagreements. The admin API (`GET
//! /admin/api/plugins`, `shadows`) and the metrics (`tollgate_plugin_shadow_decisions_total`)
//! show them; they start again with each reload.
//!
//! A candidate runs dry (`PluginSpec::dry_run`): its `bindings.bind-first` makes no binding, and
//! nothing it decides is applied. Its `kv` namespace is its own, as for any plugin.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::policy::{Plugin, PolicyError};

/// Disagreements kept per shadow (the most recent).
pub const SAMPLE: usize = 32;

/// One live policy and its candidate on one route.
pub struct Shadow {
    pub route: Arc<str>,
    pub live: Arc<str>,
    pub candidate: Arc<Plugin>,
    pub stats: ShadowStats,
    running: AtomicU32,
}

/// What the comparisons found since the shadow was loaded.
#[derive(Default)]
pub struct ShadowStats {
    pub agree: AtomicU64,
    pub disagree: AtomicU64,
    /// Candidate calls that failed (trap, deadline, breaker): compared with nothing.
    pub errors: AtomicU64,
    /// Comparisons not made: the candidate already had `max_concurrency` calls running.
    pub skipped: AtomicU64,
    sample: Mutex<VecDeque<Disagreement>>,
}

/// Both decisions for one request where they differed.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Disagreement {
    pub request_id: String,
    /// Unix ms.
    pub at_ms: u64,
    #[schema(value_type = Object)]
    pub live: Value,
    #[schema(value_type = Object)]
    pub candidate: Value,
}

impl ShadowStats {
    /// The most recent disagreements, oldest first.
    pub fn sample(&self) -> Vec<Disagreement> {
        self.sample
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Shadow {
    pub fn new(route: &str, live: &str, candidate: Arc<Plugin>) -> Self {
        Self {
            route: route.into(),
            live: live.into(),
            candidate,
            stats: ShadowStats::default(),
            running: AtomicU32::new(0),
        }
    }

    /// Compares the live decision with the candidate's, computed by `call` in a task of its
    /// own. Returns at once.
    pub fn compare<F, Fut>(self: &Arc<Self>, request_id: &str, live: Value, call: F)
    where
        F: FnOnce(Arc<Plugin>) -> Fut,
        Fut: Future<Output = Result<Value, PolicyError>> + Send + 'static,
    {
        let limit = self.candidate.spec.max_concurrency;
        if self.running.fetch_add(1, Ordering::AcqRel) >= limit {
            self.running.fetch_sub(1, Ordering::AcqRel);
            self.stats.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let call = call(self.candidate.clone());
        let (me, request_id) = (self.clone(), request_id.to_owned());
        tokio::spawn(async move {
            let result = call.await;
            me.running.fetch_sub(1, Ordering::AcqRel);
            me.record(request_id, live, result);
        });
    }

    fn record(&self, request_id: String, live: Value, candidate: Result<Value, PolicyError>) {
        let candidate = match candidate {
            Ok(v) => v,
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(request_id, candidate = %self.candidate.spec.name, error = %e, "shadow call failed");
                return;
            }
        };
        if comparable(&live) == comparable(&candidate) {
            self.stats.agree.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.stats.disagree.fetch_add(1, Ordering::Relaxed);
        let mut sample = self.stats.sample.lock().unwrap_or_else(|p| p.into_inner());
        if sample.len() == SAMPLE {
            sample.pop_front();
        }
        sample.push_back(Disagreement {
            request_id,
            at_ms: crate::state::unix_ms(),
            live,
            candidate,
        });
    }
}

/// A decision without what may differ between two equal decisions: a cooldown's end time.
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(c) = v.get_mut("cooldown").and_then(Value::as_object_mut) {
        c.remove("until_ms");
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cooldowns_compare_without_their_end_time() {
        let a = json!({"cooldown": {"scope": "model", "until_ms": 1, "then": "pass"}});
        let b = json!({"cooldown": {"scope": "model", "until_ms": 2, "then": "pass"}});
        let c = json!({"cooldown": {"scope": "upstream", "until_ms": 1, "then": "pass"}});
        assert_eq!(comparable(&a), comparable(&b));
        assert_ne!(comparable(&a), comparable(&c));
        assert_ne!(
            comparable(&json!({"pick": [0, 1]})),
            comparable(&json!({"pick": [1, 0]}))
        );
    }
}
