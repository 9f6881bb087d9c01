//! Commands answered by the running gateway through its admin API (`admin_client.rs`):
//! `tollgate status`, `tollgate reload`, `tollgate upstreams …`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::admin_client::{AdminArgs, AdminClient};
use super::output::{document, listing};
use super::{async_runtime, ms_to_rfc3339, report};
use crate::config::Config;

#[derive(Subcommand)]
pub(super) enum UpstreamsCommand {
    /// Each upstream: health, in flight, latency, error rate, cooldowns, models.
    List,
    /// Cool an upstream down (no request goes to it) for `--for`, for every model or `--model`.
    Cooldown {
        name: String,
        #[arg(long = "for", default_value = "10m")]
        duration: humantime::Duration,
        #[arg(long)]
        model: Option<String>,
    },
    /// End an upstream's cooldowns (every model's, or `--model`'s).
    Restore {
        name: String,
        #[arg(long)]
        model: Option<String>,
    },
}

/// Runs `f` with a signed-in admin client for the gateway the config at `path` describes.
fn with_admin(
    path: &std::path::Path,
    args: &AdminArgs,
    f: impl AsyncFnOnce(&AdminClient) -> Result<String, String>,
) -> ExitCode {
    let config = Config::load(path).map_err(|e| e.to_string());
    let result = async_runtime().and_then(|rt| {
        rt.block_on(async {
            let client =
                AdminClient::connect(config.as_ref().map_err(String::as_str), args).await?;
            f(&client).await
        })
    });
    report(result)
}

/// The exit code of `status`: 2 when something is critical, 1 for a warning, 0 otherwise
/// (after the report is printed), so monitoring scripts can act on it.
pub(super) fn status(path: &std::path::Path, args: &AdminArgs) -> ExitCode {
    let mut worst = 0u8;
    let code = with_admin(path, args, async |api| {
        let s = api.get("/admin/api/status").await?;
        for c in s["conditions"].as_array().into_iter().flatten() {
            worst = worst.max(match c["level"].as_str() {
                Some("critical") => 2,
                Some("warning") => 1,
                _ => 0,
            });
        }
        document(&s, status_text)
    });
    if code != ExitCode::SUCCESS {
        return code;
    }
    ExitCode::from(worst)
}

