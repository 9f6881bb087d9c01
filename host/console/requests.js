// The request log: every request the gateways answered, proxied or refused — filters in the URL,
// 50 rows a page newest first (paged by id: "Older" asks for the rows below the last one shown),
// a live tail (new rows every second, newest on top), exports, and one request's details:
// what answered it, its upstream attempts, timings, tokens and cost.

import { call, query, url } from "./api.js";
import { badge, filters, fmtNum, fmtTime, h, note, shortId, table } from "./ui.js";

const LIMIT = 50;
/** Rows kept on screen while tailing. */
const TAIL_KEEP = 200;

const FIELDS = [
  { name: "key", label: "Key (name or id)" },
  { name: "ip", label: "Address" },
  { name: "route", label: "Route", placeholder: "/v1/" },
  { name: "model", label: "Model" },
  { name: "upstream", label: "Upstream" },
  {
    name: "status",
    label: "Status",
    type: "select",
    options: [["", "any"], ["2xx", "2xx"], ["4xx", "4xx"], ["5xx", "5xx"]],
  },
  {
    name: "outcome",
    label: "Outcome",
    type: "select",
    options: [["", "any"], ["complete", "complete"], ["refused", "refused"], ["cut", "cut"], ["client_aborted", "client aborted"], ["upstream_aborted", "upstream aborted"]],
  },
  { name: "error", label: "Error code", placeholder: "e.g. rate_limit_exceeded, or any" },
  { name: "answered_by", label: "Answered by", placeholder: "e.g. auth, limits:per-ip" },
  { name: "request_id", label: "Request id" },
  { name: "from_ms", label: "From", type: "time" },
  { name: "to_ms", label: "To", type: "time" },
];

const ms = (us) => (us === null || us === undefined ? "–" : `${(us / 1000).toFixed(1)} ms`);

function tokens(r) {
  if (r.input_tokens === null && r.output_tokens === null) return "–";
  return `${fmtNum(r.input_tokens)} + ${fmtNum(r.output_tokens)}${r.partial ? " (partial)" : ""}`;
}

const statusKind = (s) => (s >= 500 ? "failed" : s >= 400 ? "denied" : "ok");

function columns(page, params) {
  return [
    { label: "Time", get: (r) => fmtTime(r.at_ms) },
    { label: "Status", get: (r) => badge(String(r.status), statusKind(r.status)) },
    { label: "Outcome", get: (r) => r.outcome },
    { label: "Error", get: (r) => (r.error ? h("code", { text: r.error }) : "–") },
    { label: "Answered by", get: (r) => (r.answered_by ? h("code", { text: r.answered_by }) : "–") },
    { label: "Key", get: (r) => r.key_name || (r.key_id ? shortId(r.key_id) : "–") },
    { label: "Address", get: (r) => h("code", { text: r.client_ip }) },
    { label: "Route", get: (r) => r.route || "–" },
    { label: "Model", get: (r) => r.model || "–" },
    { label: "Upstream", get: (r) => r.upstream || "–" },
    { label: "Duration", get: (r) => ms(r.duration_us) },
    {
      label: "",
      get: (r) =>
        h("a", { href: `#/requests?${new URLSearchParams({ ...params, id: r.request_id })}`, class: "detail", text: "Details" }),
    },
  ];
}

