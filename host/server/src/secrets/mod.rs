//! Secrets: values a tenant's developers store (API keys, passwords) and
//! its policy grants to runs by name (`[secrets]`), delivered as an
//! environment variable or a read-only file. Encrypted at rest; never
//! shown: the API, logs, run records and the audit log carry names and
//! versions only.
//!
//! `handlers.rs` (HTTP) → `service.rs` (the rules; decryption for runs)
//! → `storage.rs` (the interface) / `sqlite.rs` (its SQLite
//! implementation); `seal.rs`: the key file and the AEAD.

pub mod handlers;
pub mod seal;
pub mod service;
pub mod sqlite;
pub mod storage;