fn status_text(s: &Value) -> String {
    let store = |p: &Value| {
        format!(
            "{} {} ({:.1} ms){}",
            p["kind"].as_str().unwrap_or("?"),
            if p["up"].as_bool() == Some(true) {
                "up"
            } else {
                "DOWN"
            },
            p["took_ms"].as_f64().unwrap_or(0.0),
            p["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
    };
    let mut out = vec![
        format!("version\t{}", s["version"].as_str().unwrap_or("?")),
        format!(
            "started\t{} (up {} s)",
            s["started_ms"]
                .as_u64()
                .map_or_else(|| "?".into(), ms_to_rfc3339),
            s["uptime_secs"]
        ),
        format!("config\t{}", s["config_path"].as_str().unwrap_or("(none)")),
        format!("database\t{}", store(&s["stores"]["database"])),
        format!("cache\t{}", store(&s["stores"]["cache"])),
        format!(
            "upstreams\t{} of {} healthy, {} cooling down",
            s["healthy_upstreams"], s["upstreams"], s["cooling_upstreams"]
        ),
        format!(
            "maintenance\t{}",
            if s["maintenance"] == true {
                "on"
            } else {
                "off"
            }
        ),
        format!("failsafe\t{}", s["failsafe"].as_str().unwrap_or("?")),
    ];
    let conditions = s["conditions"].as_array().cloned().unwrap_or_default();
    if conditions.is_empty() {
        out.push("all clear".into());
    }
    for c in conditions {
        out.push(format!(
            "{}\t{}",
            c["level"].as_str().unwrap_or("?").to_uppercase(),
            c["message"].as_str().unwrap_or("")
        ));
    }
    out.join("\n")
}

/// Asks the running gateway to reload its config file and plugins (as SIGHUP does) and says
/// whether the new config is in service; exit 1 with the reason when it was refused.
pub(super) fn reload(path: &std::path::Path, args: &AdminArgs) -> ExitCode {
    with_admin(path, args, async |api| {
        let r = api
            .call(http::Method::POST, "/admin/api/reload", None)
            .await?;
        if r["ok"] == true {
            Ok("reloaded: the new config is in service".into())
        } else {
            Err(format!(
                "reload refused; the running config stays in service:\n{}\n",
                r["error"].as_str().unwrap_or(&r.to_string())
            ))
        }
    })
}

/// An upstream's allowance on one line: `rpm 498/500, month 12.30/400 USD, …`, or `-`.
fn allowance(a: &Value) -> String {
    let mut parts: Vec<String> = ["rpm", "tpm", "monthly_tokens"]
        .into_iter()
        .filter_map(|k| {
            let l = &a[k];
            Some(format!(
                "{k} {}/{} left",
                l["left"].as_u64()?,
                l["limit"].as_u64()?
            ))
        })
        .collect();
    let m = &a["monthly_budget"];
    if let (Some(spent), Some(limit)) = (m["spent"].as_f64(), m["limit"].as_f64()) {
        let currency = m["currency"].as_str().unwrap_or("");
        parts.push(format!("month {spent:.2}/{limit:.2} {currency} spent"));
    }
    for (k, what) in [
        ("provider_requests_left", "requests"),
        ("provider_tokens_left", "tokens"),
    ] {
        if let Some(n) = a[k].as_u64() {
            parts.push(format!("provider: {n} {what} left"));
        }
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

pub(super) fn upstreams(
    path: &std::path::Path,
    args: &AdminArgs,
    action: UpstreamsCommand,
) -> ExitCode {
    with_admin(path, args, async |api| match action {
        UpstreamsCommand::List => {
            let list = api.get("/admin/api/upstreams").await?;
            let rows = list.as_array().cloned().unwrap_or_default();
            listing(
                &rows,
                "name\thealth\tin flight\tlatency\terror rate\tcooldowns\tmodels\tallowance",
                |u| {
                    format!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        u["name"].as_str().unwrap_or("?"),
                        if u["healthy"] == true {
                            "healthy"
                        } else {
                            "down"
                        },
                        u["in_flight"],
                        u["latency_ewma_ms"]
                            .as_f64()
                            .map_or("-".into(), |ms| format!("{ms:.1} ms")),
                        u["error_rate"]
                            .as_f64()
                            .map_or("-".into(), |r| format!("{:.1} %", r * 100.0)),
                        u["cooldowns"]
                            .as_array()
                            .map(|cs| {
                                cs.iter()
                                    .map(|c| {
                                        format!(
                                            "{} until {}",
                                            c["model"].as_str().unwrap_or("every model"),
                                            c["until_ms"]
                                                .as_u64()
                                                .map_or_else(|| "?".into(), ms_to_rfc3339)
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            })
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "-".into()),
                        u["models"]
                            .as_array()
                            .map(|m| {
                                m.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .filter(|s| !s.is_empty())
                            .unwrap_or_else(|| "any".into()),
                        allowance(&u["allowance"]),
                    )
                },
            )
        }
        UpstreamsCommand::Cooldown {
            name,
            duration,
            model,
        } => {
            let mut body = json!({"seconds": std::time::Duration::from(duration).as_secs().max(1)});
            if let Some(m) = &model {
                body["model"] = json!(m);
            }
            let path = format!("/admin/api/upstreams/{}/cooldown", encode(&name));
            api.call(http::Method::POST, &path, Some(body)).await?;
            Ok(format!(
                "{name}: cooling down for {duration} ({})",
                model.as_deref().unwrap_or("every model")
            ))
        }
        UpstreamsCommand::Restore { name, model } => {
            let body = model
                .as_ref()
                .map_or_else(|| json!({}), |m| json!({"model": m}));
            let path = format!("/admin/api/upstreams/{}/restore", encode(&name));
            api.call(http::Method::POST, &path, Some(body)).await?;
            Ok(format!("{name}: restored"))
        }
    })
}

/// An upstream name as a path segment (names are config identifiers; escape the rest).
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_allowance_is_one_line_of_what_is_declared() {
        let a = serde_json::json!({
            "rpm": {"left": 3, "limit": 500}, "tpm": null, "monthly_tokens": null,
            "monthly_budget": {"spent": 12.3, "limit": 400.0, "currency": "USD", "resets_ms": 1},
            "provider_requests_left": 7, "provider_tokens_left": null,
        });
        assert_eq!(
            allowance(&a),
            "rpm 3/500 left, month 12.30/400.00 USD spent, provider: 7 requests left"
        );
        assert_eq!(allowance(&Value::Null), "-");
    }
}
