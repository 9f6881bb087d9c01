// Upstreams: health, in-flight requests, latency, error rate, cooldowns and recent errors of each
// upstream of the running config, refreshed every 5 seconds; cool one down by hand (for every
// model or one) or restore it, on every gateway sharing the cache.

import { call } from "./api.js";
import { ask, badge, fmtNum, fmtTime, h, table, toast } from "./ui.js";

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

function actions(u, page) {
  const name = encodeURIComponent(u.name);
  return h(
    "span",
    { class: "row-actions" },
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
      { label: "Latency", class: "num", get: (u) => `${u.latency_ewma_ms.toFixed(1)} ms` },
      { label: "Error rate", class: "num", get: (u) => `${(u.error_rate * 100).toFixed(1)} %` },
      { label: "Models", get: (u) => (u.models.length ? u.models.join(", ") : "any") },
      { label: "Cooldowns", get: cooldowns },
      { label: "Recent errors", get: errors },
      { label: "Actions", get: (u) => actions(u, page) },
    ];
    const holder = h("div", { id: "upstreams" });
    const show = (list) => holder.replaceChildren(table(columns, list, "The config has no upstreams."));
    show(await call("GET", "/upstreams"));
    view.replaceChildren(
      h("h1", { text: "Upstreams" }),
      h("p", { class: "muted small", text: "Health, latency and error rate are this gateway's view; cooldowns are shared with every gateway on the same cache. Refreshes every 5 s." }),
      holder,
    );
    // Not while a dialog is open: it would replace the row the operator is acting on.
    page.every(5000, async () => {
      if (document.getElementById("dialog").open) return;
      show(await call("GET", "/upstreams"));
    });
  },
};
