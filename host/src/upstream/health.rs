//! An upstream's live state, read by routing and policies and shown to operators: passive health
//! (nginx's `max_fails` / `fail_timeout`), the latency and error averages, cooldowns, and the
//! recent errors. Written from the forward step's outcome of each attempt.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{RECENT_ERRORS, Upstream};
use crate::state::unix_ms;

/// Weight of a new sample in the moving averages: about the last ten requests count.
const EWMA_ALPHA: f64 = 0.2;

impl Upstream {
    fn observe(&self, failed: bool) {
        let old = f32::from_bits(self.error_rate.load(Ordering::Relaxed)) as f64;
        let sample = if failed { 1.0 } else { 0.0 };
        let new = if old.is_nan() {
            sample
        } else {
            old + EWMA_ALPHA * (sample - old)
        };
        self.error_rate
            .store((new as f32).to_bits(), Ordering::Relaxed);
    }

    /// Records the time to response head of a successful exchange.
    pub fn record_latency(&self, head: Duration) {
        let sample = head.as_micros() as f64;
        let old = self.latency_ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old as f64 + EWMA_ALPHA * (sample - old as f64)
        };
        self.latency_ewma_us.store(new as u64, Ordering::Relaxed);
    }

    pub fn latency_ewma_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// The moving average of failed attempts (0–1; 0 before any attempt), as routers see it.
    pub fn error_rate(&self) -> f32 {
        self.error_rate_observed().unwrap_or(0.0)
    }

    /// The moving average of failed attempts, `None` before this gateway sent it any.
    pub fn error_rate_observed(&self) -> Option<f32> {
        let r = f32::from_bits(self.error_rate.load(Ordering::Relaxed));
        (!r.is_nan()).then_some(r)
    }

    /// Cools the upstream down until `until_ms` (Unix ms) for `model`, or for every model.
    pub fn cool_down(&self, model: Option<&str>, until_ms: u64) {
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(model.map(str::to_owned)).or_insert(0);
        *entry = (*entry).max(until_ms);
        self.cooling_max_ms.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Unix ms until which the upstream is cooling for `model` (or for every model); 0 if not.
    pub fn cooling_until(&self, model: Option<&str>) -> u64 {
        // Never cooled (the common case): no clock read.
        let max = self.cooling_max_ms.load(Ordering::Relaxed);
        if max == 0 {
            return 0;
        }
        let now = unix_ms();
        if max <= now {
            return 0;
        }
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, until| *until > now);
        let all = map.get(&None).copied().unwrap_or(0);
        let one = model
            .and_then(|m| map.get(&Some(m.to_owned())).copied())
            .unwrap_or(0);
        all.max(one)
    }

    /// Keeps `what` among the last [`RECENT_ERRORS`] errors (for operators), with the time.
    pub fn note_error(&self, what: impl Into<std::borrow::Cow<'static, str>>) {
        let mut recent = self.recent_errors.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_ERRORS {
            recent.pop_front();
        }
        recent.push_back((unix_ms(), what.into()));
    }

    /// The last errors, oldest first: `(Unix ms, what)`.
    pub fn recent_errors(&self) -> Vec<(u64, String)> {
        let recent = self.recent_errors.lock().unwrap_or_else(|p| p.into_inner());
        recent.iter().map(|(at, w)| (*at, w.to_string())).collect()
    }

    /// Ends the cooldown for `model`, or every cooldown when `None` (an operator's restore).
    pub fn clear_cooldown(&self, model: Option<&str>) {
        let mut map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        match model {
            None => map.clear(),
            Some(m) => {
                map.remove(&Some(m.to_owned()));
            }
        }
        let latest = map.values().copied().max().unwrap_or(0);
        self.cooling_max_ms.store(latest, Ordering::Relaxed);
    }

    /// The cooldowns in force: `(model or None for every model, until Unix ms)`.
    pub fn cooldowns(&self) -> Vec<(Option<String>, u64)> {
        let now = unix_ms();
        let map = self.cooldowns.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(m, until)| (m.clone(), *until))
            .collect();
        v.sort();
        v
    }

    pub fn serves(&self, model: Option<&str>) -> bool {
        model.is_none_or(|m| self.config.serves(m))
    }

    pub fn weight(&self) -> u32 {
        self.config.weight
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_healthy(&self) -> bool {
        // Never marked down (the common case): no clock read.
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    /// A response came back (below 500): the failure streak ends.
    pub fn record_success(&self) {
        self.observe(false);
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failed attempt (a connect error, timeout or 5xx; `why`, e.g. `status 503`, is
    /// kept among the recent errors). After `max_fails` in a row the upstream is skipped for
    /// `fail_timeout`.
    pub fn record_failure(&self, why: impl Into<std::borrow::Cow<'static, str>>) {
        self.note_error(why);
        self.observe(true);
        let n = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.max_fails {
            self.fails.store(0, Ordering::Relaxed);
            let until = self.now_ms() + self.config.fail_timeout.get().as_millis() as u64;
            self.down_until_ms.store(until, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, for_ = ?self.config.fail_timeout, "upstream marked unhealthy");
        }
    }
}
