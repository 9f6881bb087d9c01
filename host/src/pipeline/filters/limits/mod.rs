//! `limits`: request rate limits, token rate limits and in-flight limits (`limits:` in the
//! config; semantics and defaults in `docs/limits.md`, "Edge protection").
//!
//! | hook | does |
//! |---|---|
//! | `on_request` | request limits by `ip` and by `route` (before authentication) |
//! | `on_authenticated` | request limits by `key` and `key-model`, then in-flight limits, then token limits: a reservation (the request's completion budget plus its body size over `bytes_per_token`) taken from each bucket; a request that names no budget is forwarded with the reserved one (`estimate.clamp`) |
//! | `on_response_head` | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest limit, on every answer the limits saw, 429s included |
//! | `on_body_chunk` | `enforce: strict`: a stream whose running count passes its reservation is ended with an SSE `error` event |
//! | `on_done` | reconciles each reservation with the tokens the answer reported; the in-flight slots go with the request's context, exactly once whatever ended it |
//!
//! A refused request is not counted: the buckets it took from are refunded. Buckets are GCRA
//! (`state::Gcra`), in the shared cache when there is one (one limit for the cluster), else in
//! process (bounded by `limits.max_tracked_keys`). In-flight counts are per gateway.
//!
//! What a request took is kept as bit sets over the limits (a request's bucket is found again
//! from its record), so the common case allocates nothing per limit.

use std::collections::HashMap;
mod bucket;
pub(crate) mod in_flight;
mod requests;
mod tokens;

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{Enforce, LimitBy, LimitsConfig};
use crate::error::{GatewayError, Refusal};
use crate::pipeline::{Ctx, Filter, Flow, HookResult, Hooks, Session, Step};
use crate::state::{Gcra, LocalBuckets, Op, Stores};
use crate::upstream::Upstream;
use bucket::{Bucket, Subject};
use in_flight::{InFlightCounts, InFlightLimit, Slots};
use requests::RequestsTaken;
use tokens::{Budget, TokenLimit, TokensTaken, cut_event, with_budget};

/// A request (`kind` = `requests`) or token (`tokens`) rate limit's 429, OpenAI's shape: the
/// request was not counted; `Retry-After` rounds the wait up to whole seconds.
fn rate_limited(kind: &'static str, retry_after_ms: u64, message: String) -> GatewayError {
    Refusal::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        kind,
        "rate_limit_exceeded",
        message,
    )
    .retry_after(retry_after_ms.div_ceil(1000))
    .into()
}

/// Most request (and, separately, token) limits one config may have: what a request took is a
/// bit set of this size.
pub const MAX_LIMITS: usize = 64; // also checked by config validation

/// The tightest limit of one kind, for the headers: remaining units and time until full.
#[derive(Clone, Copy)]
struct Quota {
    limit: usize,
    remaining: u64,
    reset_us: u64,
}

fn tighter(cur: &mut Option<Quota>, new: Quota) {
    if cur.is_none_or(|c| {
        new.remaining < c.remaining || (new.remaining == c.remaining && new.reset_us > c.reset_us)
    }) {
        *cur = Some(new);
    }
}

pub(crate) struct Limits {
    stores: Arc<Stores>,
    requests: Vec<(Bucket, bool)>,
    tokens: Vec<TokenLimit>,
    in_flight: Vec<InFlightLimit>,
    bytes_per_token: u64,
    default_max_tokens: u64,
    /// `estimate.clamp`: forward the reserved budget to requests that name none.
    clamp: bool,
}

