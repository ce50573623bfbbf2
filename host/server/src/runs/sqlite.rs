//! Runs in SQLite: `runs_inflight` holds a run from admission until its
//! one final `runs` row is written (same transaction that deletes it);
//! "running" lives in memory only (a crash turns `queued` and `running`
//! alike into `interrupted`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kasbah_core::RunReport;
use kasbah_core::api::{OutputRef, RunRecord, RunStatus, UsageRow};
use rusqlite::{OptionalExtension, params};

use super::final_sqlite::{FinalColumns, finalize_run, insert_inflight};
use super::row_sqlite::residency_columns;
use super::storage::{
    Finished, NewRun, OutputPlace, Period, ResidencyColumns, RunResidency, RunStore, assemble_run,
};
use crate::audit::entries;
use crate::ids::now_ms;
use crate::store::{Db, DbResult, Pending, from_json, json, lock, parse_digest};

pub struct SqliteRuns {
    pub(super) db: Arc<Db>,
    /// Runs executing now → their start time. "running" is not written to
    /// the database (a crash turns `queued` and `running` alike into
    /// `interrupted`); reads overlay it on `queued` records.
    running: Mutex<HashMap<String, i64>>,
}

impl SqliteRuns {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteRuns {
            db,
            running: Mutex::default(),
        }
    }

    /// A `queued` record of a run executing now reads as `running`.
    fn overlay_running(&self, mut r: RunRecord) -> RunRecord {
        if r.status == RunStatus::Queued
            && let Some(t) = lock(&self.running).get(&r.id)
        {
            r.status = RunStatus::Running;
            r.started_at = Some(*t);
        }
        r
    }
}

impl SqliteRuns {
    /// Turn in-flight runs (all, or those of `ids` still in flight) into
    /// `interrupted` records, each with its `run_executed` entry.
    async fn interrupt_where(&self, ids: Option<Vec<String>>) -> DbResult<usize> {
        let (n, _) = self
            .db
            .write(move |c| {
                let runs: Vec<RunRecord> = match &ids {
                    None => c
                        .prepare(&format!("{INFLIGHT_COLUMNS} ORDER BY created_at"))?
                        .query_map([], row_run)?
                        .collect::<rusqlite::Result<_>>()?,
                    Some(ids) => {
                        let mut st = c.prepare(&format!("{INFLIGHT_COLUMNS} WHERE id = ?1"))?;
                        let mut out = Vec::new();
                        for id in ids {
                            out.extend(st.query_row([id], row_run).optional()?);
                        }
                        out
                    }
                };
                let mut entries = Vec::with_capacity(runs.len());
                for mut r in runs {
                    let now = now_ms();
                    finalize_run(
                        c,
                        &r.id,
                        RunStatus::Interrupted,
                        FinalColumns {
                            finished_at: now,
                            ..FinalColumns::default()
                        },
                    )?;
                    r.status = RunStatus::Interrupted;
                    r.finished_at = Some(now);
                    entries.push(entries::run_executed(&r));
                }
                let n = entries.len();
                Ok((n, entries))
            })
            .await?;
        Ok(n)
    }
}

impl RunStore for SqliteRuns {
    /// Record an accepted run as `queued`. Returns once the insert is
    /// queued for the writer's next batch, not when it is durable: the
    /// caller may start the run meanwhile and must wait on the returned
    /// [`Pending`] before telling anyone the run exists.
    async fn insert_run(&self, run: &NewRun) -> DbResult<Pending> {
        let run = run.clone();
        let rx = self
            .db
            .submit(move |c| {
                insert_inflight(c, &run)?;
                Ok(((), Vec::new()))
            })
            .await?;
        Ok(Pending(rx))
    }

    /// Note that a run started executing (in memory only; see `running`).
    fn mark_running(&self, id: &str) -> i64 {
        let now = now_ms();
        lock(&self.running).insert(id.to_string(), now);
        now
    }

