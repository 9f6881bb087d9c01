//! Fill-first router: always the first candidate in configured order; the next ones only when it
//! is cooling down (the host leaves cooling upstreams out) or unreachable (failover). Cooling
//! candidates, if the host passes any, go last.

use tollgate_sdk::{Candidate, LeanRouter, Plugin, Request, RouteDecision};

/// The configured order, candidates for which `cooling(i)` holds last.
pub fn order(len: usize, cooling: impl Fn(usize) -> bool) -> Vec<u32> {
    tollgate_sdk::ready_first(0, len, cooling)
}

struct FillFirst;

impl Plugin for FillFirst {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl LeanRouter for FillFirst {
    fn select(_request: &Request, candidates: Vec<Candidate>) -> RouteDecision {
        let now = tollgate_sdk::cooling_clock(&candidates);
        RouteDecision::Pick(order(candidates.len(), |i| {
            candidates[i].cooling_until_ms > now
        }))
    }
}

tollgate_sdk::export!(FillFirst);

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_configured_order_with_cooling_last() {
        let at = |until: [u64; 3], now: u64| move |i: usize| until[i] > now;
        assert_eq!(super::order(3, at([0, 0, 0], 5)), [0, 1, 2]);
        assert_eq!(super::order(3, at([9, 0, 0], 5)), [1, 2, 0]);
        assert_eq!(
            super::order(3, at([9, 0, 0], 9)),
            [0, 1, 2],
            "cooled down at 9"
        );
    }
}
