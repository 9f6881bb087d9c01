//! The last hour on this gateway, minute by minute: what the console's live chart draws.
//!
//! The database keeps totals per hour (`token_usage`, `intercepts`), which is too coarse for the
//! last hour and is written `storage.flush_interval` behind. This ring is fed by the same calls
//! that feed those tables (`Stores::record_tokens`, `Stores::record_intercept`, under the lock of the usage buffer), so its figures
//! mean the same, but it lives in this process only: it starts empty at each start and covers
//! this gateway's traffic, not a cluster's.

/// One minute's totals on this gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MinuteTotals {
    /// Start of the minute, Unix ms.
    pub minute_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub intercepts: u64,
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
}
