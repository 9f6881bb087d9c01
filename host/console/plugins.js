// Plugins: the versions in service with their calls, failures, traps, timeouts and call times;
// shadow evaluations; a reload of the config file and its plugins (as SIGHUP), with the last
// reload's error shown verbatim.

import { call } from "./api.js";
import { fmtNum, fmtTime, h, note, table, toast } from "./ui.js";

const ms = (v) => (v === null || v === undefined ? "–" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`);
const bytes = (v) => (v ? `${(v / 1048576).toFixed(1)} MiB` : "–");

function lastReload(r) {
  if (!r) return note("empty", "No reload since the gateway started.");
  if (r.ok) return note("ok", `Last reload ${fmtTime(r.at_ms)}: in service.`);
  return h(
    "div",
    { class: "reload-error", role: "alert", id: "reload-error" },
    h("p", { text: `Last reload ${fmtTime(r.at_ms)} was refused; the previous config is still in service:` }),
    h("pre", { text: r.error }),
  );
}

export default {
  title: "Plugins",
  async render(view, _params, page) {
    const d = await call("GET", "/plugins");
    const reload = h("button", { type: "button", id: "reload", class: "needs-operator" }, "Reload config and plugins");
    reload.addEventListener("click", async () => {
      reload.disabled = true;
      try {
        const r = await call("POST", "/reload");
        toast(r.ok ? "Reloaded" : "Reload refused");
      } catch (e) {
        toast(`Reload failed: ${e.message}`);
      } finally {
        await page.refresh();
      }
    });
    const plugins = [
      { label: "Name", get: (p) => h("strong", { text: p.name }) },
      { label: "Kind", get: (p) => p.kind },
      { label: "sha256", get: (p) => h("code", { title: p.sha256, text: p.sha256.slice(0, 12) }) },
      { label: "Code", get: (p) => `${p.code_origin} (${ms(p.code_ms)})` },
      { label: "Memory", class: "num", get: (p) => bytes(p.instance_memory) },
      { label: "Calls", class: "num", get: (p) => fmtNum(p.calls) },
      { label: "Failures", class: "num", get: (p) => fmtNum(p.failures) },
      { label: "Traps", class: "num", get: (p) => fmtNum(p.traps) },
      { label: "Timeouts", class: "num", get: (p) => fmtNum(p.timeouts) },
      { label: "Rejected", class: "num", get: (p) => fmtNum(p.rejected) },
      { label: "Breaker", class: "num", get: (p) => fmtNum(p.breaker_openings) },
      { label: "Call p50", class: "num", get: (p) => ms(p.call_p50_ms) },
      { label: "Call p99", class: "num", get: (p) => ms(p.call_p99_ms) },
    ];
    const shadows = [
      { label: "Route", get: (s) => h("code", { text: s.route }) },
      { label: "Live", get: (s) => s.live },
      { label: "Candidate", get: (s) => s.candidate },
      { label: "Agree", class: "num", get: (s) => fmtNum(s.agree) },
      { label: "Disagree", class: "num", get: (s) => fmtNum(s.disagree) },
      { label: "Errors", class: "num", get: (s) => fmtNum(s.errors) },
      { label: "Agreement", class: "num", get: (s) => (s.agreement === null ? "–" : `${(s.agreement * 100).toFixed(1)} %`) },
      {
        label: "Last disagreements",
        get: (s) =>
          s.disagreements.length
            ? h("details", {}, h("summary", { text: `${s.disagreements.length}` }), h("pre", { text: s.disagreements.map((x) => `${x.request_id}\n  live: ${JSON.stringify(x.live)}\n  candidate: ${JSON.stringify(x.candidate)}`).join("\n") }))
            : "–",
      },
    ];
    view.replaceChildren(
      h("h1", { text: "Plugins" }),
      h("p", { class: "toolbar" }, reload),
      lastReload(d.last_reload),
      h("h2", { text: "Versions in service" }),
      table(plugins, d.plugins, "No plugins are loaded."),
      h("h2", { text: "Shadow evaluations" }),
      table(shadows, d.shadows, "No shadow evaluation is configured (routes[].shadow)."),
    );
  },
};
