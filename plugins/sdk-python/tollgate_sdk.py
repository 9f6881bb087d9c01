"""Helpers for Tollgate policy plugins written in Python (componentize-py 0.25).

`tollgate plugin new NAME --kind KIND --lang python` copies this file into the project; it has
no dependency besides the bindings componentize-py generates at build time (`wit_world`).

How the WIT types look from Python:

- records are dataclasses (`UpstreamView.in_flight`, `Denial(status, code, message)`);
- `u64`/`s64` are plain ints, `option<T>` is `T` or `None`, `list<T>` is a list;
- a variant is one dataclass per case, e.g. `RouteDecision_Pick(value=[1, 0])`; the helpers below
  build them, so a plugin rarely names those classes;
- a function returning `result<_, string>` (`configure`) reports its error by raising
  `Err("message")`: `parse_config` does that for a bad config;
- the request and response are resources: call their methods (`request.client_ip()`,
  `response.status()`); they are valid only during the call.

An uncaught exception traps the call: the gateway logs the traceback (bounded) and applies the
plugin's `on_error`. Import every module at the top of the file: componentize-py snapshots the
interpreter at build time, and a module imported for the first time during a call may not exist
in the sandbox.
"""
import json
from dataclasses import fields, is_dataclass
from typing import Any, List, Optional, Tuple, Type, TypeVar

from componentize_py_types import Err
from wit_world.imports import clock as _clock
from wit_world.imports import log as _log
from wit_world.imports import types as t

C = TypeVar("C")


def parse_config(text: str, cls: Optional[Type[C]] = None) -> Any:
    """The plugin's `config:` (JSON text) as a dict, or as an instance of the dataclass `cls`
    (its fields need defaults; unknown keys are refused). Raises `Err`, which refuses the
    config: the gateway keeps the running version and reports the message."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise Err(f"invalid plugin config: {e}")
    if cls is None:
        return value
    if not isinstance(value, dict):
        raise Err("invalid plugin config: expected a mapping")
    known = {f.name for f in fields(cls)} if is_dataclass(cls) else set()
    for key in sorted(value):
        if key not in known:
            raise Err(f"invalid plugin config: unknown field {key!r}")
    try:
        return cls(**value)
    except TypeError as e:
        raise Err(f"invalid plugin config: {e}")


# --- ip-binding decisions -------------------------------------------------------------------

def allow() -> t.BindingDecision:
    """Let the request go on."""
    return t.BindingDecision_Allow()


def deny(status: int, code: str, message: str) -> t.BindingDecision:
    """Answer the client with `status` and an OpenAI-shaped error carrying `code` and
    `message` (the client sees them: no secrets)."""
    return t.BindingDecision_Deny(t.Denial(status, code, message))


# --- router decisions -----------------------------------------------------------------------

def pick(order: List[int]) -> t.RouteDecision:
    """Try the candidates at these indices, in this order (retries follow it)."""
    return t.RouteDecision_Pick(list(order))


def no_route(reason: str) -> t.RouteDecision:
    """Refuse the request with 503 and `reason`."""
    return t.RouteDecision_None_(reason)


# --- quota decisions ------------------------------------------------------------------------

def pass_() -> t.QuotaDecision:
    """Relay the answer to the client."""
    return t.QuotaDecision_Pass()


def retry_other() -> t.QuotaDecision:
    """Drop the answer and try the router's next pick."""
    return t.QuotaDecision_RetryOther()


def cooldown(until_ms: int, scope: str = "model", then: str = "retry-other") -> t.QuotaDecision:
    """Skip this upstream (`scope="upstream"`) or only this model on it (`"model"`) until
    `until_ms` (Unix ms); then `"retry-other"` (try the next pick now) or `"pass"` (relay)."""
    scopes = {"model": t.CooldownScope.MODEL, "upstream": t.CooldownScope.UPSTREAM}
    thens = {"retry-other": t.AfterCooldown.RETRY_OTHER, "pass": t.AfterCooldown.PASS}
    return t.QuotaDecision_Cooldown(t.Cooldown(scopes[scope], until_ms, thens[then]))


# --- header operations ----------------------------------------------------------------------

def set_header(name: str, value: str) -> t.HeaderOp:
    """Replace every value of `name` with `value`."""
    return t.HeaderOp_Set(t.Header(name, value))


def append_header(name: str, value: str) -> t.HeaderOp:
    """Add a value to `name`, keeping the others."""
    return t.HeaderOp_Append(t.Header(name, value))


def remove_header(name: str) -> t.HeaderOp:
    return t.HeaderOp_Remove(name)


def rename_header(old: str, new: str) -> t.HeaderOp:
    return t.HeaderOp_Rename((old, new))


# --- host services --------------------------------------------------------------------------

def now_ms() -> int:
    """Unix time in milliseconds (the host's clock)."""
    return _clock.now_ms()


def debug(message: str) -> None:
    _log.log(_log.Level.DEBUG, message)


def info(message: str) -> None:
    _log.log(_log.Level.INFO, message)


def warn(message: str) -> None:
    _log.log(_log.Level.WARN, message)


def error(message: str) -> None:
    _log.log(_log.Level.ERROR, message)


# --- transforms -----------------------------------------------------------------------------
# The transform types live in `wit_world.exports.transform` (imported lazily here: only a
# transform plugin's bindings have that module).

def forward(path: Optional[str] = None, headers: Optional[List[Any]] = None,
            body: Optional[str] = None, response: bool = False) -> Any:
    """Go on with these changes: a new path (and query), header operations, a new body (JSON
    text), and whether to be called for the response."""
    from wit_world.exports import transform as tr
    return tr.RequestAction_Forward(tr.RequestEdit(path, list(headers or []), body, response))


def answer(status: int, body: str, headers: Optional[List[Tuple[str, str]]] = None) -> Any:
    """Answer the client with this response; no upstream is asked."""
    from wit_world.exports import transform as tr
    hs = [t.Header(n, v) for n, v in (headers or [])]
    return tr.RequestAction_Answer(tr.Answer(status, hs, body))


def refuse(status: int, code: str, message: str) -> Any:
    """Refuse the request with an OpenAI-shaped error."""
    from wit_world.exports import transform as tr
    return tr.RequestAction_Deny(t.Denial(status, code, message))


def event(data: str, name: Optional[str] = None) -> Any:
    """One server-sent event."""
    from wit_world.exports import transform as tr
    return tr.SseEvent(name, data)
