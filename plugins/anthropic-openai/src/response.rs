//! JSON answers: an OpenAI chat completion as an Anthropic message and the reverse, and errors
//! in each protocol's shape.

use serde_json::{Value, json};

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// OpenAI usage as Anthropic's: cache reads are counted outside `input_tokens` there.
pub fn usage_to_anthropic(u: &Value) -> Value {
    let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "output_tokens": u["completion_tokens"].as_u64().unwrap_or(0),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// Anthropic usage as OpenAI's: the prompt counts cache reads and writes too.
pub fn usage_to_openai(u: &Value) -> Value {
    let input = u["input_tokens"].as_u64().unwrap_or(0);
    let read = u["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let written = u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
    let output = u["output_tokens"].as_u64().unwrap_or(0);
    let prompt = input + read + written;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read},
    })
}

/// An OpenAI chat completion as an Anthropic message; `None` when it is not one.
pub fn openai_completion_to_anthropic(body: &str) -> Option<String> {
    let o: Value = serde_json::from_str(body).ok()?;
    let choice = o.get("choices")?.get(0)?;
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let args = call["function"]["arguments"].as_str().unwrap_or("{}");
        content.push(json!({
            "type": "tool_use",
            "id": call["id"],
            "name": call["function"]["name"],
            "input": serde_json::from_str::<Value>(args).unwrap_or_else(|_| json!({})),
        }));
    }
    let a = json!({
        "id": o["id"],
        "type": "message",
        "role": "assistant",
        "model": o["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": usage_to_anthropic(&o["usage"]),
    });
    Some(a.to_string())
}

/// An Anthropic message as an OpenAI chat completion; `None` when it is not one.
pub fn anthropic_message_to_openai(body: &str, created_s: u64) -> Option<String> {
    let a: Value = serde_json::from_str(body).ok()?;
    if a.get("type")?.as_str()? != "message" {
        return None;
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in a["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            _ => {}
        }
    }
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { Value::String(text) },
    });
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    let o = json!({
        "id": a["id"],
        "object": "chat.completion",
        "created": created_s,
        "model": a["model"],
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(a["stop_reason"].as_str().unwrap_or("end_turn")),
        }],
        "usage": usage_to_openai(&a["usage"]),
    });
    Some(o.to_string())
}

/// Anthropic's error type for an HTTP status.
fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An upstream's error (OpenAI-shaped, or anything) in Anthropic's shape.
pub fn error_to_anthropic(status: u16, body: &str) -> String {
    let o: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = o["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(500).collect());
    json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
        .to_string()
}

/// An upstream's error (Anthropic-shaped, or anything) in OpenAI's shape.
pub fn error_to_openai(status: u16, body: &str) -> String {
    let a: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let message = a["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(500).collect());
    let kind = a["error"]["type"]
        .as_str()
        .unwrap_or(anthropic_error_type(status))
        .to_owned();
    let code = match status {
        429 => json!("rate_limit_exceeded"),
        _ => Value::Null,
    };
    json!({"error": {"message": message, "type": kind, "code": code}}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn an_openai_completion_with_a_tool_call_becomes_a_message() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o","choices":[{"index":0,
          "message":{"role":"assistant","content":"Checking.","tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":2}"}}]},
          "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":20,"completion_tokens":5,"total_tokens":25,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        let a = v(&openai_completion_to_anthropic(body).unwrap());
        assert_eq!(a["content"][0], v(r#"{"type":"text","text":"Checking."}"#));
        assert_eq!(a["content"][1]["input"], v(r#"{"x":2}"#));
        assert_eq!(a["stop_reason"], "tool_use");
        assert_eq!(
            a["usage"],
            v(
                r#"{"input_tokens":12,"output_tokens":5,"cache_read_input_tokens":8,"cache_creation_input_tokens":0}"#
            )
        );
    }

    #[test]
    fn an_anthropic_message_becomes_a_completion() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],
          "stop_reason":"max_tokens","usage":{"input_tokens":3,"output_tokens":7,"cache_read_input_tokens":10,"cache_creation_input_tokens":2}}"#;
        let o = v(&anthropic_message_to_openai(body, 99).unwrap());
        assert_eq!(o["choices"][0]["message"]["content"], "Hi");
        assert_eq!(o["choices"][0]["finish_reason"], "length");
        assert_eq!(o["usage"]["prompt_tokens"], 15);
        assert_eq!(o["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
        assert_eq!(o["created"], 99);
    }

    #[test]
    fn errors_change_shape_and_keep_their_message() {
        let a = v(&error_to_anthropic(
            429,
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        ));
        assert_eq!(
            a,
            v(r#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#)
        );
        let o = v(&error_to_openai(
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ));
        assert_eq!(o["error"]["type"], "overloaded_error");
        assert_eq!(o["error"]["message"], "Overloaded");
        assert_eq!(
            v(&error_to_openai(502, "bad gateway"))["error"]["message"],
            "bad gateway"
        );
    }
}
