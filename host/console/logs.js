// The intercept log and the audit log: the same page over two endpoints — filters, 50 rows a
// page newest first, and a CSV export of everything the filters match (streamed by the server,
// downloaded with the session cookie).

import { call, query, url } from "./api.js";
import { badge, filters, fmtTime, h, pager, shortId, table } from "./ui.js";

const LIMIT = 50;
const TIME_FIELDS = [
  { name: "from_ms", label: "From", type: "time" },
  { name: "to_ms", label: "To", type: "time" },
];

/** A log page: `path` (the API's list; `path.csv` is its export), filter fields, columns. */
function logPage({ title, path, fields, columns, empty, file }) {
  return {
    title,
    async render(view, params, page) {
      const offset = Number(params.offset ?? 0) || 0;
      const filter = Object.fromEntries([...fields, ...TIME_FIELDS].map((f) => [f.name, params[f.name]]));
      const data = await call("GET", `${path}${query({ ...filter, limit: LIMIT, offset })}`);
      const filtered = Object.values(filter).some((v) => v);
      view.replaceChildren(
        h("h1", { text: title }),
        filters([...fields, ...TIME_FIELDS], params, (v) => page.go({ ...v, offset: 0 })),
        h(
          "p",
          { class: "toolbar" },
          h("a", { class: "button quiet", id: "export", href: url(`${path}.csv${query(filter)}`), download: file }, "Export CSV"),
          h("span", { class: "muted small", text: " every row the filters match, not only this page" }),
        ),
        table(columns, data.items, filtered ? "Nothing matches these filters." : empty),
        pager(data.total, offset, LIMIT, (o) => page.go({ ...params, offset: o })),
      );
    },
  };
}

export const intercepts = logPage({
  title: "Intercepts",
  path: "/intercepts",
  file: "intercepts.csv",
  fields: [
    { name: "key", label: "Key id (or its first 12 digits)" },
    { name: "ip", label: "Address" },
  ],
  columns: [
    { label: "Time", get: (r) => fmtTime(r.at_ms) },
    { label: "Key id", get: (r) => shortId(r.key_id_prefix) },
    { label: "Bound to", get: (r) => (r.bound_cidr ? h("code", { text: r.bound_cidr }) : "–") },
    { label: "From address", get: (r) => h("code", { text: r.attempted_ip }) },
    { label: "Request", get: (r) => `${r.method} ${r.path}` },
    { label: "Reason", get: (r) => badge(r.reason, "banned") },
  ],
  empty: "No intercepts: no request has been refused by IP binding.",
});

/** The before and after JSON of an audit row, folded. */
function change(r) {
  if (!r.before && !r.after) return "–";
  const pretty = (s) => {
    try {
      return JSON.stringify(JSON.parse(s), null, 2);
    } catch {
      return s;
    }
  };
  return h(
    "details",
    {},
    h("summary", { text: "before / after" }),
    r.before ? h("pre", { text: `before: ${pretty(r.before)}` }) : null,
    r.after ? h("pre", { text: `after: ${pretty(r.after)}` }) : null,
  );
}

export const audit = logPage({
  title: "Audit log",
  path: "/audit",
  file: "audit.csv",
  fields: [
    { name: "actor", label: "User" },
    { name: "action", label: "Action", placeholder: "e.g. binding.ban" },
    { name: "target", label: "Target" },
    { name: "ip", label: "Address" },
  ],
  columns: [
    { label: "Time", get: (r) => fmtTime(r.at_ms) },
    { label: "User", get: (r) => r.actor },
    { label: "Address", get: (r) => r.ip || "–" },
    { label: "Action", get: (r) => h("code", { text: r.action }) },
    { label: "Target", get: (r) => (r.target ? shortId(r.target) : "–") },
    { label: "Outcome", get: (r) => badge(r.outcome) },
    { label: "Change", get: change },
  ],
  empty: "The audit log is empty.",
});
