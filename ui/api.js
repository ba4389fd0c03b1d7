// The one way the UI talks to the daemon: fetch with the session cookie, the CSRF token on
// unsafe requests, errors as ApiError built from the API's {error: {code, message, details}},
// and a 401 anywhere sending the user back to the login page.

const CSRF_KEY = 'bkg.csrf';
const SAFE = new Set(['GET', 'HEAD', 'OPTIONS']);

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

// The CSRF token lives in sessionStorage: per tab, gone when the tab closes, never in a cookie.
export const csrfToken = () => sessionStorage.getItem(CSRF_KEY);
export const clearSession = () => sessionStorage.removeItem(CSRF_KEY);

let unauthorized = () => {};
/** Registers what happens on a 401 (the app shows the login page). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** `api('POST', '/admin/plugins/echo/stop')` → the parsed JSON body, or throws ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (!SAFE.has(method) && csrfToken()) headers['X-CSRF-Token'] = csrfToken();
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the daemon (${e.message})`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (res.ok) return data;
  const err = (data && data.error) || {};
  const error = new ApiError(res.status, err.code || `http_${res.status}`, err.message || res.statusText, err.details);
  if (res.status === 401 && path !== '/auth/login') {
    clearSession();
    unauthorized();
  }
  throw error;
}

/** A one-line description of an error for the page. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error?.message ?? error);
  const d = error.details;
  const extra = d && d.field ? ` (${d.field}: ${d.reason})` : '';
  return `${error.message}${extra} [${error.code}]`;
}

/** Logs in with the cookie session; keeps the CSRF token for this tab. */
export async function login(user, password) {
  const answer = await api('POST', '/auth/login', { user, password });
  sessionStorage.setItem(CSRF_KEY, answer.csrf_token);
  return answer;
}

/** Ends the session (the daemon clears the cookie) and forgets the CSRF token. */
export async function logout() {
  try {
    await api('POST', '/auth/logout');
  } finally {
    clearSession();
  }
}