    /// Store a run's result with its `run_executed` audit entry and one
    /// `denial` entry per capability use the policy refused during the run,
    /// all in one transaction. Returns the stored record, built in memory
    /// (what a read of the row would give) and the index of the run entry.
    async fn finish_run(
        &self,
        run: &NewRun,
        started_at: i64,
        f: Finished,
    ) -> DbResult<(RunRecord, u64)> {
        let finished_at = now_ms();
        // The report minus the output body (stored separately).
        let mut slim = f.report;
        if let kasbah_core::Outcome::Ok { output } = &mut slim.outcome {
            output.body = Vec::new();
        }
        let report_json = json(&slim)?;
        let output_ref = f.output.as_ref().map(|(d, size, ct, inline)| OutputRef {
            digest: *d,
            size: *size,
            content_type: ct.clone(),
            url: format!("/v1/runs/{}/output", run.id),
            inline: inline.as_ref().map(|bytes| kasbah_core::Captured {
                bytes: bytes.clone(),
                dropped_bytes: 0,
            }),
        });
        let mut record = assemble_run(
            run.clone(),
            RunStatus::Done,
            Some(slim),
            output_ref,
            Some(started_at),
            Some(finished_at),
            ResidencyColumns {
                worker: f.worker.clone(),
                ..run
                    .residency
                    .as_ref()
                    .map(ResidencyColumns::placed)
                    .unwrap_or_default()
            },
        );
        let entries = {
            let r = &record;
            let mut entries = vec![entries::run_executed(r)];
            entries.extend(r.denials.iter().map(|d| {
                entries::denial(
                    &r.tenant_id,
                    Some(r.module),
                    Some(&r.id),
                    &d.capability,
                    &d.detail,
                )
            }));
            entries
        };
        let stored_output = match (
            &f.output,
            record.outcome.as_ref().is_some_and(|o| o.is_ok()),
        ) {
            (Some((d, size, _, _)), true) => Some((*d, *size)),
            _ => None,
        };
        let (od, os, oct, inline) = match f.output {
            Some((d, s, ct, inline)) => (Some(d.to_string()), Some(s as i64), Some(ct), inline),
            None => (None, None, None, None),
        };
        let outcome_kind = record.outcome.as_ref().map(|o| o.kind());
        let usage = record.usage.clone().unwrap_or_default();
        let worker = f.worker;
        let output_zone = f.output_zone;
        let new_run = run.clone();
        let written = self
            .db
            .write(move |c| {
                let run = new_run;
                let mut entries = entries;
                let mut output_dataset = None;
                if let (Some(res), Some((d, size))) = (&run.residency, stored_output) {
                    let (ds, e) = crate::datasets::sqlite::store_output(
                        c,
                        &run.id,
                        &run.tenant_id,
                        res,
                        d,
                        size,
                    )?;
                    output_dataset = ds;
                    entries.extend(e);
                }
                finalize_run(
                    c,
                    &run.id,
                    RunStatus::Done,
                    FinalColumns {
                        outcome_kind,
                        output: (od, os, oct, inline),
                        wall_us: Some(usage.wall_time.as_micros() as i64),
                        fuel: usage.fuel_consumed.map(|f| f as i64),
                        peak_memory: Some(usage.peak_memory_bytes as i64),
                        report_json: Some(report_json),
                        started_at: Some(started_at),
                        finished_at,
                        output_dataset: output_dataset.clone(),
                        worker,
                        output_zone,
                    },
                )?;
                Ok((output_dataset, entries))
            })
            .await;
        lock(&self.running).remove(&run.id);
        let (output_dataset, range) = written?;
        record.output_dataset = output_dataset;
        Ok((record, range.start))
    }

    /// At start-up: runs that were queued or running when the last process
    /// died are marked `interrupted`, each with a `run_executed` entry of
    /// outcome `interrupted` (so every run the API ever accepted has an
    /// entry). Returns how many.
    async fn interrupt_inflight(&self) -> DbResult<usize> {
        self.interrupt_where(None).await
    }

    async fn interrupt(&self, ids: &[String]) -> DbResult<usize> {
        self.interrupt_where(Some(ids.to_vec())).await
    }

