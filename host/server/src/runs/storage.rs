//! Runs' storage interface: a run's record from admission (in flight) to
//! its end (one final row), and usage. SQLite implementation: `sqlite.rs`.
//!
//! Contract: [`RunStore::finish_run`] commits the run's final record, its
//! `run_executed` entry, one `denial` entry per capability use refused
//! during the run and (for `store_output_as`) the output's dataset and its
//! entry, in one transaction; [`RunStore::interrupt_inflight`] likewise
//! for every run a previous process left in flight.

use std::future::Future;

use kasbah_core::api::{OutputRef, RunDataset, RunRecord, RunSecret, RunStatus, UsageRow};
use kasbah_core::{Digest, RunReport};

use crate::store::{DbResult, Pending};

/// Inline outputs up to this size are returned in the run record itself.
pub const INLINE_OUTPUT_MAX: usize = 64 * 1024;
// Fleet workers decide by the same bound what travels in a result message
// and what goes to their zone's object store.
const _: () = assert!(INLINE_OUTPUT_MAX == kasbah_fleet::proto::INLINE_OUTPUT_MAX);

/// What the run worker stores when a run ends.
pub struct Finished {
    pub report: RunReport,
    pub output: Option<(Digest, u64, String, Option<Vec<u8>>)>,
    /// The fleet worker that executed the run (`None`: this process).
    pub worker: Option<String>,
    /// The zone whose object store holds the output's bytes (fleet runs
    /// whose worker stored the output there); `None`: inline or in this
    /// server's blob store.
    pub output_zone: Option<String>,
}

/// Where a run's output bytes are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputPlace {
    /// In the run's row.
    Inline(Vec<u8>),
    /// In this server's blob store, by digest.
    Blobs,
    /// In this zone's object store (`kasbah-zone-<zone>`), by digest.
    Zone(String),
}

/// A run as the API accepted it: what its record and its audit entry need
/// besides the result. Kept in memory for the run's lifetime so finishing
/// it needs no read of its row.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub tenant_id: String,
    pub module: Digest,
    pub policy_version: u32,
    pub input_digest: Digest,
    pub input_size: u64,
    pub created_at: i64,
    /// Where placement put the run (written with its row, in the same
    /// transaction, so an acknowledged run always has both).
    pub residency: Option<RunResidency>,
}

/// What placement decided for one run (kept with the run's row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResidency {
    pub zone: String,
    pub adapter: Option<String>,
    pub datasets: Vec<RunDataset>,
    pub input_label: Vec<String>,
    pub output_label: Vec<String>,
    pub store_output_as: Option<String>,
    /// Secrets granted to the run: names and the version each got.
    pub secrets: Vec<RunSecret>,
}

/// The residency columns of a run record (all NULL for runs placed before
/// residency existed).
#[derive(Default)]
pub struct ResidencyColumns {
    pub zone: Option<String>,
    pub adapter: Option<String>,
    pub datasets: Vec<RunDataset>,
    pub input_label: Vec<String>,
    pub output_label: Vec<String>,
    pub output_dataset: Option<String>,
    /// The fleet worker that executed the run (column `worker`).
    pub worker: Option<String>,
    /// Secrets granted to the run (column `secrets`).
    pub secrets: Vec<RunSecret>,
}

