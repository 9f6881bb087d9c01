//! An upstream account's capacity: its declared allowance (`upstreams[].limits`) and what its
//! answers' `x-ratelimit-remaining-*` headers last said.
//!
//! - `rpm`, `tpm` and `monthly_tokens` are GCRA buckets counted through the same limiter as the
//!   client limits (`Stores::rate`: one count for the cluster in the shared cache, else per
//!   gateway). `monthly_budget` is money per calendar month (UTC), a counter in the shared cache
//!   like a key's money budget (`Stores::budget_kv`), seeded from the usage table the first
//!   time a month is counted on a cache, so a restart forgets nothing that was flushed.
//! - Every attempt takes one request, the request's estimated tokens and what they may cost
//!   before it is sent ([`Capacity::take`]); an attempt that does not fit is not sent (the next
//!   candidate is tried; with none left the client gets 429 `upstream_quota_exhausted`), so the
//!   provider's own 429 never comes. When the answer's tokens and cost are known, the
//!   reservation is corrected ([`Capacity::settle`]); an attempt that was answered with an
//!   error gives back what it took.
//! - Routers that import `capacity` see [`Capacity::headroom`]: the smaller of what the buckets
//!   leave and what the provider's headers said, while their reset time has not passed (each
//!   request sent since counted off).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::HeaderMap;

use crate::config::{Period, UpstreamLimits, period};
use crate::state::{Gcra, LocalBuckets, Op, Stores};

mod provider;

/// One declared limit's bucket.
struct Limit {
    gcra: Gcra,
    /// What was declared, per window.
    count: u64,
    /// Shared-cache key (the subject is empty: one bucket per upstream and limit).
    prefix: String,
    local: Arc<LocalBuckets>,
}

impl Limit {
    fn new(stores: &Stores, upstream: &str, kind: &str, count: u64, period_us: u64) -> Self {
        let gcra = Gcra::new(count, period_us, count.saturating_sub(1));
        let prefix = format!("up:{kind}:{upstream}:{}:{}", gcra.t_us, gcra.tau_us);
        Self {
            local: stores.kept(&prefix, || LocalBuckets::new(1)),
            prefix,
            gcra,
            count,
        }
    }

    async fn apply(&self, stores: &Stores, op: Op) -> crate::state::Decision {
        stores
            .rate(&self.prefix, "", &self.gcra, op, &self.local)
            .await
    }

    /// Units left, without taking any.
    async fn left(&self, stores: &Stores) -> u64 {
        let d = self.apply(stores, Op::Take(0)).await;
        self.gcra.remaining(d.ahead_us)
    }
}

const MINUTE_US: u64 = 60_000_000;
const MONTH_US: u64 = 30 * 24 * 3600 * 1_000_000;

/// What an upstream can take now; `None` where nothing is known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
    pub monthly_tokens: Option<u64>,
}

/// A money allowance per calendar month (`monthly_budget`).
struct MonthBudget {
    upstream: String,
    /// Billionths of the currency.
    limit: u64,
}

/// What an attempt asks of its upstream's allowance.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    /// The prompt estimate plus the completion budget.
    pub tokens: u64,
    /// What those tokens may cost at the attempt's model's price (`None`: it has no price).
    pub cost_nanos: Option<u64>,
}

/// What an attempt took; [`Capacity::settle`] corrects it when the request ends.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    pub tokens: u64,
    /// The month's counter and the billionths reserved in it.
    money: Option<(String, u64)>,
}

impl Taken {
    /// The money reserved (billionths of the currency).
    pub fn cost_nanos(&self) -> u64 {
        self.money.as_ref().map_or(0, |m| m.1)
    }
}

/// What is left of each declared allowance, for operators (`None`: not declared or not known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowance {
    /// `(left, declared)`: `rpm`, `tpm` and `monthly_tokens` as their buckets stand.
    pub rpm: Option<(u64, u64)>,
    pub tpm: Option<(u64, u64)>,
    pub monthly_tokens: Option<(u64, u64)>,
    /// `(spent, declared)` this calendar month, in billionths of the currency, and when the
    /// month ends (Unix ms).
    pub monthly_budget: Option<(u64, u64, u64)>,
    /// What the provider's headers last said is left, while their reset time has not passed.
    pub provider_requests: Option<u64>,
    pub provider_tokens: Option<u64>,
}

