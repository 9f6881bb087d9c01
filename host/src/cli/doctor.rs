//! `tollgate doctor`: everything that stops a gateway from starting or serving well, checked
//! offline, one line each (`ok`, `warn`, `fail`): the config (and every plugin it loads), the
//! TLS certificate's expiry, the stores (reachable, answering), file permissions, secrets left at
//! their demo values, and whether a gateway answers on `server.listen`. Exit 1 when any check
//! fails.

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use super::output::listing;
use super::{async_runtime, build, load_checked, report};
use crate::config::{Config, DatabaseUrl};

/// A certificate expiring sooner than this is a warning.
const CERT_WARN_DAYS: i64 = 14;

#[derive(Serialize)]
struct Check {
    check: &'static str,
    /// `ok`, `warn` or `fail`.
    result: &'static str,
    detail: String,
}

fn check(check: &'static str, result: &'static str, detail: impl Into<String>) -> Check {
    Check {
        check,
        result,
        detail: detail.into(),
    }
}

pub(super) fn doctor(path: &Path) -> ExitCode {
    let mut checks = Vec::new();
    let config = match load_checked(path) {
        Ok(c) => c,
        Err(e) => {
            checks.push(check("config", "fail", e.trim_end().to_owned()));
            return finish(checks);
        }
    };
    checks.push(permissions("config file", path));
    let runtime = match async_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            checks.push(check("runtime", "fail", e));
            return finish(checks);
        }
    };
    runtime.block_on(async {
        match build(path, &config, true).await {
            Ok(gw) => checks.push(check(
                "config",
                "ok",
                format!(
                    "valid; {} routes, {} upstreams, {} plugins loaded",
                    config.routes.len(),
                    config.upstreams.len(),
                    gw.runtime().plugins.len()
                ),
            )),
            Err(e) => checks.push(check("config", "fail", e.trim_end().to_owned())),
        }
        checks.extend(tls(&config));
        checks.extend(stores(&config).await);
        checks.extend(secrets(&config));
        checks.push(running(&config).await);
    });
    finish(checks)
}