    fn inflight_since(&self, before_ms: i64) -> DbResult<Vec<(String, String, u32, i64)>> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT id, tenant_id, policy_version, created_at FROM runs_inflight
                 WHERE created_at < ?1 ORDER BY created_at LIMIT 1000",
            )?
            .query_map([before_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect()
        })
    }

    fn run(&self, id: &str) -> DbResult<Option<RunRecord>> {
        let r = self.db.with(|c| {
            // One snapshot: the final row and the in-flight row's removal
            // commit together; two reads could miss a run finishing between.
            let tx = c.transaction()?;
            let found = match tx
                .prepare_cached(&format!("{RUN_COLUMNS} WHERE id = ?1"))?
                .query_row([id], row_run)
                .optional()?
            {
                Some(r) => Some(r),
                None => tx
                    .prepare_cached(&format!("{INFLIGHT_COLUMNS} WHERE id = ?1"))?
                    .query_row([id], row_run)
                    .optional()?,
            };
            tx.finish()?;
            Ok(found)
        })?;
        Ok(r.map(|r| self.overlay_running(r)))
    }

    fn inflight(&self, id: &str) -> DbResult<Option<NewRun>> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT id, tenant_id, module_digest, policy_version, input_digest, input_size,
                     created_at, zone, adapter, datasets, input_label, output_label, store_output_as
                 FROM runs_inflight WHERE id = ?1",
            )?
            .query_row([id], |r| {
                let zone: Option<String> = r.get(7)?;
                let list = |i: usize| -> rusqlite::Result<Vec<String>> {
                    match r.get::<_, Option<String>>(i)? {
                        Some(s) => from_json(&s),
                        None => Ok(Vec::new()),
                    }
                };
                let residency = match zone {
                    Some(zone) => Some(RunResidency {
                        zone,
                        adapter: r.get(8)?,
                        datasets: match r.get::<_, Option<String>>(9)? {
                            Some(s) => from_json(&s)?,
                            None => Vec::new(),
                        },
                        input_label: list(10)?,
                        output_label: list(11)?,
                        store_output_as: r.get(12)?,
                        secrets: Vec::new(),
                    }),
                    None => None,
                };
                Ok(NewRun {
                    id: r.get(0)?,
                    tenant_id: r.get(1)?,
                    module: parse_digest(&r.get::<_, String>(2)?)?,
                    policy_version: r.get(3)?,
                    input_digest: parse_digest(&r.get::<_, String>(4)?)?,
                    input_size: r.get::<_, i64>(5)? as u64,
                    created_at: r.get(6)?,
                    residency,
                })
            })
            .optional()
        })
    }

    /// A tenant's most recent runs (ended or not), newest first.
    fn runs(
        &self,
        tenant_id: &str,
        limit: u32,
        before: Option<(i64, &str)>,
    ) -> DbResult<Vec<RunRecord>> {
        // The cursor is (created_at, id), newest first: `(i64::MAX, "")`
        // when absent, which every row sorts before. `created_at <= ?3`
        // keeps the index range on (tenant_id, created_at) for deep pages.
        let (at, id) = before.unwrap_or((i64::MAX, ""));
        let rs: Vec<RunRecord> = self.db.with(|c| {
            c.prepare_cached(&format!(
                "SELECT * FROM ({RUN_COLUMNS} WHERE tenant_id = ?1
                     AND created_at <= ?3 AND (created_at < ?3 OR id < ?4)
                     ORDER BY created_at DESC, id DESC LIMIT ?2)
                 UNION ALL
                 SELECT * FROM ({INFLIGHT_COLUMNS} WHERE tenant_id = ?1
                     AND created_at <= ?3 AND (created_at < ?3 OR id < ?4))
                 ORDER BY created_at DESC, id DESC LIMIT ?2"
            ))?
            .query_map(params![tenant_id, limit, at, id], row_run)?
            .collect()
        })?;
        Ok(rs.into_iter().map(|r| self.overlay_running(r)).collect())
    }

    /// Where a finished run's output bytes are.
    fn run_output_place(&self, id: &str) -> DbResult<Option<OutputPlace>> {
        self.db.with(|c| {
            c.prepare_cached("SELECT output_inline, output_zone FROM runs WHERE id = ?1")?
                .query_row([id], |r| {
                    Ok(match (r.get::<_, Option<Vec<u8>>>(0)?, r.get(1)?) {
                        (Some(bytes), _) => OutputPlace::Inline(bytes),
                        (None, Some(zone)) => OutputPlace::Zone(zone),
                        (None, None) => OutputPlace::Blobs,
                    })
                })
                .optional()
        })
    }

    fn usage(
        &self,
        tenant_ids: &[String],
        period: Period,
        from_ms: i64,
        to_ms: i64,
    ) -> DbResult<Vec<UsageRow>> {
        let fmt = period.strftime();
        self.db.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT tenant_id, strftime('{fmt}', created_at / 1000, 'unixepoch') AS p,
                        COUNT(*), SUM(outcome_kind = 'ok'), COALESCE(SUM(wall_us), 0),
                        COALESCE(SUM(fuel), 0), COALESCE(MAX(peak_memory), 0),
                        COALESCE(SUM(CAST(peak_memory AS REAL) * wall_us / 1e6), 0)
                 FROM runs
                 WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                 GROUP BY tenant_id, p ORDER BY p"
            ))?;
            let mut out = Vec::new();
            for t in tenant_ids {
                for row in st.query_map(params![t, from_ms, to_ms], |r| {
                    Ok(UsageRow {
                        tenant_id: r.get(0)?,
                        period: r.get(1)?,
                        runs: r.get::<_, i64>(2)? as u64,
                        ok_runs: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                        wall_time_us: r.get::<_, i64>(4)? as u64,
                        fuel: r.get::<_, i64>(5)? as u64,
                        peak_memory_bytes: r.get::<_, i64>(6)? as u64,
                        memory_byte_seconds: r.get(7)?,
                    })
                })? {
                    out.push(row?);
                }
            }
            Ok(out)
        })
    }
}

