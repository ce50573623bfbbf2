//! # kasbah-server: the platform service
//!
//! `kasbah serve` = this crate: an axum API over an embedded SQLite database
//! (metadata) and a content-addressed blob directory (modules, datasets,
//! large outputs), running pipelines on one shared [`kasbah_runtime::Runtime`].
//! Roles: admin, operator, developer, auditor.
//!
//! Every state change goes through one group-commit writer thread
//! (`store/writer.rs`) and is committed in the same SQLite transaction as
//! the audit log entry recording it: nothing is acknowledged before its
//! entry is durable.
//!
//! ## Layout
//!
//! One folder per domain, each the same shape: `handlers.rs` (HTTP: parse,
//! call the service, answer; no rules) → `service.rs` (the rules; no axum)
//! → `storage.rs` (the storage trait: what the domain needs stored, and
//! the contract that a change and its audit entries commit together) /
//! `sqlite.rs` (its SQLite implementation) → `store/` (the database core).
//! Imports only flow that way, and from domain to domain without circles
//! (`tests/layout.rs` checks both, and that no file passes 600 lines).
//!
//! | where | what |
//! |---|---|
//! | `tenancy/` | operators and ceilings, tenants and policy versions, auditors, tokens (`tokens.rs`: lifecycle rules; `access.rs`: which tenants a caller reaches) |
//! | `registry/` | modules: publish checks (component, imports granted, host links), records, content, lookup by digest or `name[@version]`; `signing.rs`: signatures at publish (DSSE envelopes, policy threshold), signing-key revocation; `provenance.rs`: build provenance statements (checked against the module, entry type 11, served to owner and auditors) |
//! | `datasets/` | datasets: labels within the tenant's zones, uploads (fleet mode: into the label zones' object store buckets only), downloads, mounts by name |
//! | `secrets/` | tenants' secrets: set/list/delete (developers), sealed at rest (`seal.rs`: XChaCha20-Poly1305 under `secrets.key`, AAD tenant+name+version), audited (type 12), decrypted for the runs their policy grants them to (`service.rs::for_run`) |
//! | `runs/` | runs: admission (`scheduler.rs`), placement (`placement.rs`), execution in this process (`execute.rs`) or on the fleet's zone workers (`fleet.rs`: the NATS side; `dispatch.rs`: dispatch, results, lost runs), live logs and cancel (`live.rs`: the feed; `follow.rs`: reading it, cancelling), the start-up warm-up (`warmup.rs`, `warm_sqlite.rs`; `final_sqlite.rs`: a run's rows as written), records (`row_sqlite.rs`: the placement columns, secrets granted), usage; `invoke.rs`: raw HTTP invoke, outcome → status |
//! | `audit/` | the log: entry builders (`entries.rs`), tables and queries (`log.rs`), key and checkpoints (`key.rs`), reads and refusals (`service.rs`), the C2SP tile-served log (`tiles.rs`), submitting checkpoints to witnesses (`witnesses.rs`) |
//! | `console/` | the web console: embedded assets (`assets.rs`, `assets/`: hand-written ES modules, no JS toolchain; the verifier wasm from `build.rs`) and their handlers (CSP headers) |
//! | `witness/` | `kasbah witness serve`, a C2SP tlog-witness (not part of the platform API; its router is `routes::witness_router`) |
//! | `store/` | the SQLite core: open, readers, [`store::Db::write`] (change + entries in one batch transaction), `writer.rs` (group commit), `schema.rs` (every table, migrations) |
//! | `state.rs` | [`state::AppState`]: config, each domain's storage, blobs, runtime, guest threads, scheduler, metrics, log key |
//! | `routes.rs`, `openapi.rs`, `ops.rs` | the router, the OpenAPI document, `/metrics` |
//! | `server.rs` | start (recovery, bootstrap token), serve, shutdown |
//! | `auth.rs`, `caller.rs` | the bearer-token extractor; the caller and its role rules |
//! | `error.rs`, `extract.rs`, `validate.rs` | the error envelope; shared HTTP helpers (JSON rejections, streamed uploads); names and digests |
//! | `http.rs`, `config.rs`, `metrics.rs`, `blobs.rs`, `at_rest.rs`, `ids.rs` | connections and timeouts; configuration; Prometheus; the blob store; data-dir modes; ids, token hashes, the clock |
//!
//! Where to add things:
//! - **an endpoint**: a handler in its domain's `handlers.rs` (with its
//!   `#[utoipa::path]`), the rule in its `service.rs`, a route in
//!   `routes.rs`, the handler in `openapi.rs`'s path list;
//! - **a policy field**: `kasbah-policy` (`host/policy`), with its ceiling
//!   rule in `ceiling.rs`; the server stores policies as JSON, so no
//!   schema change;
//! - **an audit entry type**: its frozen byte format in `kasbah-audit`
//!   (`host/audit/src/entry.rs`), a builder in `audit/entries.rs`, and the
//!   storage write that changes the state returns it (see
//!   [`store::Db::write`]);
//! - **a column or table**: `store/schema.rs` (`SCHEMA` and `migrate`),
//!   then the domain's `sqlite.rs`.

pub mod at_rest;
pub mod audit;
pub mod auth;
pub mod blobs;
pub mod caller;
pub mod config;
pub mod console;
pub mod datasets;
pub mod error;
pub mod extract;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod registry;
pub mod routes;
pub mod runs;
pub mod secrets;
pub mod server;
pub mod state;
pub mod store;
pub mod tenancy;
pub mod validate;
pub mod witness;

pub use config::ServerConfig;
pub use openapi::openapi_document;
pub use routes::router;
pub use server::{Server, start};
pub use state::AppState;
