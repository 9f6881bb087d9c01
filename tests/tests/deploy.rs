//! The bare-metal deploy files, checked by their own tools: `nginx -t`, `caddy validate`, and
//! `scripts/install.sh` staged into a directory and checked with `systemd-analyze verify`, then
//! run as installed; the Prometheus alerting rules with `promtool` (and the Grafana dashboard's
//! queries against the metrics the gateway exposes). The image is checked in `image.rs`,
//! Compose and Kubernetes in `orchestration.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::process::Command;

use tollgate_tests::tools::{run, tool};
use tollgate_tests::{child_env, repo_root};

/// The `tollgate` binary built for the tests (a real executable for the unit's `ExecStart`).
const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

fn root() -> std::path::PathBuf {
    repo_root()
}

#[test]
fn nginx_accepts_the_nginx_site() {
    let nginx = tool("nginx");
    let dir = tempfile::tempdir().unwrap();
    let cert = tollgate_tests::TestCert::generate();
    let (cert_path, key_path) = cert.write(dir.path());
    // The site as shipped, with a real certificate in place of certbot's paths.
    let site = std::fs::read_to_string(root().join("deploy/nginx/tollgate.conf"))
        .unwrap()
        .replace(
            "/etc/letsencrypt/live/llm.example.com/fullchain.pem",
            cert_path.to_str().unwrap(),
        )
        .replace(
            "/etc/letsencrypt/live/llm.example.com/privkey.pem",
            key_path.to_str().unwrap(),
        );
    let site_path = dir.path().join("site.conf");
    std::fs::write(&site_path, site).unwrap();
    let main = dir.path().join("nginx.conf");
    std::fs::write(
        &main,
        format!(
            "pid {}/nginx.pid;\nevents {{}}\nhttp {{ include {}; }}\n",
            dir.path().display(),
            site_path.display()
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new(nginx)
        .arg("-t")
        .arg("-c")
        .arg(&main)
        .arg("-p")
        .arg(dir.path())
        .args(["-e", "stderr"]));
    assert!(ok, "nginx -t failed:\n{out}");
}

#[test]
fn caddy_accepts_the_caddyfile() {
    let caddy = tool("caddy");
    let home = tempfile::tempdir().unwrap();
    let (ok, out) = run(Command::new(caddy)
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(root().join("deploy/caddy/Caddyfile"))
        // Caddy keeps its state under $HOME / XDG dirs; keep the test's out of the real ones.
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path()));
    assert!(ok, "caddy validate failed:\n{out}");
}

