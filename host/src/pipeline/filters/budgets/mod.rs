//! `budgets`: spending caps per client key and per owner (`auth.keys[].budgets`, a stored key's
//! `budgets`, `budgets.owners`), in money or tokens per calendar day, week or month.
//!
//! | hook | does |
//! |---|---|
//! | `on_authenticated` | reserves the request's most (its prompt estimate plus its completion budget, priced at its model's price for a money budget) from each budget that applies; a budget that cannot take it refuses with 429 `insufficient_quota` and the time it resets, and nothing stays reserved; a money budget for a model without a price refuses with 403 `model_not_priced` |
//! | `on_body_chunk` | a stream whose running use passes what it holds holds the frame while it takes more from the budget (`Ctx::wait_for`: one round trip to the shared cache); a budget that cannot give it ends the stream with an SSE `error` event (`insufficient_quota`) |
//! | `on_done` | settles each budget with what the answer used (its reported tokens, or their cost from the `pricing` filter) |
//!
//! The counters live in the shared cache (`Stores::budget_kv`: Redis for a cluster, so one
//! budget for every gateway; in process otherwise), one per budget and window, and are seeded
//! from the usage table the first time a window is used on a cache, so a restart forgets
//! nothing that was flushed. A reservation, and each later grant to a stream that runs past it,
//! is an atomic add that is undone when it overshoots the budget's ceiling, so concurrent
//! requests on any number of gateways can never together pass it: with `enforce: strict` the
//! ceiling is the budget (never exceeded); with `enforce: admission` a stream may take up to its
//! own reservation beyond it, so all of them together overrun it by at most one reservation,
//! and a stream is ended only when even that is gone. A JSON answer cannot be ended part way: it
//! is charged what it reports when it ends.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;

use crate::config::{BudgetSpec, Config, Enforce, Price, PriceTable, period};
use crate::error::{GatewayError, Refusal};
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Resume, Session, Step};
use crate::state::{ClientKey, Stores};

pub(crate) struct Budgets {
    stores: Arc<Stores>,
    prices: Arc<PriceTable>,
    tz: jiff::tz::TimeZone,
    strict: bool,
    owners: HashMap<String, Vec<BudgetSpec>>,
    bytes_per_token: u64,
    default_max_tokens: u64,
}

/// The filter (always built: keys issued at run time may carry budgets).
pub(crate) fn build(config: &Config, stores: &Arc<Stores>, prices: &Arc<PriceTable>) -> Budgets {
    let b = &config.budgets;
    let mut owners: HashMap<String, Vec<BudgetSpec>> = HashMap::new();
    for o in &b.owners {
        owners
            .entry(o.owner.clone())
            .or_default()
            .push(o.budget.clone());
    }
    Budgets {
        stores: stores.clone(),
        prices: prices.clone(),
        // Validated when the config was loaded.
        tz: jiff::tz::TimeZone::get(&b.timezone).unwrap_or(jiff::tz::TimeZone::UTC),
        strict: b.enforce == Enforce::Strict,
        owners,
        bytes_per_token: u64::from(config.limits.estimate.bytes_per_token.max(1)),
        default_max_tokens: u64::from(config.limits.estimate.default_max_tokens),
    }
}

