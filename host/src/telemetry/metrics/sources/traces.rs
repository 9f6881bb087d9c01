//! Trace series, mirrored at each scrape from the exporters' process-wide counts
//! (`telemetry::otlp::STATS`): spans exported, dropped on a full queue, lost to a failed export.

use std::sync::atomic::Ordering;

use prometheus::{IntCounterVec, Registry};

use super::super::families::{counter_vec, mirror};
use super::super::{Scrape, Source};
use crate::telemetry::otlp::STATS;

struct TraceCounters(IntCounterVec);

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    Box::new(TraceCounters(counter_vec(
        r,
        "tollgate_trace_spans_total",
        "Spans of sampled requests (telemetry.otlp), by result: exported, dropped (the export queue was full) or failed (the collector did not take them)",
        &["result"],
    )))
}

impl Source for TraceCounters {
    fn read(&self, _at: &Scrape<'_>) {
        for (result, n) in [
            ("exported", &STATS.exported),
            ("dropped", &STATS.dropped),
            ("failed", &STATS.failed),
        ] {
            mirror(
                &self.0.with_label_values(&[result]),
                n.load(Ordering::Relaxed),
            );
        }
    }
}
