//! What requests record without waiting: key uses, intercepts and token usage, batched for the
//! writer (`writer.rs`) behind bounded queues.

use crate::{Event, MinuteTotals, Stores, TokenUsage, recent, unix_ms};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// One refused request, as stored in the intercept log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Intercept {
    pub at_ms: u64,
    /// First 12 hex digits of the key id: enough to find the binding, useless to an attacker.
    pub key_id_prefix: String,
    /// The network the key is bound to, if it was known when the intercept was written.
    pub bound_cidr: Option<String>,
    pub attempted_ip: String,
    pub method: String,
    pub path: String,
    /// The refusal's error code, e.g. `ip_not_allowed` or `key_banned`.
    pub reason: String,
}

/// Length of the key id prefix kept in intercepts and alerts.
pub const KEY_ID_PREFIX_LEN: usize = 12;

/// One key's use since the last flush: how often, and the latest time and client address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyUse {
    pub(crate) last_used_ms: u64,
    pub(crate) ip: IpAddr,
    pub(crate) count: u64,
}

impl KeyUse {
    pub(crate) fn add(&mut self, ip: IpAddr, at_ms: u64) {
        self.count += 1;
        if at_ms >= self.last_used_ms {
            self.last_used_ms = at_ms;
            self.ip = ip;
        }
    }
}

/// Capacity of the write queue; beyond it, usage updates and intercepts are dropped and counted.
pub(crate) const QUEUE_CAPACITY: usize = 65_536;

/// Keys used since the writer's last flush, by key id.
pub(crate) type KeyUses = HashMap<String, KeyUse, foldhash::fast::RandomState>;

impl Stores {
    /// Notes that `key_id` was used from `ip` (batched; never waits).
    pub fn record_use(&self, key_id: &str, ip: IpAddr) {
        let at_ms = unix_ms();
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = uses.get_mut(key_id) {
            u.add(ip, at_ms);
        } else if uses.len() >= QUEUE_CAPACITY {
            drop(uses);
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        } else {
            uses.insert(
                key_id.to_owned(),
                KeyUse {
                    last_used_ms: at_ms,
                    ip,
                    count: 1,
                },
            );
        }
    }

    /// The key uses recorded since the last call (for the writer).
    pub(crate) fn take_uses(&self) -> KeyUses {
        std::mem::take(&mut *self.uses.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Logs a refusal (batched; never waits). Also counts it towards the key's alert threshold.
    pub fn record_intercept(&self, key_id: &str, intercept: Intercept) {
        self.stats.intercepts.fetch_add(1, Ordering::Relaxed);
        self.pending().1.at(intercept.at_ms).intercepts += 1;
        self.enqueue(Event::Intercept {
            key_id: key_id.to_owned(),
            intercept,
        });
    }

    /// Queues one request's token usage (summed per hour, key, upstream and model by the
    /// writer).
    pub fn record_tokens(&self, usage: TokenUsage, seen: recent::Observed) {
        let mut pending = self.pending();
        let (buffer, last_hour) = &mut *pending;
        let m = last_hour.at(usage.at_ms);
        m.requests += usage.requests;
        m.errors += usage.errors;
        m.rate_limited += u64::from(seen.status == 429);
        if let Some(took) = seen.took {
            m.latency.add(took);
        }
        if let Some(first) = seen.first_byte {
            m.first_byte.add(first);
        }
        m.input_tokens += usage.input_tokens;
        m.output_tokens += usage.output_tokens;
        if buffer.len() >= QUEUE_CAPACITY {
            drop(pending);
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.push(usage);
    }

    pub(crate) fn pending(&self) -> std::sync::MutexGuard<'_, (Vec<TokenUsage>, recent::LastHour)> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This gateway's last sixty minutes, oldest first (in memory: empty after a start, and
    /// this process's traffic only).
    pub fn last_hour_series(&self) -> Vec<MinuteTotals> {
        self.pending().1.series(unix_ms())
    }

    /// The token usage recorded since the last call (for the writer).
    pub(crate) fn take_tokens(&self) -> Vec<TokenUsage> {
        let mut pending = self.pending();
        // The next interval starts with the room this one needed: requests then never wait on
        // the buffer growing (and copying itself) under the lock.
        let room = pending.0.len();
        std::mem::replace(&mut pending.0, Vec::with_capacity(room))
    }

    /// Counts a batch the writer could not write.
    pub(crate) fn flush_failed(&self) {
        self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn enqueue(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request decided by the failsafe.
    pub fn note_failsafe(&self) {
        self.stats.failsafe.fetch_add(1, Ordering::Relaxed);
    }
}
