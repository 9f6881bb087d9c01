//! A pace for log lines about events that can come at any rate (a flood of refused calls): the
//! first event is logged at once, then at most one line per interval, carrying the count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub(crate) struct Throttle {
    born: Instant,
    /// Milliseconds since `born` before which no line is due.
    next_ms: AtomicU64,
    /// Events since the last line.
    pending: AtomicU64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            born: Instant::now(),
            next_ms: AtomicU64::new(0),
            pending: AtomicU64::new(0),
        }
    }
}

impl Throttle {
    /// Counts one event. `Some(n)` when a line is due now: `n` events since the last line, this
    /// one included. Of callers racing for the same line, one gets it.
    pub(crate) fn note(&self, every: Duration) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let now = self.born.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        self.next_ms
            .compare_exchange(
                next,
                now + every.as_millis() as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_is_due_then_one_line_per_interval_with_the_count() {
        let t = Throttle::default();
        assert_eq!(t.note(Duration::from_millis(50)), Some(1));
        for _ in 0..99 {
            assert_eq!(t.note(Duration::from_millis(50)), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.note(Duration::from_millis(50)), Some(100));
    }

    #[test]
    fn racing_threads_get_one_line_per_interval() {
        let t = std::sync::Arc::new(Throttle::default());
        let lines: u64 = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    (0..10_000)
                        .filter(|_| t.note(Duration::from_secs(3600)).is_some())
                        .count() as u64
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(lines, 1);
    }
}
