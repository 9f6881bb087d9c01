//! `limits`: request rate limits, token rate limits and in-flight limits (`limits:` in the
//! config; semantics and defaults in `docs/limits.md`, "Edge protection").
//!
//! | hook | does |
//! |---|---|
//! | `on_request` | request limits by `ip` and by `route` (before authentication) |
//! | `on_authenticated` | request limits by `key` and `key-model`, then in-flight limits, then token limits: a reservation (the request's completion budget plus its body size over `bytes_per_token`) taken from each bucket |
//! | `on_response_head` | `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` of the tightest limit, on every answer the limits saw, 429s included |
//! | `on_body_chunk` | `enforce: strict`: a stream whose running count passes its reservation is ended with an SSE `error` event |
//! | `on_done` | reconciles each reservation with the tokens the answer reported; the in-flight slot is released when the request's context goes, exactly once whatever ended it |
//!
//! A refused request is not counted: the buckets it took from are refunded. Buckets are GCRA
//! (`state::Gcra`), in the shared cache when there is one (one limit for the cluster), else in
//! process (bounded by `limits.max_tracked_keys`). In-flight counts are per gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderValue;

use crate::config::{Enforce, LimitBy, LimitScope, LimitsConfig};
use crate::error::{ErrorKind, GatewayError};
use crate::pipeline::{Ctx, Filter, Hooks, Session};
use crate::state::{Gcra, LocalBuckets, Op, Stores};
use crate::upstream::Upstream;

/// One bucketed limit (a request or a token limit).
struct Bucket {
    name: Arc<str>,
    by: LimitBy,
    gcra: Gcra,
    local: Arc<LocalBuckets>,
    /// Cache key prefix: the limit's name and parameters.
    prefix: String,
    routes: Vec<String>,
    keys: Vec<String>,
}

impl Bucket {
    fn new(
        stores: &Stores,
        kind: &str,
        name: &str,
        by: LimitBy,
        gcra: Gcra,
        scope: &LimitScope,
        max_keys: usize,
    ) -> Self {
        let prefix = format!("rl:{kind}:{name}:{}:{}:", gcra.t_us, gcra.tau_us);
        Self {
            name: name.into(),
            by,
            gcra,
            local: stores.kept(&format!("{prefix}{max_keys}"), || {
                LocalBuckets::new(max_keys)
            }),
            prefix,
            routes: scope.routes.clone(),
            keys: scope.keys.clone(),
        }
    }

    /// The bucket key of this request, if the limit applies to it.
    fn subject(&self, s: &Session<'_>) -> Option<String> {
        let route = s.route?;
        if !self.routes.is_empty() && !self.routes.iter().any(|r| **r == *route.prefix) {
            return None;
        }
        if !self.keys.is_empty()
            && !s
                .key
                .as_ref()
                .is_some_and(|k| self.keys.iter().any(|n| **n == *k.name))
        {
            return None;
        }
        let mut key = self.prefix.clone();
        match self.by {
            LimitBy::Ip => {
                use std::fmt::Write;
                let _ = write!(key, "{}", crate::config::canonical_ip(s.client_ip));
            }
            LimitBy::Route => key.push_str(&route.prefix),
            LimitBy::Key => key.push_str(&s.key.as_ref()?.hex),
            LimitBy::KeyModel => {
                key.push_str(&s.key.as_ref()?.hex);
                key.push('\u{0}');
                key.push_str(s.model().unwrap_or(""));
            }
        }
        Some(key)
    }

    /// Before authentication: limits by IP and route that do not depend on the key.
    fn early(&self) -> bool {
        matches!(self.by, LimitBy::Ip | LimitBy::Route) && self.keys.is_empty()
    }
}

struct RequestLimit {
    bucket: Bucket,
    nodelay: bool,
}

struct TokenLimit {
    bucket: Bucket,
    strict: bool,
}

/// In-flight counts of one limit on this gateway.
#[derive(Default)]
struct InFlightCounts(Mutex<HashMap<String, u32>>);

struct InFlightLimit {
    max: u32,
    by: LimitBy,
    keys: Vec<String>,
    routes: Vec<String>,
    counts: Arc<InFlightCounts>,
}