/** One request, whole. */
async function detail(view, params, page) {
  const r = await call("GET", `/requests/${encodeURIComponent(params.id)}`);
  const back = { ...params };
  delete back.id;
  const row = (label, value) => [h("dt", { text: label }), h("dd", {}, value instanceof Node ? value : String(value ?? "–"))];
  const attempts = Array.isArray(r.attempts) ? r.attempts : [];
  view.replaceChildren(
    h("h1", { text: "Request" }),
    h("p", {}, h("a", { href: `#/requests?${new URLSearchParams(back)}`, text: "← All requests" })),
    h(
      "dl",
      { class: "facts", id: "request-detail" },
      row("Request id", h("code", { text: r.request_id })),
      row("Time", fmtTime(r.at_ms)),
      row("Status", badge(String(r.status), statusKind(r.status))),
      row("Outcome", r.outcome),
      row("Error code", r.error || "–"),
      row("Answered by", r.answered_by ? h("code", { text: r.answered_by }) : "an upstream"),
      row("Key", r.key_name ? `${r.key_name} (${r.key_id.slice(0, 12)}…)` : "–"),
      row("Address", r.client_ip),
      row("Request", `${r.method} ${r.path}`),
      row("Route", r.route || "–"),
      row("Model", r.model || "–"),
      row("Served by model", r.served_model || "–"),
      row("Upstream", r.upstream || "–"),
      row("First byte", ms(r.first_byte_us)),
      row("Duration", ms(r.duration_us)),
      row("Tokens (in + out)", tokens(r)),
      row("Cached tokens", fmtNum(r.cached_tokens)),
      row("Cost", r.cost_nanos === null ? "–" : (r.cost_nanos / 1e9).toFixed(6)),
      row("Bytes in / out", `${fmtNum(r.bytes_in)} / ${fmtNum(r.bytes_out)}`),
    ),
    h("h2", { text: "Upstream attempts" }),
    table(
      [
        { label: "#", get: (a) => a.n },
        { label: "Upstream", get: (a) => a.upstream },
        { label: "Status", get: (a) => (a.status ? String(a.status) : "no answer") },
        { label: "Error", get: (a) => (a.error ? h("code", { text: a.error }) : "–") },
        { label: "At", get: (a) => `${a.ms} ms` },
      ],
      attempts.map((a, i) => ({ ...a, n: i + 1 })),
      "No upstream was asked: the gateway answered itself.",
    ),
    r.request_body !== null && r.request_body !== undefined ? h("h2", { text: "Request body (redacted)" }) : null,
    r.request_body !== null && r.request_body !== undefined ? h("pre", { id: "request-body", text: r.request_body || "(empty)" }) : null,
    r.response_body !== null && r.response_body !== undefined ? h("h2", { text: "Answer (redacted; a stream as its text)" }) : null,
    r.response_body !== null && r.response_body !== undefined ? h("pre", { id: "response-body", text: r.response_body || "(empty)" }) : null,
    r.decisions ? h("h2", { text: "Policy decisions" }) : null,
    r.decisions ? h("pre", { text: JSON.stringify(r.decisions, null, 2) }) : null,
  );
}

export default {
  title: "Requests",
  async render(view, params, page) {
    if (params.id) return detail(view, params, page);
    const filter = Object.fromEntries(FIELDS.map((f) => [f.name, params[f.name]]));
    const live = params.live === "1";
    const data = await call("GET", `/requests${query({ ...filter, limit: LIMIT, before: live ? undefined : params.before })}`);
    let rows = data.items;
    const filtered = Object.values(filter).some((v) => v);
    const holder = h("div", { id: "requests-table" });
    const cols = columns(page, params);
    const draw = () =>
      holder.replaceChildren(
        table(
          cols,
          rows,
          filtered
            ? "Nothing matches these filters."
            : "No request has been logged yet.",
        ),
      );
    draw();
    const liveBox = h("input", { type: "checkbox", id: "live", checked: live });
    liveBox.addEventListener("change", () => page.go({ ...params, before: "", live: liveBox.checked ? "1" : "" }));
    view.replaceChildren(
      h("h1", { text: "Requests" }),
      filters(FIELDS, params, (v) => page.go({ ...v, live: params.live })),
      h(
        "p",
        { class: "toolbar" },
        h("label", { class: "inline" }, liveBox, " Live (new requests appear on top)"),
        h("a", { class: "button quiet", href: url(`/requests.csv${query(filter)}`), download: "requests.csv" }, "Export CSV"),
        h("a", { class: "button quiet", href: url(`/requests.ndjson${query(filter)}`), download: "requests.ndjson" }, "Export NDJSON"),
      ),
      h("p", { class: "muted small", text: "Every request the gateway answered is here: refused and failed ones always, successful ones at the share storage.request_log.sample keeps (all by default; docs/requests.md)." }),
      holder,
      live
        ? note("ok", "Live: checking for new requests every second.")
        : h(
            "nav",
            { class: "pager", "aria-label": "Pages" },
            h("button", { type: "button", class: "quiet", disabled: !params.before, on: { click: () => page.go({ ...params, before: "" }) } }, "← Newest"),
            h("button", { type: "button", class: "quiet", id: "older", disabled: !data.next, on: { click: () => page.go({ ...params, before: data.next }) } }, "Older →"),
          ),
    );
    if (live) {
      let newest = rows.length ? rows[0].id : 0;
      page.every(1000, async () => {
        const more = await call("GET", `/requests${query({ ...filter, after: newest, limit: 1000 })}`);
        if (!page.alive || !more.items.length) return;
        newest = more.next ?? newest;
        rows = [...more.items.reverse(), ...rows].slice(0, TAIL_KEEP);
        draw();
      });
    }
  },
};
