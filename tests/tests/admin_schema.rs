//! The admin API against its own OpenAPI document: schemathesis (PyPI) generates requests from
//! the document (valid and invalid) and checks that no answer is a 5xx and every answer matches
//! its documented schema. `scripts/test.sh` installs it into `target/tools/venv`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use tollgate_tests::{MockUpstream, TestGateway, client, config_yaml};

fn schemathesis() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = root.join("target/tools/venv/bin/schemathesis");
    assert!(
        st.exists(),
        "{} is missing: run scripts/test.sh, which installs schemathesis",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = schemathesis();
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.yaml");
    let yaml = config_yaml(&[mock.url()], "").replace(
        "admin:\n  listen: 127.0.0.1:0\n",
        "admin:\n  listen: 127.0.0.1:0\n  users:\n    - username: ops\n      password: schema-password-1\n  lockout: {max_failures: 1000000, window: 1m, duration: 1s}\n",
    ) + "storage:\n  database: sqlite://state.db\n";
    std::fs::write(&path, yaml).unwrap();
    let gw = TestGateway::start_file(&path).await;
    let admin = gw.admin_addr.unwrap();
    let token = client()
        .post(format!("http://{admin}/admin/api/login"))
        .json(&json!({"username": "ops", "password": "schema-password-1"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // Something to list and change.
    gw.gateway
        .stores
        .bind_first(&"ab".repeat(32), "10.1.2.3/32".parse().unwrap())
        .await
        .unwrap();

    // Its example cache goes to the temporary directory, not the source tree.
    let scratch = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .current_dir(scratch)
            .args([
                "run",
                &format!("http://{admin}/admin/api/openapi.json"),
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "25",
                "--header",
                &format!("Authorization: Bearer {token}"),
                "--url",
                &format!("http://{admin}"),
                "--no-color",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    // It really exercised the API (a run that tests nothing also exits 0).
    assert!(report.contains("/admin/api/bindings"), "{report}");
}
