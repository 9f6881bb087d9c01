//! Round-robin router. The rotation counter lives in the host's key-value store (`kv.incr`), so
//! it is exact across the plugin's pooled instances and, with a shared store, across gateways.
//! Cooling candidates go last; the rest follow the rotation.

use tollgate_sdk::{Candidate, LeanRouter, Plugin, Request, RouteDecision, host};

/// The order for the `n`-th request among `len` candidates: rotation by `n`, candidates for which
/// `cooling(i)` holds last.
pub fn order(n: u64, len: usize, cooling: impl Fn(usize) -> bool) -> Vec<u32> {
    tollgate_sdk::ready_first(n, len, cooling)
}

struct RoundRobin;

impl Plugin for RoundRobin {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl LeanRouter for RoundRobin {
    fn select(_request: &Request, candidates: Vec<Candidate>) -> RouteDecision {
        let n = host::kv::incr("rr", 1, None) as u64;
        let now = tollgate_sdk::cooling_clock(&candidates);
        RouteDecision::Pick(order(n.wrapping_sub(1), candidates.len(), |i| {
            candidates[i].cooling_until_ms > now
        }))
    }
}

tollgate_sdk::export!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;

    /// Candidates cooling until these times, seen at `now`.
    fn cooling_at(until: &[u64], now: u64) -> impl Fn(usize) -> bool + '_ {
        move |i| until[i] > now
    }

    #[test]
    fn rotates_the_first_choice() {
        let c = [0, 0, 0];
        assert_eq!(order(0, 3, cooling_at(&c, 10)), [0, 1, 2]);
        assert_eq!(order(1, 3, cooling_at(&c, 10)), [1, 2, 0]);
        assert_eq!(order(5, 3, cooling_at(&c, 10)), [2, 0, 1]);
    }

    #[test]
    fn cooling_candidates_go_last() {
        let c = [0, 99, 0];
        assert_eq!(order(1, 3, cooling_at(&c, 10)), [2, 0, 1]);
        assert_eq!(
            order(1, 3, cooling_at(&c, 100)),
            [1, 2, 0],
            "cooled down by 100"
        );
        assert!(order(0, 0, |_| true).is_empty());
    }
}
