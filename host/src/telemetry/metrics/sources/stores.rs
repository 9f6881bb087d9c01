//! Store series, mirrored at each scrape from `state::StoreStats`: cache fallbacks, failsafe
//! decisions, dropped and failed writes, first uses, intercepts, requests the log dropped.

use std::sync::atomic::Ordering;

use prometheus::{IntCounterVec, Registry};

use super::super::families::{NO_LABELS, counter_vec, mirror};
use super::super::{Scrape, Source};

struct StoreCounters([IntCounterVec; 7]);

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    let c = |name, help| counter_vec(r, name, help, &[]);
    Box::new(StoreCounters([
        c(
            "tollgate_store_cache_fallbacks_total",
            "Cache operations that failed and fell back to the database or the in-process cache",
        ),
        c(
            "tollgate_store_failsafe_decisions_total",
            "Requests decided by storage.failsafe because the stores could not answer",
        ),
        c(
            "tollgate_store_writes_dropped_total",
            "Usage, intercept and token records dropped because the write queue was full",
        ),
        c(
            "tollgate_binding_first_uses_total",
            "Keys bound to a network on their first use by this gateway",
        ),
        c(
            "tollgate_intercepts_total",
            "Requests refused by IP binding (wrong network, banned key) and logged",
        ),
        c(
            "tollgate_store_flush_failures_total",
            "Batches of usage, token, intercept or request-log records the writer failed to write (kept and retried; the request log's are dropped)",
        ),
        c(
            "tollgate_request_log_dropped_total",
            "Requests not written to the request log: its buffer was full (storage.request_log.max_pending) or its batch failed",
        ),
    ]))
}

impl Source for StoreCounters {
    fn read(&self, at: &Scrape<'_>) {
        let stats = &at.stores.stats;
        for (c, v) in self.0.iter().zip([
            &stats.cache_fallbacks,
            &stats.failsafe,
            &stats.queue_full,
            &stats.first_uses,
            &stats.intercepts,
            &stats.flush_failures,
            &stats.requests_dropped,
        ]) {
            mirror(&c.with_label_values(&NO_LABELS), v.load(Ordering::Relaxed));
        }
    }
}
