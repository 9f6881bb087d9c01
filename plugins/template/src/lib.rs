//! The smallest useful plugin: a router that keeps the candidates in configured order.
use tollgate_sdk::{Plugin, Request, RouteDecision, Router, UpstreamView};

struct InOrder;

impl Plugin for InOrder {
    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }
}

impl Router for InOrder {
    fn select(_request: &Request, candidates: Vec<UpstreamView>) -> RouteDecision {
        RouteDecision::Pick((0..candidates.len() as u32).collect())
    }
}

tollgate_sdk::export!(InOrder);
