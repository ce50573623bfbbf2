//! Runs' storage for the start-up warm-up (`warmup.rs`): which tenants ran
//! which modules lately (the newest rows of `runs`: rowid order is
//! insertion order, no index needed, at most `rows` rows read), and a
//! rehearsal of a run's writes.

use kasbah_core::api::RunStatus;
use kasbah_core::{Digest, RunReport};

use super::final_sqlite::{FinalColumns, finalize_run, insert_inflight};
use super::sqlite::SqliteRuns;
use super::storage::{NewRun, ResidencyColumns, assemble_run};
use crate::audit::entries;
use crate::ids::now_ms;
use crate::store::{DbResult, parse_digest};

/// The id of the rehearsed run (never stored: real ids are `run_` + 24
/// hex digits).
pub const REHEARSAL_RUN_ID: &str = "run_warmup";

impl SqliteRuns {
    /// Distinct (tenant, module) pairs among the newest `rows` finished
    /// runs, most recent first, at most `max` of them.
    pub fn recent_modules(&self, rows: usize, max: usize) -> DbResult<Vec<(String, Digest)>> {
        let newest: Vec<(String, Digest)> = self.db.with(|c| {
            c.prepare("SELECT tenant_id, module_digest FROM runs ORDER BY rowid DESC LIMIT ?1")?
                .query_map([i64::try_from(rows).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get(0)?, parse_digest(&r.get::<_, String>(1)?)?))
                })?
                .collect()
        })?;
        let mut out: Vec<(String, Digest)> = Vec::new();
        for pair in newest {
            if out.len() >= max {
                break;
            }
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
        Ok(out)
    }

    /// Rehearse a run's writes for `tenant` (which must exist): its
    /// in-flight row, its final row and its `run_executed` entry, made and
    /// rolled back by the writer (`Db::rehearse`). Nothing is stored; the
    /// first real run after a start then finds the writer's statements
    /// prepared and its pages cached.
    pub async fn rehearse_run(&self, tenant: &str, module: Digest) -> DbResult<()> {
        let now = now_ms();
        let run = NewRun {
            id: REHEARSAL_RUN_ID.into(),
            tenant_id: tenant.into(),
            module,
            policy_version: 0,
            input_digest: Digest::of(b""),
            input_size: 0,
            created_at: now,
            residency: None,
        };
        let record = assemble_run(
            run.clone(),
            RunStatus::Done,
            Some(RunReport::denied(module, String::new())),
            None,
            Some(now),
            Some(now),
            ResidencyColumns::default(),
        );
        let entry = entries::run_executed(&record);
        self.db
            .rehearse(move |c| {
                insert_inflight(c, &run)?;
                finalize_run(
                    c,
                    &run.id,
                    RunStatus::Done,
                    FinalColumns {
                        outcome_kind: Some("denied"),
                        report_json: Some(String::new()),
                        finished_at: now,
                        ..FinalColumns::default()
                    },
                )?;
                Ok(vec![entry])
            })
            .await
    }
}
