//! The module registry: a tenant's published components (immutable, by
//! digest; unique name@version), checked at publish against the tenant's
//! policy and this host's linker, and signed where the policy says so
//! (`signing.rs`: DSSE envelopes, thresholds, key revocation); their build
//! provenance (`provenance.rs`).
//!
//! `handlers.rs` (HTTP) → `service.rs` (the rules) → `storage.rs` (the
//! interface) / `sqlite.rs` (its SQLite implementation).

pub mod handlers;
pub mod provenance;
pub mod service;
pub mod signing;
pub mod sqlite;
pub mod storage;
