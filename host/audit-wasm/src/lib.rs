//! # kasbah-audit-wasm: the console's in-browser verifier
//!
//! The verifier half of `kasbah-audit`, compiled to `wasm32-unknown-unknown`
//! with a plain C ABI (no wasm-bindgen): the page calls [`alloc`], copies
//! UTF-8 inputs into linear memory, calls a `verify_*` function, and reads
//! the verdict (JSON) at [`result_ptr`] / [`result_len`]. The return value
//! is the status: [`OK`] or [`FAILED`] (the proof, signature or input is
//! bad; the JSON says why). The server's own verdict is never an input.
//!
//! Inputs are bounded ([`MAX_INPUT`]) before parsing, so a hostile page
//! payload cannot make the module allocate without limit.

use kasbah_audit::{
    Hash, LogVerifier, Receipt, WatchOutcome, Watcher, open_checkpoint, verify_receipt as verify,
};
use serde_json::{Value, json};
use std::cell::RefCell;

/// Verified.
pub const OK: i32 = 0;
/// Not verified: the result JSON carries `{"ok":false,"error":...}`.
pub const FAILED: i32 = 1;
/// Largest input accepted (a receipt is a few KiB; a proof is at most 64 hashes).
pub const MAX_INPUT: usize = 1 << 20;

thread_local! {
    static RESULT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Allocate `len` bytes for an input; the page frees it with [`dealloc`].
/// Over [`MAX_INPUT`]: null, and the page must not write (it checks).
#[unsafe(no_mangle)]
pub extern "C" fn alloc(len: usize) -> *mut u8 {
    if len > MAX_INPUT {
        return std::ptr::null_mut();
    }
    let mut v = vec![0u8; len];
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

/// Free a buffer from [`alloc`] (`len` as passed to it).
///
/// # Safety
/// `ptr` must come from [`alloc`] with the same `len`, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dealloc(ptr: *mut u8, len: usize) {
    if ptr.is_null() || len > MAX_INPUT {
        return;
    }
    // SAFETY: the caller's contract: ptr/len from `alloc`, whose Vec had
    // capacity == length == len.
    drop(unsafe { Vec::from_raw_parts(ptr, len, len) });
}

/// Where the last verdict's JSON starts.
#[unsafe(no_mangle)]
pub extern "C" fn result_ptr() -> *const u8 {
    RESULT.with(|r| r.borrow().as_ptr())
}

/// The last verdict's JSON length.
#[unsafe(no_mangle)]
pub extern "C" fn result_len() -> usize {
    RESULT.with(|r| r.borrow().len())
}

/// Read an input the page wrote at `ptr`.
///
/// # Safety
/// `ptr..ptr+len` must be initialised memory from [`alloc`].
unsafe fn input<'a>(ptr: *const u8, len: usize) -> Result<&'a str, String> {
    if len > MAX_INPUT {
        return Err(format!(
            "input of {len} bytes is over the {MAX_INPUT}-byte limit"
        ));
    }
    if len == 0 {
        return Ok("");
    }
    // SAFETY: the caller's contract.
    let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
    std::str::from_utf8(bytes).map_err(|_| "input is not UTF-8".to_string())
}

fn finish(r: Result<Value, String>) -> i32 {
    let (status, v) = match r {
        Ok(mut v) => {
            v["ok"] = json!(true);
            (OK, v)
        }
        Err(e) => (FAILED, json!({"ok": false, "error": e})),
    };
    RESULT.with(|r| *r.borrow_mut() = v.to_string().into_bytes());
    status
}

fn key(text: &str) -> Result<LogVerifier, String> {
    text.trim()
        .parse::<LogVerifier>()
        .map_err(|e| format!("log public key rejected: {e}"))
}

/// Verify a receipt (JSON of `kasbah_audit::Receipt`) with the log's public
/// key (a C2SP verifier key, `name+hash+base64`): checkpoint signature and
/// origin, inclusion of the entry, entry decoding.
///
/// # Safety
/// Both ranges must be initialised memory from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn verify_receipt(
    r_ptr: *const u8,
    r_len: usize,
    k_ptr: *const u8,
    k_len: usize,
) -> i32 {
    // SAFETY: the caller's contract, passed on.
    let r = unsafe { input(r_ptr, r_len) }.and_then(|receipt| {
        let key = key(unsafe { input(k_ptr, k_len) }?)?;
        receipt_verdict(receipt, &key)
    });
    finish(r)
}

/// The verdict on one receipt (native-testable half of [`verify_receipt`]).
pub fn receipt_verdict(receipt: &str, key: &LogVerifier) -> Result<Value, String> {
    let receipt: Receipt =
        serde_json::from_str(receipt).map_err(|e| format!("receipt is not valid JSON: {e}"))?;
    let v = verify(&receipt, key, None).map_err(|e| e.to_string())?;
    Ok(json!({
        "index": v.index,
        "kind": v.entry.body.kind(),
        "module": v.entry.body.module().map(|d| d.to_string()),
        "entry": v.entry,
        "leaf_hash": v.leaf_hash.to_string(),
        "tree_size": v.checkpoint.checkpoint.size,
        "root": v.checkpoint.checkpoint.root.to_string(),
        "checkpoint": v.checkpoint.note,
    }))
}

/// Verify a checkpoint against the pinned one: `input` is JSON
/// `{"pinned": "<signed note>" | null, "offered": "<signed note>",
/// "proof": ["<base64 hash>", ...]}`. Both notes must be signed by the key;
/// the offered tree must be proven (RFC 9162 consistency) to extend the
/// pinned one. Without a pinned note, only the signature is checked.
///
/// # Safety
/// Both ranges must be initialised memory from [`alloc`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn verify_checkpoint(
    i_ptr: *const u8,
    i_len: usize,
    k_ptr: *const u8,
    k_len: usize,
) -> i32 {
    // SAFETY: the caller's contract, passed on.
    let r = unsafe { input(i_ptr, i_len) }.and_then(|i| {
        let key = key(unsafe { input(k_ptr, k_len) }?)?;
        checkpoint_verdict(i, &key)
    });
    finish(r)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointInput {
    pinned: Option<String>,
    offered: String,
    #[serde(default)]
    proof: Vec<Hash>,
}

/// The verdict on a checkpoint (native-testable half of [`verify_checkpoint`]).
pub fn checkpoint_verdict(input: &str, key: &LogVerifier) -> Result<Value, String> {
    let i: CheckpointInput =
        serde_json::from_str(input).map_err(|e| format!("input is not valid JSON: {e}"))?;
    let offered = open_checkpoint(key, &i.offered).map_err(|e| e.to_string())?;
    let outcome = match &i.pinned {
        None => "first",
        Some(pinned) => {
            let mut w = Watcher::new(key.clone(), pinned).map_err(|e| e.to_string())?;
            match w.update(&i.offered, &i.proof).map_err(|e| e.to_string())? {
                WatchOutcome::Unchanged => "unchanged",
                WatchOutcome::Advanced { .. } => "advanced",
            }
        }
    };
    Ok(json!({
        "consistency": outcome,
        "origin": offered.checkpoint.origin,
        "tree_size": offered.checkpoint.size,
        "root": offered.checkpoint.root.to_string(),
    }))
}
