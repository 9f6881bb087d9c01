"""A header-rewrite policy: changes the headers of the request sent upstream and of the response
sent to the client."""
from dataclasses import dataclass
from typing import List

import tollgate_sdk as sdk
from wit_world import exports
from wit_world.exports.header_rewrite import Phases
from wit_world.imports import types


@dataclass
class Config:
    """The plugin's config (the `config:` of its entry in the gateway's YAML)."""

    # Header set on every request sent upstream to the key's name, e.g. "x-team".
    key_header: str = ""


CONFIG = Config()


class Plugin(exports.Plugin):
    def configure(self, config: str) -> None:
        """Called once per loaded instance with the JSON config; raising `Err` (parse_config
        does) refuses the plugin and the running version keeps serving."""
        global CONFIG
        CONFIG = sdk.parse_config(config, Config)


class HeaderRewrite(exports.HeaderRewrite):
    def rewrites(self) -> Phases:
        """Asked once at load: the phases this plugin rewrites; the others are never called."""
        return Phases.REQUEST

    def on_request(self, request: types.Request) -> List[types.HeaderOp]:
        """Called before each upstream attempt: operations on the headers sent upstream."""
        if not CONFIG.key_header:
            return []
        return [sdk.set_header(CONFIG.key_header, request.key_name())]

    def on_response(self, request: types.Request, response: types.Response) -> List[types.HeaderOp]:
        """Called with the response head before it goes to the client (not called here:
        `rewrites` names only the request phase)."""
        return []
