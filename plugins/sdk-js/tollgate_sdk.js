// Helpers for Tollgate policy plugins written in JavaScript (componentize-js 0.23).
//
// `tollgate plugin new NAME --kind KIND --lang js` copies this file into the project and its
// build bundles it with the plugin: import what you need from "./tollgate_sdk.js".
//
// How the WIT types look from JavaScript:
// - records are plain objects with camelCase fields (`inFlight`, `latencyEwmaUs`);
// - u64 and s64 are BigInt (`latencyEwmaUs`, `coolingUntilMs`, `nowMs()`, the kv TTLs):
//   mix them with Numbers through `BigInt(n)` / `Number(b)`; u8..u32 and floats are Numbers;
// - an option is the value or `undefined`;
// - a variant is `{ tag: "case", val: payload }` and an enum is its case name as a string;
//   the constructors below build them;
// - flags are an object of booleans (`{ request: true, response: false }`);
// - a function returning `result<_, string>` (`configure`) reports its error by throwing:
//   `parseConfig` throws a string for a bad config, which refuses it;
// - the request and response are resources: call their methods (`request.clientIp()`,
//   `response.status()`); they are valid only during the call.
//
// An uncaught exception traps the call: the gateway logs its message (bounded) and applies the
// plugin's `on_error`.
import { nowMs as hostNowMs } from "tollgate:policy/clock@0.2.0";
import { log } from "tollgate:policy/log@0.2.0";

/// The plugin's `config:` (JSON text) as an object, with `defaults` filled in for missing keys;
/// keys not in `defaults` are refused. Throws a message, which refuses the config.
export function parseConfig(text, defaults = {}) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw `invalid plugin config: ${e.message}`;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    throw "invalid plugin config: expected a mapping";
  }
  for (const key of Object.keys(value)) {
    if (!(key in defaults)) throw `invalid plugin config: unknown field "${key}"`;
  }
  return { ...defaults, ...value };
}

// ip-binding decisions.
export const allow = () => ({ tag: "allow" });
/// Answer the client with `status` and an OpenAI-shaped error carrying `code` and `message`.
export const deny = (status, code, message) => ({ tag: "deny", val: { status, code, message } });

// router decisions.
/// Try the candidates at these indices, in this order (retries follow it).
export const pick = (order) => ({ tag: "pick", val: order });
/// Refuse the request with 503 and `reason`.
export const noRoute = (reason) => ({ tag: "none", val: reason });

// quota decisions.
export const pass = () => ({ tag: "pass" });
export const retryOther = () => ({ tag: "retry-other" });
/// Skip this upstream (`scope: "upstream"`) or this model on it (`"model"`) until `untilMs`
/// (Unix ms, Number or BigInt); then "retry-other" (next pick now) or "pass" (relay the answer).
export const cooldown = (untilMs, scope = "model", then = "retry-other") => ({
  tag: "cooldown",
  val: { scope, untilMs: BigInt(untilMs), then },
});

// header operations.
export const setHeader = (name, value) => ({ tag: "set", val: { name, value } });
export const appendHeader = (name, value) => ({ tag: "append", val: { name, value } });
export const removeHeader = (name) => ({ tag: "remove", val: name });
export const renameHeader = (from, to) => ({ tag: "rename", val: [from, to] });

// host services.
/// Unix time in milliseconds, as a Number.
export const nowMs = () => Number(hostNowMs());
export const debug = (message) => log("debug", message);
export const info = (message) => log("info", message);
export const warn = (message) => log("warn", message);
export const error = (message) => log("error", message);

// transform actions.
/// Go on with these changes: `path` (and query), `headers` (operations), `body` (JSON text),
/// and `response` (whether to be called for the response).
export const forward = ({ path, headers = [], body, response = false } = {}) => ({
  tag: "forward",
  val: { path, headers, body, response },
});
/// Answer the client with this response; no upstream is asked.
export const answer = (status, body, headers = []) => ({
  tag: "answer",
  val: { status, headers: headers.map(([name, value]) => ({ name, value })), body },
});
/// Refuse the request with an OpenAI-shaped error.
export const refuse = (status, code, message) => ({ tag: "deny", val: { status, code, message } });
/// One server-sent event.
export const event = (data, name) => ({ event: name, data });
