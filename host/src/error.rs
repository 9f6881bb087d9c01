//! Failures the gateway answers itself, and the one place they become HTTP responses.
//!
//! A [`GatewayError`] is what went wrong ([`ErrorKind`], which fixes the status, the OpenAI
//! `type`/`code` and the message the client sees), who is to blame ([`Source`]), whether the
//! request may be sent to another upstream ([`GatewayError::retryable`], the one fact the forward
//! loop retries on, as in Pingora), and the cause chain behind it. The cause is logged by the
//! pipeline when the request ends ([`GatewayError::log_line`]); it never reaches the client.
//!
//! Every response body has the OpenAI error shape `{"error":{"message","type","param","code"}}`
//! so SDKs surface it normally.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

/// Where a failure came from; decides who is blamed in logs (internal failures are logged as errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Internal,
}

/// What went wrong, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("no route for this path")]
    NoRoute,
    /// A request head the gateway refuses (framing, Host, path); the text says what is wrong.
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("a request header is larger than the gateway accepts")]
    HeaderTooLarge,
    /// The route does not accept this method; `allow` lists the ones it does.
    #[error("method not allowed on this path")]
    MethodNotAllowed { allow: String },
    /// The route restricts models and the request names none the gateway can read.
    #[error("this route serves only some models: send a JSON body that names a `model`")]
    ModelRequired,
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("request body is not valid JSON")]
    InvalidJson,
    #[error("client sent the request body too slowly or broke off")]
    ClientBody,
    /// The model as the client named it, cut to [`MAX_ECHO`] characters.
    #[error("no upstream serves model {:?}", truncate(.0))]
    ModelNotFound(String),
    #[error("upstream could not be reached")]
    UpstreamConnect,
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    #[error("upstream answered with an invalid response")]
    UpstreamProtocol,
    /// A policy refused the request with its own status, code and message.
    #[error("{message}")]
    PolicyDenied {
        status: StatusCode,
        code: String,
        message: String,
    },
    /// A policy failed (trap, deadline, memory) and its `on_error` is `deny`.
    #[error("a gateway policy failed")]
    PolicyFailed,
    /// The stores could not decide (database down, nothing cached) and the failsafe is `closed`.
    #[error("the gateway cannot verify this key right now; retry shortly")]
    StateUnavailable,
    /// The router found no acceptable upstream.
    #[error("no upstream can serve this request: {0}")]
    NoUpstream(String),
    /// Every upstream that serves the model is cooling down after a quota error.
    #[error("every upstream for this model is over quota; retry after {retry_after_secs} s")]
    AllCooling { retry_after_secs: u64 },
    /// A filter's own refusal (IP lists, maintenance, rate and concurrency limits, …): the
    /// filter says the status, type, code and message, so a new filter adds no variant here.
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error("internal error")]
    Internal,
}

impl ErrorKind {
    pub fn source(&self) -> Source {
        use ErrorKind::*;
        match self {
            Unauthorized
            | NoRoute
            | BadRequest(_)
            | HeaderTooLarge
            | MethodNotAllowed { .. }
            | ModelRequired
            | BodyTooLarge { .. }
            | InvalidJson
            | ClientBody
            | ModelNotFound(_)
            | Refused(_)
            | PolicyDenied { .. } => Source::Client,
            UpstreamConnect
            | UpstreamTimeout
            | UpstreamProtocol
            | NoUpstream(_)
            | AllCooling { .. } => Source::Upstream,
            Internal | PolicyFailed | StateUnavailable => Source::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        use ErrorKind::*;
        match self {
            Unauthorized => StatusCode::UNAUTHORIZED,
            NoRoute | ModelNotFound(_) => StatusCode::NOT_FOUND,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InvalidJson | BadRequest(_) | ModelRequired => StatusCode::BAD_REQUEST,
            HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ClientBody => StatusCode::REQUEST_TIMEOUT,
            UpstreamConnect | UpstreamProtocol => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            PolicyDenied { status, .. } => *status,
            PolicyFailed | NoUpstream(_) | StateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            AllCooling { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refused(r) => r.status,
        }
    }

    /// The machine-readable `code` of the error body (also logged).
    pub fn code(&self) -> &'static str {
        self.kind().1
    }

    /// The pipeline step that gives this answer, for the request log's `answered_by` when no
    /// filter named itself (`pipeline/mod.rs` lists the steps).
    pub fn step(&self) -> &'static str {
        use ErrorKind::*;
        match self {
            BadRequest(_) | HeaderTooLarge => "screen",
            NoRoute | MethodNotAllowed { .. } => "route",
            Unauthorized => "auth",
            ModelRequired | BodyTooLarge { .. } | InvalidJson | ClientBody => "body",
            ModelNotFound(_) | NoUpstream(_) | AllCooling { .. } => "select",
            UpstreamConnect | UpstreamTimeout | UpstreamProtocol => "upstream",
            PolicyDenied { .. } | PolicyFailed => "policies",
            StateUnavailable => "stores",
            Refused(_) | Internal => "gateway",
        }
    }