impl ResidencyColumns {
    /// A run's columns as placement decided them (no output dataset yet).
    pub fn placed(r: &RunResidency) -> Self {
        ResidencyColumns {
            zone: Some(r.zone.clone()),
            adapter: r.adapter.clone(),
            datasets: r.datasets.clone(),
            input_label: r.input_label.clone(),
            output_label: r.output_label.clone(),
            output_dataset: None,
            worker: None,
            secrets: r.secrets.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    pub fn strftime(&self) -> &'static str {
        match self {
            Period::Hour => "%Y-%m-%dT%H:00",
            Period::Day => "%Y-%m-%d",
            Period::Month => "%Y-%m",
        }
    }
}

pub trait RunStore: Send + Sync {
    /// Record an accepted run as `queued`. Returns once the insert is
    /// queued for the writer's next batch, not when it is durable: the
    /// caller may start the run meanwhile and must wait on the returned
    /// [`Pending`] before telling anyone the run exists.
    fn insert_run(&self, run: &NewRun) -> impl Future<Output = DbResult<Pending>> + Send;
    /// Note that a run started executing; returns the start time. Reads
    /// show it `running` from now on.
    fn mark_running(&self, id: &str) -> i64;
    /// Store a run's result (see the module docs). Returns the stored
    /// record, built in memory (what a read of the row would give), and
    /// the index of its `run_executed` entry.
    fn finish_run(
        &self,
        run: &NewRun,
        started_at: i64,
        f: Finished,
    ) -> impl Future<Output = DbResult<(RunRecord, u64)>> + Send;
    /// At start-up: runs that were queued or running when the last process
    /// died are marked `interrupted`, each with a `run_executed` entry of
    /// outcome `interrupted`. Returns how many.
    fn interrupt_inflight(&self) -> impl Future<Output = DbResult<usize>> + Send;
    /// [`Self::interrupt_inflight`] for the runs of `ids` still in flight
    /// (a fleet run whose result never came). Returns how many.
    fn interrupt(&self, ids: &[String]) -> impl Future<Output = DbResult<usize>> + Send;
    /// Runs in flight accepted before `before_ms`, oldest first (at most
    /// 1000): `(id, tenant, policy version, created_at)`.
    fn inflight_since(&self, before_ms: i64) -> DbResult<Vec<(String, String, u32, i64)>>;
    fn run(&self, id: &str) -> DbResult<Option<RunRecord>>;
    /// A run accepted and not yet ended, as it was accepted (what
    /// [`Self::finish_run`] needs): for results that arrive after a restart.
    fn inflight(&self, id: &str) -> DbResult<Option<NewRun>>;
    /// A tenant's most recent runs (ended or not), newest first (by
    /// `created_at`, then id), older than the `before` cursor
    /// `(created_at, id)` when given.
    fn runs(
        &self,
        tenant_id: &str,
        limit: u32,
        before: Option<(i64, &str)>,
    ) -> DbResult<Vec<RunRecord>>;
    /// Where a finished run's output bytes are (`None`: no such finished
    /// run).
    fn run_output_place(&self, id: &str) -> DbResult<Option<OutputPlace>>;
    /// Runs, ok runs, wall time, fuel and memory per tenant per period.
    fn usage(
        &self,
        tenant_ids: &[String],
        period: Period,
        from_ms: i64,
        to_ms: i64,
    ) -> DbResult<Vec<UsageRow>>;
}

/// The record of a run just accepted (what a read of its row gives).
pub fn queued_record(run: &NewRun) -> RunRecord {
    assemble_run(
        run.clone(),
        RunStatus::Queued,
        None,
        None,
        None,
        None,
        run.residency
            .as_ref()
            .map(ResidencyColumns::placed)
            .unwrap_or_default(),
    )
}

/// A run record from its parts (a row read back, or a run just finished).
pub fn assemble_run(
    run: NewRun,
    status: RunStatus,
    report: Option<RunReport>,
    output: Option<OutputRef>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    residency: ResidencyColumns,
) -> RunRecord {
    let (outcome, usage, stdout, stderr, logs, denials) = match report {
        Some(r) => (
            Some(r.outcome),
            Some(r.usage),
            Some(r.stdout),
            Some(r.stderr),
            Some(r.logs),
            r.denials,
        ),
        None => (None, None, None, None, None, Vec::new()),
    };
    RunRecord {
        id: run.id,
        tenant_id: run.tenant_id,
        module: run.module,
        policy_version: run.policy_version,
        status,
        input_digest: run.input_digest,
        input_size: run.input_size,
        output,
        outcome,
        usage,
        stdout,
        stderr,
        logs,
        denials,
        created_at: run.created_at,
        started_at,
        finished_at,
        zone: residency.zone,
        adapter: residency.adapter,
        datasets: residency.datasets,
        input_label: residency.input_label,
        output_label: residency.output_label,
        output_dataset: residency.output_dataset,
        worker: residency.worker,
        secrets: residency.secrets,
    }
}
