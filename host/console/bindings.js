// Bindings: every key's network, paged by the server (50 a page, most recently used first), with
// search (a key's name, or the start of a key id or a network) and a status filter; unbind, move, ban and unban,
// each after a confirmation, each audited by the server.

import { call, query } from "./api.js";
import { ask, badge, filters, fmtNum, fmtTime, h, pager, shortId, table, toast } from "./ui.js";

const LIMIT = 50;

function actions(b, reload) {
  const key = encodeURIComponent(b.key_id);
  const short = b.key_name ?? `${b.key_id.slice(0, 12)}…`;
  const act = (label, cls, dialog) => h("button", { type: "button", class: cls, "data-action": label.toLowerCase(), on: { click: () => ask(dialog).then((done) => done && reload()) } }, label);
  return h(
    "span",
    { class: "row-actions" },
    act("Move", "quiet", {
      title: `Move ${short}`,
      text: "The key will be accepted from this network only. A single address is taken as /32 (or /128).",
      fields: [{ name: "cidr", label: "Network (CIDR or address)", value: b.cidr }],
      ok: "Move",
      submit: async (v) => {
        await call("PUT", `/bindings/${key}`, { cidr: v.cidr });
        toast(`${short} bound to ${v.cidr}`);
      },
    }),
    b.status === "banned"
      ? act("Unban", "quiet", {
          title: `Unban ${short}?`,
          text: `The key will be accepted again from ${b.cidr}.`,
          ok: "Unban",
          submit: async () => {
            await call("POST", `/bindings/${key}/unban`);
            toast(`${short} unbanned`);
          },
        })
      : act("Ban", "danger", {
          title: `Ban ${short} on ip-binding routes?`,
          text: "Routes with an ip-binding policy will refuse this key (403 key_banned) on every gateway, until it is unbanned. Routes without one still accept it: to stop a key everywhere, revoke it on the Keys page.",
          ok: "Ban",
          danger: true,
          submit: async () => {
            await call("POST", `/bindings/${key}/ban`);
            toast(`${short} banned`);
          },
        }),
    act("Unbind", "quiet", {
      title: `Unbind ${short}?`,
      text: "The binding is removed: the key's next request binds it to that request's network.",
      ok: "Unbind",
      danger: true,
      submit: async () => {
        await call("DELETE", `/bindings/${key}`);
        toast(`${short} unbound`);
      },
    }),
  );
}

export default {
  title: "Bindings",
  async render(view, params, page) {
    const offset = Number(params.offset ?? 0) || 0;
    const started = performance.now();
    const data = await call("GET", `/bindings${query({ search: params.search, status: params.status, limit: LIMIT, offset })}`);
    const took = Math.round(performance.now() - started);
    const reload = () => page.refresh();
    const columns = [
      { label: "Key", get: (b) => b.key_name ?? "–" },
      { label: "Key id", get: (b) => shortId(b.key_id) },
      { label: "Network", get: (b) => h("code", { text: b.cidr }) },
      { label: "Status", get: (b) => badge(b.status) },
      { label: "Last address", get: (b) => b.last_ip ?? "–" },
      { label: "Requests", class: "num", get: (b) => fmtNum(b.request_count) },
      { label: "Last used", get: (b) => fmtTime(b.last_used_ms) },
      { label: "Created", get: (b) => fmtTime(b.created_ms) },
      { label: "Actions", get: (b) => actions(b, reload) },
    ];
    const filtered = params.search || params.status;
    view.replaceChildren(
      h("h1", { text: "Bindings" }),
      filters(
        [
          { name: "search", label: "Key name, or key id or network starts with", placeholder: "e.g. alice, 3fa9 or 203.0.113." },
          { name: "status", label: "Status", type: "select", options: [["", "All"], ["active", "Active"], ["banned", "Banned"]] },
        ],
        params,
        (v) => page.go({ ...v, offset: 0 }),
      ),
      table(columns, data.items, filtered ? "No binding matches these filters." : "No bindings yet: a key is bound on its first use through an ip-binding policy."),
      pager(data.total, offset, LIMIT, (o) => page.go({ ...params, offset: o })),
      h("p", { class: "muted small", id: "bindings-timing", text: `${fmtNum(data.total)} ${data.total === 1 ? "binding" : "bindings"} · page read in ${took} ms` }),
    );
  },
};
