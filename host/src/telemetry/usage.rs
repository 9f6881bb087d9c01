//! `usage`: the tokens each request used (metered by the relay, `pipeline/tokens.rs`),
//! aggregated per key, upstream, model and hour in the database through the stores' batched
//! writer: requests, errors, partial answers, input, output and cached tokens, their cost (set by
//! the `pricing` filter), last use; and the dashboard's last hour in memory (`state/recent.rs`):
//! the same counts, 429s, and the latency and time to first byte of requests that reached an
//! upstream.
//!
//! Hook: `on_done` (the record carries the tokens by then). Never fails a request; a request
//! refused before authentication has no key and is not counted here.

use std::sync::Arc;

use crate::pipeline::{Ctx, Filter, Hooks, Outcome};
use crate::state::{Observed, Stores, TokenUsage};

pub(crate) struct Usage {
    stores: Arc<Stores>,
}

impl Usage {
    pub(crate) fn new(stores: Arc<Stores>) -> Self {
        Self { stores }
    }
}

impl Filter for Usage {
    fn name(&self) -> &str {
        "usage"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &ctx.record;
        let Some(key) = &r.key else {
            return;
        };
        let (t, partial) = r
            .tokens
            .map_or((Default::default(), false), |t| (t.tokens, t.partial));
        let reached_upstream = r.upstream.is_some();
        let seen = Observed {
            status: r.status,
            took: reached_upstream.then_some(r.took),
            first_byte: r.first_byte.filter(|_| reached_upstream),
        };
        self.stores.record_tokens(
            TokenUsage {
                at_ms: r.ended_ms,
                key_id: key.hex.clone(),
                upstream: r.upstream.clone().unwrap_or_else(|| Arc::from("")),
                model: r.billed_model().cloned().unwrap_or_else(|| Arc::from("")),
                requests: 1,
                errors: u64::from(r.status >= 400 || r.outcome == Outcome::UpstreamAborted),
                partial: u64::from(partial),
                input_tokens: t.input,
                output_tokens: t.output,
                cached_tokens: t.cached,
                cost_nanos: r.cost_nanos.unwrap_or(0),
            },
            seen,
        );
    }
}
