//! `key_limits`: a client key's own limits (`limits` of a key, in `auth.keys` or issued at run
//! time): requests and tokens per period, and requests at once. They come on top of `limits:`,
//! whose `by: key` limits give every key the same allowance; a request must pass both.
//!
//! | hook | does |
//! |---|---|
//! | `on_authenticated` | takes a request from the key's request bucket, a slot of its in-flight count, and its token reservation (prompt estimate plus completion budget) from its token bucket; the first that cannot refuses with 429 (`rate_limit_exceeded`, `concurrency_limit_exceeded`) and what was taken is given back |
//! | `on_done` | settles the token reservation with the reported usage; the in-flight slot goes with the request's context |
//!
//! The buckets are GCRA (`state::Gcra`), in the shared cache when there is one (one allowance for
//! the cluster), else in process; an idle bucket holds a whole period's worth. In-flight counts
//! are per gateway, as for `limits.in_flight`.

use std::sync::Arc;

use http::StatusCode;

use super::limits::in_flight::{InFlightCounts, Slot};
use crate::config::{Config, Rate};
use crate::error::{GatewayError, Refusal};
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Session, Step};
use crate::state::{Gcra, LocalBuckets, Op, Stores};

pub(crate) struct KeyLimits {
    stores: Arc<Stores>,
    /// In-process buckets (when there is no shared cache), for requests and for tokens; a
    /// bucket's key carries its rate, so a changed limit starts a fresh bucket.
    local: [Arc<LocalBuckets>; 2],
    /// Requests in flight per key, on this gateway.
    in_flight: Arc<InFlightCounts>,
    bytes_per_token: u64,
    default_max_tokens: u64,
}

/// What the request took (request extension).
#[derive(Clone)]
struct Taken {
    _slot: Option<Arc<Slot>>,
    /// The token bucket and what was reserved from it.
    tokens: Option<(Rate, u64)>,
}

/// The filter (always built: keys issued at run time may carry limits).
pub(crate) fn build(config: &Config, stores: &Arc<Stores>) -> KeyLimits {
    let l = &config.limits;
    let max = l.max_tracked_keys;
    KeyLimits {
        stores: stores.clone(),
        local: ["req", "tok"]
            .map(|kind| stores.kept(&format!("rl:key-{kind}:{max}"), || LocalBuckets::new(max))),
        in_flight: stores.kept("inflight:key-own", InFlightCounts::default),
        bytes_per_token: u64::from(l.estimate.bytes_per_token.max(1)),
        default_max_tokens: u64::from(l.estimate.default_max_tokens),
    }
}

/// Which of a key's buckets.
#[derive(Clone, Copy)]
enum Kind {
    Requests = 0,
    Tokens = 1,
}

/// Applies `op` to `key`'s bucket of `kind` at `rate`: in the shared cache when there is one,
/// else in `local`.
async fn apply(
    stores: &Stores,
    local: &LocalBuckets,
    kind: Kind,
    rate: Rate,
    key: &str,
    op: Op,
) -> crate::state::Decision {
    let g = gcra(rate);
    let name = match kind {
        Kind::Requests => "req",
        Kind::Tokens => "tok",
    };
    let prefix = format!("rl:key-{name}:{}:{}:", g.t_us, g.tau_us);
    let subject = format!("{}:{}:{key}", g.t_us, g.tau_us);
    if stores.shares_buckets() {
        stores.rate(&prefix, key, &g, op, local).await
    } else {
        stores.rate(&prefix, &subject, &g, op, local).await
    }
}

/// A rate as a GCRA whose idle bucket holds the whole count.
fn gcra(rate: Rate) -> Gcra {
    Gcra::new(rate.count, rate.period.as_micros() as u64, rate.count - 1)
}

fn too_many(
    kind: &'static str,
    code: &'static str,
    retry_ms: u64,
    message: String,
) -> GatewayError {
    Refusal::new(StatusCode::TOO_MANY_REQUESTS, kind, code, message)
        .retry_after(retry_ms.div_ceil(1000))
        .into()
}

