//! Weighted router: over every `sum(weights)` requests, each candidate comes first `weight` times,
//! interleaved (smooth weighted round-robin, computed from one shared counter in the host's kv so it
//! is exact across instances). The others follow by descending weight.

use tollgate_sdk::{Candidate, LeanRouter, Plugin, Request, RouteDecision, host};

/// The order for the `n`-th request over candidates with `weights`.
pub fn order(n: u64, weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    // Smooth WRR replayed for step n mod total: deterministic from the counter alone.
    let step = n % total;
    let mut current: Vec<i64> = vec![0; weights.len()];
    let mut first = 0;
    for _ in 0..=step {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w.max(1));
        }
        first = (0..weights.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[first] -= total as i64;
    }
    let mut rest: Vec<u32> = (0..weights.len() as u32)
        .filter(|&i| i as usize != first)
        .collect();
    rest.sort_by_key(|&i| std::cmp::Reverse(weights[i as usize]));
    std::iter::once(first as u32).chain(rest).collect()
}

struct Weighted;

impl Plugin for Weighted {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl LeanRouter for Weighted {
    fn select(_request: &Request, candidates: Vec<Candidate>) -> RouteDecision {
        let n = (host::kv::incr("n", 1, None) as u64).wrapping_sub(1);
        let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
        RouteDecision::Pick(order(n, &weights))
    }
}

tollgate_sdk::export!(Weighted);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_choices_follow_the_weights_interleaved() {
        let firsts: Vec<u32> = (0..6).map(|n| order(n, &[2, 1, 3])[0]).collect();
        assert_eq!(firsts.iter().filter(|&&i| i == 0).count(), 2);
        assert_eq!(firsts.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(firsts.iter().filter(|&&i| i == 2).count(), 3);
        assert_ne!(
            firsts[0], firsts[1],
            "smooth: the heaviest does not come twice in a row here"
        );
        assert_eq!(order(0, &[1, 5]).len(), 2);
    }
}
