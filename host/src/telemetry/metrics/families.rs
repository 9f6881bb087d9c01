//! Building blocks for metric families: register one on the registry, and mirror a count the
//! gateway keeps elsewhere into a counter at scrape time.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// No labels (a single series).
pub(crate) const NO_LABELS: [&str; 0] = [];

pub(crate) fn registered<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> C {
    // Names are constants that differ from each other: registering cannot fail.
    let _ = r.register(Box::new(c.clone()));
    c
}

pub(crate) fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

pub(crate) fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

pub(crate) fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    registered(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

pub(crate) fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    (0..count).map(|i| start * factor.powi(i as i32)).collect()
}

/// Sets a counter that mirrors a count kept elsewhere.
pub(crate) fn mirror(c: &prometheus::IntCounter, value: u64) {
    c.reset();
    c.inc_by(value);
}
