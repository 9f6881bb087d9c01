//! The writer task: everything the request path hands off (usage, intercepts) is aggregated here
//! and written every `flush_interval` in one transaction per kind. Alerts are counted as
//! intercepts arrive. When the database is down, the pending batch is kept (bounded) and retried
//! on the next flush.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};

use super::alerts::Alerts;
use super::requests::LogWriter;
use super::sql::{TokenUsage, Usage};

/// Token usage is summed per hour, key id, upstream and model.
type TokenGroup = (u64, Arc<str>, Arc<str>, Arc<str>);
/// Every request's usage is looked up here, so the hash is foldhash (seeded per process, like
/// hashbrown's default) rather than SipHash: model names come from clients.
type TokenSums = HashMap<TokenGroup, TokenUsage, foldhash::fast::RandomState>;
use super::{Intercept, Stores};
use tollgate_config::AlertsConfig;

use super::alerts::Webhook;

/// Intercepts kept between two flushes. Reaching it while the database is up writes them at once
/// (a flood of refusals is written in batches of this size, not dropped); while the database is
/// down the oldest is dropped instead.
const MAX_PENDING_INTERCEPTS: usize = 10_000;

/// How often the request log is pruned (by age and by row count), at a flush.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

pub(super) enum Event {
    Intercept {
        key_id: String,
        intercept: Intercept,
    },
    Flush,
    FlushAck(oneshot::Sender<()>),
    Stop,
}

pub(super) struct Writer {
    stores: Weak<Stores>,
    alerts: Alerts,
    usage: HashMap<String, Usage>,
    /// Intercepts not yet written, oldest first; at [`MAX_PENDING_INTERCEPTS`] they are written,
    /// or (the last write failed) the oldest goes.
    intercepts: VecDeque<Intercept>,
    /// Whether the last write of intercepts failed: then a full buffer drops its oldest rather
    /// than waiting `op_timeout` on every new intercept.
    intercepts_failing: bool,
    /// Token usage summed per (hour, key, upstream, model) until the next flush.
    tokens: TokenSums,
    /// The request log's open block.
    log: LogWriter,
    /// When the request log was last pruned.
    last_prune: tokio::time::Instant,
}

impl Writer {
    pub(super) fn new(
        stores: Weak<Stores>,
        alerts: AlertsConfig,
        client: Arc<dyn Webhook>,
    ) -> Self {
        Self {
            stores,
            alerts: Alerts::new(alerts, client),
            usage: HashMap::new(),
            intercepts: VecDeque::new(),
            intercepts_failing: false,
            tokens: TokenSums::default(),
            log: LogWriter::default(),
            last_prune: tokio::time::Instant::now(),
        }
    }

    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let period = match self.stores.upgrade() {
            Some(s) => s.config.flush_interval.get(),
            None => return,
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(Event::Intercept { key_id, intercept }) => {
                        self.intercept(&key_id, intercept).await;
                    }
                    Some(Event::Flush) => self.flush().await,
                    Some(Event::FlushAck(done)) => {
                        self.flush().await;
                        let _ = done.send(());
                    }
                    Some(Event::Stop) | None => {
                        self.flush().await;
                        return;
                    }
                },
                _ = tick.tick() => self.flush().await,
            }
        }
    }

    /// Adds a key's uses since the last flush to the pending batch.
    fn used(&mut self, key_id: String, ip: IpAddr, at_ms: u64, count: u64) {
        let u = self.usage.entry(key_id).or_insert_with_key(|k| Usage {
            key_id: k.clone(),
            last_used_ms: 0,
            last_ip: String::new(),
            count: 0,
        });
        u.count += count;
        if at_ms >= u.last_used_ms {
            u.last_used_ms = at_ms;
            u.last_ip = ip.to_string();
        }
    }

    fn tokens(&mut self, t: TokenUsage) {
        let group = (
            t.hour_ms(),
            t.key_id.clone(),
            t.upstream.clone(),
            t.model.clone(),
        );
        match self.tokens.get_mut(&group) {
            Some(sum) => sum.add(&t),
            None => {
                self.tokens.insert(group, t);
            }
        }
    }

    async fn intercept(&mut self, key_id: &str, mut intercept: Intercept) {
        let Some(stores) = self.stores.upgrade() else {
            return;
        };
        if intercept.bound_cidr.is_none()
            && let Ok(Some(b)) = stores.binding(key_id).await
        {
            intercept.bound_cidr = Some(b.cidr.to_string());
        }
        self.alerts.observe(&stores, key_id, &intercept).await;
        if self.intercepts.len() >= MAX_PENDING_INTERCEPTS && !self.intercepts_failing {
            self.write_intercepts(&stores).await;
        }
        if self.intercepts.len() >= MAX_PENDING_INTERCEPTS {
            self.intercepts.pop_front();
            stores
                .stats
                .queue_full
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.intercepts.push_back(intercept);
    }

    async fn flush(&mut self) {
        let Some(stores) = self.stores.upgrade() else {
            return;
        };
        for t in stores.take_tokens() {
            self.tokens(t);
        }
        for (key_id, u) in stores.take_uses() {
            self.used(key_id, u.ip, u.last_used_ms, u.count);
        }
        if !self.usage.is_empty() {
            let batch: Vec<Usage> = self.usage.values().cloned().collect();
            match stores.db.record_usage(&batch).await {
                Ok(()) => self.usage.clear(),
                Err(e) => {
                    stores.flush_failed();
                    tracing::warn!(target: "state", error = %e, keys = batch.len(), "usage flush failed; will retry");
                }
            }
        }
        if !self.tokens.is_empty() {
            let batch: Vec<TokenUsage> = self.tokens.values().cloned().collect();
            match stores.db.record_token_usage(&batch).await {
                Ok(()) => self.tokens.clear(),
                Err(e) => {
                    stores.flush_failed();
                    // Kept (one row per group, so bounded by the groups of the outage) and retried.
                    tracing::warn!(target: "state", error = %e, groups = batch.len(), "token usage flush failed; will retry");
                }
            }
        }
        if !self.intercepts.is_empty() {
            self.write_intercepts(&stores).await;
        }
        let requests = stores.take_requests();
        let n = requests.iter().map(|b| u64::from(b.rows)).sum::<u64>();
        let (written, failed) = self.log.write(&stores, requests).await;
        if let Some(e) = failed {
            // Not kept: the buffer refills at the request rate, and the log is a record of
            // traffic, not of money (usage and budgets are written above).
            stores.flush_failed();
            stores
                .stats
                .requests_dropped
                .fetch_add(n - written, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(target: "state", error = %e, requests = n - written, "request log flush failed; the batch is dropped");
        }
        if self.last_prune.elapsed() >= PRUNE_EVERY {
            self.last_prune = tokio::time::Instant::now();
            match stores.prune_requests().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(target: "state", rows = n, "request log pruned"),
                Err(e) => {
                    tracing::warn!(target: "state", error = %e, "pruning the request log failed; will retry")
                }
            }
        }
    }

    /// Writes the pending intercepts; on failure keeps them for the next try.
    async fn write_intercepts(&mut self, stores: &Stores) {
        match stores
            .db
            .record_intercepts(self.intercepts.make_contiguous())
            .await
        {
            Ok(()) => {
                self.intercepts.clear();
                self.intercepts_failing = false;
            }
            Err(e) => {
                stores.flush_failed();
                self.intercepts_failing = true;
                tracing::warn!(target: "state", error = %e, pending = self.intercepts.len(), "intercept flush failed; will retry");
            }
        }
    }
}
