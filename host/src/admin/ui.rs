//! The console at `/admin/ui/`: static files embedded in the binary (`host/console/`), served by
//! the admin listener (behind `admin.allow`, like the API) with a strict Content-Security-Policy.
//!
//! - `GET /admin/ui/` (and `/admin/ui`): the page. Its `{{file}}` placeholders become
//!   `/admin/ui/assets/file?v=<sha256 prefix>`, so each asset URL changes with its content; the
//!   page itself is `no-cache`.
//! - `GET /admin/ui/assets/{file}`: an asset, cached for a year (`immutable`) when its `v`
//!   matches, `no-cache` otherwise. Every asset has an `ETag` (its version), so a module that
//!   another imports without a version is revalidated with a 304 rather than sent again.
//!
//! Every answer carries `Content-Security-Policy` (same-origin scripts, styles and requests
//! only: no inline script or style, no framing), `X-Frame-Options: DENY`,
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`. The page logs in with
//! `POST /admin/api/session` (an HttpOnly cookie; `session.rs`).

use std::sync::OnceLock;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::error::ErrorKind;

#[derive(rust_embed::RustEmbed)]
#[folder = "console/"]
struct Assets;

/// The page's policy: nothing but this origin, no inline code, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The first 16 hex digits of an asset's sha256: its version in URLs.
fn version(name: &str) -> Option<String> {
    Assets::get(name).map(|f| hex::encode(&f.metadata.sha256_hash()[..8]))
}

/// `index.html` with its asset URLs versioned (built once).
fn page() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| {
        let raw = Assets::get("index.html")
            .map(|f| f.data)
            .unwrap_or_default();
        let mut html = String::from_utf8_lossy(&raw).into_owned();
        for name in Assets::iter().filter(|n| *n != "index.html") {
            if let Some(v) = version(&name) {
                html = html.replace(
                    &format!("{{{{{name}}}}}"),
                    &format!("/admin/ui/assets/{name}?v={v}"),
                );
            }
        }
        html
    })
}

fn secured(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

/// The console's routes.
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/admin/ui", axum::routing::get(index))
        .route("/admin/ui/", axum::routing::get(index))
        .route("/admin/ui/assets/{file}", axum::routing::get(asset))
}

async fn index() -> Response {
    secured(
        ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page()).into_response(),
        "no-cache",
    )
}

#[derive(serde::Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(
    Path(file): Path<String>,
    Query(q): Query<AssetQuery>,
    headers: http::HeaderMap,
) -> Response {
    let Some(f) = Assets::get(&file).filter(|_| file != "index.html") else {
        return ErrorKind::NoRoute.into_response();
    };
    let kind = match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    let v = hex::encode(&f.metadata.sha256_hash()[..8]);
    let cache = if q.v.as_deref() == Some(v.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let etag = format!("\"{v}\"");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|t| t.trim() == etag));
    let resp = if fresh {
        (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response()
    } else {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, kind.to_owned()),
                (header::ETAG, etag),
            ],
            f.data.into_owned(),
        )
            .into_response()
    };
    secured(resp, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_asset_by_version_and_has_no_inline_code() {
        let html = page();
        assert!(!html.contains("{{"), "{html}");
        for name in ["app.js", "app.css"] {
            let v = version(name).unwrap();
            assert!(
                html.contains(&format!("/admin/ui/assets/{name}?v={v}")),
                "{html}"
            );
        }
        // The CSP allows no inline script or style: the page must have none.
        assert!(
            !html.contains("<script>") && !html.contains("<style") && !html.contains(" style=")
        );
        assert!(!html.contains(" onclick=") && !html.contains(" onload="));
    }
}
