//! The policy plugins shipped in the binary (`builtin:NAME`): listed and inspected by the CLI,
//! identical to the components `plugins/build.sh` built, and enough for `policies.example.yaml`
//! to run from any directory with nothing but the config file beside it.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};

use sha2::Digest;
use tollgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// (name, file built by plugins/build.sh): the plugins the binary must embed.
const SHIPPED: &[(&str, &str)] = &[
    ("ip-binding", "tollgate_ip_binding"),
    ("header-rewrite", "tollgate_header_rewrite"),
    ("round-robin", "tollgate_round_robin"),
    ("fill-first", "tollgate_fill_first"),
    ("weighted", "tollgate_weighted"),
    ("least-busy", "tollgate_least_busy"),
    ("latency", "tollgate_latency"),
    ("session-affinity", "tollgate_session_affinity"),
    ("quota-switch", "tollgate_quota_switch"),
    ("model-alias", "tollgate_model_alias"),
    ("anthropic-openai", "tollgate_anthropic_openai"),
    ("redact", "tollgate_redact"),
    ("headroom", "tollgate_headroom"),
];

fn sha256_of_file(name: &str) -> String {
    let bytes = std::fs::read(plugins::wasm(name)).unwrap();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn tollgate(args: &[&str]) -> (bool, String) {
    tools::run(
        Command::new(BIN)
            .args(args)
            .current_dir(repo_root())
            .env_clear()
            .envs(child_env()),
    )
}

#[test]
fn plugin_builtins_lists_every_shipped_plugin_with_the_sha256_of_its_build() {
    let (ok, text) = tollgate(&["plugin", "builtins"]);
    assert!(ok, "{text}");
    for (name, file) in SHIPPED {
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("builtin:{name} ")))
            .unwrap_or_else(|| panic!("builtin:{name} not listed:\n{text}"));
        let sha = text.lines().nth(line + 1).unwrap();
        assert_eq!(
            sha.trim(),
            format!("sha256 {}", sha256_of_file(file)),
            "{name}"
        );
    }
    assert!(
        !text.contains("probe") && !text.contains("hostile"),
        "test fixtures shipped:\n{text}"
    );
}

#[test]
fn plugin_inspect_and_test_take_a_builtin() {
    let (ok, text) = tollgate(&["plugin", "inspect", "builtin:round-robin"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("module:  builtin:round-robin (built in, version 0.1.0"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "sha256:  {}",
            sha256_of_file("tollgate_round_robin")
        )),
        "{text}"
    );
    assert!(text.contains("links:   ok"), "{text}");

    let (ok, text) = tollgate(&[
        "plugin",
        "test",
        "builtin:ip-binding",
        "--cases",
        "plugins/ip-binding/cases/basic.yaml",
    ]);
    assert!(ok, "{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");

    let (ok, text) = tollgate(&["plugin", "inspect", "builtin:no-such-plugin"]);
    assert!(!ok);
    assert!(
        text.contains(
            "no built-in plugin `no-such-plugin` (built in: ip-binding, header-rewrite, round-robin"
        ),
        "{text}"
    );
}

/// The example config, alone in an empty directory and run from another one: its plugins are the
/// built-in ones, so it starts, serves through all four, and the admin API names each module and
/// version.
#[tokio::test]
async fn the_example_config_runs_from_anywhere_on_the_builtin_plugins() {
    let etc = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config = etc.path().join("policies.yaml");
    std::fs::copy(repo_root().join("policies.example.yaml"), &config).unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let mut child = tokio::process::Command::new(BIN)
        .args(["run", "--config", config.to_str().unwrap()])
        .current_dir(elsewhere.path())
        .env_clear()
        .envs(child_env())
        .env("TOLLGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOLLGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_started(&mut child, &[port, admin_port]).await;
    let http = client();
    let resp = http
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .bearer_auth("sk-tollgate-demo")
        .json(&chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // header-rewrite's response rule; round-robin and quota-switch ran as well (below).
    assert!(
        resp.headers()["x-served-by"]
            .to_str()
            .unwrap()
            .starts_with("mock")
    );

    let admin = format!("127.0.0.1:{admin_port}");
    let token = admin_token(&http, &admin, "admin", "tollgate-demo-admin").await;
    let view = admin_get(&http, &admin, &token, "/admin/api/plugins").await;
    let plugins = view["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 4, "{view}");
    for p in plugins {
        let module = p["module"].as_str().unwrap();
        let name = module
            .strip_prefix("builtin:")
            .unwrap_or_else(|| panic!("{p}"));
        let file = SHIPPED.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(p["sha256"], sha256_of_file(file), "{p}");
        assert_eq!(p["version"], "0.1.0", "{p}");
        if p["kind"] != "quota" {
            assert!(p["calls"].as_u64().unwrap() >= 1, "{p}");
        }
    }
}
