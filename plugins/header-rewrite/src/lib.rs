//! Header rewrite driven by config. Values may use `${request_id}`, `${client_ip}`, `${key_id}`,
//! `${key_name}`, `${upstream}` (responses only; empty on requests).
//! Config: `{"request": [op…], "response": [op…]}` with ops
//! `{"set": {"name", "value"}}`, `{"append": {"name", "value"}}`, `{"remove": "name"}`,
//! `{"rename": {"from", "to"}}`.

use serde::Deserialize;
use tollgate_sdk::{Header, HeaderOp, HeaderRewrite, Plugin, RequestView};

#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    Set { name: String, value: String },
    Append { name: String, value: String },
    Remove(String),
    Rename { from: String, to: String },
}

#[derive(Deserialize, Clone, Default, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub request: Vec<Op>,
    pub response: Vec<Op>,
}

/// Replaces the `${…}` variables in `template`.
pub fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value);
    }
    out
}

pub fn to_ops(ops: &[Op], vars: &[(&str, &str)]) -> Vec<HeaderOp> {
    ops.iter()
        .map(|op| match op {
            Op::Set { name, value } => HeaderOp::Set(Header {
                name: name.clone(),
                value: render(value, vars),
            }),
            Op::Append { name, value } => HeaderOp::Append(Header {
                name: name.clone(),
                value: render(value, vars),
            }),
            Op::Remove(name) => HeaderOp::Remove(name.clone()),
            Op::Rename { from, to } => HeaderOp::Rename((from.clone(), to.clone())),
        })
        .collect()
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

fn vars<'a>(r: &'a RequestView, upstream: &'a str) -> [(&'static str, &'a str); 5] {
    [
        ("request_id", r.id.as_str()),
        ("client_ip", r.client_ip.as_str()),
        ("key_id", r.key_id.as_str()),
        ("key_name", r.key_name.as_str()),
        ("upstream", upstream),
    ]
}

struct Rewrite;

impl Plugin for Rewrite {
    fn configure(config: String) -> Result<(), String> {
        let _ = CONFIG.set(tollgate_sdk::parse_config(&config)?);
        Ok(())
    }
}

impl HeaderRewrite for Rewrite {
    fn on_request(request: RequestView) -> Vec<HeaderOp> {
        let c = CONFIG.get().cloned().unwrap_or_default();
        to_ops(&c.request, &vars(&request, ""))
    }

    fn on_response(
        request: RequestView,
        upstream: String,
        _status: u16,
        _headers: Vec<Header>,
    ) -> Vec<HeaderOp> {
        let c = CONFIG.get().cloned().unwrap_or_default();
        to_ops(&c.response, &vars(&request, &upstream))
    }
}

tollgate_sdk::export!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ops_become_header_ops_with_variables_filled_in() {
        let c: Config = serde_json::from_str(
            r#"{"request": [{"set": {"name": "x-id", "value": "${request_id}@${client_ip}"}}, {"remove": "x-debug"},
                            {"rename": {"from": "a", "to": "b"}}]}"#,
        )
        .unwrap();
        let ops = to_ops(
            &c.request,
            &[("request_id", "r1"), ("client_ip", "10.0.0.1")],
        );
        assert_eq!(ops.len(), 3);
        match &ops[0] {
            HeaderOp::Set(h) => assert_eq!(h.value, "r1@10.0.0.1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_ops_are_config_errors() {
        assert!(serde_json::from_str::<Config>(r#"{"request": [{"explode": "x"}]}"#).is_err());
    }
}
