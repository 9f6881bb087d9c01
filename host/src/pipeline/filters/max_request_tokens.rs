//! `max_request_tokens`: a route's cap on the prompt a request may bring
//! (`routes[].max_request_tokens`). The prompt is estimated from the size of the request body the
//! gateway read, at `limits.estimate.bytes_per_token` (4 by default, as the token limits do), so
//! the check costs nothing per token and needs no tokenizer; a request over the cap gets 400
//! `context_length_exceeded` (OpenAI's code for a prompt too long for the model) before any
//! upstream is tried and before any policy runs.
//!
//! | hook | does |
//! |---|---|
//! | `on_authenticated` | refuses a body whose estimate is over the cap |
//!
//! A streamed upload (a body not read whole) has no size yet and is not checked.

use crate::config::{Config, RouteConfig};
use crate::error::Refusal;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};

pub(crate) struct MaxRequestTokens {
    max: u64,
    bytes_per_token: u64,
}

/// The route's filter, when it sets a cap.
pub(crate) fn build(config: &Config, route: &RouteConfig) -> Option<MaxRequestTokens> {
    route.max_request_tokens.map(|max| MaxRequestTokens {
        max: max.get(),
        bytes_per_token: u64::from(config.limits.estimate.bytes_per_token.max(1)),
    })
}

impl Filter for MaxRequestTokens {
    fn name(&self) -> &str {
        "max_request_tokens"
    }

    fn hooks(&self) -> Hooks {
        Hooks::AUTHENTICATED
    }

    fn on_authenticated<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        let estimate = s.ctx.record.bytes_in.div_ceil(self.bytes_per_token);
        Step::Now(if estimate > self.max {
            Err(Refusal::new(
                http::StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "context_length_exceeded",
                format!(
                    "this request's prompt is about {estimate} tokens, over this route's limit of {}",
                    self.max
                ),
            )
            .into())
        } else {
            Ok(Flow::Continue)
        })
    }
}
