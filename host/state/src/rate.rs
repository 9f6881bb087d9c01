//! Rate limiting state: the generic cell rate algorithm (GCRA), kept per key in process (a
//! bounded map, least recently used key evicted) or in the shared cache (one Lua script, so a
//! cluster shares one limit).
//!
//! GCRA keeps one number per key, the *theoretical arrival time* (TAT): when the bucket would be
//! empty again. A request of weight `n` moves it `n × T` later (`T` = one unit's share of the
//! period) and is refused when that would put the TAT more than the burst tolerance `τ` (plus one
//! `T`) ahead of now. It gives the same answers as nginx's leaky bucket (`limit_req`):
//!
//! - `rate` r/s, `burst` b: `T = 1/r`, `τ = b·T`; the first b+1 requests of an idle client pass;
//! - the *excess* nginx delays a request by (without `nodelay`) is `max(TAT − now, 0)` before it;
//! - a refused request changes nothing (it is not counted);
//!
//! and it serves token limits unchanged, with `n` = tokens: `limit` per `period` gives
//! `T = period/limit`, `τ = period − T`, so an idle bucket holds exactly `limit`. A reservation is
//! reconciled later with [`Op::Adjust`] (a refund moves the TAT back, never before now).
//!
//! Why not `governor`: its keyed limiter decides the same way but hides the TAT, which nginx's
//! delay mode and the `x-ratelimit-reset-*` headers need, has no weighted refund, and keeps
//! every key until `retain_recent`; the cluster needs the same arithmetic in Lua anyway. The
//! algorithm is the ten lines of [`Gcra::apply`], tested against nginx's own.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Instant;

/// A limit's parameters, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Emission interval: the time one unit (a request, a token) occupies.
    pub t_us: u64,
    /// Burst tolerance: how far ahead of now the TAT may run before the next unit.
    pub tau_us: u64,
}

/// What to do with a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Take `n` units if they fit; a refusal changes nothing.
    Take(u64),
    /// Charge (positive) or refund (negative) units unconditionally: the reconciliation of a
    /// reservation with what was really used.
    Adjust(i64),
}

/// The answer for one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Allowed: how long the request would wait in nginx's delay mode (its excess). Refused:
    /// how long until the same request would fit.
    pub wait_us: u64,
    /// After this decision: how far the TAT is ahead of now (0 = an idle, full bucket).
    pub ahead_us: u64,
}

impl Gcra {
    /// `count` units per `period_us`, `burst` units beyond the first that may come at once.
    pub fn new(count: u64, period_us: u64, burst: u64) -> Self {
        let t_us = (period_us / count.max(1)).max(1);
        Self {
            t_us,
            tau_us: t_us.saturating_mul(burst),
        }
    }

    /// Units the bucket holds when idle.
    pub fn capacity(&self) -> u64 {
        self.tau_us / self.t_us + 1
    }

    /// Units that could still be taken at once, `ahead_us` after a decision.
    pub fn remaining(&self, ahead_us: u64) -> u64 {
        (self.tau_us + self.t_us).saturating_sub(ahead_us) / self.t_us
    }

    /// The new TAT (if it changes) and the decision, for a bucket whose TAT is `tat` (`None`: an
    /// unknown key, idle) at time `now`.
    pub fn apply(&self, tat: Option<u64>, now: u64, op: Op) -> (Option<u64>, Decision) {
        let tat = tat.unwrap_or(now).max(now);
        match op {
            Op::Take(n) => {
                let new = tat.saturating_add(n.saturating_mul(self.t_us));
                let ahead = new - now;
                if ahead > self.tau_us + self.t_us {
                    let decision = Decision {
                        allowed: false,
                        wait_us: ahead - self.tau_us - self.t_us,
                        ahead_us: tat - now,
                    };
                    (None, decision)
                } else {
                    let decision = Decision {
                        allowed: true,
                        wait_us: tat - now,
                        ahead_us: ahead,
                    };
                    (Some(new), decision)
                }
            }
            Op::Adjust(delta) => {
                let shift = delta.unsigned_abs().saturating_mul(self.t_us);
                let new = if delta >= 0 {
                    tat.saturating_add(shift)
                } else {
                    tat.saturating_sub(shift).max(now)
                };
                let decision = Decision {
                    allowed: true,
                    wait_us: 0,
                    ahead_us: new - now,
                };
                (Some(new), decision)
            }
        }
    }
}

/// The Lua form of [`Gcra::apply`] for Redis, on the server's clock (`TIME`), so every gateway
/// of a cluster sees one bucket and one time. `KEYS[1]` the bucket; `ARGV`: t, τ, op (`take` or
/// `adjust`), n. Returns `{allowed, wait, ahead}` in microseconds.
pub(crate) const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new
if ARGV[3] == 'take' then
  new = tat + n * t
  if new - now > tau + t then
    return {0, new - now - tau - t, tat - now}
  end
else
  new = tat + n * t
  if new < now then new = now end
end
local ahead = new - now
if ahead > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new), 'PX', math.floor(ahead / 1000) + 1)
else
  redis.call('DEL', KEYS[1])
end
return {1, tat - now, ahead}";

/// One shard: bucket key → TAT, least recently used first out.
type Shard = lru::LruCache<Box<[u8]>, u64, rustc_hash::FxBuildHasher>;

/// Shards of the in-process buckets: contention is split by key hash.
const SHARDS: usize = 16;

/// In-process buckets for one limit, at most `capacity` keys (split over the shards); the least
/// recently used key is forgotten first, which at worst gives that key a fresh, full bucket.
pub struct LocalBuckets {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::hash::RandomState,
}

/// Microseconds on the process's monotonic clock.
fn local_now() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