/// Whose budget: a key's own, or its owner's.
enum Scope<'a> {
    Key(&'a ClientKey),
    Owner(&'a str),
}

/// One budget a request holds a reservation in.
#[derive(Clone)]
struct Held {
    /// The counter's cache key (scope, period, unit, window start).
    counter: String,
    money: bool,
    reserved: u64,
    /// What the request holds: its reservation and any grant taken since.
    granted: u64,
    /// The budget, in its unit.
    limit: u64,
    /// What the counter may reach when a running stream takes more: the budget (`strict`), or
    /// the budget plus this reservation (`admission`).
    ceiling: u64,
    /// Percentages whose passing sends an alert.
    alert_at: Vec<u8>,
    /// `key` or `owner`, and the key's name or the owner.
    scope: (&'static str, Arc<str>),
    period: crate::config::Period,
    window_start_ms: u64,
}

/// The webhook body of a budget passing one of its `alert_at` percentages.
#[derive(serde::Serialize)]
struct BudgetAlert<'a> {
    event: &'static str,
    /// `key` or `owner`.
    scope: &'static str,
    /// The key's name or the owner.
    name: &'a str,
    period: &'static str,
    window_start_ms: u64,
    percent: u8,
    /// In `unit`.
    limit: f64,
    spent: f64,
    /// The currency, or `tokens`.
    unit: &'a str,
}

/// What a request reserved (request extension).
#[derive(Clone)]
struct Taken {
    held: Vec<Held>,
    price: Option<Price>,
    prompt_estimate: u64,
    /// The stream was ended (a budget could not give it more).
    cut: bool,
}

fn insufficient(message: String, retry_after_secs: u64) -> GatewayError {
    Refusal::new(
        StatusCode::TOO_MANY_REQUESTS,
        "insufficient_quota",
        "insufficient_quota",
        message,
    )
    .retry_after(retry_after_secs)
    .into()
}

fn describe(b: &BudgetSpec, currency: &str) -> String {
    match (b.amount, b.tokens) {
        (Some(a), _) => format!("{a} {currency} per {}", b.period.as_str()),
        (None, Some(t)) => format!("{t} tokens per {}", b.period.as_str()),
        (None, None) => String::new(),
    }
}

impl Budgets {
    /// Every budget that applies to `key`: its own, then its owner's.
    fn applicable<'a>(&'a self, key: &'a ClientKey) -> Vec<(Scope<'a>, &'a BudgetSpec)> {
        let own = key.budgets.iter().map(|b| (Scope::Key(key), b));
        let owner = self
            .owners
            .get(&*key.owner)
            .into_iter()
            .flatten()
            .map(|b| (Scope::Owner(&key.owner), b));
        own.chain(owner).collect()
    }

    /// What the window has spent so far, from the usage table: (tokens, cost).
    async fn spent(&self, scope: &Scope<'_>, from_ms: u64) -> (u64, u64) {
        let ids: Vec<Arc<str>> = match scope {
            Scope::Key(k) => vec![k.hex.clone()],
            Scope::Owner(o) => self.stores.key_table().load().owned_by(o),
        };
        let ids: Vec<&str> = ids.iter().map(|s| &**s).collect();
        match self.stores.database().spend_since(&ids, from_ms).await {
            Ok(spent) => spent,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a budget's spend; counting from now");
                (0, 0)
            }
        }
    }

    /// Reserves `units` in the budget's counter if it stays within the budget (the counter is
    /// seeded from the usage table the first time its window is used on this cache); whether
    /// it did.
    async fn take(
        &self,
        scope: &Scope<'_>,
        b: &BudgetSpec,
        counter: &str,
        units: u64,
        window: (u64, u64),
    ) -> bool {
        let ttl = window.1.saturating_sub(window.0) + 86_400_000;
        let history = async {
            let (tokens, cost) = self.spent(scope, window.0).await;
            if b.is_money() { cost } else { tokens }
        };
        self.stores
            .budget_kv()
            .reserve_seeded(counter, units, b.limit_units(), ttl, history)
            .await
    }

    async fn reserve(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        let Some(key) = s.key.clone() else {
            return Ok(());
        };
        let budgets = self.applicable(&key);
        if budgets.is_empty() {
            return Ok(());
        }
        let model = s.model().unwrap_or("");
        let price = self.prices.price(model);
        if price.is_none() && budgets.iter().any(|(_, b)| b.is_money()) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "model_not_priced",
                format!(
                    "this API key has a money budget and the model {:?} has no price (pricing:)",
                    crate::error::truncate(model)
                ),
            )
            .into());
        }
        let prompt = s.ctx.record.bytes_in.div_ceil(self.bytes_per_token);
        let completion = s
            .probe
            .completion_budget()
            .unwrap_or(self.default_max_tokens);
        let now = crate::state::unix_ms();
        let mut taken = Taken {
            held: Vec::with_capacity(budgets.len()),
            price,
            prompt_estimate: prompt,
            cut: false,
        };
        for (scope, b) in &budgets {
            let units = match price {
                Some(p) if b.is_money() => p.cost_nanos(prompt, 0, completion),
                _ => prompt.saturating_add(completion),
            };
            let window = period::window(b.period, &self.tz, now);
            let (who, id) = match scope {
                Scope::Key(k) => ("key", &*k.hex),
                Scope::Owner(o) => ("owner", *o),
            };
            let unit = if b.is_money() { "nanos" } else { "tokens" };
            let counter = format!(
                "{who}\u{0}{id}\u{0}{}\u{0}{unit}\u{0}{}",
                b.period.as_str(),
                window.0
            );
            if !self.take(scope, b, &counter, units, window).await {
                // Undo every one taken before it: a refused request holds nothing.
                let kv = self.stores.budget_kv();
                for h in &taken.held {
                    kv.incr(&h.counter, -(h.reserved as i64), None).await;
                }
                let whose = match scope {
                    Scope::Key(k) => format!("this API key ({})", k.name),
                    Scope::Owner(o) => format!("the team {o}"),
                };
                let retry = window.1.saturating_sub(now).div_ceil(1000);
                return Err(insufficient(
                    format!(
                        "the budget of {} of {whose} is spent (this request reserves what its prompt and max_tokens may cost); it resets at {}",
                        describe(b, &self.prices.currency),
                        period::rfc3339(window.1)
                    ),
                    retry,
                ));
            }
            taken.held.push(Held {
                counter,
                money: b.is_money(),
                reserved: units,
                granted: units,
                limit: b.limit_units(),
                ceiling: if self.strict {
                    b.limit_units()
                } else {
                    b.limit_units().saturating_add(units)
                },
                alert_at: b.alert_at.clone(),
                scope: match scope {
                    Scope::Key(k) => ("key", k.name.clone()),
                    Scope::Owner(o) => ("owner", Arc::from(*o)),
                },
                period: b.period,
                window_start_ms: window.0,
            });
        }
        s.ctx.ext.insert(taken);
        Ok(())
    }
}

