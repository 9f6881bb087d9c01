//! `upstream_capacity`: settles what the attempts of a request took from their upstreams'
//! declared allowances (`upstreams[].limits`; the counting is `upstream/capacity.rs`).
//!
//! | hook | does |
//! |---|---|
//! | `on_done` | the last attempt's token reservation is corrected to the tokens its answer reported (none reported: kept for a success, given back for an error answer or no answer) |
//!
//! An earlier attempt's reservation is given back when the next attempt reserves
//! ([`reserved`], called by the forward step): that upstream did not serve the request. The
//! corrections run in tasks of their own (one cache round trip), never on the relay.

use std::sync::Arc;

use crate::pipeline::{Ctx, Filter, Hooks, Session};
use crate::upstream::Upstream;

/// What the latest attempt took from its upstream's allowance.
#[derive(Clone)]
struct Reserved {
    upstream: Arc<Upstream>,
    tokens: u64,
}

fn settle(upstream: Arc<Upstream>, delta: i64) {
    if delta == 0 {
        return;
    }
    tokio::spawn(async move {
        if let Some(cap) = &upstream.capacity {
            cap.settle(delta).await;
        }
    });
}

/// Notes an attempt's reservation; the previous attempt's tokens go back to its upstream.
pub(crate) fn reserved(s: &mut Session<'_>, upstream: &Arc<Upstream>, tokens: u64) {
    let now = Reserved {
        upstream: upstream.clone(),
        tokens,
    };
    if let Some(before) = s.ctx.ext.insert(now) {
        settle(before.upstream, -(before.tokens as i64));
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
        let delta = match used {
            Some(used) => used as i64 - r.tokens as i64,
            None if ctx.record.status >= 400 || ctx.record.status == 0 => -(r.tokens as i64),
            None => 0,
        };
        settle(r.upstream, delta);
    }
}
