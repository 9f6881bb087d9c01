// A transform policy: reads and rewrites request and response bodies. This one gives chat
// requests that name no `max_tokens` a default one, and leaves responses alone.
import { forward, parseConfig } from "./tollgate_sdk.js";

// The plugin's config (the `config:` of its entry in the gateway's YAML), with its defaults.
let config = {
  // `max_tokens` given to a request that names none (0: leave requests alone).
  default_max_tokens: 1024,
};

export const plugin = {
  // Called once per loaded instance with the JSON config; throwing (parseConfig does) refuses
  // the plugin and the running version keeps serving.
  configure(text) {
    config = parseConfig(text, config);
  },
};

// The body with `max_tokens` set, if it is a JSON object with `messages` and no budget.
function withDefaultBudget(body, maxTokens) {
  let value;
  try {
    value = JSON.parse(body);
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) return undefined;
  if (!maxTokens || !("messages" in value)) return undefined;
  if ("max_tokens" in value || "max_completion_tokens" in value) return undefined;
  value.max_tokens = maxTokens;
  return JSON.stringify(value);
}

export const transform = {
  // Called once per request before routing: rewrite, answer, or refuse.
  onRequest(request, body, state) {
    // response: false: no call for the response, the functions below are never called.
    return forward({ body: withDefaultBudget(body, config.default_max_tokens), response: false });
  },

  // Called on the upstream's response head when `onRequest` asked for the response.
  onResponseHead(request, response, state) {
    return { status: undefined, headers: [] };
  },

  // Called with a whole JSON answer: the new body, or undefined to keep it.
  onResponseBody(request, response, body, state) {
    return undefined;
  },

  // Called for each event of a streamed answer: the events the client gets instead.
  onEvent(request, event, state) {
    return [event];
  },

  // Called when the stream ends: events to send last.
  onStreamEnd(request, state) {
    return [];
  },
};
