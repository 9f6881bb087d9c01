// Settings: the live settings of the admin API (`/admin/api/settings`). Only the changed values
// are sent; the server validates them, and its message is shown beside the field it names.
// Every gateway sharing the database applies a change within a second.

import { call } from "./api.js";
import { h, note, toast } from "./ui.js";

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
      const error = h("span", { class: "error field-error", id: `${id}-error`, role: "alert", hidden: true });
      if (f.help) input.setAttribute("aria-describedby", `${id}-help`);
      const row = h(
        "div",
        { class: f.type === "checkbox" ? "field check" : "field" },
        h("label", { for: id, text: f.label }),
        input,
        f.help ? h("small", { class: "muted", id: `${id}-help`, text: f.help }) : null,
        error,
      );
      return { f, input, error, row };
    });
    const status = h("div", { id: "settings-status" });
    const form = h("form", { class: "settings card" }, rows.map((r) => r.row), h("button", { type: "submit" }, "Save"), status);
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
      h("p", { class: "muted small", text: "These settings start from the config file; a value saved here overrides it, across restarts and reloads, until it is changed here again." }),
      form,
    );
  },
};
