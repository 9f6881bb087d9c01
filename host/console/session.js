// The console's session clock: a session lasts `admin.token_ttl` without activity and at most
// `admin.session_max` after its login. While the operator uses the console (a key, a click, a
// scroll) or it shows a page that refreshes itself (a wall dashboard), the session is renewed
// (`POST /session/renew`) once less than half of its lifetime is left (or, for a lifetime of a
// few minutes, before the warning would show). Two minutes before it
// would end, a banner says so with a button to stay signed in; at the end the login shows.

import { call, setCsrf } from "./api.js";
import { $, h } from "./ui.js";

const WARN_SECS = 120;
const TICK_MS = 5000;

let expiresAt = 0; // Unix seconds
let lifetime = 0; // seconds, as the last login or renewal gave it
let active = false; // activity since the last renewal
let atMaximum = false;
let timer = null;
let onEnd = () => {};
let selfRefreshing = () => false;

const now = () => Date.now() / 1000;

function banner() {
  let b = $("session-warning");
  if (!b) {
    b = h("div", { id: "session-warning", class: "session-warning", role: "alert", hidden: true });
    document.body.prepend(b);
  }
  return b;
}

function showWarning(left) {
  const b = banner();
  const mins = Math.floor(left / 60);
  const secs = String(Math.floor(left % 60)).padStart(2, "0");
  const text = atMaximum
    ? `This session reached its maximum length and ends in ${mins}:${secs}. Save your work and sign in again.`
    : `Your session ends in ${mins}:${secs} without activity.`;
  const stay = atMaximum ? null : h("button", { type: "button", id: "session-stay", on: { click: () => renew() } }, "Stay signed in");
  b.replaceChildren(h("span", { text }), stay ?? "");
  b.hidden = false;
}

/** Renews the session now; false when it cannot be (then it ends as it was going to). */
export async function renew() {
  try {
    const s = await call("POST", "/session/renew");
    accept(s);
    return true;
  } catch (e) {
    if (e.status === 401) atMaximum = true;
    return false;
  }
}

/** Takes a session answer (login, page load or renewal): its expiry and CSRF token. */
export function accept(s) {
  setCsrf(s.csrf);
  expiresAt = s.expires_at ?? 0;
  lifetime = Math.max(60, expiresAt - now());
  active = false;
  banner().hidden = true;
}

async function tick() {
  if (!expiresAt) return;
  const left = expiresAt - now();
  if (left <= 0) {
    stop();
    onEnd();
    return;
  }
  const used = active || (document.visibilityState === "visible" && selfRefreshing());
  if (!atMaximum && used && left < Math.max(lifetime / 2, WARN_SECS + 30) && (await renew())) return;
  if (expiresAt - now() <= WARN_SECS) showWarning(expiresAt - now());
}

/** Starts the clock. `end()` runs when the session ran out; `refreshing()` says whether the page shown refreshes itself. */
export function start(end, refreshing) {
  onEnd = end;
  selfRefreshing = refreshing;
  atMaximum = false;
  clearInterval(timer);
  timer = setInterval(tick, TICK_MS);
}

export function stop() {
  clearInterval(timer);
  timer = null;
  expiresAt = 0;
  if ($("session-warning")) banner().hidden = true;
}

for (const ev of ["keydown", "pointerdown", "wheel", "input"]) {
  window.addEventListener(ev, () => (active = true), { passive: true, capture: true });
}