impl LocalBuckets {
    pub fn new(capacity: usize) -> Self {
        let per_shard =
            NonZeroUsize::new(capacity.div_ceil(SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(lru::LruCache::with_hasher(per_shard, Default::default())))
                .collect(),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Applies `op` to the bucket of `key`.
    pub fn apply(&self, key: &[u8], gcra: &Gcra, op: Op) -> Decision {
        use std::hash::BuildHasher;
        let shard = self.hasher.hash_one(key) as usize % SHARDS;
        let now = local_now();
        let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
        let tat = map.get(key).copied();
        let (new, decision) = gcra.apply(tat, now, op);
        match new {
            Some(new) if new > now => {
                if let Some(slot) = map.get_mut(key) {
                    *slot = new;
                } else {
                    map.put(key.into(), new);
                }
            }
            // Idle again: nothing worth remembering.
            Some(_) => {
                map.pop(key);
            }
            None => {}
        }
        decision
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// nginx's `ngx_http_limit_req_lookup`, in milliseconds and thousandths of a request, as the
    /// reference: returns (allowed, delay ms).
    struct Nginx {
        rate: u64,
        burst: u64,
        last: Option<(u64, u64)>,
    }

    impl Nginx {
        fn request(&mut self, now_ms: u64) -> (bool, u64) {
            let Some((last, excess)) = self.last else {
                self.last = Some((now_ms, 0));
                return (true, 0);
            };
            let elapsed = now_ms - last;
            let e = (excess as i64 - (self.rate * elapsed) as i64 + 1000).max(0) as u64;
            if e > self.burst * 1000 {
                return (false, 0);
            }
            self.last = Some((now_ms, e));
            (true, e / self.rate)
        }
    }

    #[test]
    fn nginx_limit_req_cases() {
        // 2 r/s, burst 1: two at once pass, the third is refused, one passes again after 1/rate.
        let g = Gcra::new(2, S, 1);
        let mut tat = None;
        let mut take = |now| {
            let (new, d) = g.apply(tat, now, Op::Take(1));
            if new.is_some() {
                tat = new;
            }
            d
        };
        assert!(take(0).allowed);
        let second = take(0);
        assert!(second.allowed);
        assert_eq!(second.wait_us, S / 2, "nginx would delay it by 1/rate");
        let third = take(0);
        assert!(!third.allowed);
        assert_eq!(third.wait_us, S / 2);
        // Refused requests were not counted: after 1/rate exactly one more fits.
        assert!(!take(S / 2 - 1).allowed);
        assert!(take(S / 2).allowed);
        assert!(!take(S / 2).allowed);
    }

    proptest::proptest! {
        /// For any arrival pattern (ms resolution), GCRA and nginx's excess arithmetic accept and
        /// refuse the same requests and agree on the delay.
        #[test]
        fn agrees_with_nginx(
            rate in 1u64..50,
            burst in 0u64..10,
            gaps in proptest::collection::vec(0u64..400, 1..200),
        ) {
            let g = Gcra::new(rate, S, burst);
            let mut ngx = Nginx { rate, burst, last: None };
            let mut tat = None;
            let mut now_ms = 0;
            for gap in gaps {
                now_ms += gap;
                let (new, d) = g.apply(tat, now_ms * 1000, Op::Take(1));
                let (ok, delay_ms) = ngx.request(now_ms);
                proptest::prop_assert_eq!(d.allowed, ok);
                if ok {
                    tat = new;
                    // nginx works in whole ms and thousandths of a request.
                    let ours = d.wait_us / 1000;
                    proptest::prop_assert!(ours.abs_diff(delay_ms) <= 1, "{} vs {}", ours, delay_ms);
                }
            }
        }
    }

    #[test]
    fn token_buckets_hold_the_limit_and_reconcile() {
        // 1000 tokens per minute.
        let g = Gcra::new(1000, 60 * S, 999);
        assert_eq!(g.capacity(), 1000);
        let (tat, d) = g.apply(None, 0, Op::Take(600));
        assert!(d.allowed);
        assert_eq!(g.remaining(d.ahead_us), 400);
        let (_, d) = g.apply(tat, 0, Op::Take(401));
        assert!(!d.allowed, "only 400 are left");
        // The request used 100 of its 600: 500 come back.
        let (tat, d) = g.apply(tat, 0, Op::Adjust(-500));
        assert_eq!(g.remaining(d.ahead_us), 900);
        // A refund never fills the bucket beyond its capacity.
        let (_, d) = g.apply(tat, 0, Op::Adjust(-5000));
        assert_eq!((d.ahead_us, g.remaining(d.ahead_us)), (0, 1000));
        // An overrun is charged: the bucket goes into debt and refuses until it is repaid.
        let (tat, _) = g.apply(None, 0, Op::Take(1000));
        let (tat, _) = g.apply(tat, 0, Op::Adjust(200));
        let (_, d) = g.apply(tat, 12 * S, Op::Take(1));
        assert!(!d.allowed, "200 tokens of debt take 12 s to repay");
        let (_, d) = g.apply(tat, 12 * S + 60_000, Op::Take(1));
        assert!(d.allowed);
    }

    #[test]
    fn local_buckets_are_bounded_and_forget_the_oldest() {
        let b = LocalBuckets::new(SHARDS * 2);
        let g = Gcra::new(1, 3600 * S, 0);
        for i in 0..1000u32 {
            assert!(b.apply(&i.to_be_bytes(), &g, Op::Take(1)).allowed);
        }
        assert!(b.len() <= SHARDS * 2, "{} keys kept", b.len());
        // The most recent key is still limited.
        assert!(!b.apply(&999u32.to_be_bytes(), &g, Op::Take(1)).allowed);
    }
}