impl Limits {
    /// The filter for `c`, or `None` when no limit is configured.
    pub(crate) fn new(c: &LimitsConfig, stores: &Arc<Stores>) -> Option<Self> {
        if c.requests.is_empty() && c.tokens.is_empty() && c.in_flight.is_empty() {
            return None;
        }
        let us = |d: std::time::Duration| d.as_micros() as u64;
        let requests = c
            .requests
            .iter()
            .take(MAX_LIMITS)
            .map(|r| {
                let gcra = Gcra::new(r.rate.count, us(r.rate.period), u64::from(r.burst));
                let b = Bucket::new(
                    stores,
                    "req",
                    &r.name,
                    r.by,
                    gcra,
                    &r.scope,
                    c.max_tracked_keys,
                );
                (b, r.nodelay)
            })
            .collect();
        let tokens = c
            .tokens
            .iter()
            .take(MAX_LIMITS)
            .map(|t| TokenLimit {
                // An idle bucket holds exactly the limit.
                bucket: Bucket::new(
                    stores,
                    "tok",
                    &t.name,
                    t.by,
                    Gcra::new(t.tokens.count, us(t.tokens.period), t.tokens.count - 1),
                    &t.scope,
                    c.max_tracked_keys,
                ),
                strict: t.enforce == Enforce::Strict,
            })
            .collect();
        let in_flight = c
            .in_flight
            .iter()
            .map(|f| InFlightLimit {
                label: format!("limits:{}", f.name).into(),
                max: f.max,
                by: f.by,
                keys: f.scope.keys.clone(),
                routes: f.scope.routes.clone(),
                counts: stores.kept(&format!("inflight:{}", f.name), InFlightCounts::default),
            })
            .collect();
        Some(Self {
            stores: stores.clone(),
            requests,
            tokens,
            in_flight,
            bytes_per_token: u64::from(c.estimate.bytes_per_token.max(1)),
            default_max_tokens: u64::from(c.estimate.default_max_tokens),
            clamp: c.estimate.clamp,
        })
    }

    fn headers(&self, h: &mut http::HeaderMap, quota: Quota, tokens: bool) {
        let (capacity, names) = if tokens {
            (
                &self.tokens[quota.limit].bucket.capacity,
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            )
        } else {
            (
                &self.requests[quota.limit].0.capacity,
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            )
        };
        h.insert(names[0], capacity.clone());
        h.insert(names[1], HeaderValue::from(quota.remaining));
        let mut reset = smallvec::SmallVec::<[u8; 24]>::new();
        write_reset(&mut reset, quota.reset_us);
        if let Ok(v) = HeaderValue::from_bytes(&reset) {
            h.insert(names[2], v);
        }
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `1.5s`, `6m0s`.
fn write_reset(out: &mut impl std::io::Write, us: u64) {
    let ms = us.div_ceil(1000);
    let _ = if ms < 1000 {
        write!(out, "{ms}ms")
    } else if ms < 60_000 {
        let (s, mut frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            write!(out, "{s}s")
        } else {
            // Milliseconds as a decimal fraction without trailing zeros: 500 → .5, 50 → .05.
            let mut width = 3;
            while frac % 10 == 0 {
                frac /= 10;
                width -= 1;
            }
            write!(out, "{s}.{frac:0width$}s")
        }
    } else {
        let s = ms / 1000;
        if s < 3600 {
            write!(out, "{}m{}s", s / 60, s % 60)
        } else {
            write!(out, "{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
        }
    };
}

impl Filter for Limits {
    fn name(&self) -> &str {
        "limits"
    }

    fn hooks(&self) -> Hooks {
        let mut h = Hooks::REQUEST | Hooks::AUTHENTICATED | Hooks::RESPONSE_HEAD;
        if self.clamp && !self.tokens.is_empty() {
            // The reserved completion budget goes into the body.
            h = h | Hooks::REQUEST_BODY;
        }
        if !self.tokens.is_empty() || !self.in_flight.is_empty() {
            // Reconciliation; and an in-flight slot is held until the answer has been relayed.
            h = h | Hooks::DONE;
        }
        if self.tokens.iter().any(|t| t.strict) {
            h = h | Hooks::BODY_CHUNK;
        }
        h
    }

    fn on_request<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        Step::later(async move {
            self.take_requests(s, true).await?;
            Ok(Flow::Continue)
        })
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        Step::later(async move {
            self.take_requests(s, false).await?;
            let result = match self.take_slots(s) {
                Ok(()) => self.reserve_tokens(s).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // Refused: nothing of it is counted.
                s.ctx.ext.remove::<Slots>();
                if let Some(t) = s.ctx.ext.get_mut::<RequestsTaken>() {
                    let mask = std::mem::take(&mut t.mask);
                    self.refund_requests(&s.ctx.record, mask).await;
                }
                return Err(e);
            }
            Ok(Flow::Continue)
        })
    }

    fn on_request_body<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        body: &'a mut Bytes,
    ) -> HookResult<'a, Flow> {
        if let Some(budget) = s.ctx.ext.remove::<Budget>()
            && let Some(with) = with_budget(body, budget)
        {
            *body = with;
        }
        Step::Now(Ok(Flow::Continue))
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        _from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        if let Some(q) = s.ctx.ext.get::<RequestsTaken>().and_then(|t| t.quota) {
            self.headers(&mut head.headers, q, false);
        }
        if let Some(q) = s.ctx.ext.get::<TokensTaken>().and_then(|t| t.quota) {
            self.headers(&mut head.headers, q, true);
        }
        Step::Now(Ok(()))
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, _chunk: &mut Bytes, _end: bool) {
        let Some(t) = ctx.ext.get::<TokensTaken>().copied() else {
            return;
        };
        if !t.strict || t.mask == 0 || t.cut_at.is_some() {
            return;
        }
        // What the upstream reported, or (OpenAI streams report at their end) the prompt
        // estimate plus one token per event so far.
        let reported = ctx.tokens_seen().map_or(0, |t| t.total());
        let running = reported.max(t.prompt_estimate + ctx.stream_events());
        if running > t.reserved {
            ctx.ext.insert(TokensTaken {
                cut_at: Some(running),
                ..t
            });
            ctx.end_stream(cut_event(t.reserved), "token_limit_exceeded");
        }
    }

