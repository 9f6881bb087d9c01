// Upstreams: health, in-flight requests, latency, error rate, cooldowns and recent errors of each
// upstream of the running config, refreshed every 5 seconds; cool one down by hand (for every
// model or one) or restore it, on every gateway sharing the cache; where its credential comes
// from (its fingerprint only), and set or remove one at run time (sealed by the server); what is
// left of each declared allowance (upstreams[].limits) and what the provider said is left.

import { call } from "./api.js";
import { ask, badge, fmtMoney, fmtNum, fmtTime, h, table, toast } from "./ui.js";

function cooldowns(u) {
  if (!u.cooldowns.length) return "–";
  return h(
    "ul",
    { class: "plain" },
    u.cooldowns.map((c) => h("li", { text: `${c.model ?? "every model"} until ${fmtTime(c.until_ms)}` })),
  );
}

function errors(u) {
  if (!u.recent_errors.length) return "–";
  const last = u.recent_errors[u.recent_errors.length - 1];
  return h(
    "details",
    {},
    h("summary", { text: `${last.error} (${u.recent_errors.length})` }),
    h(
      "ul",
      { class: "plain" },
      u.recent_errors.map((e) => h("li", { text: `${fmtTime(e.at_ms)}: ${e.error}` })),
    ),
  );
}

// One line per declared allowance: "rpm 498 of 500 left", "month 12.30 of 400.00 USD spent
// (until …)", and the provider's own figures.
function allowance(u) {
  const a = u.allowance;
  if (!a) return "–";
  const lines = [];
  for (const [key, label] of [["rpm", "requests/min"], ["tpm", "tokens/min"], ["monthly_tokens", "tokens/30 days"]]) {
    if (a[key]) lines.push(`${label}: ${fmtNum(a[key].left)} of ${fmtNum(a[key].limit)} left`);
  }
  const m = a.monthly_budget;
  if (m) lines.push(`month: ${fmtMoney(m.spent, m.currency)} of ${fmtMoney(m.limit, m.currency)} spent (resets ${fmtTime(m.resets_ms)})`);
  if (a.provider_requests_left !== null) lines.push(`provider says: ${fmtNum(a.provider_requests_left)} requests left`);
  if (a.provider_tokens_left !== null) lines.push(`provider says: ${fmtNum(a.provider_tokens_left)} tokens left`);
  return h("ul", { class: "plain allowance" }, lines.map((text) => h("li", { text })));
}

function credential(c) {
  if (!c || c.source === "none") return "–";
  return h("span", {}, badge(c.source === "stored" ? "set here" : "config file", c.source === "stored" ? "active" : "muted"), " ", h("code", { title: "SHA-256, first 16 hex digits", text: c.fingerprint }));
}

function actions(u, c, page) {
  const name = encodeURIComponent(u.name);
  const credentialActions =
    u.url === "mock"
      ? []
      : [
          h(
            "button",
            {
              type: "button",
              class: "quiet needs-admin",
              "data-action": "credential",
              on: {
                click: () =>
                  ask({
                    title: `Set the credential of ${u.name}`,
                    text: "It is sealed and stored, and used by every gateway within a second instead of the config file's. It is never shown again: only its fingerprint.",
                    fields: [{ name: "credential", label: "Credential (the upstream account's API key)", value: "" }],
                    ok: "Set",
                    submit: async (v) => {
                      const r = await call("PUT", `/credentials/${name}`, { credential: v.credential });
                      toast(`${u.name}: credential ${r.fingerprint} set`);
                    },
                  }).then((done) => done && page.refresh()),
              },
            },
            "Set credential",
          ),
          c?.source === "stored"
            ? h(
                "button",
                {
                  type: "button",
                  class: "quiet needs-admin",
                  "data-action": "credential-remove",
                  on: {
                    click: () =>
                      ask({
                        title: `Remove the stored credential of ${u.name}?`,
                        text: "The config file's credential applies again on every gateway within a second.",
                        ok: "Remove",
                        danger: true,
                        submit: async () => {
                          await call("DELETE", `/credentials/${name}`);
                          toast(`${u.name}: stored credential removed`);
                        },
                      }).then((done) => done && page.refresh()),
                  },
                },
                "Remove credential",
              )
            : null,
        ];
  return h(
    "span",
    { class: "row-actions" },
    ...credentialActions,
    h(
      "button",
      {
        type: "button",
        class: "quiet",
        "data-action": "cooldown",
        on: {
          click: () =>
            ask({
              title: `Cool ${u.name} down`,
              text: "No request is sent to it until the cooldown ends or it is restored. Leave the model empty for every model.",
              fields: [
                { name: "seconds", label: "Seconds", value: "600" },
                { name: "model", label: "Model (optional)", value: "", required: false },
              ],
              ok: "Cool down",
              danger: true,
              submit: async (v) => {
                const body = { seconds: Number(v.seconds) };
                if (v.model) body.model = v.model;
                if (!Number.isInteger(body.seconds) || body.seconds <= 0) throw new Error("seconds must be a whole number above 0");
                await call("POST", `/upstreams/${name}/cooldown`, body);
                toast(`${u.name} cooling down`);
              },
            }).then((done) => done && page.refresh()),
        },
      },
      "Cool down",
    ),
    u.cooldowns.length
      ? h(
          "button",
          {
            type: "button",
            class: "quiet",
            "data-action": "restore",
            on: {
              click: () =>
                ask({
                  title: `Restore ${u.name}?`,
                  text: "Its cooldowns end now, for every model.",
                  ok: "Restore",
                  submit: async () => {
                    await call("POST", `/upstreams/${name}/restore`, {});
                    toast(`${u.name} restored`);
                  },
                }).then((done) => done && page.refresh()),
            },
          },
          "Restore",
        )
      : null,
  );
}

