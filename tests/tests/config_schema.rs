//! The config's JSON Schema (`tollgate config schema`) against real files: the example config
//! passes, files with shape or type errors fail where `tollgate check` fails them too.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use tollgate_tests::repo_root;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// The schema as the CLI prints it.
fn schema() -> Value {
    let out = Command::new(BIN)
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_example_config_satisfies_the_schema() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let example = std::fs::read_to_string(repo_root().join("policies.example.yaml")).unwrap();
    let errs = errors(&validator, &yaml(&example));
    assert!(errs.is_empty(), "{errs:#?}");
}

#[test]
fn shape_and_type_errors_fail_the_schema_as_they_fail_check() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    // The golden file with an unknown key.
    let unknown =
        std::fs::read_to_string(repo_root().join("tests/fixtures/config/unknown_key.yaml"))
            .unwrap();
    let errs = errors(&validator, &yaml(&unknown));
    assert!(errs.iter().any(|e| e.contains("lisen")), "{errs:#?}");
    // Wrong types and values the schema can express.
    let base = std::fs::read_to_string(repo_root().join("policies.example.yaml")).unwrap();
    for (what, from, to) in [
        (
            "a number as text",
            "max_connections: 10000",
            "max_connections: many",
        ),
        (
            "an unknown plugin kind",
            "kind: ip-binding",
            "kind: firewall",
        ),
        ("a lower-case method", "methods: [GET,", "methods: [get,"),
        ("a boolean as a list", "http2: true", "http2: [yes]"),
    ] {
        assert!(
            base.contains(from),
            "{what}: the example no longer has {from:?}"
        );
        let broken = base.replacen(from, to, 1);
        assert!(
            !validator.is_valid(&yaml(&broken)),
            "{what} passed the schema"
        );
        // `tollgate check` refuses the same file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, &broken).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what}: check accepted it");
    }
}

/// The limits this gateway added refuse bad values with their YAML path (and say why).
#[test]
fn bad_values_of_the_edge_and_plugin_limits_are_refused_with_their_path() {
    let base = std::fs::read_to_string(repo_root().join("policies.example.yaml")).unwrap();
    for (from, to, path) in [
        (
            "max_header_size: 8KiB",
            "max_header_size: 64KiB",
            "server.max_header_size",
        ),
        (
            "max_head_size: 32KiB",
            "max_head_size: 100",
            "server.max_head_size",
        ),
        (
            "http2_max_streams: 100",
            "http2_max_streams: 0",
            "server.http2_max_streams",
        ),
        ("# workers: 0", "workers: 5000", "server.workers"),
        (
            "client_idle: 60s",
            "client_idle: 0s",
            "server.timeouts.client_idle",
        ),
        (
            "client_write: 60s",
            "client_write: 0s",
            "server.timeouts.client_write",
        ),
        (
            "methods: [GET, POST, HEAD, OPTIONS, DELETE]",
            "methods: []",
            "routes[0].methods",
        ),
        ("methods: [GET,", "methods: [get,", "routes[0].methods[0]"),
        (
            "max_concurrency: 64",
            "max_concurrency: 0",
            "plugins[0].limits.max_concurrency",
        ),
        (
            "breaker_window: 10s",
            "breaker_window: 0s",
            "plugins[0].limits",
        ),
        (
            "listen: ${TOLLGATE_ADMIN_LISTEN:-127.0.0.1:8318}",
            "listen: ${TOLLGATE_LISTEN:-127.0.0.1:8317}",
            "admin.listen",
        ),
        ("rate: 10/s ", "rate: 10/week ", "limits.requests[0].rate"),
        ("rate: 10/s ", "rate: 0/s ", "limits.requests[0].rate"),
        ("burst: 20 ", "burst: 2000000 ", "limits.requests[0].burst"),
        (
            "routes: [/v1/] ",
            "routes: [/v2/] ",
            "limits.requests[0].routes[0]",
        ),
        ("by: ip\n", "by: ipv4\n", "limits.requests[0].by"),
        (
            "x-frame-options: DENY",
            "x-frame-options: \"bad\\nvalue\"",
            "server.response_headers.set.x-frame-options",
        ),
    ] {
        assert!(base.contains(from), "the example no longer has {from:?}");
        let config = base.replacen(from, to, 1);
        let err = tollgate::Config::parse(&config, "c.yaml", Box::new(|_| None))
            .map(|_| ())
            .expect_err(to)
            .to_string();
        assert!(
            err.lines().any(|l| l.trim_start().starts_with(path)),
            "{to}: expected an error at {path}, got:\n{err}"
        );
    }
}
