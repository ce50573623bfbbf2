//! `kasbah witness serve`: a C2SP tlog-witness any sovereign client can
//! run. Not part of the platform's API: its own small HTTP service over
//! the same connection layer (`http.rs`), with its own state file.
//!
//! - `handlers.rs`: `POST /add-checkpoint`, `GET /<sha256(origin)>/checkpoint`;
//! - `service.rs`: the rules (from `kasbah_audit::witness`) under one lock,
//!   the cosignature;
//! - `storage.rs`: the last cosigned checkpoint per log, in a JSON file
//!   replaced atomically (fsynced before the answer).

pub mod handlers;
pub mod service;
pub mod storage;
