// Auditor views: the log key pin, modules with their publish entries, the
// log browser (entries, checkpoint), receipts. Every receipt and checkpoint
// shown is verified in this page (verify.js); the verdict reads without
// colour (VERIFIED / FAILED lead the text).

import { h, clear, table, kv, json, when, short, link, verdict, errorBox } from './dom.js';
import { api, q } from './api.js';
import { pins, checkReceipt, checkCheckpoint } from './verify.js';

function describe(v) {
  if (!v.ok) return verdict(false, v.error);
  if (v.kind) {
    return h('div', {}, verdict(true, `${v.kind} entry #${v.index} is in the signed tree of size ${v.tree_size}; checkpoint ${v.consistency}.`),
      h('details', {}, h('summary', {}, 'verified entry'), json(v.entry)));
  }
  return verdict(true, `checkpoint of ${v.origin}, size ${v.tree_size}, root ${v.root}; ${v.consistency}.`);
}

export async function verifyInto(box, fetcher, expect) {
  clear(box).append(h('p', { class: 'note' }, 'verifying…'));
  let v;
  try { v = await checkReceipt(JSON.stringify(await fetcher()), expect); } catch (e) { v = { ok: false, error: `${e.code ?? ''} ${e.message}` }; }
  clear(box).append(describe(v));
  return v;
}

export async function key(el) {
  el.append(h('h2', {}, 'The log\'s public key'));
  el.append(h('p', {}, 'Paste the log\'s public key (a C2SP verifier key, name+hash+base64) obtained out of band — from the operator, '
    + 'a published document, or `kasbah audit key` run against a server you trust. It is pinned in this browser (localStorage); '
    + 'pinning a new key forgets the pinned checkpoint.'));
  const ta = h('textarea', { id: 'log-key', rows: 2, spellcheck: 'false' });
  ta.value = pins.key ?? '';
  const out = h('div', { id: 'key-status' });
  const show = () => {
    const cp = pins.checkpoint;
    clear(out).append(kv([['Pinned key', pins.key ?? 'none'], ['Pinned checkpoint', cp ? cp.split('\n').slice(0, 3).join(' · ') : 'none']]));
  };
  el.append(h('label', { for: 'log-key' }, 'Log public key'), ta,
    h('div', { class: 'row' },
      h('button', { type: 'button', class: 'primary', id: 'pin-key', onclick: () => { pins.setKey(ta.value); show(); } }, 'Pin key'),
      h('button', { type: 'button', id: 'forget-checkpoint', onclick: () => { pins.forgetCheckpoint(); show(); } }, 'Forget pinned checkpoint')),
    out);
  show();
}

export function moduleRows(ms) {
  return table([
    ['Name', (m) => `${m.name} ${m.version}`], ['Digest', (m) => h('code', {}, m.digest)], ['Tenant', (m) => m.tenant_id],
    ['Published', (m) => when(m.created_at)],
    ['Publish entry', (m) => {
      const box = h('div', { class: 'receipt-verdict' });
      const b = h('button', {
        type: 'button', 'data-module': m.digest,
        onclick: () => verifyInto(box, () => api.get(`/v1/modules/${encodeURIComponent(m.digest)}/receipt${q({ tenant: m.tenant_id })}`), { module: m.digest }),
      }, 'Verify publish entry');
      return [b, box];
    }],
  ], ms);
}

export async function runReceipt(id) {
  const box = h('div', { id: 'run-receipt' });
  await verifyInto(box, () => api.get(`/v1/runs/${encodeURIComponent(id)}/receipt`), { run: id });
  return box;
}

const LOG_PAGE = 50;

export async function log(el, { args }) {
  el.append(h('h2', {}, 'Audit log'));
  const note = await api.text('/v1/audit/checkpoint');
  const cbox = h('div', { id: 'checkpoint-verdict' });
  el.append(h('h3', {}, 'Latest checkpoint'), h('pre', {}, note), cbox);
  cbox.append(describe(await checkCheckpoint(note)));
  const start = Number(args[0] ?? 0) || 0;
  const page = await api.get(`/v1/audit/entries${q({ start, end: start + LOG_PAGE })}`);
  el.append(h('h3', {}, `Entries ${page.start}–${page.end - 1} of ${page.size}`));
  el.append(table([
    ['#', (e) => e.index], ['Type', (e) => e.entry?.type ?? '(undecodable)'], ['Time', (e) => when(e.entry?.time_unix_ms)],
    ['Tenant', (e) => e.entry?.tenant ?? '—'], ['Details', (e) => h('code', {}, short(JSON.stringify(e.entry), 90))],
    ['Receipt', (e) => {
      const box = h('div', { class: 'receipt-verdict' });
      return [h('button', { type: 'button', 'data-index': e.index, onclick: () => verifyInto(box, () => api.get(`/v1/audit/entries/${e.index}/receipt`)) }, 'Verify'), box];
    }],
  ], page.entries));
  const nav = h('div', { class: 'row' });
  if (page.start > 0) nav.append(link(`#/log/${Math.max(0, page.start - LOG_PAGE)}`, '← Earlier'));
  if (page.end < page.size) nav.append(link(`#/log/${page.end}`, 'Later →'));
  if (page.size > LOG_PAGE) nav.append(link(`#/log/${page.size - LOG_PAGE}`, 'Latest'));
  el.append(nav);
}

export async function receipts(el) {
  el.append(h('h2', {}, 'Verify a receipt'));
  el.append(h('p', {}, 'Paste a receipt (from `kasbah runs receipt`, the API, or anyone who sent you one), or fetch a run\'s by id. '
    + 'It is checked here against the pinned key and checkpoint, not by the server.'));
  const ta = h('textarea', { id: 'receipt-text', rows: 8, spellcheck: 'false' });
  const out = h('div', { id: 'receipt-verdict' });
  const runId = h('input', { id: 'receipt-run', type: 'text', size: 30, autocomplete: 'off' });
  el.append(h('label', { for: 'receipt-text' }, 'Receipt JSON'), ta,
    h('div', { class: 'row' }, h('button', {
      type: 'button', class: 'primary', id: 'verify-pasted',
      onclick: async () => { clear(out).append(describe(await checkReceipt(ta.value))); },
    }, 'Verify pasted receipt')),
    h('label', { for: 'receipt-run' }, 'Run id'), h('div', { class: 'row' }, runId, h('button', {
      type: 'button', id: 'verify-run',
      onclick: async () => {
        try {
          const r = await api.get(`/v1/runs/${encodeURIComponent(runId.value.trim())}/receipt`);
          ta.value = JSON.stringify(r, null, 2);
          clear(out).append(describe(await checkReceipt(ta.value, { run: runId.value.trim() })));
        } catch (e) { clear(out).append(errorBox(e)); }
      },
    }, 'Fetch and verify run receipt')), out);
}
