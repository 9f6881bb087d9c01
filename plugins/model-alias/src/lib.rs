//! Model aliases, as a transform: a request naming an alias goes upstream naming its target, and
//! a model listing (`GET …/models`) gains one entry per alias.
//!
//! Config: `{"aliases": {"fast": "gpt-4o-mini", "smart": "gpt-4o"}, "list": true}`. `list`
//! (default true) adds the aliases to `/v1/models` answers. The request's model is read from
//! the host (it parsed the body once); only a request that names an alias has its body parsed
//! and rewritten here. The answer keeps the model that served (`model` as the upstream names
//! it), so logs, usage and the client agree on what ran.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_sdk::{
    HeadEdit, Plugin, Request, RequestAction, RequestEdit, Response, SseEvent, Transform,
    TransformState,
};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Alias → the model sent upstream.
    pub aliases: BTreeMap<String, String>,
    /// List the aliases in model listings.
    pub list: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            aliases: BTreeMap::new(),
            list: true,
        }
    }
}

impl Config {
    /// Refuses an alias that points at another alias (a chain would be resolved differently by
    /// each reader) or at itself.
    fn check(&self) -> Result<(), String> {
        for (alias, target) in &self.aliases {
            if alias.is_empty() || target.is_empty() {
                return Err("an alias and its target must not be empty".into());
            }
            if self.aliases.contains_key(target) {
                return Err(format!(
                    "alias `{alias}` points at `{target}`, which is an alias itself"
                ));
            }
        }
        Ok(())
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get_or_init(Config::default)
}

/// The body with `model` replaced by `target`; `None` if it is not a JSON object.
pub fn renamed(body: &str, target: &str) -> Option<String> {
    let mut v: Value = serde_json::from_str(body).ok()?;
    v.as_object_mut()?
        .insert("model".into(), Value::String(target.to_owned()));
    Some(v.to_string())
}

/// Whether a request is a model listing (`GET /v1/models`, any prefix and query).
pub fn is_listing(method: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    method == "GET" && path.trim_end_matches('/').ends_with("/models")
}

/// A model listing (`{"object": "list", "data": [...]}`) with an entry per alias it lacks;
/// `None` when the body is not one.
pub fn listed(body: &str, aliases: &BTreeMap<String, String>) -> Option<String> {
    let mut v: Value = serde_json::from_str(body).ok()?;
    let data = v.get_mut("data")?.as_array_mut()?;
    let created = |target: &str, data: &[Value]| {
        data.iter()
            .find(|m| m.get("id").and_then(Value::as_str) == Some(target))
            .and_then(|m| m.get("created").cloned())
            .unwrap_or(json!(0))
    };
    for (alias, target) in aliases {
        if data
            .iter()
            .any(|m| m.get("id").and_then(Value::as_str) == Some(alias))
        {
            continue;
        }
        let entry = json!({
            "id": alias,
            "object": "model",
            "created": created(target, data),
            "owned_by": format!("alias of {target}"),
        });
        data.push(entry);
    }
    Some(v.to_string())
}

struct ModelAlias;

impl Plugin for ModelAlias {
    fn configure(text: String) -> Result<(), String> {
        let c: Config = tollgate_sdk::parse_config(&text)?;
        c.check()?;
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Transform for ModelAlias {
    fn on_request(request: &Request, body: String, _state: &TransformState) -> RequestAction {
        let c = config();
        if let Some(model) = request.model() {
            let Some(target) = c.aliases.get(&model) else {
                return RequestAction::Forward(RequestEdit::unchanged());
            };
            return RequestAction::Forward(RequestEdit {
                body: renamed(&body, target),
                ..RequestEdit::unchanged()
            });
        }
        let listing =
            c.list && !c.aliases.is_empty() && is_listing(&request.method(), &request.path());
        RequestAction::Forward(RequestEdit {
            response: listing,
            ..RequestEdit::unchanged()
        })
    }

    fn on_response_head(_: &Request, _: &Response, _: &TransformState) -> HeadEdit {
        HeadEdit::unchanged()
    }

    fn on_response_body(
        _: &Request,
        response: &Response,
        body: String,
        _: &TransformState,
    ) -> Option<String> {
        if response.status() != 200 {
            return None;
        }
        listed(&body, &config().aliases)
    }

    fn on_event(_: &Request, event: SseEvent, _: &TransformState) -> Vec<SseEvent> {
        vec![event]
    }

    fn on_stream_end(_: &Request, _: &TransformState) -> Vec<SseEvent> {
        Vec::new()
    }
}

tollgate_sdk::export!(ModelAlias);

#[cfg(test)]
mod tests {
    use super::*;

    fn aliases() -> BTreeMap<String, String> {
        [("fast".to_owned(), "gpt-4o-mini".to_owned())].into()
    }

    #[test]
    fn the_model_is_renamed_and_the_rest_kept_in_order() {
        let out = renamed(
            r#"{"model":"fast","messages":[],"stream":true}"#,
            "gpt-4o-mini",
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"model":"gpt-4o-mini","messages":[],"stream":true}"#
        );
        assert!(renamed("[1]", "x").is_none());
    }

    #[test]
    fn listings_gain_the_aliases_once() {
        let body = r#"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":7,"owned_by":"openai"}]}"#;
        let out: Value = serde_json::from_str(&listed(body, &aliases()).unwrap()).unwrap();
        let ids: Vec<&str> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["gpt-4o-mini", "fast"]);
        assert_eq!(out["data"][1]["created"], 7);
        let again = listed(&out.to_string(), &aliases()).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&again).unwrap()["data"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(listed(r#"{"error":{}}"#, &aliases()).is_none());
    }

    #[test]
    fn listing_requests_are_recognised() {
        assert!(is_listing("GET", "/v1/models"));
        assert!(is_listing("GET", "/openai/v1/models/?x=1"));
        assert!(!is_listing("POST", "/v1/models"));
        assert!(!is_listing("GET", "/v1/models/gpt-4o"));
    }

    #[test]
    fn chained_aliases_are_refused() {
        let c = Config {
            aliases: [
                ("a".to_owned(), "b".to_owned()),
                ("b".to_owned(), "c".to_owned()),
            ]
            .into(),
            list: true,
        };
        assert!(c.check().unwrap_err().contains("alias itself"));
    }
}
