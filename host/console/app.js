// The console's page script. It talks to the admin API with the session cookie (HttpOnly: this
// script never sees the token) and sends the session's CSRF token with every change.
const api = "/admin/api";
let csrf = null;

const $ = (id) => document.getElementById(id);

async function call(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (csrf && method !== "GET") headers["x-csrf-token"] = csrf;
  const resp = await fetch(api + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new Error(data?.error?.message ?? `HTTP ${resp.status}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function show(view) {
  for (const id of ["login", "dashboard"]) $(id).hidden = id !== view;
  $("logout").hidden = view === "login";
  $("who").hidden = view === "login";
}

async function dashboard() {
  show("dashboard");
  $("dash-state").textContent = "Loading…";
  try {
    const d = await call("GET", "/dashboard");
    const tiles = [
      ["Requests (24 h)", d.last_24h?.requests],
      ["Errors (24 h)", d.last_24h?.errors],
      ["Tokens (24 h)", (d.last_24h?.input_tokens ?? 0) + (d.last_24h?.output_tokens ?? 0)],
      ["Intercepts (24 h)", d.last_24h?.intercepts],
      ["Active bindings", d.active_bindings],
      ["Banned keys", d.banned_bindings],
    ];
    $("tiles").replaceChildren(
      ...tiles.map(([label, value]) => {
        const t = document.createElement("div");
        t.className = "tile";
        const b = document.createElement("b");
        b.textContent = value ?? "–";
        t.append(b, label);
        return t;
      }),
    );
    $("dash-state").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.status === 401) return login();
    $("dash-state").textContent = `Could not load the dashboard: ${e.message}`;
  }
}

function login() {
  csrf = null;
  show("login");
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  $("login-error").hidden = true;
  try {
    const s = await call("POST", "/session", {
      username: form.get("username"),
      password: form.get("password"),
    });
    csrf = s.csrf;
    $("who").textContent = s.user;
    ev.target.reset();
    await dashboard();
  } catch (e) {
    $("login-error").textContent = e.message;
    $("login-error").hidden = false;
  }
});

$("logout").addEventListener("click", async () => {
  try {
    await call("DELETE", "/session");
  } finally {
    login();
  }
});

// A page reload: the cookie may still hold a session.
call("GET", "/session")
  .then((s) => {
    csrf = s.csrf;
    $("who").textContent = s.user;
    return dashboard();
  })
  .catch(() => login());
