//! Latency router: lowest moving-average time to response head first. An upstream with no
//! measurement yet counts as fastest, so every one gets tried; errors are penalised by
//! `latency × (1 + 10 × error_rate)`.

use tollgate_sdk::{Candidate, LeanRouter, Plugin, Request, RouteDecision};

/// Score (lower is better) of an upstream's EWMA latency in µs and error rate.
pub fn score(latency_us: u64, error_rate: f32) -> f64 {
    latency_us as f64 * (1.0 + 10.0 * f64::from(error_rate.clamp(0.0, 1.0)))
}

pub fn order(stats: &[(u64, f32)]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..stats.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        let (sa, sb) = (
            score(stats[a as usize].0, stats[a as usize].1),
            score(stats[b as usize].0, stats[b as usize].1),
        );
        sa.total_cmp(&sb).then(a.cmp(&b))
    });
    idx
}

struct Latency;

impl Plugin for Latency {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl LeanRouter for Latency {
    fn select(_request: &Request, candidates: Vec<Candidate>) -> RouteDecision {
        let stats: Vec<(u64, f32)> = candidates
            .iter()
            .map(|c| (c.latency_ewma_us, c.error_rate))
            .collect();
        RouteDecision::Pick(order(&stats))
    }
}

tollgate_sdk::export!(Latency);

#[cfg(test)]
mod tests {
    #[test]
    fn fastest_first_unmeasured_explored_errors_penalised() {
        assert_eq!(super::order(&[(900, 0.0), (300, 0.0), (0, 0.0)]), [2, 1, 0]);
        assert_eq!(super::order(&[(100, 0.5), (400, 0.0)]), [1, 0]);
    }
}
