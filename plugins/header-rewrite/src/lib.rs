//! Header rewrite driven by config. Values may use `${request_id}`, `${client_ip}`, `${key_id}`,
//! `${key_name}`, `${upstream}` (responses only; empty on requests).
//! Config: `{"request": [op…], "response": [op…]}` with ops
//! `{"set": {"name", "value"}}`, `{"append": {"name", "value"}}`, `{"remove": "name"}`,
//! `{"rename": {"from", "to"}}`. A phase with no ops is not called at all.
//!
//! Values are parsed into templates once, at `configure`; a call fetches from the host only the
//! variables its templates use.

use std::sync::OnceLock;

use serde::Deserialize;
use tollgate_sdk::{Header, HeaderOp, HeaderRewrite, Phases, Plugin, Request, Response};

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

/// A variable a value may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    RequestId,
    ClientIp,
    KeyId,
    KeyName,
    Upstream,
}

impl Var {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "request_id" => Self::RequestId,
            "client_ip" => Self::ClientIp,
            "key_id" => Self::KeyId,
            "key_name" => Self::KeyName,
            "upstream" => Self::Upstream,
            _ => return None,
        })
    }
}

/// A header value with its `${…}` variables found: literal text and variables, in order.
/// Unknown `${…}` are kept as literal text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

impl Template {
    pub fn parse(value: &str) -> Self {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            let after = &rest[start + 2..];
            match after
                .find('}')
                .and_then(|end| Some((end, Var::parse(&after[..end])?)))
            {
                Some((end, var)) => {
                    text.push_str(&rest[..start]);
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Var(var));
                    rest = &after[end + 1..];
                }
                None => {
                    text.push_str(&rest[..start + 2]);
                    rest = after;
                }
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Self(pieces)
    }

    /// The value with each variable replaced by what `var` gives for it.
    pub fn render(&self, var: &mut impl FnMut(Var) -> String) -> String {
        // A value that is one variable and nothing else (`${request_id}`) is the string the host
        // gave, not a copy of it: one allocation and one copy fewer in the guest per call.
        if let [Piece::Var(v)] = self.0.as_slice() {
            return var(*v);
        }
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&var(*v)),
            }
        }
        out
    }
}

/// An operation with its value parsed.
#[derive(Clone, Debug)]
pub enum Rule {
    Set(String, Template),
    Append(String, Template),
    Remove(String),
    Rename(String, String),
}

impl From<&Op> for Rule {
    fn from(op: &Op) -> Self {
        match op {
            Op::Set { name, value } => Self::Set(name.clone(), Template::parse(value)),
            Op::Append { name, value } => Self::Append(name.clone(), Template::parse(value)),
            Op::Remove(name) => Self::Remove(name.clone()),
            Op::Rename { from, to } => Self::Rename(from.clone(), to.clone()),
        }
    }
}

/// The header operations `rules` give, with variables from `var`.
pub fn to_ops(rules: &[Rule], var: &mut impl FnMut(Var) -> String) -> Vec<HeaderOp> {
    rules
        .iter()
        .map(|rule| match rule {
            Rule::Set(name, value) => HeaderOp::Set(Header {
                name: name.clone(),
                value: value.render(var),
            }),
            Rule::Append(name, value) => HeaderOp::Append(Header {
                name: name.clone(),
                value: value.render(var),
            }),
            Rule::Remove(name) => HeaderOp::Remove(name.clone()),
            Rule::Rename(from, to) => HeaderOp::Rename((from.clone(), to.clone())),
        })
        .collect()
}

struct Rules {
    request: Vec<Rule>,
    response: Vec<Rule>,
}

static RULES: OnceLock<Rules> = OnceLock::new();

fn rules() -> &'static Rules {
    RULES.get_or_init(|| Rules {
        request: Vec::new(),
        response: Vec::new(),
    })
}

/// A variable's value for `request` (and, on responses, the upstream that answered).
fn lookup(request: &Request, response: Option<&Response>) -> impl FnMut(Var) -> String {
    move |var| match var {
        Var::RequestId => request.id(),
        Var::ClientIp => request.client_ip(),
        Var::KeyId => request.key_id(),
        Var::KeyName => request.key_name(),
        Var::Upstream => response.map(Response::upstream).unwrap_or_default(),
    }
}

struct Rewrite;

impl Plugin for Rewrite {
    fn configure(config: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&config)?;
        let _ = RULES.set(Rules {
            request: c.request.iter().map(Rule::from).collect(),
            response: c.response.iter().map(Rule::from).collect(),
        });
        Ok(())
    }
}

impl HeaderRewrite for Rewrite {
    fn rewrites() -> Phases {
        let r = rules();
        let phase = |rules: &[Rule], phase| {
            if rules.is_empty() {
                Phases::empty()
            } else {
                phase
            }
        };
        phase(&r.request, Phases::REQUEST) | phase(&r.response, Phases::RESPONSE)
    }

    fn on_request(request: &Request) -> Vec<HeaderOp> {
        to_ops(&rules().request, &mut lookup(request, None))
    }

    fn on_response(request: &Request, response: &Response) -> Vec<HeaderOp> {
        to_ops(&rules().response, &mut lookup(request, Some(response)))
    }
}

tollgate_sdk::export!(Rewrite);

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: Var) -> String {
        match v {
            Var::RequestId => "r1".into(),
            Var::ClientIp => "10.0.0.1".into(),
            _ => String::new(),
        }
    }

    #[test]
    fn config_ops_become_header_ops_with_variables_filled_in() {
        let c: Config = serde_json::from_str(
            r#"{"request": [{"set": {"name": "x-id", "value": "${request_id}@${client_ip}"}}, {"remove": "x-debug"},
                            {"rename": {"from": "a", "to": "b"}}]}"#,
        )
        .unwrap();
        let rules: Vec<Rule> = c.request.iter().map(Rule::from).collect();
        let ops = to_ops(&rules, &mut vars);
        assert_eq!(ops.len(), 3);
        match &ops[0] {
            HeaderOp::Set(h) => assert_eq!(h.value, "r1@10.0.0.1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_value_that_is_one_variable_is_that_variable() {
        let mut vars = vars;
        assert_eq!(Template::parse("${request_id}").render(&mut vars), "r1");
        assert_eq!(
            Template::parse("${client_ip}!").render(&mut vars),
            "10.0.0.1!"
        );
        assert_eq!(Template::parse("plain").render(&mut vars), "plain");
    }

    #[test]
    fn templates_fetch_only_the_variables_they_use() {
        let t = Template::parse("a ${unknown} ${client_ip}${request_id} $ {x} ${");
        let mut asked = Vec::new();
        let out = t.render(&mut |v| {
            asked.push(v);
            vars(v)
        });
        assert_eq!(out, "a ${unknown} 10.0.0.1r1 $ {x} ${");
        assert_eq!(asked, [Var::ClientIp, Var::RequestId]);
        let mut none = |_| -> String { panic!("no variable used") };
        assert_eq!(Template::parse("plain").render(&mut none), "plain");
    }

    #[test]
    fn unknown_ops_are_config_errors() {
        assert!(serde_json::from_str::<Config>(r#"{"request": [{"explode": "x"}]}"#).is_err());
    }
}
