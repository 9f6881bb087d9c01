// Small DOM helpers shared by the pages: elements, tables, paging, filter forms, the dialog and
// time formatting. Text always goes in as text (never as HTML), so nothing the API returns can
// become markup.


export const $ = (id) => document.getElementById(id);

/**
 * An element. `props`: `class`, `text`, `on` (event → handler) and any attribute (`true` sets
 * it empty, `false`/`null`/`undefined` leaves it out). Children: nodes, strings, arrays.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** The operator's time zone (the browser's), shown in the header. */
export const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const numbers = new Intl.NumberFormat();

/** A Unix-ms time in the operator's time zone; "–" for none. */
export function fmtTime(ms) {
  return ms ? dateTime.format(new Date(Number(ms))) : "–";
}

export function fmtNum(n) {
  return n === null || n === undefined ? "–" : numbers.format(n);
}

/** `<input type="datetime-local">` value for a Unix-ms time (local time), and back. */
/** An amount of money with its currency, e.g. `12.3456 USD` (4 decimals: token prices are small). */
export function fmtMoney(amount, currency) {
  return `${(amount ?? 0).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 4 })} ${currency ?? ""}`.trim();
}

export function toLocalInput(ms) {
  if (!ms) return "";
  const d = new Date(Number(ms));
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(value) {
  if (!value) return "";
  const ms = new Date(value).getTime();
  return Number.isNaN(ms) ? "" : ms;
}

/** A status line: `loading`, `empty`, `error` or `ok` (for screen readers too). */
export function note(kind, text) {
  return h("p", { class: `note ${kind}`, role: kind === "error" ? "alert" : "status", "data-state": kind, text });
}

/**
 * A table. `columns`: `{label, get(row) → text or node, class}`. With no rows it shows
 * `empty` instead.
 */
export function table(columns, rows, empty) {
  if (!rows.length) return note("empty", empty);
  return h(
    "div",
    { class: "scroll" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class ?? null, text: c.label })))),
      h(
        "tbody",
        {},
        rows.map((r) =>
          h(
            "tr",
            {},
            columns.map((c) => {
              const v = c.get(r);
              return h("td", { class: c.class ?? null, "data-label": c.label }, v instanceof Node ? v : String(v ?? "–"));
            }),
          ),
        ),
      ),
    ),
  );
}

/** "1–50 of 1,234" with Previous and Next; `go(offset)` changes page. */
export function pager(total, offset, limit, go) {
  const first = total ? offset + 1 : 0;
  const last = Math.min(offset + limit, total);
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    h("button", { type: "button", class: "quiet", disabled: offset <= 0, on: { click: () => go(Math.max(0, offset - limit)) } }, "← Previous"),
    h("span", { class: "pager-text", text: `${fmtNum(first)}–${fmtNum(last)} of ${fmtNum(total)}` }),
    h("button", { type: "button", class: "quiet", disabled: last >= total, on: { click: () => go(offset + limit) } }, "Next →"),
  );
}

/**
 * A filter form over the page's parameters. `fields`: `{name, label, type}` where type is
 * `text` (default), `time` (a local date and time, kept as Unix ms) or `select` (with
 * `options: [[value, label]]`). `apply(values)` gets the new parameters.
 */
export function filters(fields, params, apply) {
  const inputs = fields.map((f) => {
    let input;
    if (f.type === "select") {
      input = h("select", { name: f.name }, f.options.map(([v, l]) => h("option", { value: v, selected: (params[f.name] ?? "") === v, text: l })));
    } else if (f.type === "time") {
      input = h("input", { name: f.name, type: "datetime-local", value: toLocalInput(params[f.name]) });
    } else {
      input = h("input", { name: f.name, type: "search", value: params[f.name] ?? "", placeholder: f.placeholder ?? null, autocomplete: "off" });
    }
    return [f, input];
  });
  const form = h(
    "form",
    { class: "filters", role: "search" },
    inputs.map(([f, input]) => h("label", {}, f.label, input)),
    h("button", { type: "submit" }, "Apply"),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const values = {};
    for (const [f, input] of inputs) values[f.name] = f.type === "time" ? fromLocalInput(input.value) : input.value.trim();
    apply(values);
  });
  return form;
}

