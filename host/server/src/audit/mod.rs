//! The audit log: an RFC 6962 Merkle log of every state change and
//! refusal, in the platform's database, with C2SP checkpoints signed by the
//! log's key.
//!
//! - `handlers.rs`: HTTP (key, checkpoint, entries, proofs, receipts);
//! - `service.rs`: who reads what; refusals recorded as `denial` entries;
//! - `entries.rs`: a builder per entry type (called by every domain's
//!   storage, in the transaction of the change recorded);
//! - `storage.rs` / `sqlite.rs`: appending refusals; `log.rs`: the log's
//!   tables, the `NodeStore` over them, append and read queries;
//!   `key.rs`: the signing key and the cached latest checkpoint.

pub mod entries;
pub mod handlers;
pub mod key;
pub mod log;
pub mod service;
pub mod sqlite;
pub mod storage;
pub mod tiles;
pub mod witnesses;

#[cfg(test)]
mod log_tests;
