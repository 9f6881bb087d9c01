//! Fill-first router: always the first candidate in configured order; the next ones only when it
//! is cooling down (the host leaves cooling upstreams out) or unreachable (failover). Cooling
//! candidates, if the host passes any, go last.

use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView};

pub fn order(cooling_until: &[u64], now_ms: u64) -> Vec<u32> {
    let (ready, cooling): (Vec<u32>, Vec<u32>) =
        (0..cooling_until.len() as u32).partition(|&i| cooling_until[i as usize] <= now_ms);
    ready.into_iter().chain(cooling).collect()
}

struct FillFirst;

impl Plugin for FillFirst {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl Router for FillFirst {
    fn select(_request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        let now = tollgate_sdk::cooling_clock(&candidates);
        let cooling: Vec<u64> = candidates.iter().map(|c| c.cooling_until_ms).collect();
        RouteDecision::Pick(order(&cooling, now))
    }
}

tollgate_sdk::export!(FillFirst);

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_configured_order_with_cooling_last() {
        assert_eq!(super::order(&[0, 0, 0], 5), [0, 1, 2]);
        assert_eq!(super::order(&[9, 0, 0], 5), [1, 2, 0]);
    }
}
