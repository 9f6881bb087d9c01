//! A plugin's counters and its call-time histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets of [`CallTimes`]: up to 1 µs, 2 µs, 4 µs, … 2^19 µs (0.52 s), and above.
pub const CALL_BUCKETS: usize = 21;

/// Call durations of one plugin version (checkout to checkin: the guest's run plus the host's
/// setup), in power-of-two microsecond buckets: one atomic add per call.
#[derive(Debug, Default)]
pub struct CallTimes {
    pub(crate) buckets: [AtomicU64; CALL_BUCKETS],
    pub(crate) sum_ns: AtomicU64,
}

impl CallTimes {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros() as u64;
        let i = if us <= 1 {
            0
        } else {
            (64 - (us - 1).leading_zeros()) as usize
        };
        self.buckets[i.min(CALL_BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            d.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Upper bound of bucket `i` in seconds (`+Inf` for the last).
    pub fn upper_secs(i: usize) -> f64 {
        if i + 1 >= CALL_BUCKETS {
            f64::INFINITY
        } else {
            (1u64 << i) as f64 / 1e6
        }
    }

    /// The count in each bucket (not cumulative).
    pub fn counts(&self) -> [u64; CALL_BUCKETS] {
        std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed))
    }

    pub fn sum_secs(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile; `None` before any call.
    /// Past the last finite bucket it answers that bucket's bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::upper_secs(i.min(CALL_BUCKETS - 2)));
            }
        }
        Some(Self::upper_secs(CALL_BUCKETS - 2))
    }
}

/// Counters for metrics and the admin API.
#[derive(Default, Debug)]
pub struct PluginStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    /// Failures that were traps (a panic, `unreachable`, out of memory), not deadlines.
    pub traps: AtomicU64,
    /// Failures that ran past the deadline.
    pub timeouts: AtomicU64,
    /// How long calls took.
    pub call_time: CallTimes,
    pub instantiations: AtomicU64,
    /// Times the circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Calls refused without running: breaker open or concurrency limit.
    pub rejected: AtomicU64,
}

#[cfg(test)]
mod call_time_tests {
    use super::*;
    use crate::WIT_VERSION;

    #[test]
    fn the_wit_version_is_the_packages() {
        let worlds = include_str!("../../../wit/worlds.wit");
        assert!(worlds.contains(&format!("package tollgate:policy{WIT_VERSION};")));
    }

    #[test]
    fn call_times_fall_in_power_of_two_buckets_and_answer_quantiles() {
        let t = CallTimes::default();
        assert_eq!(t.quantile(0.5), None);
        for us in [1, 2, 3, 900, 1000, 1_000_000] {
            t.observe(Duration::from_micros(us));
        }
        let c = t.counts();
        // ≤1 µs, ≤2 µs, ≤4 µs (3), ≤1024 µs (900 and 1000), the last bucket (1 s).
        assert_eq!(
            (c[0], c[1], c[2], c[10], c[CALL_BUCKETS - 1]),
            (1, 1, 1, 2, 1)
        );
        assert_eq!(c.iter().sum::<u64>(), 6);
        assert_eq!(t.quantile(0.5), Some(4e-6));
        assert_eq!(t.quantile(0.8), Some(1024e-6));
        assert!((t.sum_secs() - 1.001906).abs() < 1e-9);
        assert_eq!(CallTimes::upper_secs(CALL_BUCKETS - 1), f64::INFINITY);
    }
}
