//! Identifiers, secrets and the clock: ids (`prefix_` + random hex, run ids
//! sortable by time), token secrets' hashes, milliseconds since the epoch.

use kasbah_core::Digest;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `prefix_` + 16 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Run ids sort by creation time: `run_` + ms timestamp + random.
pub fn new_run_id() -> String {
    let mut b = [0u8; 6];
    fill_random(&mut b);
    format!("run_{:012x}{}", now_ms(), hex::encode(b))
}

pub fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not recoverable for a security service.
    if let Err(e) = getrandom::fill(buf) {
        panic!("operating system RNG failed: {e}");
    }
}

/// How a token secret is stored (and looked up): its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    Digest::of(token.as_bytes()).hex()
}
