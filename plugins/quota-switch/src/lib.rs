//! Quota switch: when an upstream answers 429 (rate limit or `insufficient_quota`) or an overload
//! status, cool it down and retry the request on the router's next pick. The cooldown lasts as
//! long as the upstream says (`Retry-After`, or OpenAI's `x-ratelimit-reset-requests/-tokens`),
//! capped at `max_cooldown_ms`, else `default_cooldown_ms`.
//! Config (defaults shown): `{"statuses": [429], "overload_statuses": [503, 529],
//! "scope": "model", "default_cooldown_ms": 60000, "max_cooldown_ms": 3600000}`; overloads cool
//! the whole upstream, quota errors the scope given.

use serde::Deserialize;
use tollgate_sdk::host;
use tollgate_sdk::{
    AfterCooldown, Cooldown, CooldownScope, Plugin, Quota, QuotaDecision, Request, Response,
    UpstreamView,
};

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    Model,
    Upstream,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub statuses: Vec<u16>,
    pub overload_statuses: Vec<u16>,
    pub scope: Scope,
    pub default_cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    /// Error types that mark a stream's first event as an overload or quota error (seen only on
    /// routes with `stream_bootstrap`): the event's data must be a JSON object whose `error`
    /// object has one of them as its `type` or `code`, exactly.
    pub event_errors: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            statuses: vec![429],
            overload_statuses: vec![503, 529],
            scope: Scope::Model,
            default_cooldown_ms: 60_000,
            max_cooldown_ms: 3_600_000,
            // Anthropic's `error.type`s, then OpenAI's `error.code`/`error.type`.
            event_errors: vec![
                "overloaded_error".into(),
                "rate_limit_error".into(),
                "rate_limit_exceeded".into(),
                "insufficient_quota".into(),
            ],
        }
    }
}

/// Parses OpenAI-style reset durations: `"1s"`, `"6m0s"`, `"20ms"`, `"1h2m3.5s"`.
pub fn parse_reset(v: &str) -> Option<u64> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = v.trim().chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().ok()?;
        num.clear();
        let unit_ms = match c {
            'h' => 3_600_000.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1.0
            }
            'm' => 60_000.0,
            's' => 1_000.0,
            _ => return None,
        };
        total += n * unit_ms;
        any = true;
    }
    (any && num.is_empty()).then_some(total.ceil() as u64)
}

/// How long the upstream asked us to wait, in milliseconds, if it said; `header` gives a
/// response header's value by name. `Retry-After` may be seconds or an HTTP date (RFC 9110
/// §10.2.3), which is counted from `now_ms` (a date already past asks for no wait).
pub fn requested_wait_ms(header: impl Fn(&str) -> Option<String>, now_ms: u64) -> Option<u64> {
    if let Some(v) = header("retry-after") {
        let v = v.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(secs.saturating_mul(1000));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            let at_ms = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            return Some(at_ms.saturating_sub(now_ms));
        }
    }
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(ms);
    }
    ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
        .iter()
        .filter_map(|h| header(h).and_then(|v| parse_reset(&v)))
        .max()
}

/// Whether a stream's first event is an error the config names: its data is a JSON object with
/// an `error` object whose `type` or `code` is in `event_errors`. Text that merely mentions an
/// error type (a model's answer, say) is not one.
pub fn is_error_event(c: &Config, event: &str) -> bool {
    let Ok(data) = serde_json::from_str::<serde_json::Value>(event) else {
        return false;
    };
    let Some(error) = data.get("error").filter(|e| e.is_object()) else {
        return false;
    };
    ["type", "code"]
        .iter()
        .filter_map(|field| error.get(field)?.as_str())
        .any(|t| c.event_errors.iter().any(|m| m == t))
}

/// The statuses the policy acts on: quota errors and overloads.
pub fn watched(c: &Config) -> Vec<u16> {
    c.statuses
        .iter()
        .chain(&c.overload_statuses)
        .copied()
        .collect()
}

