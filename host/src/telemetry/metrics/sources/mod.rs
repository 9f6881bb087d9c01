//! The read-at-scrape series, one file per feature. Each registers its own families and sets them
//! at each scrape from what the feature already counts (no work on the request path). A new
//! feature's series are a new file here and one entry in [`SOURCES`].

mod plugins;
mod process;
mod reloads;
mod stores;
mod traces;
mod upstreams;

use prometheus::Registry;

use super::Source;

/// A source's `register`: adds its families to the registry.
type Register = fn(&Registry) -> Box<dyn Source>;

/// Every source, in the order their families are registered.
pub(super) const SOURCES: [Register; 6] = [
    upstreams::register,
    plugins::register,
    stores::register,
    reloads::register,
    process::register,
    traces::register,
];
