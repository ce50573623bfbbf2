//! Operating the server: Prometheus metrics at `/metrics` (admins only).

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
