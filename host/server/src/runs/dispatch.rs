//! Executing runs on the fleet (issue 14), with `fleet.rs`: dispatching an
//! admitted run, recording what comes back, sweeping runs whose result
//! never came.
//!
//! - **Live workers**: a task reads the workers KV bucket every
//!   [`LIVE_REFRESH`]; placement only considers zones (and GPU adapter
//!   entries) of workers whose heartbeat is fresh. No live worker in any
//!   zone the run may use → `503 no_capacity`, audited, nothing runs.
//! - **Dispatch**: an admitted run's module bytes go to the modules bucket
//!   (once per digest), its datasets to its zone's bucket (once per digest
//!   and zone), then its [`Job`] to `kasbah.jobs.<zone>` with the run id as
//!   `Nats-Msg-Id`. The run's admission slot is held until its record is
//!   written, so admission bounds runs in flight across the fleet as it does
//!   in one process.
//! - **Results**: one durable consumer (`control-plane`) on the results
//!   stream records each result: the run's one final record and its entries
//!   ([`RunStore::finish_run`]), then wakes a waiting request. An output the
//!   worker put in its zone's object store is recorded by reference (digest,
//!   size, content type, `output_zone`); its bytes stay in that bucket and
//!   `GET /v1/runs/{id}/output` streams them from there. A result for
//!   a run already recorded (a job delivered twice) is acknowledged and
//!   dropped: one record per run id. Results wait in the stream while the
//!   control plane is down, and are recorded when it is back: runs that
//!   finished on workers are not interrupted by a control-plane restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, consumer};
use futures_util::StreamExt;
use kasbah_core::api::{PolicyRecord, RunRecord, RunStatus};
use kasbah_core::{Outcome, RunReport};
use kasbah_fleet::proto::{JobResult, StoredOutput, result_subject};
use kasbah_runtime::Request;

use super::execute::{count_run, keep_output};
use super::fleet::{Fleet, LIVE_REFRESH};
use super::placement::Placed;
use super::scheduler::Admission;
use super::storage::{Finished, INLINE_OUTPUT_MAX, NewRun, RunStore};
use crate::ids::now_ms;
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

/// Results recorded at once (each waits for a group commit; concurrent
/// ones share it).
const RESULTS_IN_FLIGHT: usize = 256;
/// How often runs whose result never came are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Start the background tasks: the live-worker view and the results
/// consumer (which records results into `s`).
pub async fn start(fleet: &Arc<Fleet>, s: AppState) -> anyhow::Result<()> {
    fleet.refresh_live().await;
    let me = fleet.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LIVE_REFRESH).await;
            me.refresh_live().await;
        }
    });
    let consumer = fleet.results_consumer().await?;
    tokio::spawn(sweep(s.clone(), consumer.clone()));
    tokio::spawn(record_results(s, consumer));
    Ok(())
}

