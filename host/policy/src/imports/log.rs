//! `log`: plugin log lines on the `plugin` tracing target, tagged with the plugin and request.

use super::InstanceData;
use crate::wit::log;

impl log::Host for InstanceData {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let (plugin, request_id) = (&*self.plugin, self.request_id());
        match level {
            log::Level::Debug => tracing::debug!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", plugin, request_id, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", plugin, request_id, "{message}"),
        }
        Ok(())
    }
}
