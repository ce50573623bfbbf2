// The API client: the same /v1 endpoints as the CLI, with the token the user
// pasted (sessionStorage: gone when the tab closes; never a cookie, so the
// browser never attaches it by itself and there is no CSRF to defend).

const KEY = 'kasbah.token';

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Time spent in API fetches for the current view (the tests read it from
// the view's data-fetch-ms attribute).
export const timing = { ms: 0, reset() { this.ms = 0; } };

async function call(path, { method = 'GET', body, token = session.token, as = 'json' } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const t0 = performance.now();
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'omit', cache: 'no-store', redirect: 'error',
  });
  let out;
  if (!r.ok) {
    let code = `http_${r.status}`, message = r.statusText;
    try { const e = (await r.json()).error; code = e.code; message = e.message; } catch { /* not JSON */ }
    timing.ms += performance.now() - t0;
    throw new ApiError(r.status, code, message);
  }
  out = as === 'json' ? await r.json() : as === 'text' ? await r.text() : await r.blob();
  timing.ms += performance.now() - t0;
  return out;
}

export const api = {
  get: (path, opts) => call(path, opts),
  text: (path) => call(path, { as: 'text' }),
  blob: (path) => call(path, { as: 'blob' }),
  post: (path, body) => call(path, { method: 'POST', body }),
  del: (path) => call(path, { method: 'DELETE' }),
  whoami: (token) => call('/v1/whoami', { token }),
};

export function q(params) {
  const s = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') s.set(k, v);
  const t = s.toString();
  return t ? `?${t}` : '';
}
