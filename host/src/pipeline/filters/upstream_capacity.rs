//! `upstream_capacity`: settles what the attempts of a request took from their upstreams'
//! declared allowances (`upstreams[].limits`; the counting is `upstream/capacity/`).
//!
//! | hook | does |
//! |---|---|
//! | `on_done` | the last attempt's reservation is corrected to the tokens its answer reported and, for a money allowance, to its cost (the `pricing` filter's, which runs first); none reported: kept for a success, given back for an error answer or no answer |
//!
//! An earlier attempt's reservation is given back when the next attempt reserves
//! ([`reserved`], called by the forward step): that upstream did not serve the request. The
//! corrections run in tasks of their own (one cache round trip), never on the relay.

use std::sync::Arc;

use crate::pipeline::{Ctx, Filter, Hooks, Session};
use crate::upstream::Upstream;
use crate::upstream::capacity::Taken;

/// What the latest attempt took from its upstream's allowance.
#[derive(Clone)]
struct Reserved {
    upstream: Arc<Upstream>,
    taken: Taken,
}

/// Corrects `taken` on `upstream` by `tokens` and to `cost_nanos` (see [`Capacity::settle`]).
///
/// [`Capacity::settle`]: crate::upstream::capacity::Capacity::settle
fn settle(r: Reserved, tokens: i64, cost_nanos: Option<u64>) {
    if tokens == 0 && cost_nanos.is_none_or(|c| c == r.taken.cost_nanos()) {
        return;
    }
    tokio::spawn(async move {
        if let Some(cap) = &r.upstream.capacity {
            cap.settle(&r.taken, tokens, cost_nanos).await;
        }
    });
}

/// Notes an attempt's reservation; what the previous attempt took goes back to its upstream.
pub(crate) fn reserved(s: &mut Session<'_>, upstream: &Arc<Upstream>, taken: Taken) {
    let now = Reserved {
        upstream: upstream.clone(),
        taken,
    };
    if let Some(before) = s.ctx.ext.insert(now) {
        let tokens = -(before.taken.tokens as i64);
        settle(before, tokens, Some(0));
    }
}

/// The filter (stateless: the reservation lives in the request's `ctx.ext`).
pub(crate) struct UpstreamCapacity;

impl Filter for UpstreamCapacity {
    fn name(&self) -> &str {
        "upstream_capacity"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(r) = ctx.ext.remove::<Reserved>() else {
            return;
        };
        let used = ctx.record.tokens.map(|t| t.tokens.total());
        let failed = ctx.record.status >= 400 || ctx.record.status == 0;
        let reserved = r.taken.tokens as i64;
        let (tokens, cost) = match used {
            Some(used) => (used as i64 - reserved, ctx.record.cost_nanos),
            None if failed => (-reserved, Some(0)),
            None => (0, None),
        };
        settle(r, tokens, cost);
    }
}
