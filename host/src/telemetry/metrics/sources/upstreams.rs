//! Upstream series, read at each scrape from each upstream's own counters: in flight, passive
//! health, and cooldowns (all models, and per model).

use prometheus::{GaugeVec, Registry};

use super::super::families::gauge_vec;
use super::super::{Scrape, Source};

struct Upstreams {
    in_flight: GaugeVec,
    healthy: GaugeVec,
    cooldown: GaugeVec,
    /// Per-model cooldowns (the all-models one is `cooldown`).
    model_cooldown: GaugeVec,
}

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    let up = ["upstream"];
    Box::new(Upstreams {
        in_flight: gauge_vec(
            r,
            "tollgate_upstream_in_flight",
            "Requests in flight on the upstream, bodies included",
            &up,
        ),
        healthy: gauge_vec(
            r,
            "tollgate_upstream_healthy",
            "1 while the upstream is in selection (passive health), 0 while it is marked down",
            &up,
        ),
        cooldown: gauge_vec(
            r,
            "tollgate_upstream_cooldown_seconds",
            "Seconds left of the upstream's all-models cooldown (quota policy), 0 if none",
            &up,
        ),
        model_cooldown: gauge_vec(
            r,
            "tollgate_upstream_model_cooldown_seconds",
            "Seconds left of the upstream's cooldown for one model (quota policy or operator)",
            &["upstream", "model"],
        ),
    })
}

impl Source for Upstreams {
    fn read(&self, at: &Scrape<'_>) {
        let now = at.now_ms;
        for g in [
            &self.in_flight,
            &self.healthy,
            &self.cooldown,
            &self.model_cooldown,
        ] {
            g.reset();
        }
        for u in &at.rt.upstreams {
            let l = [&*u.name];
            self.in_flight
                .with_label_values(&l)
                .set(f64::from(u.in_flight()));
            self.healthy
                .with_label_values(&l)
                .set(f64::from(u8::from(u.is_healthy())));
            self.cooldown
                .with_label_values(&l)
                .set(u.cooling_until(None).saturating_sub(now) as f64 / 1000.0);
            for (model, until) in u.cooldowns() {
                if let Some(m) = model {
                    self.model_cooldown
                        .with_label_values(&[&*u.name, at.models.label(&m)])
                        .set(until.saturating_sub(now) as f64 / 1000.0);
                }
            }
        }
    }
}
