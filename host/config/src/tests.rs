use super::*;

const MINIMAL: &str = r#"
auth:
  secret: ${SECRET}
  keys:
    - name: alice
      key: ${ALICE_KEY:-sk-alice-default}
upstreams:
  - name: mock
    mock: {}
  - name: openai
    url: https://api.openai.com
    credential: ${OPENAI_API_KEY:-}
    models: ["gpt-4o*", o3]
routes:
  - path_prefix: /v1/
    upstreams: [mock]
"#;

fn env(name: &str) -> Option<String> {
    (name == "SECRET").then(|| "0123456789abcdef-secret".to_owned())
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    Config::parse(text, "test.yaml", Box::new(env))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.server.listen.0.to_string(), "127.0.0.1:8317");
    assert_eq!(c.server.max_body.0, 50 * 1024 * 1024);
    assert_eq!(c.server.timeouts.connect.get().as_secs(), 10);
    assert_eq!(c.server.timeouts.response_head.get().as_secs(), 300);
    assert_eq!(c.server.timeouts.idle.get().as_secs(), 300);
    assert_eq!(
        c.auth.keys[0].key.as_ref().unwrap().expose(),
        "sk-alice-default"
    );
    assert_eq!(c.auth.secret.expose(), "0123456789abcdef-secret");
    assert!(c.upstreams[1].credential.is_empty());
}

#[test]
fn model_patterns_match_exact_names_and_prefixes() {
    let c = parse(MINIMAL).unwrap();
    let openai = &c.upstreams[1];
    assert!(openai.serves("gpt-4o-mini"));
    assert!(openai.serves("o3"));
    assert!(!openai.serves("o3-mini"));
    assert!(c.upstreams[0].serves("anything"));
}

#[test]
fn unknown_key_names_its_full_path_and_line() {
    let text = MINIMAL.replace(
        "  - path_prefix: /v1/",
        "  - path_prefix: /v1/\n    upstream: [mock]",
    );
    let err = parse(&text).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    let e = &err.errors[0];
    assert_eq!(e.path, "routes[0].upstream");
    assert!(
        e.message.starts_with("unknown field `upstream`"),
        "{}",
        e.message
    );
    assert_eq!(e.location.map(|l| l.0), Some(16));
}

#[test]
fn bad_value_names_its_path() {
    let text = format!("server:\n  timeouts:\n    idle: soon\n{MINIMAL}");
    let err = parse(&text).unwrap_err();
    assert_eq!(err.errors[0].path, "server.timeouts.idle");
    assert!(err.errors[0].message.contains("invalid duration \"soon\""));
    assert_eq!(err.errors[0].location.map(|l| l.0), Some(3));
}

#[test]
fn unset_variable_names_its_path() {
    let err = Config::parse(MINIMAL, "t.yaml", Box::new(|_| None)).unwrap_err();
    assert_eq!(err.errors[0].path, "auth.secret");
    assert!(err.errors[0].message.contains("SECRET is not set"));
}

#[test]
fn validation_reports_every_error_at_once() {
    let text = MINIMAL
        .replace("upstreams: [mock]", "upstreams: [mock, nope]")
        .replace("  - name: openai", "  - name: mock")
        .replace("key: ${ALICE_KEY:-sk-alice-default}", "key: short");
    let err = parse(&text).unwrap_err();
    let paths: Vec<&str> = err.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "auth.keys[0].key",
            "upstreams[1].name",
            "routes[0].upstreams[1]"
        ]
    );
}

#[test]
fn routes_cannot_shadow_gateway_endpoints() {
    let err = parse(&MINIMAL.replace("path_prefix: /v1/", "path_prefix: /admin/api")).unwrap_err();
    assert_eq!(err.errors[0].path, "routes[0].path_prefix");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let c = parse(MINIMAL).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("0123456789abcdef-secret"));
    assert!(!dump.contains("sk-alice-default"));
}
