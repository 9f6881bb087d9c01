// A router policy: orders the route's upstreams for one request. The gateway tries them in that
// order (failover and quota retries move to the next one).
import { parseConfig, pick } from "./tollgate_sdk.js";

// The plugin's config (the `config:` of its entry in the gateway's YAML), with its defaults.
let config = {
  // The upstream to try first when it is a candidate; the others keep their order.
  prefer: "",
};

export const plugin = {
  // Called once per loaded instance with the JSON config; throwing (parseConfig does) refuses
  // the plugin and the running version keeps serving.
  configure(text) {
    config = parseConfig(text, config);
  },
};

export const router = {
  // Called once per request with the upstreams that serve its model and are not cooling down.
  // `pick` lists indices into `candidates`, best first; `noRoute` answers 503.
  select(request, candidates) {
    const rank = (i) => (candidates[i].name === config.prefer ? 0 : 1);
    const order = candidates.map((_, i) => i).sort((a, b) => rank(a) - rank(b));
    return pick(order);
  },
};
