//! Runs' HTTP handlers: start, read, output, list, usage, the fleet's live
//! workers. The rules are in `service.rs` and `workers.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use kasbah_core::api::{CreateRun, FleetWorker, RunLogs, RunRecord, UsageRow};
use serde::Deserialize;

use super::follow as live;
use super::service::{self, OutputBody, Started};
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
    let Json(req) = body.map_err(json_error)?;
    Ok(match service::start(&s, &caller, req).await? {
        Started::Finished(r) => (StatusCode::OK, Json(r)),
        Started::Accepted(r) => (StatusCode::ACCEPTED, Json(r)),
    })
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
    let mut headers = HeaderMap::new();
    if let Ok(v) = out.content_type.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = out.digest.to_string().parse() {
        headers.insert("x-kasbah-digest", v);
    }
    Ok(match out.body {
        OutputBody::Bytes(bytes) => (headers, bytes).into_response(),
        OutputBody::Stream(chunks) => {
            headers.insert(header::CONTENT_LENGTH, out.size.into());
            (headers, Body::from_stream(chunks)).into_response()
        }
    })
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

#[utoipa::path(get, tag = "api", path = "/v1/runs/{id}/logs", params(LogsQuery),
    responses((status = 200, body = RunLogs, description = "the logs and stdio so far (JSON), or with `follow=true` a `text/event-stream`: events `log`, `stdout`, `stderr`, `gap`, `end`, each with a JSON `kasbah_core::LogEvent` as data"),
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
