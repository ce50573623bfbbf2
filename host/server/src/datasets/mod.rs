//! Datasets: a tenant's immutable blobs (model weights, reference data)
//! with a residency label; what runs mount at `/datasets/<name>`.
//!
//! `handlers.rs` (HTTP) → `service.rs` (the rules) → `storage.rs` (the
//! interface) / `sqlite.rs` (its SQLite implementation).

pub mod handlers;
pub mod service;
pub mod sqlite;
pub mod storage;
