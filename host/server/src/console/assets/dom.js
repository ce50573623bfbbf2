// DOM helpers: every value reaches the page through textContent or an
// attribute set by name, never through HTML parsing.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function link(href, text) {
  return h('a', { href }, text);
}

// A table: cols = [[header, row => cell]], rows = array.
export function table(cols, rows, caption) {
  return h('div', { class: 'scroll' },
    h('table', {},
      caption ? h('caption', {}, caption) : null,
      h('thead', {}, h('tr', {}, cols.map(([name]) => h('th', { scope: 'col' }, name)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, cols.map(([, f]) => h('td', {}, f(r))))))));
}

export function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

export function pre(text) {
  return h('pre', {}, text);
}

export function json(v) {
  return pre(JSON.stringify(v, null, 2));
}

export function when(ms) {
  if (ms === undefined || ms === null) return '—';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function short(s, n = 16) {
  s = String(s ?? '');
  return s.length > n ? s.slice(0, n) + '…' : s;
}

export function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, `Error: ${e.code ? e.code + ': ' : ''}${e.message || e}`);
}

// A verdict that reads without colour: the words VERIFIED / FAILED lead.
export function verdict(ok, text) {
  return h('div', { class: ok ? 'verdict ok' : 'verdict failed', role: ok ? 'status' : 'alert', 'data-verdict': ok ? 'ok' : 'failed' },
    ok ? `✓ VERIFIED — ${text}` : `✗ FAILED — ${text}`);
}

export function captured(c) {
  if (!c) return '—';
  const text = typeof c.bytes === 'string' ? c.bytes : `(binary, base64) ${c.bytes?.base64 ?? ''}`;
  return [pre(text), c.dropped_bytes ? h('p', { class: 'note' }, `${c.dropped_bytes} bytes dropped (over the bound)`) : null];
}
