//! Alerts on repeated intercepts: each key's refusals are counted in fixed windows in the cache
//! (Redis when shared, so a cluster counts once); the refusal that reaches the threshold sends one
//! JSON document to the webhook. Delivery runs in its own task, with retries and exponential
//! backoff, and never touches the request path.

use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::{Intercept, Stores};
use tollgate_config::{AlertsConfig, UpstreamUrl};

/// The future a [`Webhook`] returns: the answer's status, or why there was none.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<http::StatusCode, String>> + Send + 'a>>;

/// Where alerts go: one POST of a JSON document. The stores do not own an HTTP client; the
/// gateway hands them its upstream client (which implements this), so alerts share its pool and
/// TLS roots and this crate stays below the upstream layer.
pub trait Webhook: Send + Sync + 'static {
    fn post_json(&self, uri: &str, body: Bytes) -> Delivery<'_>;
}

/// For stores with no alerts configured (offline tools): every delivery fails.
pub struct NoWebhook;

impl Webhook for NoWebhook {
    fn post_json(&self, _uri: &str, _body: Bytes) -> Delivery<'_> {
        Box::pin(async { Err("no webhook client".to_owned()) })
    }
}

/// First retry delay; doubled on each further attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The wait before retry number `retry` (0 for the first): 500 ms doubled each time, at most
/// 30 s, then a random part of it dropped ("equal jitter": between half and all of it, `jitter`
/// in 0–1), so gateways that failed together do not retry together.
fn retry_delay(retry: u32, jitter: f64) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF);
    full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
}
/// Time one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's JSON body.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub event: &'static str,
    pub key_id_prefix: String,
    pub intercepts: i64,
    pub threshold: u32,
    pub window_secs: u64,
    pub window_start_ms: u64,
    /// The refusal that reached the threshold.
    pub last_attempted_ip: String,
    pub last_bound_cidr: Option<String>,
    pub last_method: String,
    pub last_path: String,
    pub last_reason: String,
    pub last_at_ms: u64,
}

pub(super) struct Alerts {
    config: AlertsConfig,
    client: Arc<dyn Webhook>,
    /// The last [`KEPT_ALERTS`] alerts this gateway sent, newest last, with how their delivery
    /// went (for the admin API's `/alerts`).
    sent: Arc<std::sync::Mutex<std::collections::VecDeque<SentAlert>>>,
}

/// Alerts kept in memory for the admin API.
pub const KEPT_ALERTS: usize = 100;

/// An alert this gateway sent to the webhook, and how its delivery went.
#[derive(Debug, Clone, Serialize)]
pub struct SentAlert {
    pub id: u64,
    /// Unix ms when it was raised.
    pub at_ms: u64,
    /// What it is about (a key id prefix, an owner's budget).
    pub about: String,
    /// The document sent.
    pub alert: serde_json::Value,
    /// `sending`, `delivered` or `failed`.
    pub delivery: &'static str,
    pub attempts: u32,
    /// The last delivery error, if any.
    pub error: Option<String>,
}

impl Alerts {
    pub(super) fn new(config: AlertsConfig, client: Arc<dyn Webhook>) -> Self {
        Self {
            config,
            client,
            sent: Arc::default(),
        }
    }

    /// The alerts this gateway sent lately, newest first.
    pub(super) fn recent(&self) -> Vec<SentAlert> {
        let sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.iter().rev().cloned().collect()
    }

    /// Counts one intercept of `key_id`; sends the alert if it is the one reaching the threshold.
    pub(super) async fn observe(&self, stores: &Stores, key_id: &str, i: &Intercept) {
        if self.config.webhook.is_none() {
            return;
        }
        // Threshold and window are live settings.
        let window_ms = stores.live.alert_window_ms().max(1);
        let threshold = stores.live.alert_threshold();
        let window_start_ms = i.at_ms / window_ms * window_ms;
        let key = format!("a:{key_id}:{window_start_ms}");
        let counted = stores.cache.incr(&key, 1, Some(window_ms)).await;
        let count = stores.or_local("alert count", counted, |m| {
            m.incr_now(&key, 1, Some(window_ms))
        });
        if count != i64::from(threshold) {
            return;
        }
        let alert = Alert {
            event: "key_intercepts",
            key_id_prefix: i.key_id_prefix.clone(),
            intercepts: count,
            threshold,
            window_secs: window_ms / 1000,
            window_start_ms,
            last_attempted_ip: i.attempted_ip.clone(),
            last_bound_cidr: i.bound_cidr.clone(),
            last_method: i.method.clone(),
            last_path: i.path.clone(),
            last_reason: i.reason.clone(),
            last_at_ms: i.at_ms,
        };
        self.send(&alert, &alert.key_id_prefix.clone());
    }