/// Takes more for a stream that has used `need` beyond what it holds in each budget (`asks`:
/// index into `Taken::held`, counter, need, step, ceiling): at least a step (its reservation
/// again, so a long answer asks seldom), less when only less is left under the ceiling, never less
/// than `need`. What each budget gave; `None` when one could not give `need` (what it was asked
/// is undone; earlier grants stay held, and are settled at the end).
async fn take_more(
    stores: &Stores,
    asks: Vec<(usize, String, u64, u64, u64)>,
) -> (Vec<(usize, u64)>, bool) {
    let kv = stores.budget_kv();
    let mut given = Vec::with_capacity(asks.len());
    for (i, counter, need, step, ceiling) in asks {
        let ask = need.max(step);
        let total = kv.incr(&counter, ask as i64, None).await.max(0) as u64;
        let over = total.saturating_sub(ceiling);
        let grant = ask.saturating_sub(over);
        if grant < need {
            kv.incr(&counter, -(ask as i64), None).await;
            return (given, false);
        }
        if over > 0 {
            kv.incr(&counter, -(over as i64), None).await;
        }
        given.push((i, grant));
    }
    (given, true)
}

/// The final event of a stream a budget ended.
fn cut_event() -> Bytes {
    crate::error::error_event(
        "the answer used all its budget allows; the stream was ended",
        "insufficient_quota",
        "insufficient_quota",
    )
}