export default {
  title: "Upstreams",
  async render(view, _params, page) {
    const columns = [
      { label: "Name", get: (u) => h("strong", { text: u.name }) },
      { label: "URL", get: (u) => h("code", { text: u.url }) },
      { label: "Health", get: (u) => badge(u.healthy ? "healthy" : "down", u.healthy ? "active" : "banned") },
      { label: "In flight", class: "num", get: (u) => fmtNum(u.in_flight) },
      { label: "Latency to head (avg. of ~10 latest)", class: "num", get: (u) => (u.latency_ewma_ms === null ? "no request yet" : `${u.latency_ewma_ms.toFixed(1)} ms`) },
      { label: "Error rate (avg. of ~10 latest)", class: "num", get: (u) => (u.error_rate === null ? "no request yet" : `${(u.error_rate * 100).toFixed(1)} %`) },
      { label: "Models", get: (u) => (u.models.length ? u.models.join(", ") : "any") },
      { label: "Allowance", get: allowance },
      { label: "Cooldowns", get: cooldowns },
      { label: "Recent errors", get: errors },
      { label: "Credential", get: (u) => credential(creds.get(u.name)) },
      { label: "Actions", get: (u) => actions(u, creds.get(u.name), page) },
    ];
    let creds = new Map();
    const holder = h("div", { id: "upstreams" });
    const state = h("p", { id: "upstreams-state", class: "note ok", role: "status", "data-state": "ok" });
    const show = (list) => holder.replaceChildren(table(columns, list, "The config has no upstreams."));
    const load = async () => {
      const [list, credentials] = await Promise.all([call("GET", "/upstreams"), call("GET", "/credentials")]);
      creds = new Map(credentials.map((c) => [c.upstream, c]));
      show(list);
      holder.classList.remove("stale");
      state.className = "note ok";
      state.dataset.state = "ok";
      state.dataset.updated = new Date().toLocaleTimeString();
      state.textContent = `Updated ${state.dataset.updated}`;
    };
    await load();
    view.replaceChildren(
      h("h1", { text: "Upstreams" }),
      h("p", { class: "muted small", text: "Health, latency and error rate are this gateway's view (latency: time to the response head of successful attempts); cooldowns are shared with every gateway on the same cache. Refreshes every 5 s." }),
      state,
      holder,
    );
    // Not while a dialog is open: it would replace the row the operator is acting on. A refresh
    // that fails says so and greys out the table: its health is then as of the time shown.
    page.every(5000, async () => {
      if (document.getElementById("dialog").open) return;
      try {
        await load();
      } catch (e) {
        holder.classList.add("stale");
        state.className = "note error";
        state.dataset.state = "stale";
        state.textContent = `Could not refresh (${e.message}): the table below is as of ${state.dataset.updated ?? "the last update"} and may be stale.`;
      }
    });
  },
};