/// Holds one in-flight slot; dropping it (with the request's context) releases it.
struct Slot {
    counts: Arc<InFlightCounts>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// [`Taken`] as a request extension (extensions must be `Clone`; the slots must not be).
#[derive(Clone, Default)]
struct TakenCell(Arc<Mutex<Taken>>);

/// The filter's record of `ctx`'s request, made on first use.
fn taken(ctx: &mut Ctx) -> std::sync::MutexGuard<'_, Taken> {
    ctx.ext
        .get_or_insert_default::<TakenCell>()
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// What the filter keeps on a request.
#[derive(Default)]
struct Taken {
    /// Request buckets taken from, refunded if a later limit refuses.
    requests: Vec<(usize, String)>,
    /// Token buckets reserved from, with the reservation.
    tokens: Vec<(usize, String)>,
    reserved: u64,
    /// The part of `reserved` that is the prompt estimate.
    prompt_estimate: u64,
    strict: bool,
    slots: Vec<Slot>,
    /// The tightest limit of each kind, for the headers: (capacity, remaining, reset µs).
    request_quota: Option<(u64, u64, u64)>,
    token_quota: Option<(u64, u64, u64)>,
    /// The stream was ended at this count.
    cut_at: Option<u64>,
}

pub(crate) struct Limits {
    stores: Arc<Stores>,
    requests: Vec<RequestLimit>,
    tokens: Vec<TokenLimit>,
    in_flight: Vec<InFlightLimit>,
    bytes_per_token: u64,
    default_max_tokens: u64,
}

fn tighter(cur: &mut Option<(u64, u64, u64)>, new: (u64, u64, u64)) {
    if cur.is_none_or(|c| new.1 < c.1 || (new.1 == c.1 && new.2 > c.2)) {
        *cur = Some(new);
    }
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
            .map(|r| RequestLimit {
                bucket: Bucket::new(
                    stores,
                    "req",
                    &r.name,
                    r.by,
                    Gcra::new(r.rate.count, us(r.rate.period), u64::from(r.burst)),
                    &r.scope,
                    c.max_tracked_keys,
                ),
                nodelay: r.nodelay,
            })
            .collect();
        let tokens = c
            .tokens
            .iter()
            .map(|t| TokenLimit {
                bucket: Bucket::new(
                    stores,
                    "tok",
                    &t.name,
                    t.by,
                    // An idle bucket holds exactly the limit.
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
        })
    }

    /// Takes one request from each applicable limit in `early` (or the others); on a refusal
    /// every bucket this request took from is refunded.
    async fn take_requests(&self, s: &mut Session<'_>, early: bool) -> Result<(), GatewayError> {
        let mut wait_us = 0;
        for (i, limit) in self.requests.iter().enumerate() {
            let b = &limit.bucket;
            if b.early() != early {
                continue;
            }
            let Some(key) = b.subject(s) else { continue };
            let d = self.stores.rate(&key, &b.gcra, Op::Take(1), &b.local).await;
            let capacity = b.gcra.capacity();
            if !d.allowed {
                let refund = {
                    let mut t = taken(&mut s.ctx);
                    t.request_quota = Some((capacity, 0, d.ahead_us));
                    std::mem::take(&mut t.requests)
                };
                self.refund_requests(refund).await;
                return Err(ErrorKind::RateLimited {
                    tokens: false,
                    retry_after_ms: d.wait_us.div_ceil(1000),
                    message: format!(
                        "rate limit {:?} reached for this {}; retry after {:.1} s",
                        b.name,
                        b.by.as_str(),
                        d.wait_us as f64 / 1e6
                    ),
                }
                .into());
            }
            let mut t = taken(&mut s.ctx);
            tighter(
                &mut t.request_quota,
                (capacity, b.gcra.remaining(d.ahead_us), d.ahead_us),
            );
            t.requests.push((i, key));
            if !limit.nodelay {
                wait_us = wait_us.max(d.wait_us);
            }
        }
        if wait_us > 0 {
            // nginx's delay mode: the burst is served at the rate.
            tokio::time::sleep(std::time::Duration::from_micros(wait_us)).await;
        }
        Ok(())
    }

    async fn refund_requests(&self, taken: Vec<(usize, String)>) {
        for (i, key) in taken {
            let b = &self.requests[i].bucket;
            self.stores
                .rate(&key, &b.gcra, Op::Adjust(-1), &b.local)
                .await;
        }
    }

    fn take_slots(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        let mut slots = Vec::new();
        for limit in &self.in_flight {
            let (Some(route), Some(k)) = (s.route, s.key.as_ref()) else {
                continue;
            };
            if (!limit.routes.is_empty() && !limit.routes.iter().any(|r| **r == *route.prefix))
                || (!limit.keys.is_empty() && !limit.keys.iter().any(|n| **n == *k.name))
            {
                continue;
            }
            let key = match limit.by {
                LimitBy::KeyModel => format!("{}\u{0}{}", k.hex, s.model().unwrap_or("")),
                _ => k.hex.to_string(),
            };
            let mut map = limit.counts.0.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key.clone()).or_insert(0);
            if *n >= limit.max {
                drop(map);
                // `slots` taken so far are released as they drop.
                return Err(ErrorKind::TooManyInFlight { limit: limit.max }.into());
            }
            *n += 1;
            drop(map);
            slots.push(Slot {
                counts: limit.counts.clone(),
                key,
            });
        }
        taken(&mut s.ctx).slots = slots;
        Ok(())
    }

