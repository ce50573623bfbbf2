//! Operating the server: Prometheus metrics at `/metrics` (admins only),
//! readiness at `/readyz` (no token: it says only whether the start-up
//! warm-up is done).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use kasbah_core::api::Role;

use crate::caller::Caller;
use crate::error::ApiResult;
use crate::state::AppState;

#[utoipa::path(get, tag = "api", path = "/metrics", responses((status = 200, content_type = "application/openmetrics-text", description = "Prometheus metrics (OpenMetrics text)")))]
pub async fn metrics(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Admin], "read metrics")?;
    s.metrics.sync_runtime(&s.runtime);
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response())
}

/// `200 {"ready": true}` once the start-up warm-up (recent modules loaded,
/// GPU warm state restored) is done; until then `503 {"ready": false,
/// "warming": [...]}` with `Retry-After: 1`. Requests are served during the
/// warm-up; this is for load balancers and restarts that want the first
/// request to find the server warm. Outside the OpenAPI document (no
/// token, like `/checkpoint`).
pub async fn readyz(State(s): State<AppState>) -> Response {
    let pending = s.warmup.pending();
    let body = axum::Json(serde_json::json!({
        "ready": pending.is_empty(),
        "warming": pending,
    }));
    if pending.is_empty() {
        body.into_response()
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            body,
        )
            .into_response()
    }
}
