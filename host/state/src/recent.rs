//! The last hour on this gateway, minute by minute: what the console's live chart draws.
//!
//! The database keeps totals per hour (`token_usage`, `intercepts`), which is too coarse for the
//! last hour and is written `storage.flush_interval` behind. This ring is fed by the same calls
//! that feed those tables (`Stores::record_tokens`, `Stores::record_intercept`, under the lock of the usage buffer), so its figures
//! mean the same, but it lives in this process only: it starts empty at each start and covers
//! this gateway's traffic, not a cluster's.

/// One minute's totals on this gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteTotals {
    /// Start of the minute, Unix ms.
    pub minute_ms: u64,
    pub requests: u64,
    pub errors: u64,
    /// Answers with status 429 (a limit, a budget, or the upstream's own).
    pub rate_limited: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub intercepts: u64,
    /// How long the requests that reached an upstream took, start to end.
    pub latency: LogHistogram,
    /// Their time to the first body byte sent to the client (for a stream: its first event).
    pub first_byte: LogHistogram,
}

/// What one finished request adds to its minute besides its usage.
#[derive(Debug, Clone, Copy, Default)]
pub struct Observed {
    pub status: u16,
    /// Set when the request reached an upstream: its whole time.
    pub took: Option<std::time::Duration>,
    /// Set when it reached an upstream and a body byte went to the client.
    pub first_byte: Option<std::time::Duration>,
}

/// Durations counted in buckets 2^(1/4) apart (19%), from 1 ms to about 65 s: bucket 0 holds
/// what took under 1 ms, bucket `i` what took 2^((i-1)/4) to 2^(i/4) ms, the last everything
/// longer. A quantile read from it is a bucket's geometric middle, within 10% of the true value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogHistogram {
    counts: [u32; BUCKETS],
}

const BUCKETS: usize = 66;

impl Default for LogHistogram {
    fn default() -> Self {
        Self {
            counts: [0; BUCKETS],
        }
    }
}

impl LogHistogram {
    pub fn add(&mut self, d: std::time::Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = if ms < 1.0 {
            0
        } else {
            ((ms.log2() * 4.0) as usize + 1).min(BUCKETS - 1)
        };
        self.counts[i] = self.counts[i].saturating_add(1);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// The `q` quantile (0 < q ≤ 1) in milliseconds; `None` when nothing was counted.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(if i == 0 {
                    0.5
                } else {
                    2f64.powf((i as f64 - 0.5) / 4.0)
                });
            }
        }
        None
    }
}

const MINUTE_MS: u64 = 60_000;
/// Minutes kept: one hour.
pub const MINUTES: usize = 60;

/// Sixty one-minute slots, reused in turn: a slot whose minute has passed is cleared when it is
/// next written or read.
#[derive(Debug)]
pub struct LastHour {
    slots: [MinuteTotals; MINUTES],
}

impl Default for LastHour {
    fn default() -> Self {
        Self {
            slots: [MinuteTotals::default(); MINUTES],
        }
    }
}

impl LastHour {
    /// The slot of the minute holding `at_ms`, cleared if it held an older minute.
    pub fn at(&mut self, at_ms: u64) -> &mut MinuteTotals {
        let minute_ms = at_ms / MINUTE_MS * MINUTE_MS;
        let slot = &mut self.slots[(at_ms / MINUTE_MS) as usize % MINUTES];
        if slot.minute_ms != minute_ms {
            *slot = MinuteTotals {
                minute_ms,
                ..MinuteTotals::default()
            };
        }
        slot
    }

    /// The sixty minutes up to and including the one holding `now_ms`, oldest first; minutes
    /// with nothing in them are zeros.
    pub fn series(&self, now_ms: u64) -> Vec<MinuteTotals> {
        let current = now_ms / MINUTE_MS;
        (0..MINUTES as u64)
            .map(|back| current + 1 + back - MINUTES as u64)
            .map(|minute| {
                let minute_ms = minute * MINUTE_MS;
                let slot = self.slots[minute as usize % MINUTES];
                if slot.minute_ms == minute_ms {
                    slot
                } else {
                    MinuteTotals {
                        minute_ms,
                        ..MinuteTotals::default()
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_are_counted_in_their_own_slot_and_an_hour_later_the_slot_starts_again() {
        let mut h = LastHour::default();
        let t0 = 1_800_000_000_000 / MINUTE_MS * MINUTE_MS;
        h.at(t0 + 5).requests += 1;
        h.at(t0 + 59_999).requests += 1;
        h.at(t0 + MINUTE_MS).errors += 1;
        let s = h.series(t0 + MINUTE_MS + 1);
        assert_eq!(s.len(), MINUTES);
        assert_eq!(s[MINUTES - 1].minute_ms, t0 + MINUTE_MS);
        assert_eq!(s[MINUTES - 1].errors, 1);
        assert_eq!((s[MINUTES - 2].minute_ms, s[MINUTES - 2].requests), (t0, 2));
        assert!(s[..MINUTES - 2].iter().all(|m| m.requests == 0));
        assert!(
            s.windows(2)
                .all(|w| w[1].minute_ms == w[0].minute_ms + MINUTE_MS)
        );
        // An hour later the same slot holds a new minute: the old counts are gone, from the
        // series and from the slot.
        let later = t0 + MINUTES as u64 * MINUTE_MS;
        assert!(h.series(later).iter().all(|m| m.requests == 0));
        h.at(later).requests += 1;
        assert_eq!(h.at(later).requests, 1);
    }

    #[test]
    fn quantiles_are_within_ten_percent_and_none_without_samples() {
        let mut h = LogHistogram::default();
        assert_eq!(h.quantile_ms(0.5), None);
        for ms in 1..=1000u64 {
            h.add(std::time::Duration::from_millis(ms));
        }
        for (q, exact) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
            let got = h.quantile_ms(q).unwrap();
            assert!((got / exact - 1.0).abs() < 0.10, "q{q}: {got} vs {exact}");
        }
        let mut fast = LogHistogram::default();
        fast.add(std::time::Duration::from_micros(300));
        assert_eq!(fast.quantile_ms(0.99), Some(0.5));
        let mut slow = LogHistogram::default();
        slow.add(std::time::Duration::from_secs(600));
        assert!(slow.quantile_ms(0.5).unwrap() > 60_000.0);
    }
}
