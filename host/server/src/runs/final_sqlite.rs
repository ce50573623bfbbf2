//! A run's rows as the writer writes them: its in-flight row at admission,
//! its one final `runs` row when it ends (shared by `sqlite.rs` and the
//! start-up rehearsal in `warm_sqlite.rs`).

use std::sync::Arc;

use kasbah_core::api::RunStatus;
use rusqlite::{Connection, params};

use super::row_sqlite::residency_params;
use super::storage::NewRun;
use crate::store::{DbError, DbResult};

/// Record an accepted run in `runs_inflight`.
pub(super) fn insert_inflight(c: &Connection, run: &NewRun) -> DbResult<()> {
    let [
        zone,
        adapter,
        datasets,
        input_label,
        output_label,
        store_output_as,
        secrets,
    ] = residency_params(run.residency.as_ref())?;
    c.prepare_cached(
        "INSERT INTO runs_inflight(id, tenant_id, module_digest, policy_version, input_digest,
             input_size, created_at, zone, adapter, datasets, input_label, output_label,
             store_output_as, secrets)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        run.id,
        run.tenant_id,
        run.module.to_string(),
        run.policy_version,
        run.input_digest.to_string(),
        run.input_size as i64,
        run.created_at,
        zone,
        adapter,
        datasets,
        input_label,
        output_label,
        store_output_as,
        secrets
    ])?;
    Ok(())
}

/// What a run's final row holds besides what its in-flight row held.
#[derive(Default)]
pub(super) struct FinalColumns {
    pub(super) outcome_kind: Option<&'static str>,
    /// Digest, size, content type, inline bytes.
    pub(super) output: (Option<String>, Option<i64>, Option<String>, Option<Vec<u8>>),
    pub(super) wall_us: Option<i64>,
    pub(super) fuel: Option<i64>,
    pub(super) peak_memory: Option<i64>,
    pub(super) report_json: Option<String>,
    pub(super) started_at: Option<i64>,
    pub(super) finished_at: i64,
    pub(super) output_dataset: Option<String>,
    /// The fleet worker that executed the run.
    pub(super) worker: Option<String>,
    /// The zone whose object store holds the output's bytes.
    pub(super) output_zone: Option<String>,
}

/// Turn a run's in-flight row into its one and only `runs` row (when it
/// ended): the facts and placement are copied from `runs_inflight`, the
/// result from `f`; the in-flight row goes. Fails if there is no in-flight
/// row (its insert failed).
pub(super) fn finalize_run(
    c: &Connection,
    id: &str,
    status: RunStatus,
    f: FinalColumns,
) -> DbResult<()> {
    let (od, os, oct, inline) = f.output;
    let n = c
        .prepare_cached(
            "INSERT INTO runs(id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as, secrets, status, outcome_kind, output_digest, output_size,
                 output_content_type, output_inline, wall_us, fuel, peak_memory, report_json,
                 started_at, finished_at, output_dataset, worker, output_zone)
             SELECT id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as, secrets, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
             FROM runs_inflight WHERE id = ?1",
        )?
        .execute(params![
            id,
            status.as_str(),
            f.outcome_kind,
            od,
            os,
            oct,
            inline,
            f.wall_us,
            f.fuel,
            f.peak_memory,
            f.report_json,
            f.started_at,
            f.finished_at,
            f.output_dataset,
            f.worker,
            f.output_zone
        ])?;
    if n != 1 {
        return Err(DbError::Batch(Arc::from(
            "the run's record is missing (its insert failed)",
        )));
    }
    c.prepare_cached("DELETE FROM runs_inflight WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
