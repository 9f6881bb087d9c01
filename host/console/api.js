// The admin API as the console calls it: with the session cookie (HttpOnly, so no script here
// ever sees the token), and with the session's CSRF token on every change.

const base = "/admin/api";
let csrf = null;

/** Keeps the session's CSRF token (from the login answer or `GET /session`), in memory only. */
export function setCsrf(token) {
  csrf = token;
}

/** An error the API answered: its OpenAI-shaped message, status and `param`. */
export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

/** Calls the API; answers the parsed JSON (null for 204), throws an `ApiError` otherwise. */
export async function call(method, path, body) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (csrf && method !== "GET") headers["x-csrf-token"] = csrf;
  let resp;
  try {
    resp = await fetch(base + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
  } catch {
    throw new ApiError(0, "the gateway cannot be reached");
  }
  const data = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    if (resp.status === 401) window.dispatchEvent(new Event("tollgate:logged-out"));
    throw new ApiError(resp.status, data?.error?.message ?? `HTTP ${resp.status}`, data?.error?.param);
  }
  return data;
}

/** `?a=1&b=2` from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** The URL of an API path (for links such as CSV exports, fetched with the cookie). */
export function url(path) {
  return base + path;
}
