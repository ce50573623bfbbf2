//! Secrets over HTTP: `PUT /v1/secrets/{name}` (the raw body is the value,
//! at most 64 KiB; a new version each time), `GET /v1/secrets` (names,
//! versions, dates: never values), `DELETE /v1/secrets/{name}`. A tenant's
//! developer tokens only; the rules are in `service.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures_util::StreamExt;
use kasbah_core::api::SecretRecord;
use zeroize::Zeroizing;

use super::service;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{DRAIN_LIMIT, drain};
use crate::state::AppState;

#[utoipa::path(put, tag = "secrets", path = "/v1/secrets/{name}",
    params(("name" = String, Path, description = "Secret name, `[a-z0-9_-]{1,64}`", pattern = "^[a-z0-9_-]{1,64}$")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The value, at most 64 KiB (bytes as sent: no trimming)"),
    responses((status = 200, body = SecretRecord, description = "stored as a new version; the value is never returned"),
        (status = 403, body = ErrorBody, description = "not a developer token"),
        (status = 409, body = ErrorBody, description = "`too_many_secrets`: the tenant keeps 1000 already"),
        (status = 413, body = ErrorBody, description = "`secret_too_large`"),
        (status = 422, body = ErrorBody, description = "`invalid_secret_name`")))]
pub async fn put_secret(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Body,
) -> ApiResult<Json<SecretRecord>> {
    if let Err(e) = service::may_manage(&caller).and_then(|()| service::check_name(&name)) {
        drain(body, DRAIN_LIMIT).await;
        return Err(e);
    }
    let value = read_value(body).await?;
    Ok(Json(service::set(&s, &caller, &name, value).await?))
}

/// The body, at most `MAX_SECRET_BYTES`, into a buffer zeroized on drop
/// (the rest of an oversize body is drained so the client sees the 413).
async fn read_value(body: Body) -> ApiResult<Zeroizing<Vec<u8>>> {
    // Sized once: a growing Vec would free partial copies unzeroed.
    let mut value = Zeroizing::new(Vec::with_capacity(service::MAX_SECRET_BYTES));
    let mut stream = body.into_data_stream();
    let mut over = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request("invalid_request", "cannot read the request body")
        })?;
        if over > 0 || value.len() + chunk.len() > service::MAX_SECRET_BYTES {
            over += chunk.len() as u64;
            if over > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        value.extend_from_slice(&chunk);
    }
    if over > 0 {
        return Err(service::too_large());
    }
    Ok(value)
}

#[utoipa::path(get, tag = "secrets", path = "/v1/secrets",
    responses((status = 200, body = Vec<SecretRecord>, description = "the tenant's secrets: names, versions, dates; never values"),
        (status = 403, body = ErrorBody, description = "not a developer token")))]
pub async fn list_secrets(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<SecretRecord>>> {
    Ok(Json(service::list(&s, &caller)?))
}

#[utoipa::path(delete, tag = "secrets", path = "/v1/secrets/{name}",
    params(("name" = String, Path, description = "Secret name")),
    responses((status = 204, description = "deleted (audited with its last version)"),
        (status = 403, body = ErrorBody, description = "not a developer token"),
        (status = 404, body = ErrorBody, description = "the tenant has no such secret"),
        (status = 422, body = ErrorBody, description = "`invalid_secret_name`")))]
pub async fn delete_secret(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    service::delete(&s, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
