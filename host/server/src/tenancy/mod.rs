//! Tenancy: operators (and the ceilings admins give them), tenants and
//! their versioned policies, auditors and their grants, tokens.
//!
//! - `handlers.rs`: HTTP (parse, call the service, answer);
//! - `service.rs`: the rules (who creates what; ceilings and policies);
//!   `tokens.rs`: token lifecycle rules; `access.rs`: which tenants a
//!   caller reaches;
//! - `storage.rs`: the storage interface; `sqlite.rs`, `tokens_sqlite.rs`
//!   and `token_rows.rs`: its SQLite implementation.

pub mod access;
pub mod handlers;
pub mod service;
pub mod sqlite;
pub mod storage;
pub mod token_rows;
pub mod tokens;
pub mod tokens_sqlite;