    /// Sends `alert` to the webhook (if one is configured) from its own task; `about` names
    /// what it is about in the delivery log lines.
    pub(super) fn send(&self, alert: &impl Serialize, about: &str) {
        let Some(webhook) = &self.config.webhook else {
            return;
        };
        let (body, value) =
            match serde_json::to_value(alert).and_then(|v| Ok((serde_json::to_vec(&v)?, v))) {
                Ok((b, v)) => (Bytes::from(b), v),
                Err(e) => {
                    tracing::error!(target: "alerts", error = %e, "cannot encode alert");
                    return;
                }
            };
        let id = {
            let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
            let id = sent.back().map_or(1, |a| a.id + 1);
            if sent.len() == KEPT_ALERTS {
                sent.pop_front();
            }
            sent.push_back(SentAlert {
                id,
                at_ms: super::unix_ms(),
                about: about.to_owned(),
                alert: value,
                delivery: "sending",
                attempts: 0,
                error: None,
            });
            id
        };
        let sent = self.sent.clone();
        let note = move |delivery: &'static str, attempts: u32, error: Option<String>| {
            let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(a) = sent.iter_mut().find(|a| a.id == id) {
                (a.delivery, a.attempts, a.error) = (delivery, attempts, error);
            }
        };
        tokio::spawn(deliver(
            self.client.clone(),
            webhook.clone(),
            body,
            about.to_owned(),
            self.config.retries,
            note,
        ));
    }
}

impl Stores {
    /// Sends one JSON alert to `alerts.webhook`, if configured, with its retries, off the
    /// request path (budgets passing a threshold use it).
    pub fn alert(&self, alert: &impl Serialize, about: &str) {
        self.alerts.send(alert, about);
    }

    /// The last [`KEPT_ALERTS`] alerts this gateway sent, newest first, with their delivery.
    pub fn recent_alerts(&self) -> Vec<SentAlert> {
        self.alerts.recent()
    }

    /// Whether `alerts.webhook` is set (without it no alert is sent).
    pub fn alerts_webhook_set(&self) -> bool {
        self.alerts.config.webhook.is_some()
    }
}

/// POSTs `body` until a 2xx answer or the retries run out.
async fn deliver(
    client: Arc<dyn Webhook>,
    webhook: UpstreamUrl,
    body: Bytes,
    about: String,
    retries: u32,
    note: impl Fn(&'static str, u32, Option<String>),
) {
    let uri = format!(
        "{}://{}{}",
        webhook.scheme,
        webhook.authority,
        if webhook.base_path.is_empty() {
            "/"
        } else {
            &webhook.base_path
        }
    );
    for attempt in 0..=retries {
        let outcome =
            match tokio::time::timeout(ATTEMPT_TIMEOUT, client.post_json(&uri, body.clone())).await
            {
                Ok(Ok(status)) if status.is_success() => Ok(()),
                Ok(Ok(status)) => Err(format!("webhook answered {status}")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err("timed out".to_owned()),
            };
        match outcome {
            Ok(()) => {
                tracing::info!(target: "alerts", about = %about, attempt, "alert delivered");
                note("delivered", attempt + 1, None);
                return;
            }
            Err(e) if attempt < retries => {
                tracing::warn!(target: "alerts", error = %e, attempt, "alert delivery failed; retrying");
                note("sending", attempt + 1, Some(e));
                tokio::time::sleep(retry_delay(attempt, fastrand::f64())).await;
            }
            Err(e) => {
                tracing::error!(target: "alerts", error = %e, about = %about, "alert not delivered; giving up");
                note("failed", attempt + 1, Some(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_from_500ms_stop_at_30s_and_keep_at_least_half() {
        let ms = |retry, jitter| retry_delay(retry, jitter).as_millis();
        let no_jitter: Vec<u128> = (0..8).map(|r| ms(r, 0.0)).collect();
        assert_eq!(
            no_jitter,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
        );
        // Huge retry numbers neither overflow nor pass the cap.
        assert_eq!(ms(40, 0.0), 30_000);
        assert_eq!(ms(u32::MAX, 0.0), 30_000);
        // The jitter takes off up to half.
        assert_eq!(ms(0, 1.0), 250);
        assert_eq!(ms(10, 1.0), 15_000);
        assert_eq!(ms(1, 0.5), 750);
        assert!((0..1000).all(|_| (250..=500).contains(&ms(0, fastrand::f64()))));
    }
}
