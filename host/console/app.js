// The console's shell: the session (login, reload, logout), the header and a router over the
// URL's fragment (`#/bindings?status=banned&offset=50`), so every page and filter has a URL that
// survives a reload and the browser's Back button works.
//
// A page is a module whose default export is `{title, render(view, params, page)}`. `render`
// fills `view`; `page.go(params)` changes the page's parameters (a new URL), `page.refresh()`
// renders it again (after a change), `page.every(ms, fn)` runs `fn` on a timer until the
// operator leaves the page (and counts as activity for the session, `session.js`).

import { call } from "./api.js";
import * as session from "./session.js";
import { $, h, note, zone } from "./ui.js";
import dashboard from "./dashboard.js";
import bindings from "./bindings.js";
import keys from "./keys.js";
import { intercepts, audit } from "./logs.js";
import requests from "./requests.js";
import usage from "./usage.js";
import upstreams from "./upstreams.js";
import plugins from "./plugins.js";
import settings from "./settings.js";
import status from "./status.js";
import config from "./config.js";
import iprules from "./iprules.js";
import { clearToasts } from "./ui.js";

const pages = { dashboard, status, requests, keys, bindings, intercepts, audit, usage, upstreams, plugins, "ip-rules": iprules, config, settings };

let current = null; // the page being shown: its timers end when another is rendered
let loggedIn = false;

function parseHash() {
  const [path, qs] = location.hash.replace(/^#\/?/, "").split("?");
  const name = pages[path] ? path : "dashboard";
  return { name, params: Object.fromEntries(new URLSearchParams(qs ?? "")) };
}

function hashOf(name, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== undefined && v !== null) q.set(k, v);
  const s = q.toString();
  return `#/${name}${s ? `?${s}` : ""}`;
}

async function render() {
  if (!loggedIn) return;
  current?.stop();
  // A page's messages do not follow the operator to the next page; the phone menu closes.
  clearToasts();
  document.body.classList.remove("menu-open");
  const { name, params } = parseHash();
  const timers = [];
  const page = {
    alive: true,
    go(next) {
      location.hash = hashOf(name, next);
    },
    refresh: () => render(),
    refreshing: false,
    every(ms, fn) {
      page.refreshing = true;
      timers.push(setInterval(() => page.alive && document.visibilityState === "visible" && fn(), ms));
    },
    stop() {
      page.alive = false;
      timers.forEach(clearInterval);
    },
  };
  current = page;
  for (const a of $("nav").querySelectorAll("a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const mod = pages[name];
  document.title = `${mod.title} · Tollgate`;
  const view = $("view");
  view.replaceChildren(h("h1", { text: mod.title }), note("loading", "Loading…"));
  view.dataset.page = name;
  try {
    await mod.render(view, params, page);
  } catch (e) {
    if (e.status === 401) return;
    view.replaceChildren(h("h1", { text: mod.title }), note("error", `Could not load this page: ${e.message}`));
  }
}

/** What a refused single sign-on means, by the code the callback sends back (`api/oidc.rs`). */
const SSO_ERRORS = {
  no_role: "Your account at the identity provider has no group that gives a role here. Ask an administrator.",
  denied: "The identity provider did not sign you in.",
  state: "The sign-in could not be matched to this browser (an old or foreign link). Try again.",
  expired: "The sign-in took too long. Try again.",
  code: "The identity provider refused the sign-in code. Try again.",
  token: "The identity provider's answer could not be verified. An administrator can find why in the audit log.",
  provider: "The identity provider cannot be reached. Try again, or sign in with a password.",
};

/** The SSO button when `admin.oidc` is set, and the message of a refused SSO sign-in. */
async function offerSso() {
  const params = new URLSearchParams(location.search);
  const code = params.get("sso_error");
  if (code) {
    $("login-error").textContent = SSO_ERRORS[code] ?? `Single sign-on failed (${code}).`;
    $("login-error").hidden = false;
    history.replaceState(null, "", location.pathname + location.hash);
  }
  try {
    const sso = await call("GET", "/oidc");
    if (sso.enabled) {
      $("sso").textContent = sso.button;
      $("sso-box").hidden = false;
    }
  } catch {
    // No SSO offered: the password form stays.
  }
}

function showLogin() {
  loggedIn = false;
  current?.stop();
  session.stop();
  session.accept({ csrf: null });
  delete document.body.dataset.role;
  $("login").hidden = false;
  $("view").replaceChildren();
  for (const id of ["nav", "who", "logout", "menu"]) $(id).hidden = true;
  document.title = "Log in · Tollgate";
  offerSso();
  $("login-form").querySelector("input")?.focus();
}

function showConsole(s) {
  loggedIn = true;
  session.accept(s);
  session.start(showLogin, () => Boolean(current?.refreshing));
  // What the role may do is enforced by the API; here it hides the controls it would refuse
  // (app.css: [data-action] and .needs-operator for viewers, .needs-admin below admin).
  document.body.dataset.role = s.role;
  $("who").textContent = `${s.user} · ${s.role}`;
  $("login").hidden = true;
  for (const id of ["nav", "who", "logout", "menu"]) $(id).hidden = false;
  render();
}

$("tz").textContent = zone;
$("menu").addEventListener("click", () => {
  const open = document.body.classList.toggle("menu-open");
  $("menu").setAttribute("aria-expanded", String(open));
});

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  $("login-error").hidden = true;
  try {
    const s = await call("POST", "/session", {
      username: form.get("username"),
      password: form.get("password"),
    });
    ev.target.reset();
    showConsole(s);
  } catch (e) {
    $("login-error").textContent = e.message;
    $("login-error").hidden = false;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await call("DELETE", "/session");
  } finally {
    showLogin();
  }
});

// Any answer 401 (the session ended or was never there) shows the login.
window.addEventListener("tollgate:logged-out", () => loggedIn && showLogin());
window.addEventListener("hashchange", render);

// A page load: the cookie may still hold a session.
call("GET", "/session")
  .then(showConsole)
  .catch(showLogin);