const RUN_COLUMNS: &str = "SELECT id, tenant_id, module_digest, policy_version, status, input_digest, input_size,
    output_digest, output_size, output_content_type, output_inline, report_json, created_at, started_at, finished_at,
    zone, adapter, datasets, input_label, output_label, output_dataset, worker, secrets
    FROM runs";

/// [`RUN_COLUMNS`] of a run in flight (read by the same [`row_run`]).
const INFLIGHT_COLUMNS: &str =
    "SELECT id, tenant_id, module_digest, policy_version, 'queued', input_digest, input_size,
    NULL, NULL, NULL, NULL, NULL, created_at, NULL, NULL,
    zone, adapter, datasets, input_label, output_label, NULL, NULL, secrets
    FROM runs_inflight";

fn row_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let id: String = r.get(0)?;
    let report: Option<RunReport> = match r.get::<_, Option<String>>(11)? {
        Some(s) => Some(from_json(&s)?),
        None => None,
    };
    let output = match r.get::<_, Option<String>>(7)? {
        Some(d) => Some(OutputRef {
            digest: parse_digest(&d)?,
            size: r.get::<_, i64>(8)? as u64,
            content_type: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
            url: format!("/v1/runs/{id}/output"),
            inline: r
                .get::<_, Option<Vec<u8>>>(10)?
                .map(|bytes| kasbah_core::Captured {
                    bytes,
                    dropped_bytes: 0,
                }),
        }),
        None => None,
    };
    let status: String = r.get(4)?;
    let residency = ResidencyColumns {
        worker: r.get(21)?,
        secrets: match r.get::<_, Option<String>>(22)? {
            Some(s) => from_json(&s)?,
            None => Vec::new(),
        },
        ..residency_columns(r, 15)?
    };
    let run = NewRun {
        tenant_id: r.get(1)?,
        module: parse_digest(&r.get::<_, String>(2)?)?,
        policy_version: r.get(3)?,
        input_digest: parse_digest(&r.get::<_, String>(5)?)?,
        input_size: r.get::<_, i64>(6)? as u64,
        created_at: r.get(12)?,
        residency: None,
        id,
    };
    Ok(assemble_run(
        run,
        RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
        report,
        output,
        r.get(13)?,
        r.get(14)?,
        residency,
    ))
}
