//! `tollgate health`: asks a running gateway's `/health` (or `/ready`, or any URL) and exits 0
//! only when it answers 200 within the timeout. For container `HEALTHCHECK`s and Kubernetes
//! `exec` probes in an image that has no curl, and for scripts.

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::BodyExt;

use crate::upstream::UpstreamClient;

/// Where `tollgate health` asks when no `--url` is given (the data plane's default address).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8317/health";

pub(super) fn health(url: &str, timeout: Duration) -> ExitCode {
    let outcome = super::async_runtime().and_then(|rt| {
        rt.block_on(async {
            tokio::time::timeout(timeout, ask(url))
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}",
                        humantime::format_duration(timeout)
                    ))
                })
        })
    });
    match outcome {
        Ok(()) => {
            println!("healthy: {url} answered 200");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn ask(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err("not an absolute http:// or https:// URL".into());
    }
    let req = http::Request::get(uri)
        .body(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .map_err(|e| e.to_string())?;
    let resp = UpstreamClient::new(Duration::from_secs(5))
        .request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status == http::StatusCode::OK {
        Ok(())
    } else {
        // The body says why (`/ready` answers 503 `draining`, for example).
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Err(format!("answered {status}: {}", body.trim()))
    }
}
