// Usage: requests, errors, tokens and their cost per key, upstream or model over a time range,
// with quick ranges and a custom one. The database keeps usage per hour, and the server counts
// every hour that starts in the range after widening it to the start of its first hour: the
// page says exactly which span that is ("This hour" is the current hour so far, not an
// invented last 60 minutes).

import { call, query } from "./api.js";
import { filters, fmtMoney, fmtNum, fmtTime, h, shortId, table } from "./ui.js";

const HOUR = 3_600_000;
const RANGES = [
  ["1h", "This hour", 0],
  ["24h", "Last 24 hours", 24 * HOUR],
  ["7d", "Last 7 days", 7 * 24 * HOUR],
  ["30d", "Last 30 days", 30 * 24 * HOUR],
];

export default {
  title: "Usage",
  async render(view, params, page) {
    const by = params.by || "key";
    const span = RANGES.find(([id]) => id === params.range);
    const now = Date.now();
    const from = span ? (span[2] ? now - span[2] : Math.floor(now / HOUR) * HOUR) : params.from_ms || now - 24 * HOUR;
    const to = span ? "" : params.to_ms;
    // What the server counts: from the start of the hour holding `from`.
    const counted = Math.floor(Number(from) / HOUR) * HOUR;
    const until = to ? Number(to) : now;
    const spanText = (ms) => {
      const m = Math.round(ms / 60000);
      const d = Math.floor(m / 1440);
      const hh = Math.floor((m % 1440) / 60);
      return [d ? `${d} d` : "", hh ? `${hh} h` : "", m % 60 || (!d && !hh) ? `${m % 60} min` : ""].filter(Boolean).join(" ");
    };
    const rows = await call("GET", `/usage${query({ by, from_ms: from, to_ms: to })}`);
    const total = (get) => rows.reduce((n, r) => n + get(r), 0);
    const columns = [
      { label: by === "key" ? "Key" : by === "upstream" ? "Upstream" : "Model", get: (r) => r.name || "(none)" },
      ...(by === "key" ? [{ label: "Key id", get: (r) => (r.key_id ? shortId(r.key_id) : "–") }] : []),
      { label: "Requests", class: "num", get: (r) => fmtNum(r.requests) },
      { label: "Errors", class: "num", get: (r) => fmtNum(r.errors) },
      { label: "Partial", class: "num", get: (r) => fmtNum(r.partial) },
      { label: "Input tokens", class: "num", get: (r) => fmtNum(r.input_tokens) },
      { label: "Output tokens", class: "num", get: (r) => fmtNum(r.output_tokens) },
      { label: "Cached tokens", class: "num", get: (r) => fmtNum(r.cached_tokens) },
      { label: "Cost", class: "num", get: (r) => fmtMoney(r.cost, r.currency) },
      { label: "Last used", get: (r) => fmtTime(r.last_used_ms) },
    ];
    view.replaceChildren(
      h("h1", { text: "Usage" }),
      h(
        "p",
        { class: "toolbar", role: "group", "aria-label": "Range" },
        RANGES.map(([id, label]) =>
          h("button", { type: "button", class: params.range === id || (!params.range && !params.from_ms && id === "24h") ? "" : "quiet", "aria-pressed": String(params.range === id), on: { click: () => page.go({ by, range: id }) } }, label),
        ),
      ),
      filters(
        [
          { name: "by", label: "Per", type: "select", options: [["key", "Key"], ["upstream", "Upstream"], ["model", "Model"]] },
          { name: "from_ms", label: "From", type: "time" },
          { name: "to_ms", label: "To", type: "time" },
        ],
        { ...params, by, from_ms: from, to_ms: to },
        (v) => page.go({ by: v.by, from_ms: v.from_ms, to_ms: v.to_ms }),
      ),
      h("p", {
        class: "muted small",
        id: "usage-span",
        text: `Counted: ${fmtTime(counted)} – ${to ? fmtTime(to) : "now"} (${spanText(until - counted)}) · ${fmtNum(total((r) => r.requests))} requests, ${fmtNum(total((r) => r.input_tokens + r.output_tokens))} tokens. Usage is kept per hour, so the range starts at the beginning of the hour that holds its start.`,
      }),
      table(columns, rows, "No usage in this range."),
    );
  },
};
