//! `access_log`: one structured line per request on the `access` tracing target, with
//! nginx-style timings, written when the request ends (`on_done`), so a request that completes,
//! is refused, or is abandoned by its client mid-stream is logged exactly once, with the outcome
//! that happened, and the tokens the answer reported (after the `usage` filter, which runs
//! first). On by default (`logging.access_log`).

use std::time::Duration;

use crate::pipeline::{Ctx, Filter, Hooks};

pub(crate) struct AccessLog;

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3)
}

impl Filter for AccessLog {
    fn name(&self) -> &str {
        "access_log"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &ctx.record;
        tracing::info!(
            target: "access",
            request_id = %r.request_id,
            client_ip = %r.client_ip,
            method = %r.method,
            path = r.path(),
            http = ?r.http_version,
            key = r.key.as_ref().map(|k| &k.hex[..8]),
            key_name = r.key.as_ref().map(|k| &*k.name),
            route = r.route.as_deref(),
            model = r.model.as_deref(),
            routed_model = r.routed_model.as_deref(),
            served_model = r.served_model.as_deref(),
            upstream = r.upstream.as_deref(),
            attempts = r.attempts,
            status = r.status,
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            total_ms = ms(Some(r.took)),
            upstream_connect_ms = ms(r.upstream_connect),
            upstream_head_ms = ms(r.upstream_head),
            first_byte_ms = ms(r.first_byte),
            error = r.error,
            input_tokens = r.tokens.map(|t| t.tokens.input),
            output_tokens = r.tokens.map(|t| t.tokens.output),
            cached_tokens = r.tokens.map(|t| t.tokens.cached),
            tokens_partial = r.tokens.map(|t| t.partial),
            cost = r.cost_nanos.map(crate::config::from_nanos),
            outcome = r.outcome.as_str(),
        );
    }
}
