// Config: the config in service (after the last successful reload), as the gateway read it —
// defaults filled in, every secret `<redacted>` by the server (`GET /admin/api/config`). Routes
// with their policies, upstreams and fallbacks first, then upstreams, plugins and limits, then
// the whole document.

import { call } from "./api.js";
import { h, table } from "./ui.js";

const list = (xs) => (xs?.length ? xs.join(", ") : "–");

export default {
  title: "Config",
  async render(view) {
    const c = await call("GET", "/config");
    const weights = new Map(c.upstreams.map((u) => [u.name, u.weight]));
    const limitText = (l) => (l ? Object.entries(l).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(", ") || "–" : "–");
    view.replaceChildren(
      h("h1", { text: "Config" }),
      h("p", { class: "muted small", text: "The config in service, defaults filled in. Secrets (keys, credentials, passwords, URL passwords, webhook paths, plugin settings named like secrets) are redacted by the server." }),
      h("h2", { text: "Routes" }),
      table(
        [
          { label: "Path", get: (r) => h("code", { text: r.path_prefix }) },
          { label: "Policies (in order)", get: (r) => list(r.policies) },
          { label: "Upstreams (weight)", get: (r) => list(r.upstreams.map((u) => `${u} (${weights.get(u) ?? "?"})`)) },
          { label: "Fallbacks", get: (r) => list(Object.entries(r.fallbacks ?? {}).map(([m, to]) => `${m} → ${to.join(" → ")}`)) },
          { label: "Attempts", class: "num", get: (r) => r.max_attempts },
          { label: "Maintenance", get: (r) => (r.maintenance ? "on" : "off") },
        ],
        c.routes,
        "No routes.",
      ),
      h("h2", { text: "Upstreams" }),
      table(
        [
          { label: "Name", get: (u) => u.name },
          { label: "URL", get: (u) => (u.url ? h("code", { text: u.url }) : "built-in mock") },
          { label: "Protocol", get: (u) => u.protocol },
          { label: "Models", get: (u) => list(u.models) || "any" },
          { label: "Weight", class: "num", get: (u) => u.weight },
          { label: "Allowance", get: (u) => limitText(u.limits) },
          { label: "Fails before down", class: "num", get: (u) => `${u.max_fails} in ${u.fail_timeout}` },
        ],
        c.upstreams,
        "No upstreams.",
      ),
      h("h2", { text: "Plugins" }),
      table(
        [
          { label: "Name", get: (p) => p.name },
          { label: "Kind", get: (p) => p.kind },
          { label: "Module", get: (p) => h("code", { text: p.module }) },
          { label: "On error", get: (p) => p.on_error },
          { label: "Deadline", get: (p) => p.limits.deadline },
          { label: "Memory", class: "num", get: (p) => `${Math.round(p.limits.memory / 1048576)} MiB` },
        ],
        c.plugins,
        "No plugins.",
      ),
      h("h2", { text: "Limits" }),
      table(
        [
          { label: "Name", get: (l) => l.name },
          { label: "By", get: (l) => l.by },
          { label: "Rate", get: (l) => (l.rate ? `${l.rate} requests` : `${l.tokens} tokens`) },
          { label: "Burst", class: "num", get: (l) => l.burst ?? "–" },
          { label: "Routes", get: (l) => list(l.routes) },
        ],
        [...(c.limits.requests ?? []), ...(c.limits.tokens ?? [])],
        "No request or token limits.",
      ),
      h("details", { id: "config-document" }, h("summary", { text: "The whole config (JSON)" }), h("pre", { text: JSON.stringify(c, null, 2) })),
    );
  },
};
