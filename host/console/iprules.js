// IP rules: the allow and deny entries stored in the database (on top of the config file's
// `access` lists), applied by every gateway within a second. Adding the first allow entry turns
// the whole deployment into allow-list mode (only listed networks reach any route): the page
// says which mode is in force, and the first allow entry needs Add pressed twice, after the
// dialog has said what it does.

import { call } from "./api.js";
import { ask, badge, fmtTime, h, note, table, toast } from "./ui.js";

export default {
  title: "IP rules",
  async render(view, _params, page) {
    const rules = await call("GET", "/ip-rules");
    const mode = rules.allow_list
      ? note("error", `Allow-list mode: only the networks allowed here or in the config file reach any route (${rules.in_force} entries in force).`)
      : note("ok", `Deny-list mode: every address may reach the routes except the denied ones (${rules.in_force} entries in force).`);
    mode.id = "ip-mode";
    const add = h("button", {
      type: "button",
      id: "ip-add",
      class: "needs-operator",
      on: {
        click: () => {
          // The first allow entry needs a second press of Add, after the warning.
          let warned = false;
          return ask({
            title: "Add an IP rule",
            text: "Every gateway applies it within a second. action: allow or deny.",
            fields: [
              { name: "cidr", label: "Network (CIDR or address)", value: "" },
              { name: "action", label: "Action (allow or deny)", value: "deny" },
              { name: "note", label: "Note (why)", value: "", required: false },
            ],
            ok: "Add",
            submit: async (v) => {
              if (v.action === "allow" && !rules.allow_list && !warned) {
                warned = true;
                throw new Error(
                  "Not added yet: this is the first allow entry. From then on ONLY the networks allowed reach any route, on every gateway; every other address is refused. Press Add again to switch to allow-list mode.",
                );
              }
              await call("POST", "/ip-rules", { cidr: v.cidr, action: v.action, note: v.note });
              toast(`${v.cidr}: ${v.action}`);
            },
          }).then((done) => done && page.refresh());
        },
      },
    }, "Add a rule");
    const remove = (r) =>
      h("button", {
        type: "button",
        class: "quiet",
        "data-action": "remove",
        on: {
          click: () =>
            ask({
              title: `Remove ${r.cidr}?`,
              text: r.action === "allow" && rules.allow_list ? "If it is the last allow entry, every address may reach the routes again." : "Every gateway stops applying it within a second.",
              ok: "Remove",
              danger: true,
              submit: async () => {
                await call("DELETE", `/ip-rules/${encodeURIComponent(r.cidr.replace("/", "_"))}`);
                toast(`${r.cidr} removed`);
              },
            }).then((done) => done && page.refresh()),
        },
      }, "Remove");
    view.replaceChildren(
      h("h1", { text: "IP rules" }),
      h("div", { class: "toolbar spread" }, mode, add),
      table(
        [
          { label: "Network", get: (r) => h("code", { text: r.cidr }) },
          { label: "Action", get: (r) => badge(r.action, r.action === "allow" ? "ok" : "denied") },
          { label: "Note", get: (r) => r.note || "–" },
          { label: "Added", get: (r) => fmtTime(r.created_ms) },
          { label: "By", get: (r) => r.created_by },
          { label: "Actions", get: (r) => remove(r) },
        ],
        rules.items,
        "No stored rules (the config file's access lists still apply).",
      ),
    );
  },
};
