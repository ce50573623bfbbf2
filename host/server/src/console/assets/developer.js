// Developer views (also the runs of admins and auditors): modules, runs with
// server-side pagination (limit + `before` cursor), one run, datasets.

import { h, table, kv, json, pre, when, short, link, captured, errorBox } from './dom.js';
import { api, q } from './api.js';

export const PAGE = 50;

export async function modules(el, { me }) {
  el.append(h('h2', {}, 'Modules'));
  const ms = await api.get('/v1/modules');
  if (me.role === 'auditor') {
    const { moduleRows } = await import('./auditor.js');
    el.append(moduleRows(ms));
    return;
  }
  el.append(table([
    ['Name', (m) => `${m.name} ${m.version}`], ['Digest', (m) => h('code', {}, m.digest)], ['Tenant', (m) => m.tenant_id],
    ['Size', (m) => m.size], ['Imports', (m) => (m.imports ?? []).join(', ')], ['Signers', (m) => m.signers?.join(', ') || '—'],
    ['Published', (m) => when(m.created_at)],
  ], ms));
}

function outcome(r) {
  if (!r.outcome) return r.status;
  const o = r.outcome;
  return o.kind === 'ok' ? 'ok' : `${o.kind}${o.code ? ` (${o.code})` : ''}${o.message ? `: ${o.message}` : ''}`;
}

// args: [] = newest page; ['before', id] = the page older than run `id`.
export async function runs(el, { args }) {
  const before = args[0] === 'before' ? args[1] : undefined;
  el.append(h('h2', {}, 'Runs'));
  const rs = await api.get(`/v1/runs${q({ limit: PAGE, before })}`);
  el.append(h('p', { id: 'runs-count' }, `${rs.length} run(s) on this page, newest first.`));
  el.append(table([
    ['Run', (r) => link(`#/run/${encodeURIComponent(r.id)}`, r.id)], ['Tenant', (r) => r.tenant_id], ['Status', (r) => r.status],
    ['Outcome', (r) => short(outcome(r), 40)], ['Zone', (r) => r.zone ?? '—'], ['Module', (r) => h('code', {}, short(r.module, 20))],
    ['Created', (r) => when(r.created_at)],
  ], rs));
  const nav = h('div', { class: 'row' });
  if (before) nav.append(link('#/runs', 'Newest'));
  if (rs.length === PAGE) nav.append(link(`#/runs/before/${encodeURIComponent(rs[rs.length - 1].id)}`, 'Older runs →'));
  el.append(nav);
}

export async function run(el, { args, me }) {
  const id = args[0];
  const r = await api.get(`/v1/runs/${encodeURIComponent(id)}`);
  const u = r.usage;
  el.append(h('h2', {}, `Run ${r.id}`), kv([
    ['Status', r.status], ['Outcome', outcome(r)], ['Tenant', r.tenant_id], ['Module', h('code', {}, r.module)],
    ['Policy version', r.policy_version], ['Input', `${r.input_digest} (${r.input_size} bytes)`],
    ['Zone', r.zone], ['Adapter', r.adapter], ['Worker', r.worker],
    ['Input label', (r.input_label ?? []).join(', ') || '—'], ['Output label', (r.output_label ?? []).join(', ') || '—'],
    ['Datasets', (r.datasets ?? []).map((d) => `${d.name} [${d.label.join(', ')}]`).join('; ') || '—'],
    ['Created', when(r.created_at)], ['Started', when(r.started_at)], ['Finished', when(r.finished_at)],
  ]));
  el.append(h('h3', {}, 'Usage'), u ? kv([
    ['Wall time', `${(u.wall_time / 1000).toFixed(2)} ms`], ['Fuel', u.fuel_consumed], ['Peak memory', `${u.peak_memory_bytes} bytes`],
    u.gpu ? ['GPU', JSON.stringify(u.gpu)] : null,
  ]) : h('p', {}, '—'));
  el.append(h('h3', {}, 'stdout'), captured(r.stdout), h('h3', {}, 'stderr'), captured(r.stderr));
  el.append(h('h3', {}, 'Logs'), r.logs?.records?.length
    ? table([['Level', (l) => l.level], ['Message', (l) => l.message ?? JSON.stringify(l)]], r.logs.records)
    : h('p', {}, 'none'));
  if (r.denials?.length) el.append(h('h3', {}, 'Denials'), json(r.denials));
  if (r.output) {
    const status = h('span', { role: 'status', id: 'download-status' });
    el.append(h('h3', {}, 'Output'), kv([['Digest', r.output.digest], ['Size', r.output.size], ['Type', r.output.content_type]]),
      r.output.inline ? captured(r.output.inline) : null,
      h('div', { class: 'row' }, h('button', {
        type: 'button', id: 'download',
        onclick: async () => {
          try {
            const blob = await api.blob(`/v1/runs/${encodeURIComponent(r.id)}/output`);
            const a = h('a', { href: URL.createObjectURL(blob), download: `${r.id}.out` }, 'save');
            document.body.append(a); a.click(); a.remove();
            status.textContent = `downloaded ${blob.size} bytes`;
          } catch (e) { status.replaceChildren(errorBox(e)); }
        },
      }, 'Download output'), status));
  }
  if (me.role === 'auditor' || me.role === 'admin') {
    const { runReceipt } = await import('./auditor.js');
    el.append(h('h3', {}, 'Receipt'), await runReceipt(r.id));
  }
}

export async function datasets(el) {
  el.append(h('h2', {}, 'Datasets'));
  const ds = await api.get('/v1/datasets');
  el.append(table([
    ['Name', (d) => d.name], ['Id', (d) => h('code', {}, d.id)], ['Residency label', (d) => (d.label ?? []).join(', ')],
    ['Digest', (d) => h('code', {}, short(d.digest, 24))], ['Size', (d) => d.size], ['From run', (d) => d.source_run ?? '—'],
    ['Created', (d) => when(d.created_at)],
  ], ds));
  if (!ds.length) el.append(pre('No datasets.'));
}
