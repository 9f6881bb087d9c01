//! Least-busy router: fewest requests in flight first; ties by higher weight, then configured
//! order.

use tollgate_sdk::{Candidate, LeanRouter, Plugin, Request, RouteDecision};

/// `(in_flight, weight)` per candidate → order.
pub fn order(load: &[(u32, u32)]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..load.len() as u32).collect();
    idx.sort_by_key(|&i| {
        let (busy, weight) = load[i as usize];
        (busy, std::cmp::Reverse(weight), i)
    });
    idx
}

struct LeastBusy;

impl Plugin for LeastBusy {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl LeanRouter for LeastBusy {
    fn select(_request: &Request, candidates: Vec<Candidate>) -> RouteDecision {
        let load: Vec<(u32, u32)> = candidates.iter().map(|c| (c.in_flight, c.weight)).collect();
        RouteDecision::Pick(order(&load))
    }
}

tollgate_sdk::export!(LeastBusy);

#[cfg(test)]
mod tests {
    #[test]
    fn fewest_in_flight_first_then_weight() {
        assert_eq!(
            super::order(&[(3, 1), (0, 1), (0, 5), (1, 1)]),
            [2, 1, 3, 0]
        );
    }
}
