//! Streams, as state machines kept in the transform's state between events: OpenAI chunks as
//! Anthropic's event sequence, and Anthropic's events as OpenAI chunks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tollgate_sdk::SseEvent;

use crate::response::{finish_reason, stop_reason, usage_to_anthropic, usage_to_openai};

fn named(name: &str, data: Value) -> SseEvent {
    SseEvent {
        event: Some(name.to_owned()),
        data: data.to_string(),
    }
}

fn unnamed(data: impl Into<String>) -> SseEvent {
    SseEvent {
        event: None,
        data: data.into(),
    }
}

/// The open content block of an Anthropic stream being written.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text(u32),
    Tool(u32),
}

/// OpenAI chat completion chunks → Anthropic `message_start`, `content_block_*`,
/// `message_delta`, `message_stop`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct OpenAiToAnthropic {
    model: String,
    started: bool,
    finished: bool,
    open: Option<Block>,
    next_index: u32,
    /// OpenAI tool call index → Anthropic block index.
    tools: BTreeMap<u32, u32>,
    stop: Option<String>,
    usage: Option<Value>,
}

impl OpenAiToAnthropic {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            ..Self::default()
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<SseEvent>) {
        if self.started {
            return;
        }
        self.started = true;
        let model = chunk["model"].as_str().unwrap_or(&self.model).to_owned();
        out.push(named(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": chunk["id"], "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        ));
    }

    fn close(&mut self, out: &mut Vec<SseEvent>) {
        if let Some(Block::Text(i) | Block::Tool(i)) = self.open.take() {
            out.push(named(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            ));
        }
    }

    fn open(&mut self, block: Value, out: &mut Vec<SseEvent>, tool: bool) -> u32 {
        self.close(out);
        let i = self.next_index;
        self.next_index += 1;
        self.open = Some(if tool { Block::Tool(i) } else { Block::Text(i) });
        out.push(named(
            "content_block_start",
            json!({"type": "content_block_start", "index": i, "content_block": block}),
        ));
        i
    }

    /// One upstream event's data: the Anthropic events it becomes.
    pub fn on_event(&mut self, data: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.finished {
            return out;
        }
        if data.trim() == "[DONE]" {
            return self.finish();
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        if let Some(err) = chunk.get("error") {
            self.finished = true;
            out.push(named(
                "error",
                json!({"type": "error", "error": {"type": "api_error", "message": err["message"]}}),
            ));
            return out;
        }
        self.start(&chunk, &mut out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else {
            // The usage chunk after the finish: the message can end now rather than at
            // `[DONE]`, so the client's last events come as soon as the upstream's.
            if self.stop.is_some() && self.usage.is_some() {
                out.extend(self.finish());
            }
            return out;
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let i = match self.open {
                Some(Block::Text(i)) => i,
                _ => self.open(json!({"type": "text", "text": ""}), &mut out, false),
            };
            out.push(named(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let k = call["index"].as_u64().unwrap_or(0) as u32;
            let i = match self.tools.get(&k) {
                Some(&i) => i,
                None => {
                    let block = json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}});
                    let i = self.open(block, &mut out, true);
                    self.tools.insert(k, i);
                    i
                }
            };
            if let Some(args) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push(named(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": args}}),
                ));
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.stop = Some(f.to_owned());
            // Nothing more comes into the block; the message ends with the usage (when the
            // same chunk carries it) or at the usage chunk or `[DONE]`.
            self.close(&mut out);
            if self.usage.is_some() {
                out.extend(self.finish());
            }
        }
        out
    }

    /// The closing events (at `[DONE]`, or when the upstream's stream ends without it).
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if self.finished || !self.started {
            self.finished = true;
            return out;
        }
        self.finished = true;
        self.close(&mut out);
        let usage = self
            .usage
            .as_ref()
            .map(usage_to_anthropic)
            .unwrap_or_else(|| json!({"output_tokens": 0}));
        out.push(named(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(self.stop.as_deref().unwrap_or("stop")), "stop_sequence": null},
                "usage": usage}),
        ));
        out.push(named("message_stop", json!({"type": "message_stop"})));
        out
    }
}

/// Anthropic stream events → OpenAI chat completion chunks and `[DONE]`.
#[derive(Serialize, Deserialize, Debug, Default)]
pub struct AnthropicToOpenAi {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Anthropic block index → OpenAI tool call index.
    tools: BTreeMap<u32, u32>,
    usage: Value,
    finished: bool,
}

