//! The filters the gateway ships: built-in ones, and one adapter per WebAssembly plugin kind.
//!
//! A route's chain is, in order: [`builtin`] filters that run first, the route's policies (their
//! adapters, [`policies`]), then built-in filters that run last. Within one hook the chain's
//! order is the call order, so a quota policy's retry decision comes before any response rewrite.
//! To add a built-in filter: see `docs/architecture.md`, "How to add a filter".

pub(crate) mod policies;
pub(crate) mod request_id;

use std::sync::Arc;

use super::Filter;
use crate::config::Config;
use crate::state::Stores;
use crate::telemetry::metrics::{Metrics, MetricsFilter};

/// The built-in filters every request meets, in order, around the route's policies.
pub(crate) struct Builtin {
    /// Before the policies (e.g. edge protection that should refuse before any plugin runs).
    pub(crate) first: Vec<Arc<dyn Filter>>,
    /// After the policies (response decoration, logging).
    pub(crate) last: Vec<Arc<dyn Filter>>,
}

pub(crate) fn builtin(config: &Config, stores: &Arc<Stores>, metrics: &Arc<Metrics>) -> Builtin {
    let first: Vec<Arc<dyn Filter>> = Vec::new();
    let mut last: Vec<Arc<dyn Filter>> = vec![
        Arc::new(request_id::RequestIdHeader::new(
            &config.server.request_id_header,
        )),
        // Before the access log, whose line carries the counts.
        Arc::new(crate::telemetry::usage::Usage::new(stores.clone())),
        // After usage (it reads the tokens).
        Arc::new(MetricsFilter {
            metrics: metrics.clone(),
        }),
    ];
    if config.logging.access_log {
        last.push(Arc::new(crate::telemetry::access_log::AccessLog));
    }
    Builtin { first, last }
}