    async fn reserve_tokens(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        let completion = s
            .probe
            .max_completion_tokens
            .or(s.probe.max_tokens)
            .unwrap_or(self.default_max_tokens);
        let prompt = s.ctx.record.bytes_in.div_ceil(self.bytes_per_token);
        let want = completion.saturating_add(prompt);
        let mut reserved: Vec<(usize, String)> = Vec::new();
        let mut quota = None;
        let mut strict = false;
        for (i, limit) in self.tokens.iter().enumerate() {
            let b = &limit.bucket;
            let Some(key) = b.subject(s) else { continue };
            let capacity = b.gcra.capacity();
            let d = self
                .stores
                .rate(&key, &b.gcra, Op::Take(want), &b.local)
                .await;
            if !d.allowed {
                for (j, k) in &reserved {
                    let b = &self.tokens[*j].bucket;
                    self.stores
                        .rate(k, &b.gcra, Op::Adjust(-(want as i64)), &b.local)
                        .await;
                }
                taken(&mut s.ctx).token_quota =
                    Some((capacity, b.gcra.remaining(d.ahead_us), d.ahead_us));
                let message = if want > capacity {
                    format!(
                        "this request reserves {want} tokens (max_tokens plus the prompt estimate), more than the token limit {:?} of {capacity} allows at all",
                        b.name
                    )
                } else {
                    format!(
                        "token limit {:?} reached: this request reserves {want} tokens; retry after {:.1} s",
                        b.name,
                        d.wait_us as f64 / 1e6
                    )
                };
                return Err(ErrorKind::RateLimited {
                    tokens: true,
                    retry_after_ms: if want > capacity {
                        60_000
                    } else {
                        d.wait_us.div_ceil(1000)
                    },
                    message,
                }
                .into());
            }
            tighter(
                &mut quota,
                (capacity, b.gcra.remaining(d.ahead_us), d.ahead_us),
            );
            strict |= limit.strict;
            reserved.push((i, key));
        }
        if !reserved.is_empty() {
            let mut t = taken(&mut s.ctx);
            t.tokens = reserved;
            t.reserved = want;
            t.prompt_estimate = prompt;
            t.strict = strict;
            t.token_quota = quota;
        }
        Ok(())
    }
}

/// A duration the way OpenAI's `x-ratelimit-reset-*` headers write it: `20ms`, `1.5s`, `6m0s`.
fn reset_text(us: u64) -> String {
    let ms = us.div_ceil(1000);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms as f64 / 1000.0;
    if secs < 60.0 {
        let t = format!("{secs:.3}");
        return format!("{}s", t.trim_end_matches('0').trim_end_matches('.'));
    }
    let s = ms / 1000;
    if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, s % 3600 / 60, s % 60)
    }
}

/// The final event of a stream a strict token limit ended: OpenAI's error shape, which OpenAI
/// and Anthropic clients both surface.
fn cut_event(reserved: u64) -> Bytes {
    let body = crate::error::error_body(
        &format!(
            "the answer passed this request's token reservation of {reserved} (a strict token limit); the stream was ended"
        ),
        "tokens",
        "token_limit_exceeded",
    );
    Bytes::from(format!("event: error\ndata: {body}\n\n"))
}

