//! `request_log`: every request the data plane answered, proxied or refused, as one record of the
//! request log (`storage.request_log`; docs/requests.md): who asked (key, address), what
//! (route, model), what happened (each upstream attempt, the final status and outcome, the code
//! of the gateway's own answer and what gave it, `answered_by`), how long (first byte, total),
//! and what it used (tokens, cost). Refused, failed, aborted and cut requests are always kept;
//! successful ones at the share `sample` (default all), or when `capture` kept their bodies.
//!
//! Hook: `on_done`, after `pricing` (the cost). The entry, borrowed from the request's record,
//! goes to the stores ([`Stores::record_request`]: encoded under one lock, never a wait) and
//! the writer writes it in blocks.

use std::sync::Arc;

use crate::config::Config;
use crate::pipeline::{Ctx, Filter, Hooks, Outcome};
use crate::state::{RequestEntry, Stores};

pub(crate) struct RequestLog {
    stores: Arc<Stores>,
    /// The share of successful requests kept.
    sample: f64,
}

/// The filter, unless the log is off.
pub(crate) fn build(config: &Config, stores: &Arc<Stores>) -> Option<RequestLog> {
    let c = &config.storage.request_log;
    c.enabled.then(|| RequestLog {
        stores: stores.clone(),
        sample: c.sample,
    })
}

/// The method as the log keeps it (a client's own method is `OTHER`: it is not echoed).
fn method(m: &http::Method) -> &'static str {
    use http::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl Filter for RequestLog {
    fn name(&self) -> &str {
        "request_log"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &ctx.record;
        let ok = r.status < 400 && r.outcome == Outcome::Complete;
        // A request whose bodies `capture` kept is logged whatever the sample.
        let captured = ctx
            .ext
            .get::<crate::telemetry::capture::Captured>()
            .is_some();
        if ok
            && !captured
            && self.sample < 1.0
            && (self.sample <= 0.0 || fastrand::f64() >= self.sample)
        {
            return;
        }
        let bodies = ctx
            .ext
            .remove::<crate::telemetry::capture::Captured>()
            .map(|c| c.0);
        let r = &ctx.record;
        let took = r.took;
        let us = |d: std::time::Duration| d.as_micros().min(u128::from(u64::MAX)) as u64;
        // The entry borrows the record: the stores encode it before this returns.
        self.stores.record_request(RequestEntry {
            at_ms: r.ended_ms.saturating_sub(took.as_millis() as u64),
            request_id: &r.request_id,
            key: r.key.as_ref(),
            client_ip: r.client_ip,
            method: method(&r.method),
            path: r.path(),
            route: r.route.as_ref(),
            model: r.model.as_deref(),
            served_model: r.served_model.as_deref(),
            upstream: r.upstream.as_ref(),
            attempts: &r.attempt_log,
            status: r.status,
            outcome: r.outcome.as_str(),
            error: r.policy_code.as_deref().or(r.error),
            answered_by: r.answered_by.as_deref(),
            first_byte_us: r.first_byte.map(us),
            duration_us: us(took),
            tokens: r
                .tokens
                .map(|t| (t.tokens.input, t.tokens.output, t.tokens.cached)),
            partial: r.tokens.is_some_and(|t| t.partial),
            cost_nanos: r.cost_nanos,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            decisions: decisions_json(&r.policy_calls),
            bodies,
        });
    }
}

/// The policies' decisions as the log keeps them: a JSON array of `{"policy", "decision"}`
/// objects, written straight from each call's decision (empty when none recorded one).
fn decisions_json(calls: &[crate::pipeline::session::PolicyCall]) -> String {
    let mut out = Vec::new();
    for c in calls {
        let Some(d) = &c.decision else { continue };
        out.extend_from_slice(if out.is_empty() { b"[" } else { b"," });
        out.extend_from_slice(b"{\"policy\":");
        // Writing a string or a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &*c.policy);
        out.extend_from_slice(b",\"decision\":");
        let _ = serde_json::to_writer(&mut out, d);
        out.push(b'}');
    }
    if !out.is_empty() {
        out.push(b']');
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::session::PolicyCall;

    fn call(policy: &str, decision: Option<serde_json::Value>) -> PolicyCall {
        PolicyCall {
            policy: policy.into(),
            began: std::time::Instant::now(),
            took: std::time::Duration::ZERO,
            failed: false,
            decision,
        }
    }

    #[test]
    fn decisions_are_a_json_array_of_the_calls_that_recorded_one() {
        assert_eq!(decisions_json(&[]), "");
        assert_eq!(decisions_json(&[call("plugin:bind", None)]), "");
        let text = decisions_json(&[
            call("plugin:bind", None),
            call("plugin:\"rr\"", Some(serde_json::json!(["u0", "u1"]))),
            call("plugin:quota", Some(serde_json::json!({"upstream": "u0"}))),
        ]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"policy": "plugin:\"rr\"", "decision": ["u0", "u1"]},
                {"policy": "plugin:quota", "decision": {"upstream": "u0"}},
            ])
        );
    }
}