impl Filter for Budgets {
    fn name(&self) -> &str {
        "budgets"
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED | Hooks::BODY_CHUNK | Hooks::DONE
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        let has = s
            .key
            .as_ref()
            .is_some_and(|k| !k.budgets.is_empty() || self.owners.contains_key(&*k.owner));
        if !has {
            return Step::Now(Ok(Flow::Continue));
        }
        Step::Later(Box::pin(async move {
            self.reserve(s).await?;
            Ok(Flow::Continue)
        }))
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, _chunk: &mut Bytes, _end: bool) {
        if ctx.ext.get::<Taken>().is_none_or(|t| t.cut) {
            return;
        }
        // What the upstream reported, or (OpenAI streams report at their end) the prompt
        // estimate and one token per event so far.
        let seen = ctx.tokens_seen().unwrap_or_default();
        let events = ctx.stream_events();
        let Some(t) = ctx.ext.get::<Taken>() else {
            return;
        };
        let input = seen.input.max(t.prompt_estimate);
        let output = seen.output.max(events);
        let asks: Vec<_> = t
            .held
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let used = match t.price {
                    Some(p) if h.money => p.cost_nanos(input, seen.cached, output),
                    _ => input + output,
                };
                (used > h.granted).then(|| {
                    (
                        i,
                        h.counter.clone(),
                        used - h.granted,
                        h.reserved,
                        h.ceiling,
                    )
                })
            })
            .collect();
        if asks.is_empty() {
            return;
        }
        let stores = self.stores.clone();
        ctx.wait_for(async move {
            let (given, enough) = take_more(&stores, asks).await;
            Box::new(move |ctx: &mut Ctx, _: &mut Bytes| {
                let Some(t) = ctx.ext.get_mut::<Taken>() else {
                    return;
                };
                for (i, grant) in given {
                    t.held[i].granted += grant;
                }
                if !enough {
                    t.cut = true;
                    ctx.end_stream(cut_event(), "insufficient_quota");
                }
            }) as Resume
        });
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(t) = ctx.ext.remove::<Taken>() else {
            return;
        };
        let r = &ctx.record;
        // What the answer used: its reported tokens; at a cut, what it held (the client got
        // nothing past it; the upstream may have made more); nothing if the gateway answered
        // itself or no upstream answered; otherwise (no usage reported) what it holds stands.
        let used_tokens = |h: &Held| -> u64 {
            match (&r.tokens, t.cut) {
                (_, true) => h.granted,
                (Some(rec), false) => rec.tokens.total(),
                (None, false) if r.error.is_some() || r.upstream_head.is_none() => 0,
                (None, false) => h.granted,
            }
        };
        let settle: Vec<(Held, i64)> = t
            .held
            .iter()
            .map(|h| {
                let used = if h.money {
                    match (r.cost_nanos, t.cut) {
                        (_, true) => h.granted,
                        (Some(c), false) => c,
                        (None, false) if r.error.is_some() || r.upstream_head.is_none() => 0,
                        (None, false) => h.granted,
                    }
                } else {
                    used_tokens(h)
                };
                (h.clone(), used as i64 - h.granted as i64)
            })
            // A budget with alerts is read after each request, to see a threshold passed.
            .filter(|(h, d)| *d != 0 || !h.alert_at.is_empty())
            .collect();
        if settle.is_empty() {
            return;
        }
        // In a task: a shared cache is a round trip, and the answer has already gone.
        let stores = self.stores.clone();
        let currency = self.prices.currency.clone();
        tokio::spawn(async move {
            let kv = stores.budget_kv();
            for (h, delta) in settle {
                let total = kv.incr(&h.counter, delta, None).await.max(0) as u64;
                for &pct in &h.alert_at {
                    if u128::from(total) * 100 < u128::from(h.limit) * u128::from(pct) {
                        continue;
                    }
                    // Once per budget, window and percentage, whichever gateway sees it first.
                    let marker = format!("alerted\u{0}{}\u{0}{pct}", h.counter);
                    if !kv
                        .compare_and_set(&marker, None, "1", Some(40 * 86_400_000))
                        .await
                    {
                        continue;
                    }
                    let scale = if h.money { 1e9 } else { 1.0 };
                    let alert = BudgetAlert {
                        event: "budget_threshold",
                        scope: h.scope.0,
                        name: &h.scope.1,
                        period: h.period.as_str(),
                        window_start_ms: h.window_start_ms,
                        percent: pct,
                        limit: h.limit as f64 / scale,
                        spent: total as f64 / scale,
                        unit: if h.money { &currency } else { "tokens" },
                    };
                    stores.alert(&alert, &format!("budget of {} {}", h.scope.0, h.scope.1));
                }
            }
        });
    }
}
