// A quota policy: looks at an upstream's answer and may cool that upstream down and retry the
// request elsewhere (while the client has received nothing).
import { cooldown, nowMs, parseConfig, pass } from "./tollgate_sdk.js";

// The plugin's config (the `config:` of its entry in the gateway's YAML), with its defaults.
let config = {
  // How long a model is skipped on an upstream after it answered 429.
  cooldown_ms: 60000,
};

export const plugin = {
  // Called once per loaded instance with the JSON config; throwing (parseConfig does) refuses
  // the plugin and the running version keeps serving.
  configure(text) {
    config = parseConfig(text, config);
  },
};

export const quota = {
  // Asked once at load: the statuses `onResponse` wants to see (undefined: every answer).
  // Answers with other statuses pass without a call.
  watch() {
    return [429];
  },

  // Called for each watched answer. `pass` relays it; `retryOther` tries the router's next
  // pick; `cooldown` records when the upstream (or this model on it) may be used again.
  onResponse(request, upstream, response) {
    if (response.status() !== 429) return pass();
    return cooldown(nowMs() + config.cooldown_ms, "model", "retry-other");
  },
};
