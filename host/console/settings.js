// Settings: the live settings of the admin API (`/admin/api/settings`). Each field says where
// its value comes from: the config file, or a value saved here (by whom, when, and what the file
// says), with "Revert to file". Only the changed values are sent; the server validates them, and
// its message is shown beside the field it names. Switching maintenance on or the failsafe to
// open asks first. Every gateway sharing the database applies a change within a second. Only
// the admin role may change settings; others see them read-only.

import { call } from "./api.js";
import { ask, badge, fmtTime, h, note, toast } from "./ui.js";

/** What a value looks like in a sentence. */
const shown = (v) => (typeof v === "boolean" ? (v ? "on" : "off") : String(v));

/** The changes that need a confirmation, with what to tell the operator. */
function risky(change) {
  const warn = [];
  if (change.maintenance === true) warn.push("Maintenance mode: every proxied request on every gateway gets 503 until it is switched off.");
  if (change.failsafe === "open") warn.push("Failsafe open: while the stores cannot answer, requests are let through without their binding, ban or budget checks.");
  return warn;
}

const FIELDS = [
  { name: "failsafe", label: "Failsafe", type: "select", options: ["closed", "open"], help: "When the stores cannot decide a request: closed answers 503, open lets it through." },
  { name: "maintenance", label: "Maintenance mode", type: "checkbox", help: "Every proxied request gets 503 service_unavailable, and /ready says maintenance." },
  { name: "log_level", label: "Log level", help: "A tracing filter, e.g. info or tollgate=debug,access=off." },
  { name: "alert_threshold", label: "Alert threshold", type: "number", help: "Intercepts of one key within the window that send one webhook alert." },
  { name: "alert_window_secs", label: "Alert window (seconds)", type: "number" },
  { name: "archive_days", label: "Archive bindings unused for (days)", type: "number", help: "0: never." },
];

/** A number field's value as a number if it is one; otherwise as typed, for the server to refuse. */
function valueOf(f, input) {
  if (f.type === "checkbox") return input.checked;
  const v = input.value.trim();
  if (f.type === "number" && v !== "" && !Number.isNaN(Number(v))) return Number(v);
  return v;
}

export default {
  title: "Settings",
  async render(view, _params, page) {
    const current = await call("GET", "/settings");
    const admin = document.body.dataset.role === "admin";
    const overrides = new Map(current.overrides.map((o) => [o.name, o]));
    const rows = FIELDS.map((f) => {
      const id = `setting-${f.name}`;
      let input;
      if (f.type === "select") {
        input = h("select", { id, name: f.name }, f.options.map((o) => h("option", { value: o, selected: current[f.name] === o, text: o })));
      } else if (f.type === "checkbox") {
        input = h("input", { id, name: f.name, type: "checkbox", checked: Boolean(current[f.name]) });
      } else {
        input = h("input", { id, name: f.name, value: current[f.name], inputmode: f.type === "number" ? "numeric" : null, autocomplete: "off" });
      }
      input.disabled = !admin;
      const error = h("span", { class: "error field-error", id: `${id}-error`, role: "alert", hidden: true });
      if (f.help) input.setAttribute("aria-describedby", `${id}-help`);
      const o = overrides.get(f.name);
      const source = o
        ? h(
            "small",
            { class: "source overridden", id: `${id}-source`, "data-source": "console" },
            badge("set here", "expired"),
            ` by ${o.updated_by}, ${fmtTime(o.updated_ms)}; the config file says ${shown(current.file[f.name])}. `,
            h(
              "button",
              {
                type: "button",
                class: "quiet needs-admin",
                "data-revert": f.name,
                on: {
                  click: () =>
                    ask({
                      title: `Revert ${f.label.toLowerCase()} to the config file?`,
                      text: `It becomes ${shown(current.file[f.name])} on every gateway within a second.`,
                      ok: "Revert",
                      submit: async () => {
                        await call("DELETE", `/settings/${f.name}`);
                        toast(`${f.label}: the config file's value applies`);
                      },
                    }).then((done) => done && page.refresh()),
                },
              },
              "Revert to file",
            ),
          )
        : h("small", { class: "source muted", id: `${id}-source`, "data-source": "file", text: "From the config file." });
      const row = h(
        "div",
        { class: f.type === "checkbox" ? "field check" : "field" },
        h("label", { for: id, text: f.label }),
        input,
        source,
        f.help ? h("small", { class: "muted", id: `${id}-help`, text: f.help }) : null,
        error,
      );
      return { f, input, error, row };
    });
    const status = h("div", { id: "settings-status" });
    const form = h("form", { class: "settings card" }, rows.map((r) => r.row), h("button", { type: "submit", class: "needs-admin" }, "Save"), status);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      for (const r of rows) r.error.hidden = true;
      const change = {};
      for (const { f, input } of rows) {
        const v = valueOf(f, input);
        if (v !== current[f.name]) change[f.name] = v;
      }
      if (!Object.keys(change).length) {
        status.replaceChildren(note("empty", "Nothing changed."));
        return;
      }
      const warnings = risky(change);
      if (warnings.length) {
        const confirmed = await ask({ title: "Change this for every gateway?", text: warnings.join(" "), ok: "Change it", danger: true, submit: async () => {} });
        if (!confirmed) {
          status.replaceChildren(note("empty", "Not saved."));
          return;
        }
      }
      try {
        await call("PUT", "/settings", change);
        toast("Settings saved");
        await page.refresh();
        document.getElementById("settings-status")?.replaceChildren(note("ok", `Saved: ${Object.keys(change).join(", ")}. Every gateway sharing the database applies it within a second.`));
      } catch (e) {
        const at = rows.find((r) => r.f.name === e.param);
        if (at) {
          at.error.textContent = e.message;
          at.error.hidden = false;
          at.input.focus();
        }
        status.replaceChildren(note("error", `Not saved: ${e.message}`));
      }
    });
    view.replaceChildren(
      h("h1", { text: "Settings" }),
      h("p", { class: "muted small", text: "Each setting starts from the config file. A value saved here beats the file on every gateway, across restarts and reloads, until it is reverted to the file." }),
      ...(admin ? [] : [note("empty", "Read-only: changing settings needs the admin role.")]),
      form,
    );
  },
};
