//! `pricing`: each request's cost, from the tokens its answer reported and the price of its model
//! (`pricing:`, `config::PriceTable`).
//!
//! | hook | does |
//! |---|---|
//! | `on_done` | sets `record.cost_nanos` (billionths of the currency unit; `None` when the model has no price or nothing was used) |
//!
//! First in the chain, so every later `on_done` — money budgets, usage, metrics, the access log —
//! reads one cost. Not built when no price is configured.

use std::sync::Arc;

use crate::config::PriceTable;
use crate::pipeline::{Ctx, Filter, Hooks};

pub(crate) struct Pricing {
    prices: Arc<PriceTable>,
}

/// The filter, when the config prices anything.
pub(crate) fn build(prices: &Arc<PriceTable>) -> Option<Pricing> {
    (!prices.is_empty()).then(|| Pricing {
        prices: prices.clone(),
    })
}

/// The cost under `prices` of `model` for these tokens, if it has a price.
pub(crate) fn cost_nanos(
    prices: &PriceTable,
    model: &str,
    input: u64,
    cached: u64,
    output: u64,
) -> Option<u64> {
    prices
        .price(model)
        .map(|p| p.cost_nanos(input, cached, output))
}

impl Filter for Pricing {
    fn name(&self) -> &str {
        "pricing"
    }

    fn hooks(&self) -> Hooks {
        Hooks::DONE
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let r = &mut ctx.record;
        let (Some(t), Some(model)) = (r.tokens, r.billed_model().map(|m| &**m)) else {
            return;
        };
        let t = t.tokens;
        r.cost_nanos = cost_nanos(&self.prices, model, t.input, t.cached, t.output);
    }
}