fn finish(checks: Vec<Check>) -> ExitCode {
    let failed = checks.iter().any(|c| c.result == "fail");
    let code = report(listing(&checks, "", |c| {
        format!("{:<4}\t{}\t{}", c.result, c.check, c.detail)
    }));
    if failed || code != ExitCode::SUCCESS {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The TLS certificate (`server.tls.cert`): loads with its key, and how long until it expires.
fn tls(config: &Config) -> Option<Check> {
    let tls = config.server.tls.as_ref()?;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = match CertificateDer::pem_file_iter(&tls.cert).map(|mut it| it.next()) {
        Ok(Some(Ok(der))) => der,
        Ok(_) => {
            return Some(check(
                "tls",
                "fail",
                format!("{}: no certificate", tls.cert.display()),
            ));
        }
        Err(e) => return Some(check("tls", "fail", format!("{}: {e}", tls.cert.display()))),
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return Some(check(
            "tls",
            "fail",
            format!("{}: not an X.509 certificate", tls.cert.display()),
        ));
    };
    let not_after = cert.validity().not_after.timestamp();
    let now = (crate::state::unix_ms() / 1000) as i64;
    let days = (not_after - now).div_euclid(86_400);
    let when = super::ms_to_rfc3339((not_after.max(0) as u64) * 1000);
    Some(if not_after <= now {
        check(
            "tls",
            "fail",
            format!("{} expired at {when}", tls.cert.display()),
        )
    } else if days < CERT_WARN_DAYS {
        check(
            "tls",
            "warn",
            format!("{} expires in {days} days ({when})", tls.cert.display()),
        )
    } else {
        check(
            "tls",
            "ok",
            format!("{} valid until {when} ({days} days)", tls.cert.display()),
        )
    })
}

/// The stores: the database exists (an embedded one is created by the gateway's first start),
/// both answer a probe, and the database file is not readable by everyone.
async fn stores(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    if let DatabaseUrl::Sqlite(p) = &config.storage.database {
        let file = config.resolve(p);
        if !file.exists() {
            out.push(check(
                "database",
                "warn",
                format!(
                    "no database at {} yet: the gateway creates it at its first start",
                    file.display()
                ),
            ));
            return out;
        }
        out.push(permissions("database file", &file));
    }
    let client = crate::upstream::UpstreamClient::new(config.server.timeouts.connect.get());
    match crate::state::Stores::open(
        &config.storage,
        &config.base_dir,
        &config.alerts,
        std::sync::Arc::new(client),
    )
    .await
    {
        Ok(stores) => {
            let h = stores.health().await;
            for (name, p) in [("database", &h.database), ("cache", &h.cache)] {
                out.push(if p.up {
                    check(
                        name,
                        "ok",
                        format!("{} answers in {:.1} ms", p.kind, p.took_ms),
                    )
                } else {
                    check(
                        name,
                        "fail",
                        format!(
                            "{} does not answer: {}",
                            p.kind,
                            p.error.as_deref().unwrap_or("")
                        ),
                    )
                });
            }
            stores.shutdown().await;
        }
        Err(e) => out.push(check(
            "database",
            "fail",
            format!("cannot open the stores: {e}"),
        )),
    }
    out
}

/// A file holding secrets: not writable by others, and a warning when everyone may read it.
fn permissions(what: &'static str, file: &Path) -> Check {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = match std::fs::metadata(file) {
            Ok(m) => m.permissions().mode(),
            Err(e) => return check(what, "fail", format!("{}: {e}", file.display())),
        };
        if mode & 0o002 != 0 {
            return check(
                what,
                "fail",
                format!(
                    "{} is writable by every user (mode {:o}): chmod o-w",
                    file.display(),
                    mode & 0o777
                ),
            );
        }
        if mode & 0o004 != 0 {
            return check(
                what,
                "warn",
                format!(
                    "{} is readable by every user (mode {:o}): chmod o-r, it can hold secrets",
                    file.display(),
                    mode & 0o777
                ),
            );
        }
        check(
            what,
            "ok",
            format!("{} mode {:o}", file.display(), mode & 0o777),
        )
    }
    #[cfg(not(unix))]
    check(what, "ok", file.display().to_string())
}

/// Secrets left at the example's values, and a cluster without a shared admin signing key.
fn secrets(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    if config.auth.secret.expose() == crate::config::DEMO_SECRET {
        out.push(check(
            "auth.secret",
            "warn",
            "the development default: set TOLLGATE_SECRET (key ids change with it)",
        ));
    }
    let demo = config.admin.users.iter().any(|u| {
        u.password
            .as_ref()
            .is_some_and(|p| p.expose() == crate::config::DEMO_ADMIN_PASSWORD)
    });
    if demo {
        out.push(check(
            "admin.users",
            "warn",
            "the demo admin password is in use: set TOLLGATE_ADMIN_PASSWORD or a password_hash",
        ));
    }
    if matches!(config.storage.cache, crate::config::CacheUrl::Redis(_))
        && config.admin.jwt_secret.is_none()
    {
        out.push(check("admin.jwt_secret", "warn", "unset with a shared cache: each gateway signs its own admin tokens, so a console session works on one gateway only"));
    }
    if out.is_empty() {
        out.push(check("secrets", "ok", "none left at a demo value"));
    }
    out
}

/// Whether a gateway answers `/ready` on `server.listen` (a warning when none runs: doctor is
/// also for before the first start).
async fn running(config: &Config) -> Check {
    let mut addr = config.server.listen.0;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}/ready");
    match tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(_)) => check(
            "gateway",
            "ok",
            format!(
                "something listens on {addr} (`tollgate health --url {url}` asks whether it is ready)"
            ),
        ),
        _ => check(
            "gateway",
            "warn",
            format!("nothing listens on {addr}: no gateway runs with this config here"),
        ),
    }
}