    /// `(type, code)` as OpenAI clients expect them.
    fn kind(&self) -> (&'static str, &'static str) {
        use ErrorKind::*;
        match self {
            Unauthorized => ("invalid_request_error", "invalid_api_key"),
            NoRoute => ("invalid_request_error", "unknown_url"),
            BodyTooLarge { .. } => ("invalid_request_error", "request_too_large"),
            InvalidJson => ("invalid_request_error", "invalid_json"),
            BadRequest(_) => ("invalid_request_error", "bad_request"),
            HeaderTooLarge => ("invalid_request_error", "request_header_fields_too_large"),
            MethodNotAllowed { .. } => ("invalid_request_error", "method_not_allowed"),
            ModelRequired => ("invalid_request_error", "model_required"),
            ClientBody => ("invalid_request_error", "request_timeout"),
            ModelNotFound(_) => ("invalid_request_error", "model_not_found"),
            UpstreamConnect => ("server_error", "upstream_unavailable"),
            UpstreamTimeout => ("server_error", "upstream_timeout"),
            UpstreamProtocol => ("server_error", "bad_upstream_response"),
            Internal => ("server_error", "internal_error"),
            PolicyDenied { .. } => ("invalid_request_error", "policy_denied"),
            PolicyFailed => ("server_error", "policy_error"),
            StateUnavailable => ("server_error", "state_unavailable"),
            NoUpstream(_) => ("server_error", "no_upstream"),
            AllCooling { .. } => ("rate_limit_error", "upstream_quota_exhausted"),
            Refused(r) => (r.kind, r.code),
        }
    }
}

/// A refusal defined by the filter that makes it ([`ErrorKind::Refused`]).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    /// The error body's `type`, e.g. `permission_error`, `requests`, `server_error`.
    pub kind: &'static str,
    /// The error body's `code` (also the request's recorded error and its metric label).
    pub code: &'static str,
    pub message: std::borrow::Cow<'static, str>,
    /// Sent as `Retry-After` (whole seconds, at least 1) when waiting helps.
    pub retry_after_secs: Option<u64>,
}

impl Refusal {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// With `Retry-After: secs` (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }
}

impl From<Refusal> for GatewayError {
    fn from(r: Refusal) -> Self {
        ErrorKind::Refused(r).into()
    }
}

/// Longest client-supplied value echoed back in an error message, in characters.
pub const MAX_ECHO: usize = 256;

/// `s` cut to [`MAX_ECHO`] characters (with `…` when cut): client values echoed in answers and
/// logs never make them large.
pub fn truncate(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(MAX_ECHO) {
        None => s.into(),
        Some((end, _)) => format!("{}…", &s[..end]).into(),
    }
}

/// The OpenAI error shape as JSON text.
pub fn error_body(message: &str, kind: &str, code: &str) -> String {
    serde_json::json!({
        "error": { "message": message, "type": kind, "param": null, "code": code }
    })
    .to_string()
}

/// The last event of a stream the gateway ends part way: an SSE `error` event carrying the
/// OpenAI error shape, which OpenAI and Anthropic clients both surface.
pub fn error_event(message: &str, kind: &str, code: &str) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        "event: error\ndata: {}\n\n",
        error_body(message, kind, code)
    ))
}

/// An OpenAI-shaped error response with the given fields.
pub fn error_response(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    let mut resp = (status, error_body(message, kind, code)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

type Cause = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the request pipeline: its kind, whether another upstream may be tried, and why.
#[derive(Debug)]
pub struct GatewayError {
    pub kind: ErrorKind,
    retryable: bool,
    cause: Option<Cause>,
    /// The failure was logged (or counted, with a rate-limited summary) where it happened, so
    /// the pipeline does not log it again for each request it refuses.
    accounted: bool,
}

impl From<ErrorKind> for GatewayError {
    fn from(kind: ErrorKind) -> Self {
        Self {
            kind,
            retryable: false,
            cause: None,
            accounted: false,
        }
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

impl GatewayError {
    /// The request never reached the upstream (or the upstream refused it before doing any work):
    /// the forward loop may send it to the next candidate if its body can be replayed.
    pub fn retryable(mut self) -> Self {
        self.retryable = true;
        self
    }

    /// Attaches the underlying failure; it is logged, never sent.
    pub fn caused_by(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The cause is counted and logged where it happened, at a bounded rate (a plugin call
    /// refused by its open breaker): a flood of such requests must not become a flood of lines.
    pub fn accounted_for(mut self) -> Self {
        self.accounted = true;
        self
    }

    /// Whether the pipeline should log this failure itself (see [`Self::accounted_for`]).
    pub fn needs_logging(&self) -> bool {
        !self.accounted
    }

    pub fn has_cause(&self) -> bool {
        self.cause.is_some()
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    pub fn source(&self) -> Source {
        self.kind.source()
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The message and cause chain for the log (`kind: cause: cause's cause…`).
    pub fn log_line(&self) -> String {
        let mut s = self.kind.to_string();
        let mut cur = self.cause.as_deref().map(|c| c as &dyn std::error::Error);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }
}

impl IntoResponse for ErrorKind {
    fn into_response(self) -> Response {
        GatewayError::from(self).into_response()
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let this = self.kind;
        let (kind, mut code) = this.kind();
        if let ErrorKind::PolicyDenied { code: own, .. } = &this {
            code = own;
        }
        let mut resp = error_response(this.status(), &this.to_string(), kind, code);
        let retry_after = match &this {
            ErrorKind::AllCooling { retry_after_secs } => Some(*retry_after_secs),
            ErrorKind::Refused(r) => r.retry_after_secs,
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let ErrorKind::MethodNotAllowed { allow } = &this
            && let Ok(v) = HeaderValue::from_str(allow)
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        if matches!(this, ErrorKind::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