/// How long a cancelled fleet run waits for its worker's result (the
/// `cancel` endpoint waits 10 s for the record).
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Run an admitted run on a worker of its zone and return its record
/// (`None` if it could not be dispatched or recorded, logged).
pub async fn execute(
    fleet: &Fleet,
    s: &AppState,
    run: NewRun,
    policy: Arc<PolicyRecord>,
    request: Request,
    admission: Admission,
    placed: Placed,
) -> Option<RunRecord> {
    let _admission = admission;
    let id = run.id.clone();
    // Registered at admission (`service::start`); a run without one
    // cannot be cancelled.
    let cancel = s.live.get(&id).map(|l| l.cancel.clone());
    let rx = fleet.expect(&run);
    let wait = Duration::from_millis(
        policy
            .policy
            .limits
            .wall_time_ms
            .saturating_add(s.config.fleet_result_grace_ms),
    );
    if let Err(e) = fleet
        .dispatch(
            &s.blobs,
            &run,
            &policy,
            request,
            &placed.row,
            &s.config.zones.node,
        )
        .await
    {
        fleet.forget(&id);
        tracing::error!(run = %id, "dispatching to the fleet: {e}");
        let report =
            RunReport::denied(run.module, format!("the fleet could not take the run: {e}"));
        return finish(
            s,
            &run,
            now_ms(),
            report,
            placed.stores_output(),
            None,
            None,
        )
        .await;
    }
    let mut rx = rx;
    let result = tokio::select! {
        r = tokio::time::timeout(wait, &mut rx) => r,
        () = async {
            match &cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        } => {
            // The zone's workers are told; the one running it stops it
            // (within two epoch ticks) and sends its result — `cancelled`,
            // with the usage it took, which is what is recorded and billed.
            // A worker that never answers in time: recorded here, without
            // usage, and its later result is dropped (one record per run).
            if let Err(e) = fleet.cancel(&placed.row.zone, &id).await {
                tracing::warn!(run = %id, "telling the fleet to cancel: {e}");
            }
            if let Ok(Ok(record)) = tokio::time::timeout(CANCEL_GRACE, &mut rx).await {
                return Some(record);
            }
            fleet.forget(&id);
            let report = RunReport::cancelled(run.module);
            count_run(s, &report);
            return finish(s, &run, now_ms(), report, false, None, None).await;
        }
    };
    match result {
        Ok(Ok(record)) => Some(record),
        _ => {
            fleet.forget(&id);
            // The result may still come (and be recorded then).
            tracing::warn!(run = %id, "no result from the fleet within {wait:?}");
            None
        }
    }
}

/// Record a run's end, naming the worker that executed it, if one did.
/// The output: where the worker put it (`stored`: in that zone's object
/// store, the bytes also inline in the record if within
/// [`INLINE_OUTPUT_MAX`]), otherwise kept as in-process runs keep it.
async fn finish(
    s: &AppState,
    run: &NewRun,
    started_at: i64,
    report: RunReport,
    stores_output: bool,
    worker: Option<String>,
    stored: Option<(StoredOutput, String)>,
) -> Option<RunRecord> {
    let (output, output_zone) = match stored {
        Some((o, zone)) => {
            let inline = match &report.outcome {
                Outcome::Ok { output } if o.size <= INLINE_OUTPUT_MAX as u64 => {
                    Some(output.body.clone())
                }
                _ => None,
            };
            (Some((o.digest, o.size, o.content_type, inline)), Some(zone))
        }
        None => (keep_output(s, &run.id, &report, stores_output), None),
    };
    match s
        .runs
        .finish_run(
            run,
            started_at,
            Finished {
                report,
                output,
                worker,
                output_zone,
            },
        )
        .await
    {
        Ok((record, _)) => Some(record),
        Err(e) => {
            tracing::error!(run = %run.id, "recording the run: {e}");
            None
        }
    }
}

/// The results consumer: record each result once, wake its waiter.
async fn record_results(s: AppState, consumer: consumer::Consumer<consumer::pull::Config>) {
    loop {
        let messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("results consumer: {e}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let s = s.clone();
        messages
            .for_each_concurrent(RESULTS_IN_FLIGHT, move |msg| {
                let s = s.clone();
                async move {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!("results consumer: {e}");
                            return;
                        }
                    };
                    let done = match serde_json::from_slice::<JobResult>(&msg.payload) {
                        // A zone's credentials publish on its own results
                        // subject only: a result claiming another zone than
                        // its subject's is forged.
                        Ok(result) if msg.subject.as_str() != result_subject(&result.zone) => {
                            tracing::error!(
                                subject = %msg.subject,
                                "a result claiming zone {:?} on another zone's subject, dropped",
                                result.zone
                            );
                            true
                        }
                        Ok(result) => record_one(&s, result).await,
                        Err(e) => {
                            tracing::error!("a result that does not decode, dropped: {e}");
                            true
                        }
                    };
                    let ack = if done {
                        msg.ack().await
                    } else {
                        msg.ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                    };
                    if let Err(e) = ack {
                        tracing::warn!("acknowledging a result: {e}");
                    }
                }
            })
            .await;
    }
}