/// `scripts/install.sh` with `DESTDIR`: the binary, the unit, the production config and an env
/// file with fresh secrets, each with its mode; the unit passes `systemd-analyze verify`, reloads
/// with SIGHUP and reads the env file the CLI reads; the staged config checks out under that env
/// file, and `key-id` on the host uses its secret. A second run overwrites neither file.
#[test]
fn install_stages_a_host_whose_unit_verifies_and_whose_cli_uses_the_services_env() {
    let analyze = tool("systemd-analyze");
    let stage = tempfile::tempdir().unwrap();
    let d = stage.path();
    let install = || {
        run(Command::new(root().join("scripts/install.sh"))
            .env("DESTDIR", d)
            .env("TOLLGATE_BIN", BIN))
    };
    let (ok, out) = install();
    assert!(ok, "install.sh failed:\n{out}");
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(d.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("usr/local/bin/tollgate"), 0o755);
    assert_eq!(mode("usr/lib/debug/usr/local/bin/tollgate.debug"), 0o644);
    stripped_with_its_debug_info_apart(
        &d.join("usr/local/bin/tollgate"),
        &d.join("usr/lib/debug/usr/local/bin/tollgate.debug"),
    );
    assert_eq!(mode("etc/systemd/system/tollgate.service"), 0o644);
    assert_eq!(
        mode("usr/local/share/tollgate/certbot-deploy-hook.sh"),
        0o755
    );
    assert_eq!(mode("etc/tollgate"), 0o750);
    assert_eq!(mode("etc/tollgate/policies.yaml"), 0o640);
    assert_eq!(
        mode("etc/tollgate/env"),
        0o640,
        "secrets: not world-readable"
    );
    assert_eq!(
        std::fs::read(d.join("etc/tollgate/policies.yaml")).unwrap(),
        std::fs::read(root().join("deploy/policies.yaml")).unwrap()
    );

    let unit = std::fs::read_to_string(d.join("etc/systemd/system/tollgate.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/tollgate run --config /etc/tollgate/policies.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=/etc/tollgate/env",
        "User=tollgate",
        "StateDirectory=tollgate",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "no `{line}` in the unit:\n{unit}"
        );
    }
    // Verified as installed, with its binary at the staged path.
    let verify = d.join("verify/tollgate.service");
    std::fs::create_dir_all(verify.parent().unwrap()).unwrap();
    std::fs::write(
        &verify,
        unit.replace(
            "/usr/local/bin/tollgate",
            d.join("usr/local/bin/tollgate").to_str().unwrap(),
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new(analyze).arg("verify").arg(&verify));
    let problems: Vec<&str> = out
        .lines()
        // Not about the unit: the machine running the tests may lack these.
        .filter(|l| !l.contains("network-online.target") && !l.trim().is_empty())
        .collect();
    assert!(ok && problems.is_empty(), "systemd-analyze verify:\n{out}");

    // The env file: every variable the config requires, with fresh values; the config checks out
    // under it (as the unit's ExecStartPre runs it), with TOLLGATE_CONFIG pointing at the staged
    // copy instead of /etc.
    let env_text = std::fs::read_to_string(d.join("etc/tollgate/env")).unwrap();
    let env = tollgate::config::env_file::parse(&env_text).unwrap();
    let config_text = std::fs::read_to_string(root().join("deploy/policies.yaml")).unwrap();
    for var in tollgate_tests::tools::required_vars(&config_text) {
        assert!(
            env.get(&var).is_some_and(|v| !v.is_empty()),
            "{var} is not set in the env file"
        );
    }
    assert_eq!(env["TOLLGATE_CONFIG"], "/etc/tollgate/policies.yaml");
    let staged_env = d.join("staged-env");
    std::fs::write(
        &staged_env,
        env_text.replace(
            "TOLLGATE_CONFIG=/etc/tollgate/policies.yaml",
            &format!(
                "TOLLGATE_CONFIG={}",
                d.join("etc/tollgate/policies.yaml").display()
            ),
        ),
    )
    .unwrap();
    let cli = |args: &[&str], stdin: &str| {
        let ran = tollgate_tests::run_with_stdin(
            Command::new(d.join("usr/local/bin/tollgate"))
                .args(args)
                .current_dir(d)
                .env_clear()
                .envs(child_env())
                .env("TOLLGATE_ENV_FILE", &staged_env),
            stdin,
        );
        (ran.ok, format!("{}{}", ran.stdout, ran.stderr))
    };
    let (ok, out) = cli(&["check"], "");
    assert!(ok, "the staged config does not check out:\n{out}");
    let (ok, id) = cli(&["key-id"], "sk-some-client-key\n");
    assert!(ok, "{id}");
    let vars = env.clone();
    let config = tollgate::Config::parse(
        &config_text,
        "policies.yaml",
        Box::new(move |k| vars.get(k).cloned()),
    )
    .unwrap();
    assert_eq!(
        id.trim(),
        tollgate::KeyRing::standalone(&config.auth)
            .id_of("sk-some-client-key")
            .to_hex()
    );

    // A second install keeps the operator's files.
    std::fs::write(d.join("etc/tollgate/policies.yaml"), "# edited\n").unwrap();
    let (ok, out) = install();
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(d.join("etc/tollgate/policies.yaml")).unwrap(),
        "# edited\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("etc/tollgate/env")).unwrap(),
        env_text
    );
}

/// The certbot deploy hook copies a renewed pair where the service's user can read it (0640, in
/// a 0750 directory), replacing each file by a rename; the gateway's config takes the copies.
#[test]
fn the_certbot_hook_copies_a_renewal_for_the_services_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lineage = dir.path().join("live/llm.example.com");
    let dest = dir.path().join("tls");
    std::fs::create_dir_all(&lineage).unwrap();
    let hook = |cert: &tollgate_tests::TestCert| {
        std::fs::write(lineage.join("fullchain.pem"), &cert.cert_pem).unwrap();
        std::fs::write(lineage.join("privkey.pem"), &cert.key_pem).unwrap();
        run(
            Command::new(root().join("deploy/systemd/certbot-deploy-hook.sh"))
                .env("RENEWED_LINEAGE", &lineage)
                .env("TOLLGATE_TLS_DIR", &dest),
        )
    };
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for _ in 0..2 {
        // A first issue, then a renewal: the copies follow.
        let cert = tollgate_tests::TestCert::generate();
        let (ok, out) = hook(&cert);
        assert!(ok, "{out}");
        assert_eq!(
            std::fs::read_to_string(dest.join("fullchain.pem")).unwrap(),
            cert.cert_pem
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("privkey.pem")).unwrap(),
            cert.key_pem
        );
        assert_eq!(mode(&dest), 0o750);
        assert_eq!(mode(&dest.join("privkey.pem")), 0o640);
        let leftovers: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // The gateway accepts the pair (check loads TLS files as `run` does).
    let config = dir.path().join("gw.yaml");
    std::fs::write(
        &config,
        tollgate_tests::config_yaml(&["http://127.0.0.1:9".into()], "").replacen(
            "  listen: 127.0.0.1:0\n",
            &format!(
                "  listen: 127.0.0.1:0\n  tls: {{cert: {}, key: {}}}\n",
                dest.join("fullchain.pem").display(),
                dest.join("privkey.pem").display()
            ),
            1,
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .env("TOLLGATE_ENV_FILE", ""));
    assert!(ok, "{out}");
}