/// Why an attempt was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The allowance cannot take it now; it can in this many milliseconds.
    Full { wait_ms: u64 },
    /// The upstream has a money allowance and the attempt's model no price: what it costs
    /// cannot be counted, so it is not sent.
    Unpriced,
}

/// One upstream's capacity (see the module documentation).
pub struct Capacity {
    stores: Arc<Stores>,
    /// A loaded router reads headroom (`capacity` import): the providers' headers are worth
    /// reading even without a declared allowance. Set when a runtime is built.
    watched: std::sync::atomic::AtomicBool,
    rpm: Option<Limit>,
    tpm: Option<Limit>,
    monthly: Option<Limit>,
    budget: Option<MonthBudget>,
    /// What the provider's headers last said.
    provider: provider::Figures,
}

fn min_known(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

impl Capacity {
    pub fn new(stores: &Arc<Stores>, upstream: &str, limits: Option<UpstreamLimits>) -> Self {
        let l = limits.unwrap_or(UpstreamLimits {
            rpm: None,
            tpm: None,
            monthly_tokens: None,
            monthly_budget: None,
        });
        let limit = |kind, n: Option<std::num::NonZeroU64>, period| {
            n.map(|n| Limit::new(stores, upstream, kind, n.get(), period))
        };
        Self {
            stores: stores.clone(),
            watched: std::sync::atomic::AtomicBool::new(false),
            rpm: limit("rpm", l.rpm, MINUTE_US),
            tpm: limit("tpm", l.tpm, MINUTE_US),
            monthly: limit("month", l.monthly_tokens, MONTH_US),
            budget: l.monthly_budget_nanos().map(|limit| MonthBudget {
                upstream: upstream.to_owned(),
                limit,
            }),
            provider: provider::Figures::default(),
        }
    }

    /// Whether any allowance is declared (else nothing is counted).
    pub fn declared(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.monthly.is_some() || self.budget.is_some()
    }

    /// Whether a money allowance is declared (an attempt then needs its cost).
    pub fn counts_money(&self) -> bool {
        self.budget.is_some()
    }

    /// Whether a loaded router reads headroom (see [`Capacity::observe`]).
    pub fn set_watched(&self, watched: bool) {
        self.watched.store(watched, Ordering::Relaxed);
    }

    /// What the upstream can take now.
    pub async fn headroom(&self) -> Headroom {
        let stores = &*self.stores;
        let now = crate::state::unix_ms();
        let left = async |l: &Option<Limit>| match l {
            Some(l) => Some(l.left(stores).await),
            None => None,
        };
        Headroom {
            requests: min_known(left(&self.rpm).await, self.provider.requests.get(now)),
            tokens: min_known(left(&self.tpm).await, self.provider.tokens.get(now)),
            monthly_tokens: left(&self.monthly).await,
        }
    }

    /// Takes one request, the demand's tokens and its cost from the declared allowance for an
    /// attempt; refused (and then nothing is taken) when it does not fit.
    pub async fn take(&self, demand: Demand) -> Result<Taken, Refused> {
        let stores = &*self.stores;
        let tokens = demand.tokens;
        let cost = match (&self.budget, demand.cost_nanos) {
            (Some(_), None) => return Err(Refused::Unpriced),
            (_, cost) => cost.unwrap_or(0),
        };
        let mut taken: Vec<(&Limit, u64)> = Vec::with_capacity(3);
        let steps = [(&self.rpm, 1), (&self.tpm, tokens), (&self.monthly, tokens)];
        let mut refused = None;
        for (limit, n) in steps {
            let Some(limit) = limit else { continue };
            let d = limit.apply(stores, Op::Take(n)).await;
            if !d.allowed {
                refused = Some(d.wait_us.div_ceil(1000).max(1));
                break;
            }
            taken.push((limit, n));
        }
        let money = match (&self.budget, refused) {
            (Some(b), None) => match self.take_money(b, cost).await {
                Ok(counter) => Some((counter, cost)),
                Err(wait_ms) => {
                    refused = Some(wait_ms);
                    None
                }
            },
            _ => None,
        };
        if let Some(wait_ms) = refused {
            for (l, n) in taken {
                l.apply(stores, Op::Adjust(-(n as i64))).await;
            }
            return Err(Refused::Full { wait_ms });
        }
        self.provider.requests.spend(1);
        self.provider.tokens.spend(tokens);
        Ok(Taken { tokens, money })
    }

    /// This month's counter (UTC), its time to live and when the month ends; and what the
    /// usage table says the upstream spent in it, which seeds the counter the first time this
    /// cache counts the month.
    fn month<'a>(
        &'a self,
        b: &'a MonthBudget,
        now: u64,
    ) -> (String, u64, u64, impl Future<Output = u64> + 'a) {
        let (start, end) = period::window(Period::Month, &jiff::tz::TimeZone::UTC, now);
        let counter = format!(
            "upstream\u{0}{}\u{0}month\u{0}nanos\u{0}{start}",
            b.upstream
        );
        let ttl = end.saturating_sub(start) + 86_400_000;
        let history = async move {
            self.stores
                .database()
                .upstream_spend_since(&b.upstream, start)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(upstream = %b.upstream, error = %e,
                        "cannot read an upstream's spend this month; counting from now");
                    0
                })
        };
        (counter, ttl, end, history)
    }

    /// Takes `nanos` from this month's money; the counter's key, or the milliseconds until the
    /// month ends when the allowance cannot take it (then nothing stays taken).
    async fn take_money(&self, b: &MonthBudget, nanos: u64) -> Result<String, u64> {
        let now = crate::state::unix_ms();
        let (counter, ttl, end, history) = self.month(b, now);
        let kv = self.stores.budget_kv();
        if kv
            .reserve_seeded(&counter, nanos, b.limit, ttl, history)
            .await
        {
            Ok(counter)
        } else {
            Err(end.saturating_sub(now).max(1))
        }
    }

    /// What is left of each declared allowance (reading it takes nothing).
    pub async fn allowance(&self) -> Allowance {
        let stores = &*self.stores;
        let left = async |l: &Option<Limit>| match l {
            Some(l) => Some((l.left(stores).await, l.count)),
            None => None,
        };
        let now = crate::state::unix_ms();
        let monthly_budget = match &self.budget {
            Some(b) => {
                let (counter, ttl, end, history) = self.month(b, now);
                let kv = self.stores.budget_kv();
                let spent = kv.add_seeded(&counter, 0, ttl, history).await;
                Some((spent, b.limit, end))
            }
            None => None,
        };
        Allowance {
            rpm: left(&self.rpm).await,
            tpm: left(&self.tpm).await,
            monthly_tokens: left(&self.monthly).await,
            monthly_budget,
            provider_requests: self.provider.requests.get(now),
            provider_tokens: self.provider.tokens.get(now),
        }
    }

    /// Corrects what an attempt took: by `tokens` (used minus reserved; negative gives back)
    /// and, for its money, to `cost_nanos` (`None`: what it reserved stands).
    pub async fn settle(&self, taken: &Taken, tokens: i64, cost_nanos: Option<u64>) {
        let stores = &*self.stores;
        if tokens != 0 {
            for limit in [&self.tpm, &self.monthly].into_iter().flatten() {
                limit.apply(stores, Op::Adjust(tokens)).await;
            }
        }
        if let (Some((counter, reserved)), Some(used)) = (&taken.money, cost_nanos)
            && used != *reserved
        {
            let delta = used as i64 - *reserved as i64;
            stores.budget_kv().incr(counter, delta, None).await;
        }
    }

    /// Reads a provider's `x-ratelimit-remaining-{requests,tokens}` (and their
    /// `x-ratelimit-reset-*` times) from an answer's head.
    /// Only when something reads the figures (a declared allowance, or a router that imports
    /// `capacity`): the lookups cost about 1,100 instructions an answer otherwise spent for
    /// nothing (`bench/instructions.sh`).
    pub fn observe(&self, headers: &HeaderMap) {
        if !self.declared() && !self.watched.load(Ordering::Relaxed) {
            return;
        }
        self.provider.read(headers);
    }
}