/// Record one result; `false` if it should be delivered again (the
/// database could not take it now).
async fn record_one(s: &AppState, result: JobResult) -> bool {
    let Some(fleet) = s.fleet.as_ref() else {
        return false;
    };
    if let Err(e) = result.check() {
        tracing::error!("a result with bad fields, dropped: {e}");
        return true;
    }
    let dispatched = fleet.take_pending(&result.run_id);
    let run = match dispatched {
        Some(run) => run,
        None => match s.runs.inflight(&result.run_id) {
            Ok(Some(run)) => run,
            Ok(None) => {
                return match s.runs.run(&result.run_id) {
                    // Recorded already (a job delivered twice).
                    Ok(Some(r)) if r.status != RunStatus::Queued => {
                        fleet.wake(r);
                        true
                    }
                    // Not (yet) a run of this control plane: try later,
                    // a bounded number of times (the consumer's max_deliver).
                    _ => false,
                };
            }
            Err(e) => {
                tracing::error!(run = %result.run_id, "reading the run: {e}");
                return false;
            }
        },
    };
    if run
        .residency
        .as_ref()
        .is_some_and(|r| r.zone != result.zone)
    {
        // Never record a result from outside the run's zone.
        tracing::error!(
            run = %run.id,
            "a result from zone {:?} (worker {}) for a run placed in another zone: dropped",
            result.zone,
            result.worker
        );
        return true;
    }
    let stores_output = run
        .residency
        .as_ref()
        .is_some_and(|r| r.store_output_as.is_some());
    count_run(s, &result.report);
    let worker = Some(result.worker.clone());
    let stored = result.output.map(|o| (o, result.zone.clone()));
    match finish(
        s,
        &run,
        result.started_at_ms,
        result.report,
        stores_output,
        worker,
        stored,
    )
    .await
    {
        Some(record) => {
            tracing::debug!(run = %record.id, worker = %result.worker, "recorded");
            fleet.wake(record);
            true
        }
        // Recorded meanwhile by a duplicate: fine; otherwise retry.
        None => s
            .runs
            .run(&run.id)
            .is_ok_and(|r| r.is_some_and(|r| r.status != RunStatus::Queued)),
    }
}

/// Runs whose result never came (the job was lost, or delivered
/// `max_deliver` times without a result) are recorded `interrupted`, with
/// their entry, once `fleet_result_grace_ms` past their wall-time limit and
/// only while the results stream has nothing left to record. A result that
/// still comes later finds the run recorded and is dropped.
async fn sweep(s: AppState, results: consumer::Consumer<consumer::pull::Config>) {
    let grace = i64::try_from(s.config.fleet_result_grace_ms).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(fleet) = s.fleet.as_ref() else {
            return;
        };
        // Only once every result already in the stream is recorded (after a
        // restart, the backlog first): a run whose result waits there is
        // not lost.
        match results.get_info().await {
            Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 => {}
            _ => continue,
        }
        let now = now_ms();
        let Ok(old) = s.runs.inflight_since(now.saturating_sub(grace)) else {
            continue;
        };
        let mut walls: HashMap<(String, u32), i64> = HashMap::new();
        let mut lost = Vec::new();
        for (id, tenant, version, created_at) in old {
            if fleet.is_pending(&id) {
                continue;
            }
            let key = (tenant, version);
            let wall = match walls.get(&key) {
                Some(w) => *w,
                None => {
                    let w = s
                        .tenancy
                        .policy_versions(&key.0)
                        .ok()
                        .and_then(|vs| vs.into_iter().find(|v| v.version == key.1))
                        .map_or(0, |v| {
                            i64::try_from(v.policy.limits.wall_time_ms).unwrap_or(i64::MAX)
                        });
                    walls.insert(key, w);
                    w
                }
            };
            if now > created_at.saturating_add(wall).saturating_add(grace) {
                lost.push(id);
            }
        }
        if lost.is_empty() {
            continue;
        }
        match s.runs.interrupt(&lost).await {
            Ok(n) => tracing::warn!("{n} fleet runs got no result in time: recorded interrupted"),
            Err(e) => tracing::error!("recording lost fleet runs: {e}"),
        }
    }
}
