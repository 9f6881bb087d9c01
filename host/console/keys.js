// Keys: the client keys, the config file's (read-only) and those issued at run time, paged by the
// server and filtered by name, owner, status and source; issue one (its secret is shown once,
// with a Copy button), edit its owner, models and budget, rotate it with a grace period, revoke
// it, each after a confirmation and audited by the server. Each key's spend of the last 30 days
// comes from the usage API.

import { call, query } from "./api.js";
import { ask, badge, filters, fmtMoney, fmtNum, fmtTime, h, pager, shortId, table, toast } from "./ui.js";

const LIMIT = 50;
const DAY = 86_400_000;

/** `50/month` or `2000000tokens/day` → a budget object; '' → none. */
function parseBudget(text) {
  if (!text) return null;
  const m = /^\s*([0-9.]+)\s*(tokens)?\s*\/\s*(day|week|month)\s*$/.exec(text);
  if (!m) throw new Error("a budget is AMOUNT/PERIOD (50/month) or TOKENStokens/PERIOD (2000000tokens/day)");
  return m[2] ? { tokens: Number(m[1]), period: m[3] } : { amount: Number(m[1]), period: m[3] };
}

function budgetText(b, currency) {
  return b.amount !== undefined ? `${fmtMoney(b.amount, currency)} / ${b.period}` : `${fmtNum(b.tokens)} tokens / ${b.period}`;
}

const list = (text) =>
  text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);

/** Shows a secret the server just issued: once, with a Copy button. */
function showSecret(title, issued) {
  return ask({
    title,
    text: "Copy the secret now: it is shown this once and stored nowhere (only its digest is kept).",
    fields: [{ name: "secret", label: "Secret", value: issued.secret, readonly: true, copy: true }],
    ok: "Done",
    submit: async () => {},
  });
}

/** The fields a key is created or edited with. */
function keyFields(k = {}) {
  return [
    { name: "owner", label: "Owner (person or team)", value: k.owner ?? "", required: false },
    { name: "models", label: "Models it may use, comma-separated (empty: any; `claude-*` for a prefix)", value: (k.models ?? []).join(", "), required: false },
    {
      name: "budget",
      label: "Budget (e.g. 50/month or 2000000tokens/day; empty: none)",
      value: k.budgets?.[0] ? `${k.budgets[0].amount ?? `${k.budgets[0].tokens}tokens`}/${k.budgets[0].period}` : "",
      required: false,
    },
  ];
}

function fieldsBody(v) {
  const budget = parseBudget(v.budget);
  return { owner: v.owner, models: list(v.models), budgets: budget ? [budget] : [] };
}

function actions(k, reload) {
  if (k.source === "config") return h("span", { class: "muted small", text: "config file" });
  if (k.status === "revoked") return h("span", { class: "muted small", text: `revoked ${fmtTime(k.revoked_ms)}` });
  const name = encodeURIComponent(k.name);
  const act = (label, cls, run) => h("button", { type: "button", class: cls, "data-action": label.toLowerCase(), on: { click: () => run().then((done) => done && reload()) } }, label);
  return h(
    "span",
    { class: "row-actions" },
    act("Edit", "quiet", () =>
      ask({
        title: `Edit ${k.name}`,
        fields: keyFields(k),
        ok: "Save",
        submit: async (v) => {
          await call("PATCH", `/keys/${name}`, fieldsBody(v));
          toast(`${k.name} saved`);
        },
      }),
    ),
    act("Rotate", "quiet", async () => {
      let issued = null;
      const done = await ask({
        title: `Rotate ${k.name}?`,
        text: "A new secret is issued. The old one keeps working for the grace period, then stops on every gateway.",
        fields: [{ name: "grace", label: "Grace period in seconds (0: the old secret stops now)", value: "3600" }],
        ok: "Rotate",
        submit: async (v) => {
          issued = await call("POST", `/keys/${name}/rotate`, { grace_secs: Number(v.grace) || 0 });
        },
      });
      if (done && issued) await showSecret(`New secret of ${k.name}`, issued);
      return done;
    }),
    act("Revoke", "danger", () =>
      ask({
        title: `Revoke ${k.name}?`,
        text: "Every request with this key will be refused (401) on every gateway within a second. This cannot be undone.",
        ok: "Revoke",
        danger: true,
        submit: async () => {
          await call("POST", `/keys/${name}/revoke`);
          toast(`${k.name} revoked`);
        },
      }),
    ),
  );
}

