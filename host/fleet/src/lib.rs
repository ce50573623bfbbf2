//! kasbah's fleet (issue 14): zone workers fed by NATS JetStream.
//!
//! - [`proto`]: the wire protocol shared with the control plane — stream,
//!   subject, bucket and consumer names, the [`proto::Job`],
//!   [`proto::JobResult`] and [`proto::WorkerInfo`] messages, and
//!   [`proto::ensure_streams`] / [`proto::ensure_zone`], which create them.
//! - [`worker`]: the execution node behind `kasbah worker`
//!   ([`worker::WorkerConfig`], [`worker::run`]).
//! - [`connect()`]: connecting with a [`NatsAuth`] (user and password or a
//!   `.creds` file, reply prefix), shared by the workers and the control
//!   plane.
//! - [`cache`]: a worker's bounded, least-recently-used dataset cache.
//! - `cancels`: a worker's runs by id, so the control plane can cancel
//!   them (`proto::cancel_subject`).
//! - [`objects`]: object-store puts that fit `max_payload`, reads checked
//!   against the digest an object is named by.
//! - [`nats_config`]: the nats-server configuration and per-user
//!   credentials of a fleet (`kasbah fleet nats-config`).
//! - [`testing`]: a throw-away `nats-server` with JetStream for tests.

pub mod cache;
mod cancels;
pub mod connect;
pub mod nats_config;
pub mod objects;
pub mod proto;
pub mod testing;
pub mod worker;

pub use connect::{NatsAuth, connect};
pub use proto::{Job, JobDataset, JobResult, WorkerAdapter, WorkerInfo, ensure_streams};
pub use worker::{WorkerConfig, run};
