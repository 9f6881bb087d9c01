//! The deploy files, checked by their own tools: `nginx -t`, `caddy validate`,
//! `systemd-analyze verify`. A tool that is not installed fails its test: `scripts/test.sh`
//! installs all three.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `tollgate` binary built for the tests (a real executable for the unit's `ExecStart`).
const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The tool's path; a missing tool fails the test (a check that cannot run has not passed).
fn tool(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("`{name}` is not installed: scripts/test.sh installs it"))
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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

#[test]
fn systemd_accepts_the_unit() {
    let analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    // The unit as shipped, pointing at a real binary instead of /usr/local/bin/tollgate.
    let unit = std::fs::read_to_string(root().join("deploy/systemd/tollgate.service"))
        .unwrap()
        .replace("/usr/local/bin/tollgate", BIN);
    let path = dir.path().join("tollgate.service");
    std::fs::write(&path, unit).unwrap();
    let (ok, out) = run(Command::new(analyze).arg("verify").arg(&path));
    let problems: Vec<&str> = out
        .lines()
        // Not about the unit: the machine running the tests may lack these.
        .filter(|l| !l.contains("network-online.target") && !l.trim().is_empty())
        .collect();
    assert!(ok && problems.is_empty(), "systemd-analyze verify:\n{out}");
}
