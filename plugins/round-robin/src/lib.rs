//! Round-robin router. The rotation counter lives in the host's key-value store (`kv.incr`), so
//! it is exact across the plugin's pooled instances and, with a shared store, across gateways.
//! Cooling candidates go last; the rest follow the rotation.

use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView, host};

/// The order for the `n`-th request: rotation by `n`, candidates cooling at `now_ms` last.
pub fn order(n: u64, candidates: &[(u64,)], now_ms: u64) -> Vec<u32> {
    let len = candidates.len();
    if len == 0 {
        return Vec::new();
    }
    let start = (n % len as u64) as usize;
    let rotated = (0..len).map(|i| ((start + i) % len) as u32);
    let (ready, cooling): (Vec<u32>, Vec<u32>) =
        rotated.partition(|&i| candidates[i as usize].0 <= now_ms);
    ready.into_iter().chain(cooling).collect()
}

struct RoundRobin;

impl Plugin for RoundRobin {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl Router for RoundRobin {
    fn select(_request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        let n = host::kv::incr("rr", 1, None) as u64;
        let now = tollgate_sdk::cooling_clock(&candidates);
        let cooling: Vec<(u64,)> = candidates.iter().map(|c| (c.cooling_until_ms,)).collect();
        RouteDecision::Pick(order(n.wrapping_sub(1), &cooling, now))
    }
}

tollgate_sdk::export!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_the_first_choice() {
        let c = [(0,), (0,), (0,)];
        assert_eq!(order(0, &c, 10), [0, 1, 2]);
        assert_eq!(order(1, &c, 10), [1, 2, 0]);
        assert_eq!(order(5, &c, 10), [2, 0, 1]);
    }

    #[test]
    fn cooling_candidates_go_last() {
        let c = [(0,), (99,), (0,)];
        assert_eq!(order(1, &c, 10), [2, 0, 1]);
        assert!(order(0, &[], 10).is_empty());
    }
}
