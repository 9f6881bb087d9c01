//! The calendar window a budget counts over: this day, week (from Monday) or month, in the
//! configured zone (`budgets.timezone`; UTC for an upstream's `monthly_budget`), as Unix
//! milliseconds. Shared by the key budgets and the upstream allowances.

use jiff::tz::TimeZone;
use jiff::{Span, Timestamp, Zoned};

use crate::Period;

/// `[start, end)` of the `period` that contains `now_ms`, in `tz`.
pub fn window(period: Period, tz: &TimeZone, now_ms: u64) -> (u64, u64) {
    let fallback = (now_ms, now_ms.saturating_add(86_400_000));
    let Ok(ts) = Timestamp::from_millisecond(now_ms.min(i64::MAX as u64) as i64) else {
        return fallback;
    };
    let now = ts.to_zoned(tz.clone());
    let start = match start(period, &now) {
        Some(s) => s,
        None => return fallback,
    };
    let span = match period {
        Period::Day => Span::new().days(1),
        Period::Week => Span::new().weeks(1),
        Period::Month => Span::new().months(1),
    };
    let Ok(end) = start.checked_add(span) else {
        return fallback;
    };
    let ms = |z: &Zoned| z.timestamp().as_millisecond().max(0) as u64;
    (ms(&start), ms(&end))
}

fn start(period: Period, now: &Zoned) -> Option<Zoned> {
    let day = now.start_of_day().ok()?;
    match period {
        Period::Day => Some(day),
        Period::Week => {
            let back = i64::from(day.weekday().to_monday_zero_offset());
            day.checked_sub(Span::new().days(back))
                .ok()?
                .start_of_day()
                .ok()
        }
        Period::Month => day.first_of_month().ok()?.start_of_day().ok(),
    }
}

/// `ms` as RFC 3339 (UTC), for messages.
pub fn rfc3339(ms: u64) -> String {
    Timestamp::from_millisecond(ms.min(i64::MAX as u64) as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn windows_follow_the_calendar_of_the_zone() {
        let utc = TimeZone::UTC;
        // Wednesday 2026-12-09 15:00 UTC.
        let now = at("2026-12-09T15:00:00Z");
        assert_eq!(
            window(Period::Day, &utc, now),
            (at("2026-12-09T00:00:00Z"), at("2026-12-10T00:00:00Z"))
        );
        assert_eq!(
            window(Period::Week, &utc, now),
            (at("2026-12-07T00:00:00Z"), at("2026-12-14T00:00:00Z"))
        );
        assert_eq!(
            window(Period::Month, &utc, now),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        // In Berlin (UTC+1 in winter) the day starts an hour earlier in UTC.
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        assert_eq!(
            window(Period::Day, &berlin, now),
            (at("2026-12-08T23:00:00Z"), at("2026-12-09T23:00:00Z"))
        );
        // A month across a DST change (March 2027 in Berlin: 31 days less one hour).
        let (s, e) = window(Period::Month, &berlin, at("2027-03-15T12:00:00Z"));
        assert_eq!(
            (s, e),
            (at("2027-02-28T23:00:00Z"), at("2027-03-31T22:00:00Z"))
        );
    }
}
