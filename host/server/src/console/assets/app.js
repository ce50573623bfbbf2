// kasbah console: login, navigation by role, hash routing. Hand-written ES
// modules, no build step; every value is rendered with textContent.

import { h, clear, errorBox } from './dom.js';
import { api, session, timing } from './api.js';
import * as admin from './admin.js';
import * as dev from './developer.js';
import * as audit from './auditor.js';

const view = () => document.getElementById('view');

// Sections per role. Each shows only what the API lets that role read; a
// section the API refuses shows the API's error, never other data.
const NAV = {
  admin: [['operators', 'Operators'], ['tenants', 'Tenants'], ['usage', 'Usage'], ['tokens', 'Tokens'],
    ['runs', 'Runs'], ['log', 'Audit log'], ['key', 'Log key']],
  operator: [['operators', 'Operator'], ['tenants', 'Tenants'], ['usage', 'Usage'], ['tokens', 'Tokens']],
  developer: [['modules', 'Modules'], ['runs', 'Runs'], ['datasets', 'Datasets'], ['usage', 'Usage'], ['tokens', 'Tokens']],
  auditor: [['key', 'Log key'], ['modules', 'Modules'], ['log', 'Audit log'], ['receipts', 'Receipts'], ['runs', 'Runs']],
};

const ROUTES = {
  operators: admin.operators, tenants: admin.tenants, tenant: admin.tenant, usage: admin.usage, tokens: admin.tokens,
  modules: dev.modules, runs: dev.runs, run: dev.run, datasets: dev.datasets,
  log: audit.log, receipts: audit.receipts, key: audit.key,
};

let me = null;

function loginView(message) {
  const input = h('textarea', { id: 'token', name: 'token', rows: 3, autocomplete: 'off', spellcheck: 'false', required: true });
  const form = h('form', { id: 'login' },
    h('h2', {}, 'Sign in'),
    h('p', {}, 'Paste an API token (admin, operator, developer or auditor). It is kept in this tab only (sessionStorage) and sent as a bearer header; closing the tab forgets it.'),
    h('label', { for: 'token' }, 'Token'), input,
    h('div', { class: 'row' }, h('button', { type: 'submit', class: 'primary', id: 'login-submit' }, 'Sign in')),
    message ? errorBox(message) : null);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = input.value.trim();
    try {
      me = await api.whoami(token);
      session.set(token);
      const first = `#/${NAV[me.role][0][0]}`;
      if (location.hash === first) route(); else location.hash = first;
    } catch (e) {
      clear(view()).append(loginView(e.status === 401 ? { message: 'that token was refused (unknown, expired or revoked)' } : e));
    }
  });
  return form;
}

function renderNav(active) {
  const nav = clear(document.getElementById('nav'));
  const who = clear(document.getElementById('who'));
  if (!me) return;
  for (const [id, label] of NAV[me.role]) {
    nav.append(h('a', { href: `#/${id}`, 'aria-current': id === active ? 'page' : false }, label));
  }
  who.append(`${me.role} · ${me.subject} `,
    h('button', { type: 'button', id: 'logout', onclick: () => { session.clear(); me = null; route(); } }, 'Sign out'));
}

// Each navigation renders into a detached element and swaps it in only if
// no later navigation started meanwhile (login + hashchange, fast clicks).
let seq = 0;

async function route(ev) {
  const my = ++seq;
  const v = view();
  if (!me) { renderNav(); v.replaceChildren(loginView()); return; }
  const [name, ...args] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const page = name && ROUTES[name] ? name : NAV[me.role][0][0];
  renderNav(page === 'tenant' ? 'tenants' : page === 'run' ? 'runs' : page);
  v.removeAttribute('data-ready');
  v.setAttribute('aria-busy', 'true');
  const el = document.createElement('div');
  timing.reset();
  try {
    await ROUTES[page](el, { me, args });
  } catch (e) {
    if (my !== seq) return;
    if (e.status === 401) { session.clear(); me = null; renderNav(); v.replaceChildren(loginView(e)); return; }
    el.append(errorBox(e));
  }
  if (my !== seq) return;
  v.replaceChildren(el);
  v.removeAttribute('aria-busy');
  v.setAttribute('data-fetch-ms', timing.ms.toFixed(1));
  v.setAttribute('data-ready', page);
  // After in-page navigation, keyboard and screen-reader focus moves to
  // the new content (the nav link that was activated is left behind).
  if (ev?.type === 'hashchange') v.focus();
}

async function start() {
  if (!me && session.token) {
    try { me = await api.whoami(session.token); } catch { session.clear(); }
  }
  await route();
}

window.addEventListener('hashchange', route);
start();