/// The metric names (`tollgate_…`, `gen_ai_…`) `text` refers to, histogram suffixes removed.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["tollgate_", "gen_ai_"] {
        for (at, _) in text.match_indices(prefix) {
            if at > 0 && text.as_bytes()[at - 1].is_ascii_alphanumeric() {
                continue;
            }
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            names.insert(base.to_owned());
        }
    }
    names
}

/// The alerting rules load in Prometheus (`promtool check rules`), each fires on the series it
/// watches (`promtool test rules`), and every metric they and the Grafana dashboard use is one
/// the gateway exposes (docs/metrics.md lists every exposed series: `metrics.rs` checks that).
/// Every dashboard query is valid PromQL once Grafana's variables are filled in.
#[test]
fn the_alerting_rules_fire_and_the_dashboard_queries_only_exposed_metrics() {
    let promtool = tool("promtool");
    let dir = root().join("deploy/prometheus");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules", "tollgate-alerts.yaml"])
        .current_dir(&dir));
    assert!(ok, "{out}");
    assert!(out.contains("8 rules found"), "{out}");
    let (ok, out) = run(Command::new(&promtool)
        .args(["test", "rules", "tollgate-alerts.test.yaml"])
        .current_dir(&dir));
    assert!(ok, "{out}");

    let documented =
        metric_names(&std::fs::read_to_string(root().join("docs/metrics.md")).unwrap());
    let rules = std::fs::read_to_string(dir.join("tollgate-alerts.yaml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/grafana/tollgate.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 16, "{exprs:?}");
    for (what, text) in [("rules", rules), ("dashboard", exprs.join("\n"))] {
        let used = metric_names(&text);
        assert!(!used.is_empty());
        let unknown: Vec<_> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{what} use metrics the gateway does not expose: {unknown:?}"
        );
    }
    // The dashboard's queries as recording rules, Grafana's variables filled in.
    let tmp = tempfile::tempdir().unwrap();
    let mut recording = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*")
            .replace("$route", ".*");
        recording.push_str(&format!(
            "      - record: dashboard:panel{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let file = tmp.path().join("dashboard.yaml");
    std::fs::write(&file, recording).unwrap();
    let (ok, out) = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    assert!(ok, "{out}");
}

/// `bin` carries no symbols and no debug info; `debug` is that debug info, which `bin`'s
/// `.gnu_debuglink` names (with its CRC, so a debugger or a Rust backtrace finds it beside the
/// binary or under /usr/lib/debug): an address in the stripped binary resolves through it to the
/// function and the source file it was built from.
fn stripped_with_its_debug_info_apart(bin: &Path, debug: &Path) {
    let readelf = tool("readelf");
    let (ok, sections) = run(Command::new(&readelf).args(["-S", "-W"]).arg(bin));
    assert!(ok, "{sections}");
    for gone in [".debug_line", ".debug_info", ".symtab"] {
        assert!(
            !sections.contains(gone),
            "{gone} left in the installed binary"
        );
    }
    let (ok, link) = run(Command::new(&readelf)
        .args(["--string-dump=.gnu_debuglink"])
        .arg(bin));
    assert!(ok && link.contains("tollgate.debug"), "{link}");

    // The debug file's own symbol table says where a function of ours is; addr2line, asked about
    // that address in the stripped binary (with the debug file beside it, where the link
    // points), names the function and its source file.
    let (ok, symbols) = run(Command::new(tool("nm")).args(["-C"]).arg(debug));
    assert!(ok, "{symbols}");
    let addr = symbols
        .lines()
        .find_map(|l| l.strip_suffix(" T tollgate::cli::main"))
        .unwrap_or_else(|| panic!("no tollgate::cli::main in the debug file"));
    let beside = tempfile::tempdir().unwrap();
    std::fs::copy(bin, beside.path().join("tollgate")).unwrap();
    std::fs::copy(debug, beside.path().join("tollgate.debug")).unwrap();
    let (ok, resolved) = run(Command::new(tool("addr2line"))
        .args(["-f", "-C", "-e"])
        .arg(beside.path().join("tollgate"))
        .arg(format!("0x{addr}")));
    assert!(ok, "{resolved}");
    assert!(
        resolved.contains("tollgate::cli::main") && resolved.contains("src/cli/mod.rs"),
        "addr2line did not find the debug info through the link:\n{resolved}"
    );
}
