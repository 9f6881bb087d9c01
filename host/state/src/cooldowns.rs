//! The cluster cooldown channel: a cooldown one gateway decides (quota policy) is published on the
//! shared cache so every gateway of the cluster stops sending to that upstream too.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Stores;

/// The channel on which gateways tell each other about upstream cooldowns.
const COOLDOWNS: &str = "cooldowns";

/// An upstream cooldown decided by some gateway of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedCooldown {
    pub upstream: String,
    /// `None`: every model.
    pub model: Option<String>,
    /// Unix ms; 0 ends the cooldown (an operator's restore) instead.
    pub until_ms: u64,
}

impl Stores {
    /// Tells the other gateways sharing the cache about a cooldown (in the background: the
    /// request that caused it does not wait).
    pub fn share_cooldown(self: &Arc<Self>, cooldown: SharedCooldown) {
        let Ok(message) = serde_json::to_string(&cooldown) else {
            return;
        };
        let stores = self.clone();
        tokio::spawn(async move {
            if let Err(e) = stores.cache.publish(COOLDOWNS, &message).await {
                stores.cache_failed("publish cooldown", &e);
            }
        });
    }

    /// Cooldowns published by any gateway sharing the cache; `None` with an in-process cache.
    pub fn shared_cooldowns(&self) -> Option<mpsc::Receiver<SharedCooldown>> {
        let mut raw = self.cache.subscribe(COOLDOWNS)?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            while let Some(message) = raw.recv().await {
                match serde_json::from_str(&message) {
                    Ok(c) => {
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target: "state", error = %e, "ignoring a malformed cooldown message")
                    }
                }
            }
        });
        Some(rx)
    }
}
