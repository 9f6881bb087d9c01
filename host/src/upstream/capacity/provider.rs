//! What a provider's answers say is left of the account: `x-ratelimit-remaining-requests` and
//! `-tokens`, with their `x-ratelimit-reset-*` times (OpenAI's `6m0s` form or seconds), kept per
//! gateway until they reset, each request sent since counted off.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName};

/// What a provider's header said: units remaining, valid until a Unix time (0: nothing seen).
#[derive(Default)]
pub(super) struct Observed {
    remaining: AtomicU64,
    until_ms: AtomicU64,
}

impl Observed {
    pub(super) fn get(&self, now_ms: u64) -> Option<u64> {
        (now_ms < self.until_ms.load(Ordering::Relaxed))
            .then(|| self.remaining.load(Ordering::Relaxed))
    }

    fn set(&self, remaining: u64, until_ms: u64) {
        self.remaining.store(remaining, Ordering::Relaxed);
        self.until_ms.store(until_ms, Ordering::Relaxed);
    }

    /// Counts `n` units off a figure still in force.
    pub(super) fn spend(&self, n: u64) {
        let _ = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r.saturating_sub(n))
            });
    }
}

/// How long a provider's figure is trusted when its answer gave no reset time.
const OBSERVED_DEFAULT_MS: u64 = 60_000;
/// The longest a provider's figure is trusted, whatever its reset time says (a day: the longest
/// window providers count in), so an answer cannot pin an upstream as spent for ever.
const OBSERVED_MAX_MS: u64 = 86_400_000;
/// Both figures a provider may send.
#[derive(Default)]
pub(super) struct Figures {
    pub(super) requests: Observed,
    pub(super) tokens: Observed,
}

impl Figures {
    /// Keeps what an answer's head says.
    pub(super) fn read(&self, headers: &HeaderMap) {
        static NAMES: [HeaderName; 4] = [
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderName::from_static("x-ratelimit-reset-requests"),
            HeaderName::from_static("x-ratelimit-remaining-tokens"),
            HeaderName::from_static("x-ratelimit-reset-tokens"),
        ];
        let now = crate::state::unix_ms();
        for (remaining, reset, seen) in [
            (&NAMES[0], &NAMES[1], &self.requests),
            (&NAMES[2], &NAMES[3], &self.tokens),
        ] {
            let Some(remaining) = headers
                .get(remaining)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            else {
                continue;
            };
            let reset_ms = headers
                .get(reset)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_reset_ms)
                .unwrap_or(OBSERVED_DEFAULT_MS)
                .clamp(1, OBSERVED_MAX_MS);
            seen.set(remaining, now + reset_ms);
        }
    }
}

/// A provider's reset time in milliseconds: OpenAI's durations (`1s`, `6m0s`, `59.5s`, `20ms`,
/// `1h2m3s`) or a plain number of seconds.
fn parse_reset_ms(v: &str) -> Option<u64> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs >= 0.0).then_some((secs * 1000.0) as u64);
    }
    let mut total = 0.0;
    let mut rest = v;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..split].parse().ok()?;
        rest = &rest[split..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else {
            return None;
        };
        total += n * unit_ms;
        rest = &rest[len..];
    }
    Some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_reset_times_parse() {
        assert_eq!(parse_reset_ms("1s"), Some(1000));
        assert_eq!(parse_reset_ms("6m0s"), Some(360_000));
        assert_eq!(parse_reset_ms("59.5s"), Some(59_500));
        assert_eq!(parse_reset_ms("20ms"), Some(20));
        assert_eq!(parse_reset_ms("1h2m3s"), Some(3_723_000));
        assert_eq!(parse_reset_ms("12"), Some(12_000));
        assert_eq!(parse_reset_ms("soon"), None);
        // Absurd figures parse (saturated) and are clamped where they are used.
        assert_eq!(parse_reset_ms("1e300"), Some(u64::MAX));
        assert_eq!(parse_reset_ms("inf"), Some(u64::MAX));
        assert_eq!(parse_reset_ms("NaN"), None);
        assert_eq!(parse_reset_ms("-5"), None);
        assert_eq!(parse_reset_ms("5x"), None);
    }
}