/**
 * The dialog: a confirmation, or a small form. `fields`: `{name, label, value, placeholder,
 * required, readonly, copy}` (required unless `required: false`; `copy` adds a Copy button).
 * `submit(values)` runs on OK; if it throws (an `ApiError`, or an `Error` of the page's own)
 * the dialog stays open and shows its message. Resolves to whether the action was done.
 */
export function ask({ title, text, fields = [], ok = "OK", danger = false, submit }) {
  const dialog = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text ?? "";
  const err = $("dialog-error");
  err.hidden = true;
  const inputs = fields.map((f) => h("input", { name: f.name, value: f.value ?? "", placeholder: f.placeholder ?? null, required: f.required ?? true, readonly: f.readonly ?? false, autocomplete: "off", spellcheck: "false" }));
  const copy = (input) =>
    h("button", {
      type: "button",
      class: "quiet copy",
      on: {
        click: async () => {
          input.select();
          await copyText(input.value);
        },
      },
    }, "Copy");
  $("dialog-fields").replaceChildren(...fields.map((f, i) => h("label", {}, f.label, inputs[i], f.copy ? copy(inputs[i]) : null)));
  const okButton = $("dialog-ok");
  okButton.textContent = ok;
  okButton.className = danger ? "danger" : "";
  return new Promise((resolve) => {
    const form = $("dialog-form");
    const cancel = $("dialog-cancel");
    const done = (result) => {
      form.removeEventListener("submit", onSubmit);
      cancel.removeEventListener("click", onCancel);
      dialog.removeEventListener("cancel", onCancel);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    const onCancel = (ev) => {
      ev.preventDefault();
      done(false);
    };
    const onSubmit = async (ev) => {
      ev.preventDefault();
      okButton.disabled = true;
      const values = Object.fromEntries(fields.map((f, i) => [f.name, inputs[i].value.trim()]));
      try {
        await submit(values);
        done(true);
      } catch (e) {
        err.textContent = e instanceof Error ? e.message : String(e);
        err.hidden = false;
      } finally {
        okButton.disabled = false;
      }
    };
    form.addEventListener("submit", onSubmit);
    cancel.addEventListener("click", onCancel);
    dialog.addEventListener("cancel", onCancel);
    dialog.showModal();
    (inputs[0] ?? okButton).focus();
  });
}

/** Toasts shown at once at most; an older one makes room. */
const MAX_TOASTS = 3;

/**
 * A short message that goes away by itself after 4 s, or when dismissed (its × or Escape), or
 * when the operator opens another page. At most three show at once.
 */
export function toast(text) {
  let box = document.getElementById("toasts");
  if (!box) {
    box = h("div", { id: "toasts", class: "toasts", "aria-live": "polite" });
    document.body.append(box);
  }
  while (box.children.length >= MAX_TOASTS) box.firstElementChild.remove();
  const t = h("div", { class: "toast", role: "status" }, h("span", { text }));
  t.append(h("button", { type: "button", class: "dismiss", "aria-label": "Dismiss", title: "Dismiss", on: { click: () => t.remove() } }, "×"));
  box.append(t);
  setTimeout(() => t.remove(), 4000);
}

/** Removes every toast (a new page starts without the last one's messages). */
export function clearToasts() {
  document.getElementById("toasts")?.replaceChildren();
}

document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape" && !document.querySelector("dialog[open]")) clearToasts();
});

/** Copies `text` to the clipboard (a fallback for plain-HTTP pages), and says so. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast("Copied");
}

/** A small coloured label, e.g. a binding's status. */
export function badge(text, kind = text) {
  return h("span", { class: `badge ${kind}`, text });
}

/** A long id cut to its first 12 characters, whole in its tooltip, with a button that copies it whole. */
export function shortId(id) {
  return h(
    "span",
    { class: "id" },
    h("code", { title: id, text: id.length > 12 ? `${id.slice(0, 12)}…` : id }),
    h("button", { type: "button", class: "quiet copy-id", title: `Copy ${id}`, "aria-label": "Copy the whole id", "data-copy": id, on: { click: () => copyText(id) } }, "⧉"),
  );
}
