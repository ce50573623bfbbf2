//! Executing an admitted run in this process: wait for a worker permit,
//! load the compiled module, run it on the guest threads, store large or
//! dataset-bound outputs in the blob store, record the result.
//!
//! This is the one place a run meets the sandbox; a run executed elsewhere
//! (the fleet's zone workers, issue 14) replaces [`execute`] behind the
//! same inputs and the same [`RunStore::finish_run`].

use std::sync::Arc;

use kasbah_core::api::{PolicyRecord, RunRecord};
use kasbah_core::{Digest, Outcome, RunReport};
use kasbah_runtime::{Module, Request};

use super::live::LiveRun;
use super::placement::Placed;
use super::scheduler::Admission;
use super::storage::{Finished, INLINE_OUTPUT_MAX, NewRun, RunStore};
use crate::datasets::service::seal_blob;
use crate::state::AppState;

/// Run one admitted request to completion and store its record; returns
/// the stored record (`None` if storing failed, logged). Never panics on
/// guest behaviour; host faults end up in the record as outcomes. `live`
/// gets the run's logs and stdio as they come and may cancel it (queued:
/// it never starts; running: the guest is stopped).
pub async fn execute(
    s: &AppState,
    run: NewRun,
    policy: Arc<PolicyRecord>,
    request: Request,
    admission: Admission,
    placed: Placed,
    live: Arc<LiveRun>,
) -> Option<RunRecord> {
    let _admission = admission;
    let mut phases = kasbah_core::phases::Phases::new();
    let id = run.id.as_str();
    let digest = run.module;
    // A run cancelled while it waits for a worker never starts.
    let worker = tokio::select! {
        w = s.scheduler.worker() => Some(w?),
        () = live.cancel.cancelled() => None,
    };
    phases.mark("worker");
    let started_at = s.runs.mark_running(id);
    phases.mark("mark_running");
    let loaded = load_module(s, &digest).await;
    phases.mark("load");
    let report = match (&worker, loaded) {
        (None, _) => RunReport::cancelled(digest),
        (Some(_), Ok(module)) => {
            // On the guest threads, not this request's (see `GuestThreads`).
            let runtime = s.runtime.clone();
            let options = placed.options.clone();
            let control = live.control();
            let run = s.guests.spawn(async move {
                runtime
                    .run_controlled(&module, &policy.policy, request, &options, &control)
                    .await
            });
            match run {
                Some(handle) => match handle.await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        host_failure(digest, format!("host could not run the module: {e}"))
                    }
                    Err(e) => host_failure(digest, format!("the run's task failed: {e}")),
                },
                None => host_failure(digest, "the guest runtime has shut down".into()),
            }
        }
        (Some(_), Err(e)) => host_failure(digest, e),
    };
    // The worker permit bounds runs *executing*; storing the result waits on
    // a group commit (an fsync) and needs no CPU, so the next run starts now.
    // The admission slot, held until the run is recorded, still bounds the
    // runs in flight. (Holding the permit through the commit capped a
    // 2-core box at ~10k sync runs/s with 8 workers: ~19k without.)
    drop(worker);
    phases.mark("guest");
    let output = keep_output(s, id, &report, placed.stores_output());
    count_run(s, &report);
    phases.mark("output");
    let stored = s
        .runs
        .finish_run(
            &run,
            started_at,
            Finished {
                report,
                output,
                worker: None,
                output_zone: None,
            },
        )
        .await;
    phases.mark("finish");
    tracing::debug!(target: "kasbah::phases", run = id, "execute {phases}");
    match stored {
        Ok((record, _)) => Some(record),
        Err(e) => {
            tracing::error!(run = id, "finish run: {e}");
            None
        }
    }
}

fn host_failure(module: Digest, reason: String) -> RunReport {
    tracing::error!("{reason}");
    RunReport::denied(module, reason)
}

/// A run's outcome and wall time in the metrics (in-process and fleet runs).
pub fn count_run(s: &AppState, report: &RunReport) {
    s.metrics
        .runs
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: report.outcome.kind().into(),
        })
        .inc();
    s.metrics
        .run_seconds
        .observe(report.usage.wall_time.as_secs_f64());
}

/// A compiled module by digest: the runtime's cache, or the blob store.
pub async fn load_module(s: &AppState, digest: &Digest) -> Result<Arc<Module>, String> {
    if let Some(m) = s.runtime.cached(digest) {
        return Ok(m);
    }
    let bytes = s
        .blobs
        .get(digest)
        .map_err(|e| format!("reading module {digest}: {e}"))?
        .ok_or_else(|| format!("module {digest} is missing from the blob store"))?;
    let rt = s.runtime.clone();
    tokio::task::spawn_blocking(move || rt.load(&bytes))
        .await
        .map_err(|e| format!("loading module {digest}: {e}"))?
        .map_err(|e| format!("loading module {digest}: {e}"))
}

/// What a run's record keeps of its output: the bytes inline (up to
/// [`INLINE_OUTPUT_MAX`]) or in the blob store (larger ones, and outputs
/// stored as a dataset), with digest, size and content type.
pub fn keep_output(
    s: &AppState,
    id: &str,
    report: &RunReport,
    stores_output: bool,
) -> Option<(Digest, u64, String, Option<Vec<u8>>)> {
    match &report.outcome {
        Outcome::Ok { output } => {
            let d = Digest::of(&output.body);
            // An output stored as a dataset lives in the blob store.
            if stores_output {
                match s.blobs.put(&output.body) {
                    Ok(_) => seal_blob(s, &d),
                    Err(e) => tracing::error!(run = id, "storing output as a dataset: {e}"),
                }
            }
            if output.body.len() <= INLINE_OUTPUT_MAX {
                Some((
                    d,
                    output.body.len() as u64,
                    output.content_type.clone(),
                    Some(output.body.clone()),
                ))
            } else {
                match s.blobs.put(&output.body) {
                    Ok(_) => Some((
                        d,
                        output.body.len() as u64,
                        output.content_type.clone(),
                        None,
                    )),
                    Err(e) => {
                        tracing::error!(run = id, "storing output: {e}");
                        None
                    }
                }
            }
        }
        _ => None,
    }
}