/// The decision for an answer with `status`, headers (by name, from `header`) and (with stream
/// bootstrap) its first event, at `now_ms`. An error event inside a 200 stream counts as an
/// overload.
pub fn decide(
    c: &Config,
    status: u16,
    header: impl Fn(&str) -> Option<String>,
    first_event: Option<&str>,
    now_ms: u64,
) -> QuotaDecision {
    let overload =
        c.overload_statuses.contains(&status) || first_event.is_some_and(|e| is_error_event(c, e));
    if !overload && !c.statuses.contains(&status) {
        return QuotaDecision::Pass;
    }
    let wait = requested_wait_ms(header, now_ms)
        .unwrap_or(c.default_cooldown_ms)
        .min(c.max_cooldown_ms);
    let scope = if overload || c.scope == Scope::Upstream {
        CooldownScope::Upstream
    } else {
        CooldownScope::Model
    };
    QuotaDecision::Cooldown(Cooldown {
        scope,
        until_ms: now_ms + wait.max(1),
        then: AfterCooldown::RetryOther,
    })
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Switch;

impl Plugin for Switch {
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

impl Quota for Switch {
    fn watch() -> Option<Vec<u16>> {
        Some(watched(config()))
    }

    fn on_response(
        _request: &Request,
        _upstream: UpstreamView,
        response: &Response,
    ) -> QuotaDecision {
        decide(
            config(),
            response.status(),
            |name| response.header(name),
            response.first_event().as_deref(),
            host::now_ms(),
        )
    }
}

tollgate_sdk::export!(Switch);

#[cfg(test)]
mod tests {
    use super::*;

    /// Response headers looked up by name, in any case.
    fn h<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn reset_durations_parse() {
        assert_eq!(parse_reset("1s"), Some(1000));
        assert_eq!(parse_reset("6m0s"), Some(360_000));
        assert_eq!(parse_reset("20ms"), Some(20));
        assert_eq!(parse_reset("1h2m3.5s"), Some(3_723_500));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset("5"), None);
    }

    #[test]
    fn retry_after_sets_the_cooldown_capped_and_scoped() {
        let c = Config::default();
        match decide(&c, 429, h(&[("Retry-After", "7")]), None, 1000) {
            QuotaDecision::Cooldown(cd) => {
                assert_eq!(cd.until_ms, 8000);
                assert_eq!(cd.scope, CooldownScope::Model);
                assert_eq!(cd.then, AfterCooldown::RetryOther);
            }
            other => panic!("{other:?}"),
        }
        let capped = Config {
            max_cooldown_ms: 2000,
            ..Config::default()
        };
        assert!(
            matches!(decide(&capped, 429, h(&[("retry-after", "99")]), None, 0), QuotaDecision::Cooldown(c) if c.until_ms == 2000)
        );
        assert!(
            matches!(decide(&c, 503, h(&[]), None, 0), QuotaDecision::Cooldown(c) if c.scope == CooldownScope::Upstream && c.until_ms == 60_000)
        );
        assert!(
            matches!(decide(&c, 429, h(&[("x-ratelimit-reset-tokens", "1m30s")]), None, 0), QuotaDecision::Cooldown(c) if c.until_ms == 90_000)
        );
    }

    #[test]
    fn retry_after_as_an_http_date_counts_from_now() {
        let c = Config::default();
        // Sun, 06 Nov 1994 08:49:37 GMT = 784111777 s.
        let now = 784_111_777_000 - 90_000;
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert!(
                matches!(decide(&c, 429, h(&[("retry-after", date)]), None, now), QuotaDecision::Cooldown(cd) if cd.until_ms == now + 90_000),
                "{date}"
            );
        }
        // A date already past: no wait asked for, so the shortest cooldown (1 ms).
        assert!(
            matches!(decide(&c, 429, h(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]), None, now + 200_000), QuotaDecision::Cooldown(cd) if cd.until_ms == now + 200_001)
        );
        // Neither seconds nor a date: the default.
        assert!(
            matches!(decide(&c, 429, h(&[("retry-after", "soon")]), None, 0), QuotaDecision::Cooldown(cd) if cd.until_ms == 60_000)
        );
    }

    #[test]
    fn an_error_event_inside_a_200_stream_cools_the_upstream() {
        let c = Config::default();
        let overloaded =
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert!(
            matches!(decide(&c, 200, h(&[]), Some(overloaded), 0), QuotaDecision::Cooldown(cd) if cd.scope == CooldownScope::Upstream)
        );
        let openai = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert!(matches!(
            decide(&c, 200, h(&[]), Some(openai), 0),
            QuotaDecision::Cooldown(_)
        ));
        // Mentions are not errors: in a model's text, in an error's message, or a type that is
        // only a prefix of a listed one.
        for pass in [
            r#"{"choices":[{"delta":{"content":"rate_limit_error"}}]}"#,
            r#"{"choices":[{"delta":{"content":"\"error\": overloaded_error"}}]}"#,
            r#"{"error":{"type":"invalid_request_error","message":"not an overloaded_error"}}"#,
            r#"{"error":{"type":"rate_limit"}}"#,
            r#"{"error":"overloaded_error"}"#,
            "overloaded_error",
        ] {
            assert!(
                matches!(decide(&c, 200, h(&[]), Some(pass), 0), QuotaDecision::Pass),
                "{pass}"
            );
        }
    }

    #[test]
    fn only_quota_and_overload_statuses_are_watched() {
        assert_eq!(watched(&Config::default()), [429, 503, 529]);
    }

    #[test]
    fn success_and_other_errors_pass() {
        let c = Config::default();
        assert!(matches!(
            decide(&c, 200, h(&[]), None, 0),
            QuotaDecision::Pass
        ));
        assert!(matches!(
            decide(&c, 400, h(&[]), None, 0),
            QuotaDecision::Pass
        ));
    }
}
