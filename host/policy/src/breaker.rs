//! The circuit breaker in front of a plugin: failures within a window stop calls for a cooldown.

use crate::PluginSpec;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The circuit breaker of one plugin version.
pub(crate) struct Breaker {
    pub(crate) born: std::time::Instant,
    /// Milliseconds since `born` until which calls are refused (0 = closed).
    pub(crate) open_until: AtomicU64,
    /// Failures in the current window: (window start, count).
    pub(crate) window: Mutex<(std::time::Instant, u32)>,
}

impl Breaker {
    pub(crate) fn new() -> Self {
        let now = std::time::Instant::now();
        Self {
            born: now,
            open_until: AtomicU64::new(0),
            window: Mutex::new((now, 0)),
        }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    /// Records a failure; true if it opened the breaker.
    pub(crate) fn failure(&self, spec: &PluginSpec) -> bool {
        if spec.breaker_failures == 0 || self.is_open() {
            return false;
        }
        let now = std::time::Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.0) > spec.breaker_window {
            *w = (now, 0);
        }
        w.1 += 1;
        if w.1 < spec.breaker_failures {
            return false;
        }
        *w = (now, 0);
        let until = self.now_ms() + spec.breaker_cooldown.as_millis() as u64;
        self.open_until.store(until.max(1), Ordering::Relaxed);
        true
    }
}
