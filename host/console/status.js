// Status: what an operator on call looks at first — the conditions that need attention (the
// dashboard shows them too), this gateway's version, uptime and config file, whether its
// database and cache answer, its write counters, and the alerts it sent to the webhook.

import { call } from "./api.js";
import { badge, fmtNum, fmtTime, h, note, table } from "./ui.js";

/** The conditions of a `/status` answer as a list of banners; "All clear" when there are none. */
export function alertsOf(status) {
  if (!status.conditions.length) return [h("p", { class: "condition clear", "data-level": "clear", text: "All clear: stores up, upstreams healthy, no maintenance." })];
  return status.conditions.map((c) => h("p", { class: `condition ${c.level}`, role: c.level === "critical" ? "alert" : "status", "data-code": c.code, "data-level": c.level }, badge(c.level, c.level), " ", c.message));
}

function uptime(secs) {
  const d = Math.floor(secs / 86400);
  const hh = Math.floor((secs % 86400) / 3600);
  const mm = Math.floor((secs % 3600) / 60);
  return d ? `${d} d ${hh} h` : hh ? `${hh} h ${mm} min` : `${mm} min ${secs % 60} s`;
}

function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", {}, v instanceof Node ? v : String(v ?? "–"))]));
}

export default {
  title: "Status",
  async render(view, _params, page) {
    const [s, alerts] = await Promise.all([call("GET", "/status"), call("GET", "/alerts")]);
    const store = (name, p) => ({ name, ...p });
    view.replaceChildren(
      h("h1", { text: "Status" }),
      h("div", { id: "conditions" }, alertsOf(s)),
      h("h2", { text: "This gateway" }),
      facts([
        ["Version", s.version],
        ["Started", fmtTime(s.started_ms)],
        ["Uptime", uptime(s.uptime_secs)],
        ["Config file", s.config_path ?? "none (started without a file)"],
        ["Last reload", s.last_reload_ms ? `${fmtTime(s.last_reload_ms)}${s.last_reload_error ? " (refused)" : " (in service)"}` : "none since the start"],
        ["Maintenance", s.maintenance ? "on" : "off"],
        ["Failsafe", s.failsafe],
        ["Upstreams", `${s.healthy_upstreams} of ${s.upstreams} healthy, ${s.cooling_upstreams} cooling down`],
      ]),
      h("h2", { text: "Stores" }),
      table(
        [
          { label: "Store", get: (r) => r.name },
          { label: "Kind", get: (r) => r.kind },
          { label: "State", get: (r) => badge(r.up ? "up" : "down", r.up ? "ok" : "failed") },
          { label: "Answered in", class: "num", get: (r) => `${r.took_ms.toFixed(1)} ms` },
          { label: "Error", get: (r) => r.error ?? "–" },
        ],
        [store("Database", s.stores.database), store("Cache", s.stores.cache)],
        "",
      ),
      h("h2", { text: "Since the start" }),
      facts([
        ["Requests decided by the failsafe", fmtNum(s.counters.failsafe_decisions)],
        ["Flushes that failed", fmtNum(s.counters.flush_failures)],
        ["Updates dropped (queue full)", fmtNum(s.counters.queue_full)],
        ["Cache fallbacks", fmtNum(s.counters.cache_fallbacks)],
        ["Requests the request log dropped", fmtNum(s.counters.requests_dropped)],
      ]),
      h("h2", { text: "Alerts sent" }),
      alerts.webhook
        ? table(
            [
              { label: "Raised", get: (a) => fmtTime(a.at_ms) },
              { label: "Event", get: (a) => a.alert.event ?? "–" },
              { label: "About", get: (a) => a.about },
              { label: "Delivery", get: (a) => badge(a.delivery, a.delivery === "delivered" ? "ok" : a.delivery === "failed" ? "failed" : "expired") },
              { label: "Attempts", class: "num", get: (a) => a.attempts },
              { label: "Last error", get: (a) => a.error ?? "–" },
            ],
            alerts.sent,
            "No alert sent since this gateway started.",
          )
        : note("empty", "No webhook is configured (alerts.webhook), so no alert is sent."),
    );
    page.every(10_000, () => page.refresh());
  },
};
