//! Runs' HTTP handlers: start, read, output, list, usage, the fleet's live
//! workers. The rules are in `service.rs` and `workers.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kasbah_core::api::{CreateRun, FleetWorker, RunLogs, RunRecord, UsageRow};
use serde::Deserialize;

use super::follow as live;
use super::invoke::{self, Invoked};
use super::service::{self, OutputBody, RunOutput, Started};
use super::storage::Period;
use super::workers;
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{json_error, query_error};
use crate::state::AppState;

#[utoipa::path(post, tag = "api", path = "/v1/runs", request_body = CreateRun,
    responses((status = 200, body = RunRecord, description = "finished (wait = true)"),
        (status = 202, body = RunRecord, description = "accepted; poll GET /v1/runs/{id}"),
        (status = 403, body = ErrorBody, description = "`residency_violation`: no zone satisfies the tenant's zones, the input label, every dataset label and (for GPU modules) a usable adapter"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`no_capacity` (fleet mode): no live worker in a zone the run may use; Retry-After")))]
pub async fn create_run(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateRun>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RunRecord>)> {
    service::may_start(&caller)?;
    let started = std::time::Instant::now();
    let Json(req) = body.map_err(json_error)?;
    let r = match service::start(&s, &caller, req).await? {
        Started::Finished(r) => (StatusCode::OK, Json(r)),
        Started::Accepted(r) => (StatusCode::ACCEPTED, Json(r)),
    };
    tracing::debug!(target: "kasbah::phases", run = %r.1.id, "handler total={}us", started.elapsed().as_micros());
    Ok(r)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InvokeQuery {
    /// Datasets of the tenant to mount, comma-separated names or digests (as `datasets` in `POST /v1/runs`).
    pub datasets: Option<String>,
}

#[utoipa::path(post, tag = "api", path = "/v1/invoke/{name}",
    params(("name" = String, Path, description = "The caller tenant's module: `name` (the version published last), `name@version`, or its digest"), InvokeQuery),
    request_body(content = Vec<u8>, content_type = "*/*", description = "The run's input, as is; its Content-Type is passed to the pipeline, and `kasbah-meta-KEY: value` headers as its metadata"),
    responses((status = 200, content_type = "*/*", description = "`ok`: the output's bytes with its content type; headers `kasbah-run-id`, `kasbah-outcome`, `kasbah-module` (the digest run)"),
        (status = 202, body = RunRecord, description = "still running after the server's sync wait; poll `GET /v1/runs/{id}`"),
        (status = 403, body = ErrorBody, description = "`residency_violation`, `denied` (host), `guest_denied`"),
        (status = 413, body = ErrorBody, description = "`input_too_large` (the policy's `max_input_bytes`) or `payload_too_large`"),
        (status = 422, body = ErrorBody, description = "`invalid_input` (the pipeline refused the input), `invalid_module_ref`"),
        (status = 429, body = ErrorBody),
        (status = 502, body = ErrorBody, description = "`guest_failed`, `trap`, `memory_limit`, `fuel_exhausted`, `output_too_large`"),
        (status = 503, body = ErrorBody, description = "`guest_unavailable`, `no_capacity` (fleet mode)"),
        (status = 504, body = ErrorBody, description = "`deadline_exceeded`")))]
pub async fn invoke(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    q: Result<Query<InvokeQuery>, QueryRejection>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(query_error)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    crate::error::ApiError::unprocessable(
                        "invalid_request",
                        "Content-Type is not visible ASCII",
                    )
                })?
                .to_string(),
        ),
    };
    let datasets = q
        .datasets
        .map(|d| d.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    // `kasbah-meta-KEY: value` headers are the run's metadata (hyper
    // bounds their number and size).
    let mut metadata = Vec::new();
    for (k, v) in &headers {
        if let Some(key) = k.as_str().strip_prefix(invoke::META_HEADER_PREFIX) {
            let v = v.to_str().map_err(|_| {
                crate::error::ApiError::unprocessable(
                    "invalid_request",
                    format!("header {k} is not visible ASCII"),
                )
            })?;
            metadata.push((key.to_string(), v.to_string()));
        }
    }
    let input = invoke::Input {
        content_type,
        metadata,
        datasets,
        body: body.to_vec(),
    };
    let answer = invoke::invoke(&s, &caller, &name, input).await?;
    let (record, mut response) = match answer {
        Invoked::Ok(record, out) => {
            let response = output_response(out);
            (record, response)
        }
        Invoked::Failed(record, e) => (record, e.into_response()),
        Invoked::Accepted(record) => {
            let json = Json(record.clone());
            (record, (StatusCode::ACCEPTED, json).into_response())
        }
    };
    let h = response.headers_mut();
    for (name, value) in [
        ("kasbah-run-id", Some(record.id.clone())),
        ("kasbah-module", Some(record.module.to_string())),
        (
            "kasbah-run-status",
            Some(record.status.as_str().to_string()),
        ),
        (
            "kasbah-outcome",
            record.outcome.as_ref().map(|o| o.kind().to_string()),
        ),
    ] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            h.insert(name, v);
        }
    }
    Ok(response)
}

