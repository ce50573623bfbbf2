// Admin and operator views: operators, tenants, policy versions (with a
// side-by-side diff and who set each), usage per tenant per day, tokens.

import { h, clear, table, kv, json, when, short, link, errorBox } from './dom.js';
import { api, q } from './api.js';

export async function operators(el, { me }) {
  el.append(h('h2', {}, me.role === 'admin' ? 'Operators' : 'Your operator'));
  const ops = await api.get('/v1/operators');
  el.append(table([
    ['Id', (o) => h('code', {}, o.id)], ['Name', (o) => o.name], ['Max tenants', (o) => o.max_tenants],
    ['Zones', (o) => o.zones.join(', ') || 'any'], ['Created', (o) => when(o.created_at)],
    ['Ceiling', (o) => h('details', {}, h('summary', {}, 'show'), json(o.ceiling))],
  ], ops));
}

export async function tenants(el) {
  el.append(h('h2', {}, 'Tenants'));
  const ts = await api.get('/v1/tenants');
  el.append(table([
    ['Name', (t) => link(`#/tenant/${encodeURIComponent(t.id)}`, t.name)], ['Id', (t) => h('code', {}, t.id)],
    ['Operator', (t) => t.operator_id ?? '—'], ['Policy version', (t) => t.policy_version], ['Created', (t) => when(t.created_at)],
  ], ts));
}

// Flatten a JSON value into path → rendered value, for the diff.
function flatten(v, path = '', out = new Map()) {
  if (v && typeof v === 'object' && !Array.isArray(v)) {
    const keys = Object.keys(v);
    if (!keys.length) out.set(path || '(root)', '{}');
    for (const k of keys) flatten(v[k], path ? `${path}.${k}` : k, out);
  } else {
    out.set(path || '(root)', JSON.stringify(v));
  }
  return out;
}

export function diffTable(a, b) {
  const fa = flatten(a.policy), fb = flatten(b.policy);
  const keys = [...new Set([...fa.keys(), ...fb.keys()])].sort();
  let changed = 0;
  const rows = keys.map((k) => {
    const same = fa.get(k) === fb.get(k);
    if (!same) changed += 1;
    const cls = same ? null : 'changed';
    return h('tr', {},
      h('td', { class: 'mark', 'aria-label': same ? 'same' : 'changed' }, same ? '' : '≠'),
      h('th', { scope: 'row' }, h('code', {}, k)),
      h('td', { class: cls }, fa.get(k) ?? '(absent)'), h('td', { class: cls }, fb.get(k) ?? '(absent)'));
  });
  return h('div', { class: 'scroll' },
    h('p', { id: 'diff-summary' }, `${changed} field(s) differ between version ${a.version} and version ${b.version}.`),
    h('table', { class: 'diff' },
      h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'Field'),
        h('th', {}, `v${a.version} — set by ${a.set_by ?? 'unknown'} at ${when(a.created_at)}`),
        h('th', {}, `v${b.version} — set by ${b.set_by ?? 'unknown'} at ${when(b.created_at)}`))),
      h('tbody', {}, rows)));
}

export async function tenant(el, { args }) {
  const id = args[0];
  const [t, versions] = await Promise.all([
    api.get(`/v1/tenants/${encodeURIComponent(id)}`),
    api.get(`/v1/tenants/${encodeURIComponent(id)}/policy/versions`),
  ]);
  el.append(h('h2', {}, `Tenant ${t.name}`), kv([['Id', t.id], ['Operator', t.operator_id], ['Policy version', t.policy_version], ['Created', when(t.created_at)]]));
  el.append(h('h3', {}, 'Policy versions'), table([
    ['Version', (p) => p.version], ['Set by', (p) => p.set_by ?? '—'], ['At', (p) => when(p.created_at)],
    ['Digest', (p) => h('code', {}, short(p.digest, 24))],
  ], versions));
  if (!versions.length) return;
  const pick = (id, v) => h('select', { id }, versions.map((p) => h('option', { value: p.version, selected: p.version === v }, `v${p.version}`)));
  const last = versions[versions.length - 1].version;
  const first = versions.length > 1 ? versions[versions.length - 2].version : last;
  const sa = pick('diff-a', first), sb = pick('diff-b', last);
  const out = h('div', { id: 'diff' });
  const show = () => {
    const a = versions.find((p) => p.version === Number(sa.value));
    const b = versions.find((p) => p.version === Number(sb.value));
    clear(out).append(diffTable(a, b));
  };
  sa.addEventListener('change', show);
  sb.addEventListener('change', show);
  el.append(h('h3', {}, 'Compare two versions'),
    h('div', { class: 'row' }, h('label', { for: 'diff-a' }, 'Left'), sa, h('label', { for: 'diff-b' }, 'Right'), sb), out);
  show();
}

