//! Requests: an Anthropic Messages body as an OpenAI Chat Completions one, and the reverse.

use serde_json::{Map, Value, json};

use crate::Unsupported;

fn unsupported(what: impl Into<String>) -> Unsupported {
    Unsupported(what.into())
}

fn parse(body: &str) -> Result<Map<String, Value>, Unsupported> {
    match serde_json::from_str(body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(unsupported("the request body is not a JSON object")),
    }
}

/// The text of an Anthropic `system` (a string, or text blocks joined by blank lines).
fn anthropic_text(v: &Value) -> Result<String, Unsupported> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(b["text"].as_str().unwrap_or_default().to_owned()),
                    other => {
                        return Err(unsupported(format!(
                            "a content block of type {} cannot be translated here",
                            other.unwrap_or("(none)")
                        )));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(unsupported("system must be a string or text blocks")),
    }
}

/// An Anthropic image block as an OpenAI `image_url` part.
fn image_part(block: &Value) -> Result<Value, Unsupported> {
    let source = &block["source"];
    let url = match source.get("type").and_then(Value::as_str) {
        Some("base64") => format!(
            "data:{};base64,{}",
            source["media_type"].as_str().unwrap_or("image/png"),
            source["data"].as_str().unwrap_or_default()
        ),
        Some("url") => source["url"].as_str().unwrap_or_default().to_owned(),
        _ => return Err(unsupported("an image source must be base64 or url")),
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// A `tool_result`'s content as the text of an OpenAI tool message.
fn tool_result_text(v: &Value) -> Result<String, Unsupported> {
    match v {
        Value::Array(blocks) if blocks.iter().any(|b| b["type"] == "image") => Err(unsupported(
            "images inside a tool_result cannot be sent to an OpenAI upstream",
        )),
        other => anthropic_text(other),
    }
}

/// One Anthropic message as OpenAI messages (a user turn carrying tool results becomes the tool
/// messages first, then the rest of the turn).
fn anthropic_message(m: &Value, out: &mut Vec<Value>) -> Result<(), Unsupported> {
    let role = m["role"].as_str().unwrap_or("user");
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(unsupported("message content must be a string or blocks")),
    };
    let mut parts = Vec::new();
    let mut tool_calls = Vec::new();
    for b in blocks {
        match b["type"].as_str().unwrap_or_default() {
            "text" => parts.push(json!({"type": "text", "text": b["text"]})),
            "image" if role == "user" => parts.push(image_part(b)?),
            "tool_use" if role == "assistant" => tool_calls.push(json!({
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            "tool_result" if role == "user" => {
                let mut text = tool_result_text(&b["content"])?;
                if b["is_error"] == true && !text.starts_with("Error") {
                    text = format!("Error: {text}");
                }
                out.push(
                    json!({"role": "tool", "tool_call_id": b["tool_use_id"], "content": text}),
                );
            }
            // Extended thinking is the upstream's own; an OpenAI upstream cannot take it back.
            "thinking" | "redacted_thinking" if role == "assistant" => {}
            other => {
                return Err(unsupported(format!(
                    "a {role} content block of type {other} cannot be sent to an OpenAI upstream"
                )));
            }
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { Value::String(text.join("")) }});
        if !tool_calls.is_empty() {
            msg["tool_calls"] = Value::Array(tool_calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        let content = match parts.as_slice() {
            [only] if only["type"] == "text" => only["text"].clone(),
            _ => Value::Array(parts),
        };
        out.push(json!({"role": role, "content": content}));
    }
    Ok(())
}

/// An Anthropic Messages request as an OpenAI Chat Completions one: the body, the model, and
/// (always false here) whether the client asked for stream usage.
pub fn anthropic_to_openai(body: &str) -> Result<(String, String, bool), Unsupported> {
    let a = parse(body)?;
    let model = a
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mut messages = Vec::new();
    if let Some(system) = a.get("system") {
        let text = anthropic_text(system)?;
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    for m in a
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        anthropic_message(m, &mut messages)?;
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(model));
    o.insert("messages".into(), Value::Array(messages));
    if let Some(n) = a.get("max_tokens") {
        o.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = a.get(key) {
            o.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = a.get("stop_sequences") {
        o.insert("stop".into(), stop.clone());
    }
    let stream = a.get("stream") == Some(&Value::Bool(true));
    if stream {
        o.insert("stream".into(), json!(true));
        // Anthropic streams always report usage; ask the OpenAI upstream for it.
        o.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(tools) = a.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for t in tools {
            // Server tools (web search, code execution…) have a `type` and no schema.
            if t.get("input_schema").is_none() {
                return Err(unsupported(format!(
                    "the tool {} has no input_schema (Anthropic server tools cannot be sent to an OpenAI upstream)",
                    t["name"]
                )));
            }
            let mut f = json!({"name": t["name"], "parameters": t["input_schema"]});
            if let Some(d) = t.get("description") {
                f["description"] = d.clone();
            }
            out.push(json!({"type": "function", "function": f}));
        }
        o.insert("tools".into(), Value::Array(out));
    }
    if let Some(choice) = a.get("tool_choice") {
        let mapped = match choice["type"].as_str() {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => return Err(unsupported("tool_choice must be auto, any, none or tool")),
        };
        o.insert("tool_choice".into(), mapped);
        if choice["disable_parallel_tool_use"] == true {
            o.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if let Some(user) = a.get("metadata").and_then(|m| m.get("user_id")) {
        o.insert("user".into(), user.clone());
    }
    if let Some(thinking) = a.get("thinking").filter(|t| t["type"] == "enabled") {
        o.insert(
            "reasoning_effort".into(),
            json!(reasoning_effort(
                thinking["budget_tokens"].as_u64().unwrap_or(0)
            )),
        );
    }
    Ok((Value::Object(o).to_string(), model, false))
}

/// Anthropic's thinking budget as OpenAI's coarse effort (an approximation: OpenAI takes no
/// token budget for reasoning).
pub fn reasoning_effort(budget_tokens: u64) -> &'static str {
    match budget_tokens {
        0..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

/// An OpenAI message's content as text (a string, or text parts).
fn openai_text(v: &Value) -> Result<String, Unsupported> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for p in parts {
                match p["type"].as_str() {
                    Some("text") => texts.push(p["text"].as_str().unwrap_or_default()),
                    _ => return Err(unsupported("only text parts are allowed here")),
                }
            }
            Ok(texts.join(""))
        }
        _ => Err(unsupported("content must be a string or parts")),
    }
}

/// An OpenAI `image_url` part as an Anthropic image block.
fn image_block(part: &Value) -> Result<Value, Unsupported> {
    let url = part["image_url"]["url"].as_str().unwrap_or_default();
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest
            .split_once(";base64,")
            .ok_or_else(|| unsupported("an image data URL must be base64"))?;
        return Ok(
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}),
        );
    }
    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
}

/// Appends `blocks` as a `role` turn, merged into the previous turn of the same role (Anthropic
/// wants user and assistant to alternate; consecutive tool results become one user turn).
fn push_turn(out: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut()
        && last["role"] == role
        && let Some(content) = last["content"].as_array_mut()
    {
        content.extend(blocks);
        return;
    }
    out.push(json!({"role": role, "content": blocks}));
}

/// An OpenAI Chat Completions request as an Anthropic Messages one: the body, the model, and
/// whether the client asked for usage in its stream.
pub fn openai_to_anthropic(
    body: &str,
    default_max_tokens: u64,
) -> Result<(String, String, bool), Unsupported> {
    let o = parse(body)?;
    let model = o
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if o.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(unsupported("n > 1 cannot be sent to an Anthropic upstream"));
    }
    match o.get("response_format").and_then(|r| r["type"].as_str()) {
        None | Some("text") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "response_format {other} cannot be sent to an Anthropic upstream"
            )));
        }
    }
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::new();
    for m in o
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = m["role"].as_str().unwrap_or_default();
        match role {
            "system" | "developer" => system.push(openai_text(&m["content"])?),
            "user" => {
                let blocks = match &m["content"] {
                    Value::String(s) => vec![json!({"type": "text", "text": s})],
                    Value::Array(parts) => parts
                        .iter()
                        .map(|p| match p["type"].as_str() {
                            Some("text") => Ok(json!({"type": "text", "text": p["text"]})),
                            Some("image_url") => image_block(p),
                            other => Err(unsupported(format!(
                                "a user content part of type {} cannot be sent to an Anthropic upstream",
                                other.unwrap_or("(none)")
                            ))),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(unsupported("user content must be a string or parts")),
                };
                push_turn(&mut turns, "user", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                let text = openai_text(&m["content"])?;
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let args = call["function"]["arguments"].as_str().unwrap_or("{}");
                    let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                    blocks.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let text = openai_text(&m["content"])?;
                push_turn(
                    &mut turns,
                    "user",
                    vec![
                        json!({"type": "tool_result", "tool_use_id": m["tool_call_id"], "content": text}),
                    ],
                );
            }
            other => {
                return Err(unsupported(format!(
                    "a message with role {other} cannot be sent to an Anthropic upstream"
                )));
            }
        }
    }
    let mut a = Map::new();
    a.insert("model".into(), json!(model));
    let max_tokens = o
        .get("max_completion_tokens")
        .or_else(|| o.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(default_max_tokens);
    a.insert("max_tokens".into(), json!(max_tokens));
    if !system.is_empty() {
        a.insert("system".into(), json!(system.join("\n\n")));
    }
    a.insert("messages".into(), Value::Array(turns));
    if let Some(t) = o.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0–2, Anthropic's 0–1.
        a.insert("temperature".into(), json!(t.min(1.0)));
    }
    if let Some(v) = o.get("top_p") {
        a.insert("top_p".into(), v.clone());
    }
    match o.get("stop") {
        Some(Value::String(s)) => {
            a.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) => {
            a.insert("stop_sequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    let stream = o.get("stream") == Some(&Value::Bool(true));
    if stream {
        a.insert("stream".into(), json!(true));
    }
    let include_usage = stream
        && o.get("stream_options")
            .is_some_and(|s| s["include_usage"] == true);
    if let Some(tools) = o.get("tools").and_then(Value::as_array) {
        let mut out = Vec::new();
        for t in tools {
            if t["type"] != "function" {
                return Err(unsupported(
                    "only function tools can be sent to an Anthropic upstream",
                ));
            }
            let f = &t["function"];
            let mut tool = json!({
                "name": f["name"],
                "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
            if let Some(d) = f.get("description") {
                tool["description"] = d.clone();
            }
            out.push(tool);
        }
        a.insert("tools".into(), Value::Array(out));
    }
    let mut choice = match o.get("tool_choice") {
        None => None,
        Some(Value::String(s)) => Some(match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            _ => {
                return Err(unsupported(
                    "tool_choice must be auto, required, none or a function",
                ));
            }
        }),
        Some(v) => Some(json!({"type": "tool", "name": v["function"]["name"]})),
    };
    if o.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = json!(true);
    }
    if let Some(c) = choice {
        a.insert("tool_choice".into(), c);
    }
    if let Some(user) = o.get("user") {
        a.insert("metadata".into(), json!({"user_id": user}));
    }
    Ok((Value::Object(a).to_string(), model, include_usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn an_anthropic_conversation_with_tools_becomes_openai() {
        let body = r#"{"model":"claude-x","max_tokens":100,"system":[{"type":"text","text":"Be brief."}],
          "stop_sequences":["END"],"stream":true,
          "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
          "tool_choice":{"type":"any","disable_parallel_tool_use":true},
          "messages":[
            {"role":"user","content":[{"type":"text","text":"Weather in Paris?"},{"type":"image","source":{"type":"base64","media_type":"image/png","data":"AAA="}}]},
            {"role":"assistant","content":[{"type":"text","text":"Let me check."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
            {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"18C"},{"type":"text","text":"Thanks"}]}
          ]}"#;
        let (out, model, _) = anthropic_to_openai(body).unwrap();
        assert_eq!(model, "claude-x");
        let o = v(&out);
        assert_eq!(
            o["messages"][0],
            v(r#"{"role":"system","content":"Be brief."}"#)
        );
        assert_eq!(
            o["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAA="
        );
        assert_eq!(o["messages"][2]["content"], "Let me check.");
        assert_eq!(
            o["messages"][2]["tool_calls"][0]["function"]["arguments"],
            r#"{"city":"Paris"}"#
        );
        assert_eq!(
            o["messages"][3],
            v(r#"{"role":"tool","tool_call_id":"toolu_1","content":"18C"}"#)
        );
        assert_eq!(o["messages"][4], v(r#"{"role":"user","content":"Thanks"}"#));
        assert_eq!(o["stop"], v(r#"["END"]"#));
        assert_eq!(o["stream_options"]["include_usage"], true);
        assert_eq!(
            o["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
            "string"
        );
        assert_eq!(o["tool_choice"], "required");
        assert_eq!(o["parallel_tool_calls"], false);
    }

    #[test]
    fn an_openai_conversation_with_tools_becomes_anthropic() {
        let body = r#"{"model":"claude-x","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Look:"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,BBB="}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}},{"id":"call_2","type":"function","function":{"name":"g","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"one"},
            {"role":"tool","tool_call_id":"call_2","content":"two"}
          ],"temperature":1.5,"stop":"X","stream":true,"stream_options":{"include_usage":true},
          "tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],
          "tool_choice":{"type":"function","function":{"name":"f"}},"user":"u1"}"#;
        let (out, _, include_usage) = openai_to_anthropic(body, 4096).unwrap();
        assert!(include_usage);
        let a = v(&out);
        assert_eq!(a["system"], "Be brief.");
        assert_eq!(a["max_tokens"], 4096);
        assert_eq!(a["temperature"], 1.0);
        assert_eq!(a["stop_sequences"], v(r#"["X"]"#));
        assert_eq!(
            a["messages"][0]["content"][1]["source"]["media_type"],
            "image/jpeg"
        );
        assert_eq!(a["messages"][1]["content"][0]["input"], v(r#"{"a":1}"#));
        assert_eq!(
            a["messages"][2]["content"].as_array().unwrap().len(),
            2,
            "tool results merge into one user turn"
        );
        assert_eq!(a["tool_choice"], v(r#"{"type":"tool","name":"f"}"#));
        assert_eq!(a["metadata"]["user_id"], "u1");
    }

    #[test]
    fn a_thinking_budget_becomes_an_effort() {
        let (out, _, _) = anthropic_to_openai(
            r#"{"model":"m","max_tokens":9000,"thinking":{"type":"enabled","budget_tokens":4000},"messages":[]}"#,
        )
        .unwrap();
        assert_eq!(v(&out)["reasoning_effort"], "medium");
        assert_eq!(reasoning_effort(1024), "low");
        assert_eq!(reasoning_effort(16000), "high");
    }

    #[test]
    fn a_stream_without_options_does_not_ask_for_usage() {
        let (_, _, include_usage) =
            openai_to_anthropic(r#"{"model":"m","stream":true,"messages":[]}"#, 1).unwrap();
        assert!(!include_usage);
    }

    #[test]
    fn what_cannot_be_carried_is_refused() {
        assert!(openai_to_anthropic(r#"{"model":"m","n":2,"messages":[]}"#, 1).is_err());
        assert!(
            openai_to_anthropic(
                r#"{"model":"m","response_format":{"type":"json_schema"},"messages":[]}"#,
                1
            )
            .is_err()
        );
        assert!(
            anthropic_to_openai(
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"document"}]}]}"#
            )
            .is_err()
        );
        assert!(anthropic_to_openai("[]").is_err());
    }
}
