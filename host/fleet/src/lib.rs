//! kasbah's fleet (issue 14): zone workers fed by NATS JetStream.
//!
//! - [`proto`]: the wire protocol shared with the control plane — stream,
//!   subject, bucket and consumer names, the [`proto::Job`],
//!   [`proto::JobResult`] and [`proto::WorkerInfo`] messages, and
//!   [`proto::ensure_streams`] / [`proto::ensure_zone`], which create them.
//! - [`worker`]: the execution node behind `kasbah worker`
//!   ([`worker::WorkerConfig`], [`worker::run`]).
//! - [`testing`]: a throw-away `nats-server` with JetStream for tests.

pub mod proto;
pub mod testing;
pub mod worker;

pub use proto::{Job, JobDataset, JobResult, WorkerAdapter, WorkerInfo, ensure_streams};
pub use worker::{WorkerConfig, run};
