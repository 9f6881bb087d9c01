//! The Compose stack and the Kubernetes manifests: each validated by its own schema tool
//! (`check-jsonschema` with the Compose specification, `kubernetes-validate --strict`), then held
//! to what `docs/operations.md` promises of it, and `tollgate check` run on the production config
//! with exactly the environment each gives the gateway.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::process::Command;

use tollgate_tests::tools::{required_vars, run, tool, venv_tool};
use tollgate_tests::{child_env, repo_root};
use yaml_serde::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate-under-test");

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A placeholder for a required value, long enough for every length rule.
fn filled(name: &str) -> String {
    format!(
        "{}-placeholder-0123456789abcdef0123",
        name.to_ascii_lowercase()
    )
}

/// Compose-style interpolation of `${VAR}`, `${VAR:?message}` and `${VAR:-default}`: required
/// variables get a placeholder (an operator's value), defaults their default.
fn interpolate(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let body = &rest[at + 2..];
        let end = body.find('}').unwrap();
        let inner = &body[..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else {
            let name = inner.split(":?").next().unwrap();
            out.push_str(&filled(name));
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `tollgate check` on deploy/policies.yaml with exactly `env` (and no env file).
fn check_production_config(env: &BTreeMap<String, String>) -> (bool, String) {
    run(Command::new(BIN)
        .args(["check", "--config"])
        .arg(repo_root().join("deploy/policies.yaml"))
        .env_clear()
        .envs(child_env())
        .envs(env))
}

/// The image's own ENV for the planes (deploy/docker/Dockerfile; tests/tests/image.rs holds the
/// image to it).
fn image_env() -> BTreeMap<String, String> {
    [
        ("TOLLGATE_LISTEN", "0.0.0.0:8317"),
        ("TOLLGATE_ADMIN_LISTEN", "0.0.0.0:8318"),
        (
            "TOLLGATE_DATABASE",
            "sqlite:///var/lib/tollgate/tollgate.db",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn the_compose_stack_validates_and_keeps_its_promises() {
    let path = repo_root().join("deploy/docker/compose.yaml");
    let (ok, out) = run(Command::new(venv_tool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(&path));
    assert!(ok, "check-jsonschema:\n{out}");
    let raw = std::fs::read_to_string(&path).unwrap();
    assert!(
        !raw.contains("sk-tollgate-demo"),
        "the demo key is in the stack"
    );
    let c = yaml("deploy/docker/compose.yaml");
    let services = c["services"].as_mapping().unwrap();

    // Two gateways, no fixed host port on them (so scaling cannot clash), behind the balancer.
    let tg = &c["services"]["tollgate"];
    assert!(tg["deploy"]["replicas"].as_u64().unwrap() >= 2);
    assert!(
        tg.get("ports").is_none(),
        "gateways publish through the balancer only"
    );
    assert_eq!(tg["read_only"], Value::Bool(true));
    let lb = &c["services"]["lb"];
    let ports: Vec<String> = lb["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(ports.contains(&"8317:8317".to_owned()), "{ports:?}");
    let admin: Vec<&String> = ports.iter().filter(|p| p.ends_with(":8318")).collect();
    assert_eq!(
        admin,
        ["127.0.0.1:8318:8318"],
        "admin plane on the host's loopback only"
    );

    // Every service: a healthcheck (but the balancer), rotated logs, resource limits.
    for (name, s) in services {
        let name = text(name);
        if name != "lb" {
            assert!(s.get("healthcheck").is_some(), "{name}: no healthcheck");
        }
        assert_eq!(
            s["logging"]["driver"],
            Value::String("json-file".into()),
            "{name}"
        );
        assert!(
            s["logging"]["options"].get("max-size").is_some(),
            "{name}: logs not rotated"
        );
        assert!(
            s["deploy"]["resources"]["limits"].get("memory").is_some(),
            "{name}: no memory limit"
        );
    }
    let redis_cmd: Vec<String> = c["services"]["redis"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(
        redis_cmd.contains(&"--requirepass".to_owned()),
        "{redis_cmd:?}"
    );

    // Secrets come from the environment and the stack refuses to start without them.
    let env: BTreeMap<String, String> = tg["environment"]
        .as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| (text(k), text(v)))
        .collect();
    for secret in [
        "TOLLGATE_SECRET",
        "TOLLGATE_JWT_SECRET",
        "TOLLGATE_ADMIN_PASSWORD",
        "TOLLGATE_CLIENT_KEY",
    ] {
        assert!(
            env[secret].starts_with(&format!("${{{secret}:?")),
            "{secret} must be required: {}",
            env[secret]
        );
    }
    // The balancer's network is what the gateways trust and let into the admin plane.
    let subnet = text(&c["networks"]["tollgate"]["ipam"]["config"][0]["subnet"]);
    assert_eq!(env["TOLLGATE_TRUSTED_PROXY"], subnet);
    assert_eq!(env["TOLLGATE_ADMIN_ALLOW"], subnet);
    assert!(env["TOLLGATE_DATABASE"].starts_with("postgres://"));
    assert!(env["TOLLGATE_CACHE"].starts_with("redis://"));

    // The production config accepts exactly this environment (on top of the image's).
    let mut full = image_env();
    full.extend(env.iter().map(|(k, v)| (k.clone(), interpolate(v))));
    let (ok, out) = check_production_config(&full);
    assert!(ok, "tollgate check with the stack's environment:\n{out}");

    // The balancer's config, as nginx reads it (the service name resolved to loopback here).
    let conf = std::fs::read_to_string(repo_root().join("deploy/docker/lb/nginx.conf"))
        .unwrap()
        .replace("server tollgate:", "server 127.0.0.1:");
    let dir = tempfile::tempdir().unwrap();
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(
        &conf_path,
        format!(
            "pid {}/nginx.pid;\nerror_log stderr;\n{conf}",
            dir.path().display()
        ),
    )
    .unwrap();
    let (ok, out) = run(Command::new(tool("nginx"))
        .arg("-t")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir.path())
        .args(["-e", "stderr"]));
    assert!(ok, "nginx -t on the balancer's config:\n{out}");
    let volumes: Vec<String> = lb["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    assert!(
        volumes.iter().any(|v| v.starts_with("./lb/nginx.conf:")),
        "{volumes:?}"
    );
}

#[test]
fn the_kubernetes_manifests_validate_and_fit_the_image_and_config() {
    let dir = repo_root().join("deploy/kubernetes");
    let k = yaml("deploy/kubernetes/kustomization.yaml");
    let resources: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(text)
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    let mut listed = resources.clone();
    listed.sort();
    assert_eq!(listed, files, "every manifest is in the kustomization");
    let (ok, out) = run(Command::new(venv_tool("kubernetes-validate"))
        .arg("--strict")
        .args(resources.iter().map(|r| dir.join(r))));
    assert!(ok, "kubernetes-validate:\n{out}");
    assert!(!out.contains("WARN") && !out.contains("ERROR"), "{out}");

    let doc = |file: &str| -> Vec<Value> {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        text.split("\n---\n")
            .map(|d| yaml_serde::from_str(d).unwrap())
            .collect()
    };
    // The ConfigMap is deploy/policies.yaml, unchanged.
    let cm = &doc("configmap.yaml")[0];
    assert_eq!(
        text(&cm["data"]["policies.yaml"]),
        std::fs::read_to_string(repo_root().join("deploy/policies.yaml")).unwrap(),
        "configmap.yaml drifted from deploy/policies.yaml"
    );

    let d = &doc("deployment.yaml")[0];
    let spec = &d["spec"]["template"]["spec"];
    assert!(d["spec"]["replicas"].as_u64().unwrap() >= 2);
    let c = &spec["containers"][0];
    assert_eq!(text(&c["livenessProbe"]["httpGet"]["path"]), "/health");
    assert_eq!(text(&c["readinessProbe"]["httpGet"]["path"]), "/ready");
    // The image's user, a read-only root, nothing extra.
    assert_eq!(spec["securityContext"]["runAsUser"].as_u64(), Some(10001));
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"],
        Value::Bool(false)
    );
    // The config from the ConfigMap, where the image reads it.
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| text(&m["mountPath"]) == "/etc/tollgate")
        .unwrap();
    let volume = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == config_mount["name"])
        .unwrap();
    assert_eq!(volume["configMap"]["name"], cm["metadata"]["name"]);

    let env: BTreeMap<String, String> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| (text(&e["name"]), text(&e["value"])))
        .collect();
    // preStop matches drain_delay, and the grace period covers both and shutdown_grace (30 s).
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let drain: u64 = env["TOLLGATE_DRAIN_DELAY"]
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert_eq!(pre_stop, drain);
    assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() >= pre_stop + drain + 30);

    // Secrets from the Secret; with its values as shipped (empty), the gateway refuses to start.
    let secret = &doc("secret.yaml")[0];
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );
    let keys: Vec<String> = secret["stringData"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(text)
        .collect();
    let config_text = std::fs::read_to_string(repo_root().join("deploy/policies.yaml")).unwrap();
    for var in required_vars(&config_text) {
        assert!(
            keys.contains(&var) || env.contains_key(&var),
            "{var} is given to no pod"
        );
    }
    let mut shipped = image_env();
    shipped.extend(env.clone());
    shipped.extend(keys.iter().map(|k| (k.clone(), String::new())));
    let (ok, out) = check_production_config(&shipped);
    assert!(!ok && out.contains("storage.database"), "{out}");
    // Filled in: it checks out.
    let mut full = image_env();
    full.extend(env);
    full.extend(keys.iter().map(|k| (k.clone(), filled(k))));
    full.insert(
        "TOLLGATE_DATABASE".into(),
        "postgres://tollgate:pw@postgres:5432/tollgate".into(),
    );
    full.insert("TOLLGATE_CACHE".into(), "redis://:pw@redis:6379".into());
    let (ok, out) = check_production_config(&full);
    assert!(ok, "tollgate check with the pods' environment:\n{out}");

    // A Service per plane, and a disruption budget that keeps one gateway up.
    let services = doc("service.yaml");
    let ports: Vec<u64> = services
        .iter()
        .map(|s| s["spec"]["ports"][0]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [8317, 8318]);
    assert!(doc("pdb.yaml")[0]["spec"]["minAvailable"].as_u64().unwrap() >= 1);
}