#[async_trait::async_trait]
impl Filter for Limits {
    fn name(&self) -> &str {
        "limits"
    }

    fn hooks(&self) -> Hooks {
        let mut h = Hooks::REQUEST | Hooks::AUTHENTICATED | Hooks::RESPONSE_HEAD;
        if !self.tokens.is_empty() || !self.in_flight.is_empty() {
            // Reconciliation; and an in-flight slot is held until the answer has been relayed.
            h = h | Hooks::DONE;
        }
        if self.tokens.iter().any(|t| t.strict) {
            h = h | Hooks::BODY_CHUNK;
        }
        h
    }

    async fn on_request(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        self.take_requests(s, true).await
    }

    async fn on_authenticated(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        self.take_requests(s, false).await?;
        let result = match self.take_slots(s) {
            Ok(()) => self.reserve_tokens(s).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // Refused: nothing of it is counted.
            let refund = {
                let mut t = taken(&mut s.ctx);
                t.slots.clear();
                std::mem::take(&mut t.requests)
            };
            self.refund_requests(refund).await;
            return Err(e);
        }
        Ok(())
    }

    async fn on_response_head(
        &self,
        s: &mut Session<'_>,
        head: &mut http::response::Parts,
        _from: Option<&Upstream>,
    ) -> Result<(), GatewayError> {
        if s.ctx.ext.get::<TakenCell>().is_none() {
            return Ok(());
        }
        let quotas = {
            let t = taken(&mut s.ctx);
            [t.request_quota, t.token_quota]
        };
        for (quota, names) in [
            (
                quotas[0],
                [
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                    "x-ratelimit-reset-requests",
                ],
            ),
            (
                quotas[1],
                [
                    "x-ratelimit-limit-tokens",
                    "x-ratelimit-remaining-tokens",
                    "x-ratelimit-reset-tokens",
                ],
            ),
        ] {
            let Some((limit, remaining, reset)) = quota else {
                continue;
            };
            let h = &mut head.headers;
            h.insert(names[0], HeaderValue::from(limit));
            h.insert(names[1], HeaderValue::from(remaining));
            if let Ok(v) = HeaderValue::from_str(&reset_text(reset)) {
                h.insert(names[2], v);
            }
        }
        Ok(())
    }

    fn on_body_chunk(&self, ctx: &mut Ctx, _chunk: &Bytes) {
        let Some(cell) = ctx.ext.get::<TakenCell>().cloned() else {
            return;
        };
        let mut t = cell.0.lock().unwrap_or_else(|p| p.into_inner());
        if !t.strict || t.cut_at.is_some() {
            return;
        }
        // What the upstream reported, or (OpenAI streams report at their end) the prompt
        // estimate plus one token per event so far.
        let reported = ctx.tokens_seen().map_or(0, |t| t.total());
        let running = reported.max(t.prompt_estimate + ctx.stream_events());
        if running > t.reserved {
            t.cut_at = Some(running);
            ctx.end_stream(cut_event(t.reserved), "token_limit_exceeded");
        }
    }

    fn on_done(&self, ctx: &mut Ctx) {
        let Some(cell) = ctx.ext.remove::<TakenCell>() else {
            return;
        };
        let mut t = std::mem::take(&mut *cell.0.lock().unwrap_or_else(|p| p.into_inner()));
        // The in-flight slots go now, whatever ended the request.
        t.slots.clear();
        if t.tokens.is_empty() {
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
        let stores = self.stores.clone();
        let buckets: Vec<(Gcra, Arc<LocalBuckets>, String)> = t
            .tokens
            .into_iter()
            .map(|(i, key)| {
                let b = &self.tokens[i].bucket;
                (b.gcra, b.local.clone(), key)
            })
            .collect();
        tokio::spawn(async move {
            for (gcra, local, key) in buckets {
                stores.rate(&key, &gcra, Op::Adjust(delta), &local).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::reset_text;

    #[test]
    fn reset_durations_read_like_openais() {
        assert_eq!(reset_text(20_000), "20ms");
        assert_eq!(reset_text(1_500_000), "1.5s");
        assert_eq!(reset_text(2_000_000), "2s");
        assert_eq!(reset_text(360_000_000), "6m0s");
        assert_eq!(reset_text(3_723_000_000), "1h2m3s");
        assert_eq!(reset_text(0), "0ms");
    }
}
