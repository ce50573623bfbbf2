//! The rules of a run's logs and of cancelling it: `GET
//! /v1/runs/{id}/logs[?follow=true]` and `POST /v1/runs/{id}/cancel` (see
//! `live.rs` for the feed and ARCHITECTURE.md, Live logs and cancel). No
//! HTTP here.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use kasbah_core::api::{RunLogs, RunRecord, RunStatus};
use kasbah_core::{Captured, LogEvent, LogRecord, Logs};
use tokio::sync::broadcast;

use super::service::visible_run;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// How long a follower waits for the record of a run whose feed ended
/// (a fleet run's result) before it is told the run's current status.
const RECORD_WAIT: Duration = Duration::from_secs(600);

/// `GET /v1/runs/{id}/logs`: the logs and stdio so far (a run in flight in
/// this process: what its feed kept; else its record's).
pub fn logs(s: &AppState, caller: &Caller, id: &str) -> ApiResult<RunLogs> {
    let r = visible_run(s, caller, id)?;
    if r.outcome.is_none()
        && let Some(live) = s.live.get(id)
    {
        let history = live.join().history;
        let mut out = RunLogs {
            id: r.id,
            status: r.status,
            logs: Logs::default(),
            stdout: Captured::default(),
            stderr: Captured::default(),
            complete: false,
        };
        for e in &history {
            match &**e {
                LogEvent::Log { level, message } => out.logs.records.push(LogRecord {
                    level: *level,
                    message: message.clone(),
                }),
                LogEvent::Stdout { bytes } => out.stdout.bytes.extend_from_slice(bytes),
                LogEvent::Stderr { bytes } => out.stderr.bytes.extend_from_slice(bytes),
                _ => {}
            }
        }
        return Ok(out);
    }
    Ok(RunLogs {
        id: r.id,
        status: r.status,
        logs: r.logs.unwrap_or_default(),
        stdout: r.stdout.unwrap_or_default(),
        stderr: r.stderr.unwrap_or_default(),
        complete: r.outcome.is_some() || r.status == RunStatus::Interrupted,
    })
}

/// `GET /v1/runs/{id}/logs?follow=true`: the run's events as they come,
/// then `end`. Checked (404) before the stream starts.
pub fn follow(
    s: &AppState,
    caller: &Caller,
    id: &str,
) -> ApiResult<impl Stream<Item = LogEvent> + Send + 'static> {
    // Subscribe before reading the record: a run that ends in between
    // closes the feed, and the record read at the end is then final.
    let live = s.live.get(id);
    let r = visible_run(s, caller, id)?;
    let mut queue: VecDeque<LogEvent> = VecDeque::new();
    let mut rx = None;
    let mut streams = false;
    if let Some(live) = live.filter(|_| r.outcome.is_none()) {
        let joined = live.join();
        queue.extend(joined.history.iter().map(|e| (**e).clone()));
        if joined.not_kept > 0 {
            queue.push_back(LogEvent::Gap {
                missed: joined.not_kept,
            });
        }
        rx = joined.rx;
        streams = live.streams();
    }
    let state = Follow {
        s: s.clone(),
        id: id.to_string(),
        queue,
        rx,
        streams,
        done: false,
    };
    Ok(futures_util::stream::unfold(state, |mut f| async move {
        let e = f.next().await?;
        Some((e, f))
    }))
}