    fn on_done(&self, ctx: &mut Ctx) {
        // The in-flight slots go now, whatever ended the request.
        ctx.ext.remove::<Slots>();
        let Some(t) = ctx.ext.remove::<TokensTaken>() else {
            return;
        };
        if t.mask == 0 {
            return;
        }
        let r = &ctx.record;
        let used = match (&r.tokens, t.cut_at) {
            (_, Some(at)) => at,
            (Some(rec), None) => rec.tokens.total(),
            // No usage reported: nothing was used if the gateway answered itself (or the
            // upstream failed before answering); otherwise the reservation stands.
            (None, None) if r.error.is_some() || r.upstream_head.is_none() => 0,
            (None, None) => t.reserved,
        };
        let delta = used as i64 - t.reserved as i64;
        if delta == 0 {
            return;
        }
        // The buckets are found again from the record, in a task (a shared cache is a round
        // trip; the answer has already gone).
        let mut subjects: Vec<(usize, Subject)> = Vec::new();
        for (i, limit) in self.tokens.iter().enumerate() {
            let mut subject = Subject::new();
            if t.mask & (1 << i) != 0 && limit.bucket.subject(r, &mut subject) {
                subjects.push((i, subject));
            }
        }
        let stores = self.stores.clone();
        let buckets: Vec<(String, Gcra, Arc<LocalBuckets>, Subject)> = subjects
            .into_iter()
            .map(|(i, subject)| {
                let b = &self.tokens[i].bucket;
                (b.prefix.clone(), b.gcra, b.local.clone(), subject)
            })
            .collect();
        tokio::spawn(async move {
            for (prefix, gcra, local, subject) in buckets {
                let text = std::str::from_utf8(&subject).unwrap_or_default();
                stores
                    .rate(&prefix, text, &gcra, Op::Adjust(delta), &local)
                    .await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::write_reset;

    fn reset_text(us: u64) -> String {
        let mut v = Vec::new();
        write_reset(&mut v, us);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn reset_durations_read_like_openais() {
        assert_eq!(reset_text(20_000), "20ms");
        assert_eq!(reset_text(1_500_000), "1.5s");
        assert_eq!(reset_text(1_050_000), "1.05s");
        assert_eq!(reset_text(2_000_000), "2s");
        assert_eq!(reset_text(360_000_000), "6m0s");
        assert_eq!(reset_text(3_723_000_000), "1h2m3s");
        assert_eq!(reset_text(0), "0ms");
    }
}
