//! Token rate limits (`limits.tokens`): reserve a request's estimate at admission, settle it with
//! the reported usage, and (`enforce: strict`) end a stream that passes its reservation.

use super::{Bucket, Bytes, Limits, Quota, Subject, rate_limited, tighter};
use crate::error::GatewayError;
use crate::pipeline::Session;
use crate::pipeline::session::RequestRecord;
use crate::state::Op;

pub(super) struct TokenLimit {
    pub(super) bucket: Bucket,
    pub(super) strict: bool,
}

/// A token reservation (request extension).
#[derive(Clone, Copy, Default)]
pub(super) struct TokensTaken {
    /// Bit `i`: token limit `i` holds the reservation.
    pub(super) mask: u64,
    pub(super) reserved: u64,
    /// The part of `reserved` that is the prompt estimate.
    pub(super) prompt_estimate: u64,
    pub(super) strict: bool,
    pub(super) quota: Option<Quota>,
    /// The stream was ended at this count.
    pub(super) cut_at: Option<u64>,
}

/// The body member that caps the completion on this endpoint: OpenAI's chat completions take
/// `max_completion_tokens` (its reasoning models refuse `max_tokens`), the Responses API
/// `max_output_tokens`, legacy completions and Anthropic's messages `max_tokens`.
pub(super) fn budget_member(path: &str) -> &'static str {
    if path.ends_with("/chat/completions") {
        "max_completion_tokens"
    } else if path.ends_with("/responses") {
        "max_output_tokens"
    } else {
        "max_tokens"
    }
}

/// The final event of a stream a strict token limit ended.
pub(super) fn cut_event(reserved: u64) -> Bytes {
    crate::error::error_event(
        &format!(
            "the answer passed this request's token reservation of {reserved} (a strict token limit); the stream was ended"
        ),
        "tokens",
        "token_limit_exceeded",
    )
}

impl Limits {
    pub(super) async fn reserve_tokens(&self, s: &mut Session<'_>) -> Result<(), GatewayError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let named = s.probe.completion_budget();
        let completion = named.unwrap_or(self.default_max_tokens);
        let prompt = s.ctx.record.bytes_in.div_ceil(self.bytes_per_token);
        let want = completion.saturating_add(prompt);
        let mut taken = TokensTaken {
            reserved: want,
            prompt_estimate: prompt,
            ..TokensTaken::default()
        };
        let mut subject = Subject::new();
        for (i, limit) in self.tokens.iter().enumerate() {
            let b = &limit.bucket;
            if !b.subject(&s.ctx.record, &mut subject) {
                continue;
            }
            let capacity = b.gcra.capacity();
            let d = b.apply(&self.stores, &subject, Op::Take(want)).await;
            if !d.allowed {
                self.settle_tokens(&s.ctx.record, taken.mask, -(want as i64))
                    .await;
                s.ctx.ext.insert(TokensTaken {
                    mask: 0,
                    quota: Some(Quota {
                        limit: i,
                        remaining: b.gcra.remaining(d.ahead_us),
                        reset_us: d.ahead_us,
                    }),
                    ..TokensTaken::default()
                });
                let too_big = want > capacity;
                let message = if too_big {
                    format!(
                        "this request reserves {want} tokens (max_tokens plus the prompt estimate), more than the token limit {:?} of {capacity} allows at all",
                        b.name
                    )
                } else {
                    format!(
                        "token limit {:?} reached: this request reserves {want} tokens; retry after {:.1} s",
                        b.name,
                        d.wait_us as f64 / 1e6
                    )
                };
                s.ctx.record.answered_by(&format!("limits:{}", b.name));
                return Err(rate_limited(
                    "tokens",
                    if too_big {
                        60_000
                    } else {
                        d.wait_us.div_ceil(1000)
                    },
                    message,
                ));
            }
            let quota = Quota {
                limit: i,
                remaining: b.gcra.remaining(d.ahead_us),
                reset_us: d.ahead_us,
            };
            tighter(&mut taken.quota, quota);
            taken.strict |= limit.strict;
            taken.mask |= 1 << i;
        }
        if taken.mask != 0 {
            s.ctx.ext.insert(taken);
            if named.is_none() && self.clamp {
                // The budget that was reserved is the one the upstream gets.
                let field = budget_member(s.head.uri.path());
                s.ctx.ext.insert(Budget(field, completion));
            }
        }
        Ok(())
    }

    /// Charges (or refunds, negative) `delta` tokens to each token limit in `mask`.
    pub(super) async fn settle_tokens(&self, r: &RequestRecord, mask: u64, delta: i64) {
        let mut subject = Subject::new();
        for (i, limit) in self.tokens.iter().enumerate() {
            let b = &limit.bucket;
            if mask & (1 << i) != 0 && b.subject(r, &mut subject) {
                b.apply(&self.stores, &subject, Op::Adjust(delta)).await;
            }
        }
    }
}

/// The completion budget a clamped request is forwarded with: its body member and the tokens
/// reserved for the answer (`limits.estimate.clamp`). Applied by `on_request_body`.
#[derive(Clone, Copy)]
pub(super) struct Budget(pub(super) &'static str, pub(super) u64);

/// The body with the reserved budget added where the request names none (`None`: a body that is
/// not a JSON object, or names it already).
pub(super) fn with_budget(body: &[u8], Budget(field, tokens): Budget) -> Option<bytes::Bytes> {
    crate::pipeline::body::with_defaults(body, &[(field, tokens.into())])
}