impl KeyLimits {
    /// Applies `op` to the key's bucket of `kind` at `rate`.
    async fn apply(&self, kind: Kind, rate: Rate, key: &str, op: Op) -> crate::state::Decision {
        apply(
            &self.stores,
            &self.local[kind as usize],
            kind,
            rate,
            key,
            op,
        )
        .await
    }

    /// Gives back the request a later refusal took from the key's request bucket.
    async fn refund_request(&self, requests: Option<Rate>, key: &str) {
        if let Some(rate) = requests {
            self.apply(Kind::Requests, rate, key, Op::Adjust(-1)).await;
        }
    }

    async fn take(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        let Some(key) = s.key.clone() else {
            return Ok(());
        };
        let Some(limits) = key.limits else {
            return Ok(());
        };
        if let Some(rate) = limits.requests {
            let d = self
                .apply(Kind::Requests, rate, &key.hex, Op::Take(1))
                .await;
            if !d.allowed {
                return Err(too_many(
                    "requests",
                    "rate_limit_exceeded",
                    d.wait_us.div_ceil(1000),
                    format!(
                        "this API key's limit of {rate} requests is reached; retry after {:.1} s",
                        d.wait_us as f64 / 1e6
                    ),
                ));
            }
        }
        let slot = match limits.in_flight {
            None => None,
            Some(max) => match self.in_flight.try_take(key.hex.to_string(), max) {
                Some(slot) => Some(Arc::new(slot)),
                None => {
                    self.refund_request(limits.requests, &key.hex).await;
                    return Err(too_many(
                        "requests",
                        "concurrency_limit_exceeded",
                        1000,
                        format!(
                            "this API key may have {max} requests in flight; retry when one finishes"
                        ),
                    ));
                }
            },
        };
        let mut tokens = None;
        if let Some(rate) = limits.tokens {
            let prompt = s.ctx.record.bytes_in.div_ceil(self.bytes_per_token);
            let want = prompt.saturating_add(
                s.probe
                    .completion_budget()
                    .unwrap_or(self.default_max_tokens),
            );
            let d = self
                .apply(Kind::Tokens, rate, &key.hex, Op::Take(want))
                .await;
            if !d.allowed {
                drop(slot);
                self.refund_request(limits.requests, &key.hex).await;
                let message = if want > rate.count {
                    format!(
                        "this request reserves {want} tokens (max_tokens plus the prompt estimate), more than this API key's limit of {rate} allows at all"
                    )
                } else {
                    format!(
                        "this API key's limit of {rate} tokens is reached: this request reserves {want}; retry after {:.1} s",
                        d.wait_us as f64 / 1e6
                    )
                };
                return Err(too_many(
                    "tokens",
                    "rate_limit_exceeded",
                    d.wait_us.div_ceil(1000).max(1000),
                    message,
                ));
            }
            tokens = Some((rate, want));
        }
        s.ctx.ext.insert(Taken {
            _slot: slot,
            tokens,
        });
        Ok(())
    }
}

impl Filter for KeyLimits {
    fn name(&self) -> &str {
        "key_limits"
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED | Hooks::DONE
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        if s.key.as_ref().is_none_or(|k| k.limits.is_none()) {
            return Step::Now(Ok(Flow::Continue));
        }
        Step::Later(Box::pin(async move {
            self.take(s).await?;
            Ok(Flow::Continue)
        }))
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(t) = ctx.ext.remove::<Taken>() else {
            return;
        };
        let (Some((rate, reserved)), Some(key)) = (t.tokens, ctx.record.key.clone()) else {
            return;
        };
        let r = &ctx.record;
        // What the answer used; nothing if the gateway answered itself or no upstream answered;
        // the reservation when no usage was reported.
        let used = match &r.tokens {
            Some(rec) => rec.tokens.total(),
            None if r.error.is_some() || r.upstream_head.is_none() => 0,
            None => reserved,
        };
        let delta = used as i64 - reserved as i64;
        if delta == 0 {
            return;
        }
        // In a task: a shared cache is a round trip, and the answer has already gone.
        let (stores, local) = (
            self.stores.clone(),
            self.local[Kind::Tokens as usize].clone(),
        );
        tokio::spawn(async move {
            apply(
                &stores,
                &local,
                Kind::Tokens,
                rate,
                &key.hex,
                Op::Adjust(delta),
            )
            .await;
        });
    }
}
