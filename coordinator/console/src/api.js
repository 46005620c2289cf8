// The one API client: every request goes to this page's own origin, under
// /api/v1, with the token from sessionStorage as a bearer token. A failed
// request rejects with an ApiError carrying the API's {kind, message, field}.
const TOKEN_KEY = 'ferry.token';

export class ApiError extends Error {
  constructor(status, kind, message, field) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.field = field ?? null;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

// Called with the ApiError of any 401 (the token was revoked or is wrong).
let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) { onUnauthorized = fn; }

export async function request(method, path, body, { tokenOverride, quiet401 } = {}) {
  const headers = { Authorization: 'Bearer ' + (tokenOverride ?? token.get()) };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch('/api/v1' + path, init);
  } catch (e) {
    throw new ApiError(0, 'network', 'The coordinator cannot be reached: ' + e.message, null);
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON: handled below */ }
  if (res.ok) return data;
  const err = data && data.error;
  const e = new ApiError(res.status, err?.kind || 'http', err?.message || `HTTP ${res.status}`, err?.field);
  if (res.status === 401 && !quiet401) onUnauthorized(e);
  throw e;
}

export const api = {
  get: (path, opts) => request('GET', path, undefined, opts),
  post: (path, body = {}) => request('POST', path, body),
  patch: (path, body) => request('PATCH', path, body),
  del: (path) => request('DELETE', path),
};
