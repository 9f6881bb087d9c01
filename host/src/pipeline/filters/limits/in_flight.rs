//! In-flight limits (`limits.in_flight`): a slot per request running, per key (or key × model),
//! released when the request ends.

use super::{HashMap, LimitBy, Limits, Refusal};
use std::sync::{Arc, Mutex};

use crate::error::GatewayError;
use crate::pipeline::Session;

/// In-flight counts of one limit on this gateway.
#[derive(Default)]
pub(crate) struct InFlightCounts(Mutex<HashMap<String, u32>>);

impl InFlightCounts {
    /// A slot of `key`, if it holds fewer than `max`; released when the slot drops.
    pub(crate) fn try_take(self: &Arc<Self>, key: String, max: u32) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.clone(),
            key,
        })
    }
}

pub(super) struct InFlightLimit {
    /// `limits:NAME`, for the request log.
    pub(super) label: Box<str>,
    pub(super) max: u32,
    pub(super) by: LimitBy,
    pub(super) keys: Vec<String>,
    pub(super) routes: Vec<String>,
    pub(super) counts: Arc<InFlightCounts>,
}

/// Holds one in-flight slot; dropping it releases it.
pub(crate) struct Slot {
    counts: Arc<InFlightCounts>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The in-flight slots a request holds (request extension; released when the context goes).
#[derive(Clone)]
pub(super) struct Slots {
    pub(super) _held: Arc<Vec<Slot>>,
}

impl Limits {
    pub(super) fn take_slots(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        let (Some(route), Some(k)) = (s.route, s.key.as_ref()) else {
            return Ok(());
        };
        let mut slots = Vec::new();
        for limit in &self.in_flight {
            if (!limit.routes.is_empty() && !limit.routes.iter().any(|r| **r == *route.prefix))
                || (!limit.keys.is_empty() && !limit.keys.iter().any(|n| **n == *k.name))
            {
                continue;
            }
            let key = match limit.by {
                LimitBy::KeyModel => format!("{}\u{0}{}", k.hex, s.model().unwrap_or("")),
                _ => k.hex.to_string(),
            };
            let Some(slot) = limit.counts.try_take(key, limit.max) else {
                // The slots taken so far are released as they drop.
                s.ctx.record.answered_by(&limit.label);
                return Err(Refusal::new(
                    http::StatusCode::TOO_MANY_REQUESTS,
                    "requests",
                    "concurrency_limit_exceeded",
                    format!(
                        "too many requests in flight for this key (limit {}); retry when one finishes",
                        limit.max
                    ),
                )
                .retry_after(1)
                .into());
            };
            slots.push(slot);
        }
        if !slots.is_empty() {
            s.ctx.ext.insert(Slots {
                _held: Arc::new(slots),
            });
        }
        Ok(())
    }
}
