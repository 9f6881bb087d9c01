//! Headroom router: orders the candidates by what they can still take, most first, from the
//! `capacity` import (their declared `upstreams[].limits` as the gateway counts them, and the
//! providers' `x-ratelimit-remaining-*` headers).
//!
//! - A candidate with no request left, or fewer tokens left (per minute or in its month) than
//!   the request's `estimated-tokens`, is skipped: sending would only earn a 429.
//! - The rest go most headroom first: requests left, then tokens left; a candidate with no
//!   figure at all (nothing declared, no header seen) counts as unlimited. Ties keep the
//!   configured order.
//! - None left: `none`, and the client gets 503 `no_upstream` with the reason.

use tollgate_sdk::host::{Headroom, capacity};
use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView};

/// What a candidate can take, as sortable figures (`u64::MAX`: not limited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub requests: u64,
    pub tokens: u64,
}

impl Room {
    pub fn of(h: &Headroom) -> Self {
        let tokens = match (h.tokens, h.monthly_tokens) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(u64::MAX),
        };
        Self {
            requests: h.requests.unwrap_or(u64::MAX),
            tokens,
        }
    }

    /// Whether the request fits.
    pub fn fits(&self, estimated_tokens: u64) -> bool {
        self.requests > 0 && self.tokens >= estimated_tokens
    }
}

/// The candidates' indices that fit, most headroom first (stable).
pub fn order(rooms: &[Room], estimated_tokens: u64) -> Vec<u32> {
    let mut fit: Vec<(usize, Room)> = rooms
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, r)| r.fits(estimated_tokens))
        .collect();
    fit.sort_by(|(_, a), (_, b)| b.requests.cmp(&a.requests).then(b.tokens.cmp(&a.tokens)));
    fit.into_iter().map(|(i, _)| i as u32).collect()
}

struct HeadroomRouter;

impl Plugin for HeadroomRouter {
    fn configure(config: String) -> Result<(), String> {
        let _: tollgate_sdk::serde_json::Value = tollgate_sdk::parse_config(&config)?;
        Ok(())
    }
}

impl Router for HeadroomRouter {
    fn select(request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        let rooms: Vec<Room> = candidates
            .iter()
            .map(|c| Room::of(&capacity::remaining(&c.name)))
            .collect();
        let picked = order(&rooms, request.estimated_tokens());
        if picked.is_empty() {
            return RouteDecision::None(
                "every upstream is at its declared or reported limit for this request".into(),
            );
        }
        RouteDecision::Pick(picked)
    }
}

tollgate_sdk::export!(HeadroomRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn room(requests: Option<u64>, tokens: Option<u64>) -> Room {
        Room::of(&Headroom {
            requests,
            tokens,
            monthly_tokens: None,
        })
    }

    #[test]
    fn most_headroom_first_and_the_full_ones_skipped() {
        let rooms = [
            room(Some(5), None),
            room(Some(0), None),
            room(Some(9), Some(50)),
            room(None, None),
            room(Some(5), Some(10_000)),
        ];
        // The unknown one counts as unlimited; 2 cannot take 100 tokens; 1 has no request left.
        assert_eq!(order(&rooms, 100), [3, 0, 4]);
        assert_eq!(order(&rooms, 10), [3, 2, 0, 4]);
    }

    #[test]
    fn the_month_counts_too() {
        let r = Room::of(&Headroom {
            requests: Some(10),
            tokens: Some(5000),
            monthly_tokens: Some(40),
        });
        assert!(!r.fits(41));
        assert!(r.fits(40));
    }
}