impl AnthropicToOpenAi {
    pub fn new(model: &str, created_s: u64, include_usage: bool) -> Self {
        Self {
            model: model.to_owned(),
            created: created_s,
            include_usage,
            usage: json!({}),
            ..Self::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let mut c = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        unnamed(c.to_string())
    }

    /// One upstream event (its name and data): the OpenAI chunks it becomes.
    pub fn on_event(&mut self, name: Option<&str>, data: &str) -> Vec<SseEvent> {
        let Ok(e) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        if self.finished {
            return Vec::new();
        }
        let kind = e["type"].as_str().or(name).unwrap_or_default().to_owned();
        match kind.as_str() {
            "message_start" => {
                let m = &e["message"];
                self.id = m["id"].as_str().unwrap_or_default().to_owned();
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_owned();
                }
                self.merge_usage(&m["usage"]);
                vec![self.chunk(json!({"role": "assistant", "content": ""}), None)]
            }
            "content_block_start" if e["content_block"]["type"] == "tool_use" => {
                let i = e["index"].as_u64().unwrap_or(0) as u32;
                let k = self.tools.len() as u32;
                self.tools.insert(i, k);
                let b = &e["content_block"];
                vec![self.chunk(
                    json!({"tool_calls": [{"index": k, "id": b["id"], "type": "function", "function": {"name": b["name"], "arguments": ""}}]}),
                    None,
                )]
            }
            "content_block_delta" => {
                let d = &e["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => vec![self.chunk(json!({"content": d["text"]}), None)],
                    Some("input_json_delta") => {
                        let i = e["index"].as_u64().unwrap_or(0) as u32;
                        let k = self.tools.get(&i).copied().unwrap_or(0);
                        vec![self.chunk(
                            json!({"tool_calls": [{"index": k, "function": {"arguments": d["partial_json"]}}]}),
                            None,
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                self.merge_usage(&e["usage"]);
                let stop = e["delta"]["stop_reason"].as_str().unwrap_or("end_turn");
                vec![self.chunk(json!({}), Some(finish_reason(stop)))]
            }
            "message_stop" => self.finish(),
            "error" => {
                self.finished = true;
                let err = &e["error"];
                vec![unnamed(
                    json!({"error": {"message": err["message"], "type": err["type"], "code": null}}).to_string(),
                )]
            }
            _ => Vec::new(),
        }
    }

    fn merge_usage(&mut self, u: &Value) {
        if let (Some(into), Some(from)) = (self.usage.as_object_mut(), u.as_object()) {
            for (k, v) in from {
                if !v.is_null() {
                    into.insert(k.clone(), v.clone());
                }
            }
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`, once.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        if self.finished {
            return Vec::new();
        }
        self.finished = true;
        let mut out = Vec::new();
        if self.include_usage {
            out.push(unnamed(
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage_to_openai(&self.usage)})
                .to_string(),
            ));
        }
        out.push(unnamed("[DONE]"));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_openai(events: &[&str]) -> Vec<SseEvent> {
        let mut t = OpenAiToAnthropic::new("gpt-4o");
        let mut out: Vec<SseEvent> = events.iter().flat_map(|e| t.on_event(e)).collect();
        out.extend(t.finish());
        out
    }

    fn names(events: &[SseEvent]) -> Vec<&str> {
        events
            .iter()
            .map(|e| e.event.as_deref().unwrap_or("-"))
            .collect()
    }

    #[test]
    fn an_openai_text_stream_becomes_anthropic_events() {
        let out = run_openai(&[
            r#"{"id":"c1","model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt-4o","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","model":"gpt-4o","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let delta: Value = serde_json::from_str(&out[5].data).unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "end_turn");
        assert_eq!(delta["usage"]["input_tokens"], 9);
        assert_eq!(delta["usage"]["output_tokens"], 2);
    }

    /// The closing events go out as soon as the upstream has said all it will (the finish, then
    /// the usage), not a frame later at `[DONE]`: a translated stream's last gap is the
    /// upstream's.
    #[test]
    fn the_message_ends_with_the_usage_chunk_not_at_done() {
        let mut t = OpenAiToAnthropic::new("gpt-4o");
        t.on_event(r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#);
        let at_finish =
            t.on_event(r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(names(&at_finish), ["content_block_stop"]);
        let at_usage = t.on_event(
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}"#,
        );
        assert_eq!(names(&at_usage), ["message_delta", "message_stop"]);
        assert!(t.on_event("[DONE]").is_empty());
        assert!(t.finish().is_empty());
    }

    #[test]
    fn openai_tool_call_fragments_become_input_json_deltas() {
        let out = run_openai(&[
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":"}}]}}]}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start: Value = serde_json::from_str(&out[1].data).unwrap();
        assert_eq!(start["content_block"]["name"], "f");
        let json: String = out[2..4]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(&e.data).unwrap()["delta"]["partial_json"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(json, r#"{"a":1}"#);
        assert!(out[5].data.contains("tool_use"));
    }

    #[test]
    fn an_anthropic_stream_becomes_openai_chunks() {
        let mut t = AnthropicToOpenAi::new("claude-x", 5, true);
        let events = [
            (
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_1","model":"claude-x","usage":{"input_tokens":10,"cache_read_input_tokens":4,"output_tokens":1}}}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
            (
                "content_block_start",
                r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"f","input":{}}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{}"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":12}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ];
        let out: Vec<SseEvent> = events
            .iter()
            .flat_map(|(n, d)| t.on_event(Some(n), d))
            .collect();
        let data: Vec<&str> = out.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data.len(), 7, "{data:#?}");
        assert!(data[1].contains(r#""content":"Hi""#));
        assert!(data[2].contains(r#""id":"toolu_1""#));
        assert!(data[4].contains(r#""finish_reason":"tool_calls""#));
        let usage: Value = serde_json::from_str(data[5]).unwrap();
        assert_eq!(usage["usage"]["prompt_tokens"], 14);
        assert_eq!(usage["usage"]["completion_tokens"], 12);
        assert_eq!(data[6], "[DONE]");
        assert!(t.finish().is_empty());
    }

    #[test]
    fn an_error_event_changes_shape() {
        let mut t = AnthropicToOpenAi::new("m", 0, false);
        let out = t.on_event(
            Some("error"),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(out[0].data.contains(r#""type":"overloaded_error""#));
        let mut t = OpenAiToAnthropic::new("m");
        let out = t.on_event(r#"{"error":{"message":"boom"}}"#);
        assert_eq!(out[0].event.as_deref(), Some("error"));
        assert!(t.finish().is_empty());
    }
}
