//! How a table the gateways share (settings, IP rules, client keys) stays in step on each of
//! them: re-read on an announcement on the cache's channel, and polled in case one was missed.

use std::sync::Arc;

use super::{StoreResult, Stores};

impl Stores {
    /// Keeps a table the gateways share in step: runs `sync(stores, announced)` on each message
    /// on the cache's `channel` (`announced` = true) and every `poll` (false: `sync` may skip an
    /// unchanged table), for as long as the stores live. A failure keeps what is in force.
    pub(crate) fn follow<F, Fut>(
        self: &Arc<Self>,
        channel: &str,
        poll: std::time::Duration,
        what: &'static str,
        sync: F,
    ) where
        F: Fn(Arc<Self>, bool) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = StoreResult<()>> + Send,
    {
        let mut announced = self.cache.subscribe(channel);
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let force = tokio::select! {
                    _ = tick.tick() => false,
                    Some(_) = async {
                        match announced.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => true,
                };
                let Some(stores) = weak.upgrade() else { return };
                if let Err(e) = sync(stores, force).await {
                    tracing::warn!(target: "state", error = %e, what, "cannot re-read; keeping what is in force");
                }
            }
        });
    }
}
