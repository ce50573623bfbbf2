//! The module registry's HTTP handlers: publish (streamed upload), list,
//! get. The rules are in `service.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use kasbah_core::api::{ModuleRecord, ProvenanceRecord};
use serde::Deserialize;

use super::{provenance, service};
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{DRAIN_LIMIT, UploadRefused, drain, query_error, receive_upload};
use crate::state::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PublishParams {
    /// Module name (letters, digits, `-_.+`).
    #[param(pattern = r"^[A-Za-z0-9._+-]{1,128}$")]
    pub name: String,
    /// Version label, e.g. `1.0.0`.
    #[serde(default = "default_version")]
    #[param(pattern = r"^[A-Za-z0-9._+-]{1,128}$")]
    pub version: String,
}

fn default_version() -> String {
    "0.0.0".into()
}

#[utoipa::path(post, tag = "api", path = "/v1/modules", params(PublishParams),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component bytes, streamed"),
    responses((status = 201, body = ModuleRecord), (status = 200, body = ModuleRecord, description = "identical bytes already published"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn publish_module(
    State(s): State<AppState>,
    caller: Caller,
    params: Result<Query<PublishParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    // Refusals before the upload is read still read (and discard) a bounded
    // amount of it, so the client sees the error instead of a reset.
    let checked = service::may_publish(&caller)
        .and_then(|()| params.map_err(query_error))
        .and_then(|Query(p)| service::plan(&s, &caller, &p.name, &p.version));
    let plan = match checked {
        Ok(plan) => plan,
        Err(e) => {
            drain(body, DRAIN_LIMIT).await;
            return Err(e);
        }
    };
    let (digest, size, tmp) = match receive_upload(&s.blobs, &headers, body, plan.max).await {
        Ok(upload) => upload,
        Err(UploadRefused::TooLarge) => return Err(service::too_large(&s, &plan)),
        Err(UploadRefused::Failed(e)) => return Err(e),
    };
    let (created, record) = service::publish(&s, plan, digest, size, tmp).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantFilter {
    /// Restrict to one tenant (admins and auditors).
    pub tenant: Option<String>,
}

#[utoipa::path(get, tag = "api", path = "/v1/modules", params(TenantFilter), responses((status = 200, body = Vec<ModuleRecord>)))]
pub async fn list_modules(
    State(s): State<AppState>,
    caller: Caller,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Json<Vec<ModuleRecord>>> {
    Ok(Json(service::modules(&s, &caller, f.tenant.as_deref())?))
}

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}", params(TenantFilter),
    responses((status = 200, body = ModuleRecord), (status = 404, body = ErrorBody)))]
pub async fn get_module(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Json<ModuleRecord>> {
    Ok(Json(service::module(
        &s,
        &caller,
        &digest,
        f.tenant.as_deref(),
    )?))
}

#[utoipa::path(put, tag = "api", path = "/v1/modules/{digest}/provenance",
    request_body(content = Object, content_type = "application/json",
        description = "An in-toto Statement v1 with a SLSA provenance v1 predicate (`kasbah build` writes it); at most 64 KiB"),
    responses((status = 201, body = ProvenanceRecord), (status = 200, body = ProvenanceRecord, description = "this statement was already published"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "`provenance_exists`: the module has another statement"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody, description = "`invalid_provenance`, `provenance_subject_mismatch`")))]
pub async fn put_provenance(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<ProvenanceRecord>)> {
    let (created, record) = provenance::publish(&s, &caller, &digest, &body).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}/provenance", params(TenantFilter),
    responses((status = 200, content_type = "application/json", body = Object, description = "The statement, byte for byte as published"),
        (status = 404, body = ErrorBody)))]
pub async fn get_provenance(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<([(axum::http::header::HeaderName, &'static str); 1], Vec<u8>)> {
    let bytes = provenance::statement(&s, &caller, &digest, f.tenant.as_deref())?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    ))
}

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}/content", params(TenantFilter),
    responses((status = 200, content_type = "application/wasm", body = Vec<u8>,
        description = "The module's bytes (owner and granted auditors); `x-kasbah-digest` names them"),
        (status = 404, body = ErrorBody)))]
pub async fn get_module_content(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<axum::response::Response> {
    use axum::http::{HeaderValue, header};
    use axum::response::IntoResponse;
    let (m, body) = service::content(&s, &caller, &digest, f.tenant.as_deref()).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/wasm"),
    );
    headers.insert(header::CONTENT_LENGTH, m.size.into());
    if let Ok(v) = m.digest.to_string().parse() {
        headers.insert("x-kasbah-digest", v);
    }
    Ok((headers, Body::from_stream(body)).into_response())
}
