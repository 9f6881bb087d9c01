"""A transform policy: reads and rewrites request and response bodies. This one gives chat
requests that name no `max_tokens` a default one, and leaves responses alone."""
import json
from dataclasses import dataclass
from typing import List, Optional

import tollgate_sdk as sdk
from wit_world import exports
from wit_world.exports import transform as tr
from wit_world.imports import types


@dataclass
class Config:
    """The plugin's config (the `config:` of its entry in the gateway's YAML)."""

    # `max_tokens` given to a request that names none (0: leave requests alone).
    default_max_tokens: int = 1024


CONFIG = Config()


class Plugin(exports.Plugin):
    def configure(self, config: str) -> None:
        """Called once per loaded instance with the JSON config; raising `Err` (parse_config
        does) refuses the plugin and the running version keeps serving."""
        global CONFIG
        CONFIG = sdk.parse_config(config, Config)


def with_default_budget(body: str, max_tokens: int) -> Optional[str]:
    """The body with `max_tokens` set, if it is a JSON object with `messages` and no budget."""
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if not isinstance(value, dict) or max_tokens == 0 or "messages" not in value:
        return None
    if "max_tokens" in value or "max_completion_tokens" in value:
        return None
    value["max_tokens"] = max_tokens
    return json.dumps(value)


class Transform(exports.Transform):
    def on_request(self, request: types.Request, body: str, state: types.TransformState) -> tr.RequestAction:
        """Called once per request before routing: rewrite, answer, or refuse."""
        new = with_default_budget(body, CONFIG.default_max_tokens)
        # response=False: no call for the response, the methods below are never called.
        return sdk.forward(body=new, response=False)

    def on_response_head(self, request: types.Request, response: types.Response, state: types.TransformState) -> tr.HeadEdit:
        """Called on the upstream's response head when `on_request` asked for the response."""
        return tr.HeadEdit(None, [])

    def on_response_body(self, request: types.Request, response: types.Response, body: str, state: types.TransformState) -> Optional[str]:
        """Called with a whole JSON answer: the new body, or None to keep it."""
        return None

    def on_event(self, request: types.Request, event: tr.SseEvent, state: types.TransformState) -> List[tr.SseEvent]:
        """Called for each event of a streamed answer: the events the client gets instead."""
        return [event]

    def on_stream_end(self, request: types.Request, state: types.TransformState) -> List[tr.SseEvent]:
        """Called when the stream ends: events to send last."""
        return []
