"""A router policy: orders the route's upstreams for one request. The gateway tries them in that
order (failover and quota retries move to the next one)."""
from dataclasses import dataclass
from typing import List

import tollgate_sdk as sdk
from wit_world import exports
from wit_world.imports import types


@dataclass
class Config:
    """The plugin's config (the `config:` of its entry in the gateway's YAML)."""

    # The upstream to try first when it is a candidate; the others keep their order.
    prefer: str = ""


CONFIG = Config()


class Plugin(exports.Plugin):
    def configure(self, config: str) -> None:
        """Called once per loaded instance with the JSON config; raising `Err` (parse_config
        does) refuses the plugin and the running version keeps serving."""
        global CONFIG
        CONFIG = sdk.parse_config(config, Config)


class Router(exports.Router):
    def select(self, request: types.Request, candidates: List[types.UpstreamView]) -> types.RouteDecision:
        """Called once per request with the upstreams that serve its model and are not cooling
        down. `pick` lists indices into `candidates`, best first; `no_route` answers 503."""
        order = sorted(range(len(candidates)), key=lambda i: candidates[i].name != CONFIG.prefer)
        return sdk.pick(order)