export default {
  title: "Keys",
  async render(view, params, page) {
    const offset = Number(params.offset ?? 0) || 0;
    const [data, usage] = await Promise.all([
      call("GET", `/keys${query({ name: params.name, owner: params.owner, status: params.status, source: params.source, limit: LIMIT, offset })}`),
      call("GET", `/usage${query({ by: "key", from_ms: Date.now() - 30 * DAY })}`),
    ]);
    const spend = new Map(usage.map((u) => [u.key_id, u]));
    const currency = usage[0]?.currency ?? "";
    const reload = () => page.refresh();
    const columns = [
      { label: "Name", get: (k) => h("strong", { text: k.name }) },
      { label: "Status", get: (k) => badge(k.status) },
      { label: "Owner", get: (k) => k.owner || "–" },
      { label: "Secret", get: (k) => (k.display_prefix ? h("code", { text: k.display_prefix }) : "–") },
      { label: "Key id", get: (k) => shortId(k.id) },
      { label: "Models", get: (k) => (k.models.length ? k.models.join(", ") : "any") },
      { label: "Budget", get: (k) => (k.budgets.length ? k.budgets.map((b) => budgetText(b, currency)).join("; ") : "–") },
      { label: "Spend, 30 days", class: "num", get: (k) => (spend.has(k.id) ? fmtMoney(spend.get(k.id).cost, currency) : "–") },
      { label: "Requests, 30 days", class: "num", get: (k) => fmtNum(spend.get(k.id)?.requests ?? 0) },
      { label: "Expires", get: (k) => (k.expires_ms ? fmtTime(k.expires_ms) : "never") },
      { label: "Actions", get: (k) => actions(k, reload) },
    ];
    const create = h(
      "button",
      {
        type: "button",
        id: "key-create",
        class: "needs-operator",
        on: {
          click: async () => {
            let issued = null;
            const done = await ask({
              title: "New key",
              fields: [{ name: "name", label: "Name (letters, digits, - _ . @)", value: "" }, ...keyFields()],
              ok: "Create",
              submit: async (v) => {
                issued = await call("POST", "/keys", { name: v.name, ...fieldsBody(v) });
              },
            });
            if (done && issued) {
              await showSecret(`Key ${issued.key.name} created`, issued);
              reload();
            }
          },
        },
      },
      "New key",
    );
    const filtered = params.name || params.owner || params.status || params.source;
    view.replaceChildren(
      h("h1", { text: "Keys" }),
      h("p", { class: "toolbar" }, create),
      filters(
        [
          { name: "name", label: "Name starts with", placeholder: "e.g. alice" },
          { name: "owner", label: "Owner", placeholder: "e.g. team-a" },
          { name: "status", label: "Status", type: "select", options: [["", "All"], ["active", "Active"], ["expired", "Expired"], ["revoked", "Revoked"]] },
          { name: "source", label: "Source", type: "select", options: [["", "All"], ["database", "Issued here"], ["config", "Config file"]] },
        ],
        params,
        (v) => page.go({ ...v, offset: 0 }),
      ),
      table(columns, data.items, filtered ? "No key matches these filters." : "No keys yet."),
      pager(data.total, offset, LIMIT, (o) => page.go({ ...params, offset: o })),
      h("p", { class: "muted small", id: "keys-count", text: `${fmtNum(data.total)} ${data.total === 1 ? "key" : "keys"}` }),
    );
  },
};
