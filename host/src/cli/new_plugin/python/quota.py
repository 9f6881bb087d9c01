"""A quota policy: looks at an upstream's answer and may cool that upstream down and retry the
request elsewhere (while the client has received nothing)."""
from dataclasses import dataclass
from typing import List, Optional

import tollgate_sdk as sdk
from wit_world import exports
from wit_world.imports import types


@dataclass
class Config:
    """The plugin's config (the `config:` of its entry in the gateway's YAML)."""

    # How long a model is skipped on an upstream after it answered 429.
    cooldown_ms: int = 60_000


CONFIG = Config()


class Plugin(exports.Plugin):
    def configure(self, config: str) -> None:
        """Called once per loaded instance with the JSON config; raising `Err` (parse_config
        does) refuses the plugin and the running version keeps serving."""
        global CONFIG
        CONFIG = sdk.parse_config(config, Config)


class Quota(exports.Quota):
    def watch(self) -> Optional[List[int]]:
        """Asked once at load: the statuses `on_response` wants to see (None: every answer).
        Answers with other statuses pass without a call."""
        return [429]

    def on_response(
        self, request: types.Request, upstream: types.UpstreamView, response: types.Response
    ) -> types.QuotaDecision:
        """Called for each watched answer. `pass_` relays it; `retry_other` tries the router's
        next pick; `cooldown` records when the upstream (or this model on it) may be used again."""
        if response.status() != 429:
            return sdk.pass_()
        return sdk.cooldown(sdk.now_ms() + CONFIG.cooldown_ms, scope="model", then="retry-other")