struct Follow {
    s: AppState,
    id: String,
    queue: VecDeque<LogEvent>,
    rx: Option<broadcast::Receiver<Arc<LogEvent>>>,
    /// Events came while the run ran (else the record's are sent at the end).
    streams: bool,
    done: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<LogEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Some(rx) = self.rx.as_mut() {
                match rx.recv().await {
                    Ok(e) => return Some((*e).clone()),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some(LogEvent::Gap { missed: n });
                    }
                    Err(broadcast::error::RecvError::Closed) => self.rx = None,
                }
                continue;
            }
            let r = self.final_record().await;
            if !self.streams {
                self.queue.extend(record_events(&r));
            }
            self.queue.push_back(LogEvent::End {
                status: r.status.as_str().to_string(),
                outcome: r.outcome,
            });
            self.done = true;
        }
    }

    /// The run's record once it ended (or, after [`RECORD_WAIT`], as it is).
    async fn final_record(&self) -> RunRecord {
        let started = tokio::time::Instant::now();
        loop {
            match record(&self.s, &self.id) {
                Some(r) if r.outcome.is_some() || started.elapsed() >= RECORD_WAIT => return r,
                Some(r) if r.status == RunStatus::Interrupted => return r,
                None => {
                    return RunRecord {
                        status: RunStatus::Interrupted,
                        ..placeholder(&self.id)
                    };
                }
                Some(_) => {}
            }
            let wait = match self.s.live.get(&self.id) {
                Some(live) => {
                    live.wait_ended(Duration::from_secs(1)).await;
                    continue;
                }
                None => Duration::from_millis(250),
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A record's logs and stdio as events (runs that did not stream).
fn record_events(r: &RunRecord) -> Vec<LogEvent> {
    let mut out = Vec::new();
    if let Some(l) = &r.logs {
        out.extend(l.records.iter().map(|l| LogEvent::Log {
            level: l.level,
            message: l.message.clone(),
        }));
    }
    if let Some(c) = r.stdout.as_ref().filter(|c| !c.bytes.is_empty()) {
        out.push(LogEvent::Stdout {
            bytes: c.bytes.clone(),
        });
    }
    if let Some(c) = r.stderr.as_ref().filter(|c| !c.bytes.is_empty()) {
        out.push(LogEvent::Stderr {
            bytes: c.bytes.clone(),
        });
    }
    out
}

fn placeholder(id: &str) -> RunRecord {
    RunRecord {
        id: id.to_string(),
        tenant_id: String::new(),
        module: kasbah_core::Digest::from_bytes([0; 32]),
        policy_version: 0,
        status: RunStatus::Interrupted,
        input_digest: kasbah_core::Digest::from_bytes([0; 32]),
        input_size: 0,
        outcome: None,
        output: None,
        usage: None,
        stdout: None,
        stderr: None,
        logs: None,
        denials: Vec::new(),
        zone: None,
        adapter: None,
        datasets: Vec::new(),
        input_label: Vec::new(),
        output_label: Vec::new(),
        output_dataset: None,
        worker: None,
        secrets: Vec::new(),
        created_at: 0,
        started_at: None,
        finished_at: None,
    }
}

/// `POST /v1/runs/{id}/cancel`: the owning tenant's developers only (404
/// for everyone else, as if the run did not exist); a run that ended is
/// `409 run_finished`. Waits (a few seconds at most) for the run's record
/// and returns it: `cancelled`, unless the run ended on its own first.
pub async fn cancel(s: &AppState, caller: &Caller, id: &str) -> ApiResult<(bool, RunRecord)> {
    let r = visible_run(s, caller, id)?;
    if caller.role != kasbah_core::api::Role::Developer || caller.subject != r.tenant_id {
        return Err(ApiError::not_found("run"));
    }
    let finished = |r: &RunRecord| {
        ApiError::conflict(
            "run_finished",
            format!(
                "run {id} already ended ({})",
                r.outcome.as_ref().map_or(r.status.as_str(), |o| o.kind())
            ),
        )
    };
    if r.outcome.is_some() || r.status == RunStatus::Interrupted {
        return Err(finished(&r));
    }
    let Some(live) = s.live.get(id) else {
        // Ended between the two reads, or accepted by an earlier process.
        return match record(s, id) {
            Some(r) if r.outcome.is_some() => Err(finished(&r)),
            _ => Err(ApiError::conflict(
                "not_cancellable",
                format!("run {id} is not executing in this server process"),
            )),
        };
    };
    live.cancel.cancel();
    live.wait_ended(CANCEL_WAIT).await;
    let r = visible_run(s, caller, id)?;
    Ok((r.outcome.is_some(), r))
}

/// How long a cancel waits for the run's record.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

fn record(s: &AppState, id: &str) -> Option<RunRecord> {
    use super::storage::RunStore;
    s.runs.run(id).ok().flatten()
}
