"""An ip-binding policy: decides, after authentication and before anything is sent upstream,
whether this key may be used from this client address."""
from dataclasses import dataclass, field
from typing import List

import tollgate_sdk as sdk
from wit_world import exports
from wit_world.imports import types


@dataclass
class Config:
    """The plugin's config (the `config:` of its entry in the gateway's YAML)."""

    # Client addresses starting with one of these are refused, e.g. "203.0.113.".
    deny_prefixes: List[str] = field(default_factory=list)


CONFIG = Config()


class Plugin(exports.Plugin):
    def configure(self, config: str) -> None:
        """Called once per loaded instance with the JSON config; raising `Err` (parse_config
        does) refuses the plugin and the running version keeps serving."""
        global CONFIG
        CONFIG = sdk.parse_config(config, Config)


class IpBinding(exports.IpBinding):
    def check(self, request: types.Request) -> types.BindingDecision:
        """Called once per authenticated request. `allow` lets it go on; `deny` answers the
        client with the denial's status, code and message (no secrets: the client sees them)."""
        ip = request.client_ip()
        if any(ip.startswith(p) for p in CONFIG.deny_prefixes):
            return sdk.deny(403, "ip_not_allowed", "this address may not use this key")
        return sdk.allow()
