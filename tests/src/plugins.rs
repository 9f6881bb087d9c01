//! Access to the real plugin components built from `plugins/` (by `scripts/test.sh`).

use std::path::PathBuf;
use std::time::Duration;

use tollgate::policy::{PluginKind, PluginSpec};

/// Path of the built component for crate `name` (e.g. `tollgate_round_robin`).
pub fn wasm(name: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn spec(name: &str, kind: PluginKind, config: &str) -> PluginSpec {
    PluginSpec {
        deadline: Duration::from_millis(20),
        max_calls: 1000,
        ..PluginSpec::with_defaults(name, kind, config)
    }
}
