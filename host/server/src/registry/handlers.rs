//! The module registry's HTTP handlers: publish (streamed upload, its
//! signatures as `Kasbah-Signature` headers), list, get, content; signing
//! key revocation. The rules are in `service.rs` and `signing.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kasbah_core::api::{ModuleRecord, ProvenanceRecord, SigningKeyRevocation};
use serde::Deserialize;

use super::{provenance, service, signing};
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

#[utoipa::path(post, tag = "api", path = "/v1/modules", params(PublishParams,
        ("kasbah-signature" = Option<String>, Header, description = "A DSSE envelope (in-toto statement naming the module's sha256, as `kasbah sign` writes it), base64 of its JSON; repeat the header for more signatures (at most 16)")),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component bytes, streamed"),
    responses((status = 201, body = ModuleRecord), (status = 200, body = ModuleRecord, description = "identical bytes already published"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody, description = "among others `signature_required` (the policy's threshold of valid signatures by listed, unrevoked keys not met; names the key ids) and `invalid_signature` (a malformed envelope)"), (status = 409, body = ErrorBody)))]
pub async fn publish_module(
    State(s): State<AppState>,
    caller: Caller,
    params: Result<Query<PublishParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    // Refusals before the upload is read still read (and discard) a bounded
    // amount of it, so the client sees the error instead of a reset.
    let sigs = headers.get_all(signing::SIGNATURE_HEADER);
    let checked = service::may_publish(&caller)
        .and_then(|()| params.map_err(query_error))
        .and_then(|Query(p)| {
            let values: Vec<&[u8]> = sigs.iter().map(HeaderValue::as_bytes).collect();
            service::plan(&s, &caller, &p.name, &p.version, values.into_iter())
        });
    let checked = match checked {
        Ok(plan) => service::check_signatures_early(&s, &plan)
            .await
            .map(|()| plan),
        Err(e) => Err(e),
    };
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

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}", params(("digest" = String, Path, description = "The module: its digest (`sha256:…`), `name@version`, or `name` (the version its tenant published last)"), TenantFilter),
    responses((status = 200, body = ModuleRecord), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_module_ref`; `ambiguous_module`: a name several readable tenants published (pass `tenant`)")))]
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

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}/content",
    params(("digest" = String, Path, description = "The module: its digest (`sha256:…`), `name@version`, or `name` (the version its tenant published last)"), TenantFilter),
    responses((status = 200, content_type = "application/wasm", description = "The module's bytes, streamed and checked against its digest (header `x-kasbah-digest`)"),
        (status = 404, body = ErrorBody, description = "not a module of a tenant whose code the caller reads (its developers, auditors granted it)"), (status = 422, body = ErrorBody, description = "`invalid_module_ref`, `ambiguous_module`")))]
pub async fn get_module_content(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Response> {
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

#[utoipa::path(post, tag = "api", path = "/v1/tenants/{id}/signing-keys/{key_id}/revoke",
    params(("id" = String, Path, description = "Tenant id (`tn_…`)"),
        ("key_id" = String, Path, pattern = r"^[0-9a-f]{64}$", description = "The key id: 64 lowercase hex digits, SHA-256 of the raw Ed25519 public key")),
    responses((status = 200, body = SigningKeyRevocation, description = "revoked now, or already (the first revocation); a `signing_key_revoked` audit entry the first time"),
        (status = 404, body = ErrorBody), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody, description = "`invalid_key_id`")))]
pub async fn revoke_signing_key(
    State(s): State<AppState>,
    caller: Caller,
    Path((tenant, key_id)): Path<(String, String)>,
) -> ApiResult<Json<SigningKeyRevocation>> {
    Ok(Json(signing::revoke(&s, &caller, &tenant, &key_id).await?))
}

#[utoipa::path(get, tag = "api", path = "/v1/tenants/{id}/signing-keys/revoked",
    params(("id" = String, Path, description = "Tenant id (`tn_…`)")),
    responses((status = 200, body = Vec<String>, description = "key ids revoked for the tenant"), (status = 404, body = ErrorBody)))]
pub async fn revoked_signing_keys(
    State(s): State<AppState>,
    caller: Caller,
    Path(tenant): Path<String>,
) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(signing::revoked(&s, &caller, &tenant)?))
}

#[utoipa::path(get, tag = "api", path = "/v1/modules/{digest}/signatures",
    params(("digest" = String, Path, description = "The module: its digest (`sha256:…`), `name@version`, or `name` (the version its tenant published last)"), TenantFilter),
    responses((status = 200, body = Vec<Object>, description = "The DSSE envelopes the publish carried (empty: no verified signer), to check again offline"),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "`invalid_module_ref`, `ambiguous_module`")))]
pub async fn get_module_signatures(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(service::signatures(
        &s,
        &caller,
        &digest,
        f.tenant.as_deref(),
    )?))
}
