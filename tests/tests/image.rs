//! The image's contract, checked without a container runtime (none can run or fetch a base
//! image here): the final stage of `deploy/docker/Dockerfile` is read (its `COPY`, `ENV`, `USER`,
//! `WORKDIR`, `VOLUME`, `EXPOSE`, `HEALTHCHECK`, `ENTRYPOINT` and `CMD`), the runtime tree it
//! describes is built in a temporary directory, and the gateway runs from it under bubblewrap as
//! the image does: as the image's user, with a read-only root where only the volume is writable,
//! with exactly the image's environment. Both planes answer, the healthcheck passes, and the
//! state lands in the volume. hadolint lints the file.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use tollgate_tests::tools::{run, tool, venv_tool};
use tollgate_tests::*;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

/// The final stage of a Dockerfile, as far as running it goes.
#[derive(Debug, Default)]
struct Stage {
    /// (source, destination); a source `--from=…` names another stage's file.
    copies: Vec<(String, String)>,
    env: BTreeMap<String, String>,
    user: String,
    workdir: String,
    volumes: Vec<String>,
    exposed: Vec<u16>,
    healthcheck: Vec<String>,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (op, args) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

fn json_list(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form expected: {args}: {e}"))
}

fn final_stage(text: &str) -> Stage {
    let all = instructions(text);
    let from = all.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let mut s = Stage::default();
    for (op, args) in &all[from + 1..] {
        match op.as_str() {
            "COPY" => {
                // `COPY [--from=STAGE] SRC… DST`: a source from another stage keeps its stage.
                let parts: Vec<&str> = args.split_whitespace().collect();
                let (dst, srcs) = parts.split_last().unwrap();
                let stage = srcs.iter().find(|p| p.starts_with("--from="));
                for src in srcs.iter().filter(|p| !p.starts_with("--")) {
                    let src = stage.map_or_else(|| (*src).to_owned(), |f| format!("{f} {src}"));
                    s.copies.push((src, (*dst).to_owned()));
                }
            }
            "ENV" => {
                for pair in args.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap();
                    s.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "USER" => s.user = args.clone(),
            "WORKDIR" => s.workdir = args.clone(),
            "VOLUME" => s.volumes = json_list(args),
            "EXPOSE" => {
                s.exposed = args
                    .split_whitespace()
                    .map(|p| p.parse().unwrap())
                    .collect()
            }
            "HEALTHCHECK" => {
                let at = args.find("CMD ").expect("HEALTHCHECK CMD");
                s.healthcheck = json_list(&args[at + 4..]);
            }
            "ENTRYPOINT" => s.entrypoint = json_list(args),
            "CMD" => s.cmd = json_list(args),
            _ => {}
        }
    }
    s
}

fn dockerfile() -> String {
    std::fs::read_to_string(repo_root().join("deploy/docker/Dockerfile")).unwrap()
}

#[test]
fn hadolint_accepts_the_dockerfile() {
    let (ok, out) = run(Command::new(venv_tool("hadolint"))
        .arg("--config")
        .arg(repo_root().join(".hadolint.yaml"))
        .arg(repo_root().join("deploy/docker/Dockerfile")));
    assert!(ok, "hadolint:\n{out}");
}

/// The sandbox the image describes, around `command`: the host's system libraries and CA
/// certificates (the base image's), the tree's files read-only over them, the volume writable,
/// the root read-only, the image's user, environment and working directory.
fn sandboxed(
    tree: &Path,
    stage: &Stage,
    env: &BTreeMap<String, String>,
    command: &[String],
) -> Command {
    let (uid, gid) = stage.user.split_once(':').unwrap();
    let mut c = Command::new(tool("bwrap"));
    c.args([
        "--unshare-user",
        "--uid",
        uid,
        "--gid",
        gid,
        "--die-with-parent",
    ]);
    // Not all of /usr: the image's /usr/local is its own.
    for dir in [
        "/usr/lib",
        "/usr/lib64",
        "/lib",
        "/lib64",
        "/usr/share/ca-certificates",
        "/etc/ssl",
        "/etc/ca-certificates",
    ] {
        if Path::new(dir).exists() {
            c.args(["--ro-bind", dir, dir]);
        }
    }
    for (_, dst) in &stage.copies {
        c.arg("--ro-bind")
            .arg(tree.join(dst.trim_start_matches('/')))
            .arg(dst);
    }
    for v in &stage.volumes {
        c.arg("--bind")
            .arg(tree.join(v.trim_start_matches('/')))
            .arg(v);
    }
    c.args(["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/"]);
    c.args(["--chdir", &stage.workdir, "--clearenv"]);
    for (k, v) in env {
        c.args(["--setenv", k, v]);
    }
    c.arg("--").args(command);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_runs_read_only_as_its_user_and_passes_its_healthcheck() {
    let stage = final_stage(&dockerfile());
    // The contract itself.
    let (uid, _) = stage.user.split_once(':').expect("USER uid:gid");
    assert_ne!(uid, "0", "the image must not run as root");
    assert_eq!(stage.entrypoint, ["/usr/local/bin/tollgate"]);
    let port = |var: &str| -> u16 { stage.env[var].rsplit_once(':').unwrap().1.parse().unwrap() };
    let (data, admin) = (port("TOLLGATE_LISTEN"), port("TOLLGATE_ADMIN_LISTEN"));
    assert!(stage.env["TOLLGATE_LISTEN"].starts_with("0.0.0.0:"));
    assert_eq!(stage.exposed, [data, admin], "EXPOSE both planes");
    assert_eq!(
        stage.healthcheck[..2],
        ["/usr/local/bin/tollgate", "health"]
    );
    assert!(
        stage.volumes.contains(&stage.workdir),
        "the working directory is the volume"
    );

    // The tree: every COPY of the final stage (the binary built by the first stage is the one the
    // tests built), and the volume.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path();
    let work = tempfile::tempdir().unwrap();
    for (src, dst) in &stage.copies {
        let to = tree.join(dst.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        let from = if src.starts_with("--from=") {
            // The build stage's binary, split as it splits it: the image carries the stripped one.
            assert_eq!(src, "--from=build /out/tollgate");
            let split = work.path().join("tollgate");
            let (ok, out) = run(Command::new(repo_root().join("scripts/split-debug.sh"))
                .arg(BIN)
                .arg(&split));
            assert!(ok, "split-debug.sh: {out}");
            split
        } else {
            repo_root().join(src)
        };
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    for v in &stage.volumes {
        std::fs::create_dir_all(tree.join(v.trim_start_matches('/'))).unwrap();
    }

    // The image's environment, with this test's free ports for the planes' (the healthcheck's
    // URL follows), and the secrets an operator must pass.
    let mock = MockUpstream::start().await;
    let (free_data, free_admin) = (free_port(), free_port());
    let mut env = stage.env.clone();
    env.insert("TOLLGATE_LISTEN".into(), format!("0.0.0.0:{free_data}"));
    env.insert(
        "TOLLGATE_ADMIN_LISTEN".into(),
        format!("0.0.0.0:{free_admin}"),
    );
    for (k, v) in [
        ("TOLLGATE_SECRET", "image-test-secret-0123456789"),
        (
            "TOLLGATE_JWT_SECRET",
            "image-test-jwt-secret-0123456789abcdef",
        ),
        ("TOLLGATE_ADMIN_PASSWORD", "image-test-admin-password"),
        ("TOLLGATE_CLIENT_KEY", CLIENT_KEY),
        ("OPENAI_API_KEY", "sk-upstream-credential"),
        ("TOLLGATE_UPSTREAM_URL", &mock.url()),
    ] {
        env.insert(k.into(), v.into());
    }
    for (k, v) in child_env() {
        if k != "TOLLGATE_ENV_FILE" {
            env.insert(k, v);
        }
    }
    let command: Vec<String> = stage.entrypoint.iter().chain(&stage.cmd).cloned().collect();
    let mut gateway = tokio::process::Command::from(sandboxed(tree, &stage, &env, &command));
    let mut child = gateway
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_started(&mut child, &[free_admin, free_data]).await;

    // The data plane proxies with the image's config and built-in plugins.
    let http = client();
    let resp = post_chat(
        &http,
        &format!("http://127.0.0.1:{free_data}/v1/chat/completions"),
        CLIENT_KEY,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.last_headers()["authorization"],
        "Bearer sk-upstream-credential"
    );
    // The admin plane: log in, and see the built-in plugins in service.
    let admin = format!("127.0.0.1:{free_admin}");
    let token = admin_token(&http, &admin, "admin", "image-test-admin-password").await;
    let plugins = admin_get(&http, &admin, &token, "/admin/api/plugins").await;
    let modules: Vec<&str> = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["module"].as_str().unwrap())
        .collect();
    assert_eq!(modules, ["builtin:ip-binding", "builtin:quota-switch"]);

    // The HEALTHCHECK, run in the same sandbox (its URL on this test's port).
    let health: Vec<String> = stage
        .healthcheck
        .iter()
        .map(|a| a.replace(&format!(":{data}/"), &format!(":{free_data}/")))
        .collect();
    let (ok, out) = run(&mut sandboxed(tree, &stage, &env, &health));
    assert!(ok, "the healthcheck failed:\n{out}");

    // Only the volume was written: the database and the plugins' compilation cache.
    let volume = tree.join(stage.workdir.trim_start_matches('/'));
    assert!(volume.join("tollgate.db").exists());
    assert!(
        volume.join("cache/tollgate").is_dir(),
        "no compilation cache in the volume"
    );

    child.start_kill().unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("\"level\":\"ERROR\"") && !log.contains("Read-only file system"),
        "{log}"
    );
}
