//! Reload series, mirrored at each scrape from the reload counters (`fs_watch::Reloads`): the
//! config's, and the data listener's TLS certificate's once a TLS listener serves this gateway.

use std::sync::atomic::Ordering;

use prometheus::{IntCounterVec, Registry};

use super::super::families::{counter_vec, mirror};
use super::super::{Scrape, Source};
use crate::fs_watch::Reloads;

struct ReloadCounters {
    config: IntCounterVec,
    tls: IntCounterVec,
}

pub(crate) fn register(r: &Registry) -> Box<dyn Source> {
    Box::new(ReloadCounters {
        config: counter_vec(
            r,
            "tollgate_config_reloads_total",
            "Config reloads, by result (a failed one leaves the running config in service)",
            &["result"],
        ),
        tls: counter_vec(
            r,
            "tollgate_tls_certificate_reloads_total",
            "Reloads of the TLS certificate after its files changed, by result (a failed one keeps the current certificate)",
            &["result"],
        ),
    })
}

fn mirror_results(c: &IntCounterVec, reloads: &Reloads) {
    for (result, n) in [("ok", &reloads.ok), ("failed", &reloads.failed)] {
        mirror(&c.with_label_values(&[result]), n.load(Ordering::Relaxed));
    }
}

impl Source for ReloadCounters {
    fn read(&self, at: &Scrape<'_>) {
        mirror_results(&self.config, at.reloads);
        if let Some(tls) = at.tls_reloads {
            mirror_results(&self.tls, tls);
        }
    }
}
