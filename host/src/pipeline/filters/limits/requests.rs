//! Request rate limits (`limits.requests`): take a request from each applicable bucket (by IP
//! and route before authentication, by key and key × model after), and give them back when a
//! later limit refuses.

use super::{Limits, Quota, Subject, rate_limited, tighter};
use crate::error::GatewayError;
use crate::pipeline::Session;
use crate::pipeline::session::RequestRecord;
use crate::state::Op;

/// What the request limits took (request extension).
#[derive(Clone, Copy, Default)]
pub(super) struct RequestsTaken {
    /// Bit `i`: request limit `i` counted this request.
    pub(super) mask: u64,
    pub(super) quota: Option<Quota>,
}

impl Limits {
    /// Takes one request from each applicable limit in `early` (or the others); on a refusal
    /// every bucket this request took from is refunded.
    pub(super) async fn take_requests(
        &self,
        s: &mut Session<'_>,
        early: bool,
    ) -> Result<(), GatewayError> {
        let mut taken = s
            .ctx
            .ext
            .get::<RequestsTaken>()
            .copied()
            .unwrap_or_default();
        let mut wait_us = 0;
        let mut subject = Subject::new();
        for (i, (b, nodelay)) in self.requests.iter().enumerate() {
            if b.early() != early || !b.subject(&s.ctx.record, &mut subject) {
                continue;
            }
            let d = b.apply(&self.stores, &subject, Op::Take(1)).await;
            if !d.allowed {
                taken.quota = Some(Quota {
                    limit: i,
                    remaining: 0,
                    reset_us: d.ahead_us,
                });
                s.ctx.ext.insert(RequestsTaken { mask: 0, ..taken });
                self.refund_requests(&s.ctx.record, taken.mask).await;
                s.ctx.record.answered_by(&format!("limits:{}", b.name));
                return Err(rate_limited(
                    "requests",
                    d.wait_us.div_ceil(1000),
                    format!(
                        "rate limit {:?} reached for this {}; retry after {:.1} s",
                        b.name,
                        b.by.as_str(),
                        d.wait_us as f64 / 1e6
                    ),
                ));
            }
            let quota = Quota {
                limit: i,
                remaining: b.gcra.remaining(d.ahead_us),
                reset_us: d.ahead_us,
            };
            tighter(&mut taken.quota, quota);
            taken.mask |= 1 << i;
            if !nodelay {
                wait_us = wait_us.max(d.wait_us);
            }
        }
        if taken.quota.is_some() {
            s.ctx.ext.insert(taken);
        }
        if wait_us > 0 {
            // nginx's delay mode: the burst is served at the rate.
            tokio::time::sleep(std::time::Duration::from_micros(wait_us)).await;
        }
        Ok(())
    }

    pub(super) async fn refund_requests(&self, r: &RequestRecord, mask: u64) {
        let mut subject = Subject::new();
        for (i, (b, _)) in self.requests.iter().enumerate() {
            if mask & (1 << i) != 0 && b.subject(r, &mut subject) {
                b.apply(&self.stores, &subject, Op::Adjust(-1)).await;
            }
        }
    }
}