// Bars drawn with DOM APIs (SVG elements, attributes set by name).
function bars(rows, value, label) {
  const NS = 'http://www.w3.org/2000/svg';
  const max = Math.max(1, ...rows.map(value));
  const bh = 18, w = 600, lw = 220;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('class', 'bars');
  svg.setAttribute('viewBox', `0 0 ${w} ${rows.length * bh + 4}`);
  svg.setAttribute('width', '100%');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  rows.forEach((r, i) => {
    const t = document.createElementNS(NS, 'text');
    t.setAttribute('x', 0); t.setAttribute('y', i * bh + 13);
    t.textContent = `${r.period} ${short(r.tenant_id, 14)}`;
    const rect = document.createElementNS(NS, 'rect');
    rect.setAttribute('x', lw); rect.setAttribute('y', i * bh + 3); rect.setAttribute('height', bh - 6);
    rect.setAttribute('width', Math.max(1, ((w - lw - 60) * value(r)) / max));
    const v = document.createElementNS(NS, 'text');
    v.setAttribute('x', lw + ((w - lw - 60) * value(r)) / max + 4); v.setAttribute('y', i * bh + 13);
    v.textContent = String(value(r));
    svg.append(t, rect, v);
  });
  return svg;
}

export async function usage(el, { me }) {
  el.append(h('h2', {}, 'Usage per tenant per day'));
  const rows = await api.get(`/v1/usage${q({ period: 'day' })}`);
  if (!rows.length) { el.append(h('p', {}, 'No runs yet.')); return; }
  el.append(h('h3', {}, 'Runs'), bars(rows.slice(0, 60), (r) => r.runs, 'runs per tenant per day'));
  el.append(h('h3', {}, 'Wall time (ms)'), bars(rows.slice(0, 60), (r) => Math.round(r.wall_time_us / 1000), 'wall time per tenant per day'));
  el.append(table([
    ['Day', (r) => r.period], ['Tenant', (r) => h('code', {}, r.tenant_id)], ['Runs', (r) => r.runs], ['Ok', (r) => r.ok_runs],
    ['Wall ms', (r) => (r.wall_time_us / 1000).toFixed(1)], ['Fuel', (r) => r.fuel],
    ['Peak memory', (r) => r.peak_memory_bytes], ['Memory byte·s', (r) => r.memory_byte_seconds.toFixed(0)],
    ...Object.keys(rows[0]).filter((k) => k.startsWith('gpu')).map((k) => [k, (r) => r[k]]),
  ], rows));
  if (me.role === 'developer') el.append(h('p', { class: 'note' }, 'Your tenant only.'));
}

export async function tokens(el) {
  el.append(h('h2', {}, 'Tokens'));
  const box = h('div', {});
  el.append(h('p', { class: 'note' }, 'Secrets are never shown (only their ids); revoking takes effect on the very next request.'), box);
  const load = async () => {
    const ts = await api.get('/v1/tokens');
    clear(box).append(table([
      ['Id', (t) => h('code', {}, t.id)], ['Role', (t) => t.role], ['Subject', (t) => t.subject], ['Name', (t) => t.name ?? '—'],
      ['Created', (t) => when(t.created_at)], ['Expires', (t) => when(t.expires_at)], ['Last used', (t) => when(t.last_used_at)],
      ['State', (t) => (t.revoked ? `revoked ${when(t.revoked_at)}` : 'active')],
      ['', (t) => (t.revoked ? '' : h('button', {
        type: 'button', 'data-token': t.id,
        onclick: async (ev) => {
          if (!confirm(`Revoke token ${t.id}?`)) return;
          ev.target.disabled = true;
          try { await api.del(`/v1/tokens/${encodeURIComponent(t.id)}`); await load(); } catch (e) { box.prepend(errorBox(e)); }
        },
      }, 'Revoke'))],
    ], ts));
  };
  await load();
}
