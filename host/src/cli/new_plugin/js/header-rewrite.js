// A header-rewrite policy: changes the headers of the request sent upstream and of the response
// sent to the client.
import { parseConfig, setHeader } from "./tollgate_sdk.js";

// The plugin's config (the `config:` of its entry in the gateway's YAML), with its defaults.
let config = {
  // Header set on every request sent upstream to the key's name, e.g. "x-team".
  key_header: "",
};

export const plugin = {
  // Called once per loaded instance with the JSON config; throwing (parseConfig does) refuses
  // the plugin and the running version keeps serving.
  configure(text) {
    config = parseConfig(text, config);
  },
};

export const headerRewrite = {
  // Asked once at load: the phases this plugin rewrites; the others are never called.
  rewrites() {
    return { request: true, response: false };
  },

  // Called before each upstream attempt: operations on the headers sent upstream, in order.
  onRequest(request) {
    if (!config.key_header) return [];
    return [setHeader(config.key_header, request.keyName())];
  },

  // Called with the response head before it goes to the client (not called here: `rewrites`
  // names only the request phase).
  onResponse(request, response) {
    return [];
  },
};
