//! `cors`: cross-origin access for browser clients (`server.cors`).
//!
//! - `on_request`: a preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered by the
//!   gateway with 204 ([`Flow::Answer`]: not a refusal, no error recorded), before authentication
//!   and without upstream traffic; the origin of any request is noted.
//! - `on_response_head`: an allowed origin gets `Access-Control-Allow-Origin` (and the other
//!   CORS headers) on every answer, the gateway's own errors included; a preflight's answer also
//!   lists the allowed methods and headers and `Access-Control-Max-Age`. Every answer carries
//!   `Vary: Origin` (unless the origins are `*`), so caches keep origins apart. A disallowed
//!   origin gets no CORS headers, which the browser treats as a refusal.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderValue, Method};

use crate::config::CorsConfig;
use crate::pipeline::{Filter, Flow, HookResult, Hooks, Session, Step};
use crate::upstream::Upstream;

pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
    methods: HeaderValue,
    headers: HeaderValue,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// The allowed origin of this request (kept from `on_request` for the answer).
#[derive(Clone)]
struct AllowedOrigin(HeaderValue);

/// This request is a preflight the filter answered.
#[derive(Clone)]
struct Preflight;

fn joined(items: &[String]) -> HeaderValue {
    HeaderValue::from_str(&items.join(", ")).unwrap_or(HeaderValue::from_static(""))
}

impl Cors {
    pub(crate) fn new(c: &CorsConfig) -> Self {
        Self {
            any: c.allow_origins.iter().any(|o| o == "*"),
            origins: c.allow_origins.clone(),
            methods: joined(&c.allow_methods),
            headers: joined(&c.allow_headers),
            expose: (!c.expose_headers.is_empty()).then(|| joined(&c.expose_headers)),
            credentials: c.allow_credentials,
            max_age: HeaderValue::from(c.max_age.get().as_secs()),
        }
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any
            || origin
                .to_str()
                .is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }

    /// Notes an allowed origin for the answer; answers a preflight itself (204; its headers are
    /// set by [`Cors::set_headers`]).
    fn note_origin(&self, s: &mut Session<'_>) -> Flow {
        if let Some(origin) = s.head.headers.get(ORIGIN)
            && self.allows(origin)
        {
            let origin = origin.clone();
            s.ctx.ext.insert(AllowedOrigin(origin));
        }
        if s.head.method == Method::OPTIONS
            && s.head.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
        {
            s.ctx.ext.insert(Preflight);
            let mut answer = http::Response::new(crate::listen::empty_body());
            *answer.status_mut() = http::StatusCode::NO_CONTENT;
            return Flow::Answer(answer);
        }
        Flow::Continue
    }

    /// The CORS headers of an answer: `Vary`, and the allowance of a noted origin.
    fn set_headers(&self, s: &Session<'_>, h: &mut http::HeaderMap) {
        if !self.any {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
        // A request answered before `on_request` ran (no route: 404) still has its head.
        let origin = match s.ctx.ext.get::<AllowedOrigin>() {
            Some(AllowedOrigin(origin)) => origin,
            None => match s.head.headers.get(ORIGIN).filter(|o| self.allows(o)) {
                Some(origin) if s.route.is_none() => origin,
                _ => return,
            },
        };
        let allow = if self.any && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        };
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if s.ctx.ext.get::<Preflight>().is_some() {
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, self.headers.clone());
            h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        } else if let Some(expose) = &self.expose {
            h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

impl Filter for Cors {
    fn name(&self) -> &str {
        "cors"
    }

    fn hooks(&self) -> Hooks {
        Hooks::REQUEST | Hooks::RESPONSE_HEAD
    }

    fn on_request<'a>(&'a self, s: &'a mut Session<'_>) -> HookResult<'a, Flow> {
        Step::Now(Ok(self.note_origin(s)))
    }

    fn on_response_head<'a>(
        &'a self,
        s: &'a mut Session<'_>,
        head: &'a mut http::response::Parts,
        _from: Option<&'a Upstream>,
    ) -> HookResult<'a> {
        self.set_headers(s, &mut head.headers);
        Step::Now(Ok(()))
    }
}
