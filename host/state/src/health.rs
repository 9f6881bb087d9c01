//! Whether the stores answer now: a `SELECT 1` on the database and a read on the cache, each
//! timed, for the admin API's `/status`, the console's alerts and `tollgate status`/`doctor`.

use std::time::Instant;

use serde::Serialize;

use super::Stores;

/// One store's answer to a probe.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// `sqlite`, `postgres`, `memory` or `redis`.
    pub kind: &'static str,
    pub up: bool,
    /// How long the probe took, in ms.
    pub took_ms: f64,
    /// Why it failed (the store's own words; logged and shown to signed-in operators only).
    pub error: Option<String>,
}

/// Both stores' answers.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    pub database: Probe,
    pub cache: Probe,
}

impl Stores {
    /// Probes the database and the cache (each within the database's statement timeout).
    pub async fn health(&self) -> StoreHealth {
        let started = Instant::now();
        let db = self
            .db
            .timed(sqlx::query("SELECT 1").execute(&self.db.pool))
            .await;
        let database = Probe {
            kind: if self.db.is_postgres() {
                "postgres"
            } else {
                "sqlite"
            },
            up: db.is_ok(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            error: db.err().map(|e| e.to_string()),
        };
        let started = Instant::now();
        let cache =
            match tokio::time::timeout(self.db.timeout(), self.cache.get("tollgate:health-probe"))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            };
        let cache = Probe {
            kind: if self.shared { "redis" } else { "memory" },
            up: cache.is_ok(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
            error: cache.err(),
        };
        StoreHealth { database, cache }
    }
}
