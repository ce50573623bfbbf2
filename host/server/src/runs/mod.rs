//! Runs: admission, placement, execution, records and usage.
//!
//! `handlers.rs` (HTTP) → `service.rs` (who may start and read runs; the
//! order of checks) → `placement.rs` (which zone and adapter; residency
//! refusals), `scheduler.rs` (admission and the worker permits),
//! `execute.rs` (running it in this process) or `fleet.rs` (on a zone
//! worker, over NATS JetStream) → `storage.rs` (the
//! interface) / `sqlite.rs` (its SQLite implementation). `gpu_state.rs`: GPU warm state kept across
//! restarts (in-process execution). `live.rs`: runs in flight as
//! clients follow their logs and cancel them; `follow.rs`: the rules of
//! reading those logs and of cancelling. `workers.rs`: the
//! fleet's live workers as the API shows them (`GET /v1/fleet/workers`).
//! `warmup.rs` (+ `warm_sqlite.rs`): the start-up warm-up (modules,
//! warm-up instances, cached lookups).
//! `invoke.rs`: raw HTTP invoke (`POST /v1/invoke/{name}`), a run started
//! like `POST /v1/runs`, its outcome mapped onto an HTTP status.

pub mod dispatch;
pub mod execute;
pub mod final_sqlite;
pub mod fleet;
pub mod follow;
pub mod gpu_state;
pub mod handlers;
pub mod invoke;
pub mod live;
pub mod placement;
pub mod row_sqlite;
pub mod scheduler;
pub mod service;
pub mod sqlite;
pub mod storage;
pub mod warm_sqlite;
pub mod warmup;
pub mod workers;
