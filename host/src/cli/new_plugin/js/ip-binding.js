// An ip-binding policy: decides, after authentication and before anything is sent upstream,
// whether this key may be used from this client address.
import { allow, deny, parseConfig } from "./tollgate_sdk.js";

// The plugin's config (the `config:` of its entry in the gateway's YAML), with its defaults.
let config = {
  // Client addresses starting with one of these are refused, e.g. "203.0.113.".
  deny_prefixes: [],
};

export const plugin = {
  // Called once per loaded instance with the JSON config; throwing (parseConfig does) refuses
  // the plugin and the running version keeps serving.
  configure(text) {
    config = parseConfig(text, config);
  },
};

export const ipBinding = {
  // Called once per authenticated request. `allow` lets it go on; `deny` answers the client
  // with the denial's status, code and message (no secrets: the client sees them).
  check(request) {
    const ip = request.clientIp();
    if (config.deny_prefixes.some((p) => ip.startsWith(p))) {
      return deny(403, "ip_not_allowed", "this address may not use this key");
    }
    return allow();
  },
};