/// A run's output as a response: its bytes, content type and digest.
fn output_response(out: RunOutput) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(v) = out.content_type.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = out.digest.to_string().parse() {
        headers.insert("x-kasbah-digest", v);
    }
    match out.body {
        OutputBody::Bytes(bytes) => (headers, bytes).into_response(),
        OutputBody::Stream(chunks) => {
            headers.insert(header::CONTENT_LENGTH, out.size.into());
            (headers, Body::from_stream(chunks)).into_response()
        }
    }
}

#[utoipa::path(get, tag = "api", path = "/v1/runs/{id}", responses((status = 200, body = RunRecord), (status = 404, body = ErrorBody)))]
pub async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunRecord>> {
    Ok(Json(service::run(&s, &caller, &id)?))
}

#[utoipa::path(get, tag = "api", path = "/v1/runs/{id}/output", responses((status = 200, content_type = "*/*", description = "The output bytes, with the content type the guest gave them"),
    (status = 403, body = ErrorBody, description = "only the owning tenant and its auditors download outputs"), (status = 404, body = ErrorBody),
    (status = 409, body = ErrorBody, description = "`run_not_finished` (queued or running) or `no_output` (ended without output)"),
    (status = 503, body = ErrorBody, description = "`output_unavailable` (fleet mode): the zone object store holding the output cannot be read now; Retry-After")))]
pub async fn get_run_output(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let out = service::output(&s, &caller, &id).await?;
    Ok(output_response(out))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// `true`: server-sent events as the run produces them (`log`,
    /// `stdout`, `stderr`, `gap` when this client fell behind, then `end`
    /// with the outcome); otherwise the logs so far as JSON.
    #[serde(default)]
    pub follow: bool,
}

/// One server-sent event of `GET /v1/runs/{id}/logs?follow=true`, as the
/// OpenAPI document describes each event of the stream.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct SseEvent {
    /// `log`, `stdout`, `stderr`, `gap` or `end`.
    pub event: String,
    /// A JSON `kasbah_core::LogEvent`.
    pub data: String,
}

#[utoipa::path(get, tag = "api", path = "/v1/runs/{id}/logs", params(LogsQuery),
    responses((status = 200, content((RunLogs = "application/json"), (SseEvent = "text/event-stream")), description = "the logs and stdio so far (JSON), or with `follow=true` a `text/event-stream`: events `log`, `stdout`, `stderr`, `gap`, `end`, each with a JSON `kasbah_core::LogEvent` as data"),
        (status = 404, body = ErrorBody)))]
pub async fn run_logs(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<LogsQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(query_error)?;
    if !q.follow {
        return Ok(Json(live::logs(&s, &caller, &id)?).into_response());
    }
    let events = live::follow(&s, &caller, &id)?;
    let events = futures_util::StreamExt::map(events, |e| {
        Ok::<_, std::convert::Infallible>(
            Event::default()
                .event(e.name())
                .data(serde_json::to_string(&e).unwrap_or_default()),
        )
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[utoipa::path(post, tag = "api", path = "/v1/runs/{id}/cancel",
    responses((status = 200, body = RunRecord, description = "the run ended; its record (outcome `cancelled`, unless it ended on its own first)"),
        (status = 202, body = RunRecord, description = "cancelled; the run has not stopped yet (poll its record)"),
        (status = 404, body = ErrorBody, description = "no such run of the caller's tenant (only its developers cancel)"),
        (status = 409, body = ErrorBody, description = "`run_finished`, or `not_cancellable` (not executing in this server process)")))]
pub async fn cancel_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<RunRecord>)> {
    let (ended, r) = live::cancel(&s, &caller, &id).await?;
    let status = if ended {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(r)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    pub tenant: Option<String>,
    /// At most this many, newest first (default 50, max 1000).
    pub limit: Option<u32>,
    /// Cursor: only runs older than this run (the last id of the
    /// previous page); an id the caller cannot read is a 404.
    pub before: Option<String>,
}

#[utoipa::path(get, tag = "api", path = "/v1/runs", params(RunsQuery), responses((status = 200, body = Vec<RunRecord>)))]
pub async fn list_runs(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Vec<RunRecord>>> {
    Ok(Json(service::list(
        &s,
        &caller,
        q.tenant.as_deref(),
        q.limit,
        q.before.as_deref(),
    )?))
}

#[utoipa::path(get, tag = "api", path = "/v1/fleet/workers", responses((status = 200, body = Vec<FleetWorker>, description = "The live fleet workers (admins: all; operators: those of their zones), by id"),
    (status = 409, body = ErrorBody, description = "`fleet_disabled`: this server executes runs itself (no `--nats`)")))]
pub async fn fleet_workers(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<FleetWorker>>> {
    Ok(Json(workers::live(&s, &caller)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    pub tenant: Option<String>,
    /// `hour`, `day` (default) or `month`.
    pub period: Option<Period>,
    /// Unix ms, inclusive (default: 0).
    pub from: Option<i64>,
    /// Unix ms, exclusive (default: now + 1 day).
    pub to: Option<i64>,
}

#[utoipa::path(get, tag = "api", path = "/v1/usage", params(UsageQuery), responses((status = 200, body = Vec<UsageRow>)))]
pub async fn usage(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Json<Vec<UsageRow>>> {
    let Query(q) = q.map_err(query_error)?;
    Ok(Json(service::usage(
        &s,
        &caller,
        q.tenant.as_deref(),
        q.period,
        q.from,
        q.to,
    )?))
}
