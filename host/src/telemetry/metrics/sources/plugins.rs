//! Plugin series, mirrored at each scrape from each loaded plugin's counters (`PluginStats`):
//! calls, failures, breaker openings, refusals, traps, timeouts, the call-time histogram, and the
//! shadow comparisons of `routes[].shadow`.

use std::sync::atomic::Ordering;

use prometheus::{IntCounterVec, Registry};

use super::super::families::{counter_vec, mirror};
use super::super::{Scrape, Source};
use crate::pipeline::route::Runtime;

struct PluginSeries {
    counters: [IntCounterVec; 6],
    /// Shadow comparisons by route, live policy, candidate and outcome.
    shadow: IntCounterVec,
}

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    let c = |name, help| counter_vec(r, name, help, &["plugin"]);
    Box::new(PluginSeries {
        counters: [
            c(
                "tollgate_plugin_calls_total",
                "Calls into the loaded version of the plugin",
            ),
            c(
                "tollgate_plugin_failures_total",
                "Calls that trapped, ran out of time or memory, or could not start",
            ),
            c(
                "tollgate_plugin_breaker_openings_total",
                "Times the plugin's circuit breaker opened",
            ),
            c(
                "tollgate_plugin_rejected_total",
                "Calls refused without running: breaker open or concurrency limit",
            ),
            c(
                "tollgate_plugin_traps_total",
                "Failures that were traps (panic, unreachable, out of memory)",
            ),
            c(
                "tollgate_plugin_timeouts_total",
                "Failures that ran past the plugin's deadline",
            ),
        ],
        shadow: counter_vec(
            r,
            "tollgate_plugin_shadow_decisions_total",
            "Shadow evaluation (routes[].shadow): the candidate's decisions compared with the live policy's, by outcome: agree, disagree, error (the candidate's call failed), skipped (too many candidate calls running)",
            &["route", "live", "candidate", "outcome"],
        ),
    })
}

impl Source for PluginSeries {
    fn read(&self, at: &Scrape<'_>) {
        for c in &self.counters {
            c.reset();
        }
        for p in &at.rt.plugins {
            let s = &p.stats;
            let l = [&*p.spec.name];
            for (c, v) in self.counters.iter().zip([
                &s.calls,
                &s.failures,
                &s.breaker_opened,
                &s.rejected,
                &s.traps,
                &s.timeouts,
            ]) {
                mirror(&c.with_label_values(&l), v.load(Ordering::Relaxed));
            }
        }
        self.shadow.reset();
        for sh in &at.rt.shadows {
            let st = &sh.stats;
            for (outcome, v) in [
                ("agree", &st.agree),
                ("disagree", &st.disagree),
                ("error", &st.errors),
                ("skipped", &st.skipped),
            ] {
                let l = [&*sh.route, &*sh.live, &*sh.candidate.spec.name, outcome];
                mirror(
                    &self.shadow.with_label_values(&l),
                    v.load(Ordering::Relaxed),
                );
            }
        }
    }

    fn families(&self, at: &Scrape<'_>) -> Vec<prometheus::proto::MetricFamily> {
        // The encoder refuses a family without series (no plugin loaded).
        if at.rt.plugins.is_empty() {
            return Vec::new();
        }
        vec![call_times(at.rt)]
    }
}

/// `tollgate_plugin_call_duration_seconds{plugin}`: a histogram read from each loaded plugin's
/// call-time buckets (the policy runtime counts them; one atomic add per call).
fn call_times(rt: &Runtime) -> prometheus::proto::MetricFamily {
    use prometheus::proto;
    use tollgate_policy::{CALL_BUCKETS, CallTimes};
    let mut family = proto::MetricFamily::default();
    family.set_name("tollgate_plugin_call_duration_seconds".into());
    family.set_help("Time one call into the plugin took, instance checkout to checkin".into());
    family.set_field_type(proto::MetricType::HISTOGRAM);
    let metrics = rt
        .plugins
        .iter()
        .map(|p| {
            let t = &p.stats.call_time;
            let counts = t.counts();
            let mut cumulative = 0;
            let buckets = (0..CALL_BUCKETS - 1)
                .map(|i| {
                    cumulative += counts[i];
                    let mut b = proto::Bucket::default();
                    b.set_upper_bound(CallTimes::upper_secs(i));
                    b.set_cumulative_count(cumulative);
                    b
                })
                .collect();
            let mut h = proto::Histogram::default();
            h.set_bucket(buckets);
            h.set_sample_count(counts.iter().sum());
            h.set_sample_sum(t.sum_secs());
            let mut label = proto::LabelPair::default();
            label.set_name("plugin".into());
            label.set_value(p.spec.name.to_string());
            let mut m = proto::Metric::from_label(vec![label]);
            m.set_histogram(h);
            m
        })
        .collect();
    family.set_metric(metrics);
    family
}
