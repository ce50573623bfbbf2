// The in-browser verifier: host/audit-wasm (the kasbah-audit verifier for
// wasm32-unknown-unknown, a plain C ABI) and the pins it checks against.
// The server supplies receipts, checkpoints and proofs; it never supplies a
// verdict. The log key is pasted by the auditor (obtained out of band) and
// pinned in localStorage with the last checkpoint proven consistent.

import { api, q } from './api.js';

const KEY = 'kasbah.logKey';
const CHECKPOINT = 'kasbah.pinnedCheckpoint';

export const pins = {
  get key() { return localStorage.getItem(KEY); },
  setKey(k) { localStorage.setItem(KEY, k.trim()); localStorage.removeItem(CHECKPOINT); },
  get checkpoint() { return localStorage.getItem(CHECKPOINT); },
  setCheckpoint(note) { localStorage.setItem(CHECKPOINT, note); },
  forgetCheckpoint() { localStorage.removeItem(CHECKPOINT); },
};

let exports_ = null;
async function wasm() {
  if (!exports_) {
    const r = await fetch('/console/verifier.wasm', { credentials: 'omit', cache: 'no-store' });
    const { instance } = await WebAssembly.instantiateStreaming(r, {});
    exports_ = instance.exports;
  }
  return exports_;
}

const MAX_INPUT = 1 << 20; // host/audit-wasm's bound: alloc() refuses more

function put(x, text) {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length > MAX_INPUT) throw new Error(`input of ${bytes.length} bytes is over the verifier's ${MAX_INPUT}-byte limit`);
  const p = x.alloc(bytes.length);
  if (!p) throw new Error('the verifier refused to allocate');
  new Uint8Array(x.memory.buffer, p, bytes.length).set(bytes);
  return [p, bytes.length];
}

// Call one verify_* export; the verdict is what the wasm wrote.
async function call(fn, input, key) {
  const x = await wasm();
  let ip, il, kp, kl;
  try {
    [ip, il] = put(x, input);
    [kp, kl] = put(x, key);
  } catch (e) {
    if (ip) x.dealloc(ip, il);
    return { ok: false, error: e.message };
  }
  let status, out;
  try {
    status = x[fn](ip, il, kp, kl);
    out = JSON.parse(new TextDecoder().decode(new Uint8Array(x.memory.buffer, x.result_ptr(), x.result_len())));
    x.dealloc(ip, il);
    x.dealloc(kp, kl);
  } catch (e) {
    exports_ = null; // a trapped instance is not reused
    return { ok: false, error: `the verifier trapped: ${e.message}` };
  }
  return { ...out, ok: status === 0 && out.ok === true };
}

const NO_KEY = { ok: false, error: 'no log key pinned: paste the log\'s public key under "Log key" first' };

// A signed checkpoint against the pinned one: signature, then a consistency
// proof (fetched from the server, checked here) in whichever direction the
// sizes need. The pin advances only along a verified proof.
export async function checkCheckpoint(note) {
  const key = pins.key;
  if (!key) return NO_KEY;
  const pinned = pins.checkpoint;
  const first = await call('verify_checkpoint', JSON.stringify({ pinned: null, offered: note }), key);
  if (!first.ok || !pinned) {
    if (first.ok) pins.setCheckpoint(note);
    return { ...first, consistency: first.ok ? 'pinned now (first checkpoint seen)' : undefined };
  }
  const old = await call('verify_checkpoint', JSON.stringify({ pinned: null, offered: pinned }), key);
  if (!old.ok) return { ok: false, error: `the pinned checkpoint no longer verifies with the pinned key: ${old.error}` };
  const [a, b, forward] = first.tree_size >= old.tree_size ? [pinned, note, true] : [note, pinned, false];
  const [sa, sb] = forward ? [old.tree_size, first.tree_size] : [first.tree_size, old.tree_size];
  let proof = [];
  if (sa > 0 && sb > sa) {
    try {
      proof = (await api.get(`/v1/audit/proof/consistency${q({ old: sa, new: sb })}`)).proof;
    } catch (e) {
      return { ok: false, error: `no consistency proof from ${sa} to ${sb}: ${e.message}` };
    }
  }
  const v = await call('verify_checkpoint', JSON.stringify({ pinned: a, offered: b, proof }), key);
  if (!v.ok) return v;
  if (forward && v.consistency === 'advanced') pins.setCheckpoint(note);
  return { ...first, ok: true, consistency: forward ? `${v.consistency} (from pinned size ${sa})` : `a prefix of the pinned tree of size ${sb}` };
}

// A receipt: signature + inclusion + entry (wasm), then its checkpoint's
// consistency with the pinned one. `expect` checks what the entry names.
export async function checkReceipt(receiptText, expect = {}) {
  const key = pins.key;
  if (!key) return NO_KEY;
  let receipt;
  try { receipt = JSON.parse(receiptText); } catch (e) { return { ok: false, error: `not JSON: ${e.message}` }; }
  const r = await call('verify_receipt', receiptText, key);
  if (!r.ok) return r;
  if (expect.module && r.module !== expect.module) return { ok: false, error: `the entry names module ${r.module}, not ${expect.module}` };
  if (expect.run && r.entry.run_id !== expect.run) return { ok: false, error: `the entry is for run ${r.entry.run_id}, not ${expect.run}` };
  const c = await checkCheckpoint(receipt.checkpoint);
  if (!c.ok) return { ...c, error: `receipt verified but its checkpoint is not consistent with the pinned one: ${c.error}` };
  return { ...r, consistency: c.consistency };
}

export async function verifierLoads() {
  await wasm();
  return true;
}
