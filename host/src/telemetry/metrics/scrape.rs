//! What `/metrics` reads at each scrape from what the gateway already counts: upstreams, plugins,
//! shadows, stores, reloads, the process.

use super::{NO_LABELS, Reloads};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus::{GaugeVec, IntCounterVec};

use crate::pipeline::route::Runtime;
use crate::state::Stores;

/// The gauges and counters read from the gateway at each scrape.
pub(super) struct Scraped {
    pub(super) upstream_in_flight: GaugeVec,
    pub(super) upstream_healthy: GaugeVec,
    pub(super) upstream_cooldown: GaugeVec,
    pub(super) plugin: [IntCounterVec; 6],
    /// Shadow comparisons by route, live policy, candidate and outcome.
    pub(super) shadow: IntCounterVec,
    pub(super) store: [IntCounterVec; 6],
    /// Per-model cooldowns (the all-models one is `upstream_cooldown`).
    pub(super) model_cooldown: GaugeVec,
    pub(super) reloads: IntCounterVec,
    /// Reloads of the data listener's certificate after its files changed, by result.
    pub(super) tls_reloads: IntCounterVec,
    pub(super) rss: GaugeVec,
    pub(super) fds: GaugeVec,
    pub(super) start: GaugeVec,
    pub(super) cpu: prometheus::CounterVec,
}

/// `tollgate_plugin_call_duration_seconds{plugin}`: a histogram read from each loaded plugin's
/// call-time buckets (the policy runtime counts them; one atomic add per call).
pub(super) fn plugin_call_times(rt: &Runtime) -> prometheus::proto::MetricFamily {
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

/// Sets a counter that mirrors a count kept elsewhere.
pub(super) fn mirror(c: &prometheus::IntCounter, value: u64) {
    c.reset();
    c.inc_by(value);
}

impl Scraped {
    pub(super) fn read(
        &self,
        rt: &Runtime,
        stores: &Stores,
        reloads: &Reloads,
        tls: Option<&Arc<Reloads>>,
    ) {
        let now = crate::state::unix_ms();
        for g in [
            &self.upstream_in_flight,
            &self.upstream_healthy,
            &self.upstream_cooldown,
        ] {
            g.reset();
        }
        for u in &rt.upstreams {
            let l = [&*u.name];
            self.upstream_in_flight
                .with_label_values(&l)
                .set(f64::from(u.in_flight()));
            self.upstream_healthy
                .with_label_values(&l)
                .set(f64::from(u8::from(u.is_healthy())));
            self.upstream_cooldown
                .with_label_values(&l)
                .set(u.cooling_until(None).saturating_sub(now) as f64 / 1000.0);
        }
        for c in &self.plugin {
            c.reset();
        }
        for p in &rt.plugins {
            let s = &p.stats;
            let l = [&*p.spec.name];
            for (c, v) in self.plugin.iter().zip([
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
        for sh in &rt.shadows {
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
        let stats = &stores.stats;
        for (c, v) in self.store.iter().zip([
            &stats.cache_fallbacks,
            &stats.failsafe,
            &stats.queue_full,
            &stats.first_uses,
            &stats.intercepts,
            &stats.flush_failures,
        ]) {
            mirror(&c.with_label_values(&NO_LABELS), v.load(Ordering::Relaxed));
        }
        mirror(
            &self.reloads.with_label_values(&["ok"]),
            reloads.ok.load(Ordering::Relaxed),
        );
        mirror(
            &self.reloads.with_label_values(&["failed"]),
            reloads.failed.load(Ordering::Relaxed),
        );
        if let Some(tls) = tls {
            for (result, n) in [("ok", &tls.ok), ("failed", &tls.failed)] {
                mirror(
                    &self.tls_reloads.with_label_values(&[result]),
                    n.load(Ordering::Relaxed),
                );
            }
        }
        if let Some(p) = process() {
            self.rss
                .with_label_values(&NO_LABELS)
                .set(p.rss_bytes as f64);
            self.fds
                .with_label_values(&NO_LABELS)
                .set(p.open_fds as f64);
            self.start
                .with_label_values(&NO_LABELS)
                .set(p.start_time_seconds);
            let cpu = self.cpu.with_label_values(&NO_LABELS);
            cpu.reset();
            cpu.inc_by(p.cpu_seconds);
        }
    }
}

#[derive(Debug)]
pub(super) struct Process {
    pub(super) rss_bytes: u64,
    pub(super) cpu_seconds: f64,
    pub(super) open_fds: u64,
    pub(super) start_time_seconds: f64,
}

pub(super) fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(Process {
        rss_bytes: rss_pages * 4096,
        cpu_seconds: (utime + stime) / ticks,
        open_fds,
        start_time_seconds: boot + start_ticks / ticks,
    })
}
