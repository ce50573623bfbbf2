//! Datasets: a tenant's immutable blobs (model weights, reference data) with
//! a residency label, stored in the content-addressed blob dir.
//!
//! `POST /v1/datasets?name=…&zones=a,b` streams the body into the blob store
//! while hashing it (bounded by `max_dataset_bytes`); the label (query
//! `zones`, or header `x-kasbah-zones`, comma-separated) must lie within the
//! tenant's zones and defaults to them. A label outside them is refused with
//! `403 residency_violation` and a denial entry. Each new dataset is a
//! `dataset_created` audit entry, committed with its row. Names are unique
//! per tenant and datasets immutable: the same name with the same bytes and
//! label answers the existing record (200), anything else `409
//! dataset_exists`. Other tenants' datasets are 404, as for modules.
//!
//! In fleet mode an upload goes to the object store bucket of each zone of
//! its label and nowhere else (the record says `zone_stored`);
//! `GET /v1/datasets/{id}/content` streams a dataset back, checked against
//! its digest, from the blob store or from one of its zones' buckets.
//! There is no delete: datasets are immutable, and run records and audit
//! entries name them by digest.
//!
//! A run's output can become a dataset too (`store_output_as`): see
//! `sqlite.rs::store_output`, called in the run's finishing transaction.
//!
//! This file: the HTTP handlers; the rules are in `service.rs`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kasbah_core::api::DatasetRecord;
use serde::Deserialize;

use super::service;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{DRAIN_LIMIT, UploadRefused, drain, query_error, receive_upload};
use crate::state::AppState;

/// Header carrying a dataset's label when the query does not.
pub const ZONES_HEADER: &str = "x-kasbah-zones";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CreateDatasetParams {
    /// Dataset name, `[a-z0-9][a-z0-9._-]{0,63}`: the file name the guest
    /// sees under `/datasets/`.
    pub name: String,
    /// Residency label, comma-separated zones (or header `x-kasbah-zones`).
    /// Must lie within the tenant's zones; default: the tenant's zones.
    pub zones: Option<String>,
}

#[utoipa::path(post, tag = "datasets", path = "/v1/datasets", params(CreateDatasetParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The dataset bytes, streamed"),
    responses((status = 201, body = DatasetRecord), (status = 200, body = DatasetRecord, description = "the same dataset already exists"),
        (status = 403, body = ErrorBody, description = "`residency_violation`: the label is not within the tenant's zones"),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_dataset(
    State(s): State<AppState>,
    caller: Caller,
    params: Result<Query<CreateDatasetParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<DatasetRecord>)> {
    let checked = service::may_create(&caller)
        .and_then(|()| params.map_err(query_error))
        .and_then(|Query(p)| {
            let from_header = headers.get(ZONES_HEADER).and_then(|v| v.to_str().ok());
            service::plan(&s, &caller, p.name, p.zones.as_deref().or(from_header))
        });
    let mut plan = match checked {
        Ok(plan) => plan,
        Err(e) => {
            drain(body, DRAIN_LIMIT).await;
            return Err(e);
        }
    };
    if let Err(message) = service::label_within_zones(&s, &mut plan) {
        drain(body, DRAIN_LIMIT).await;
        return Err(service::refuse(&s, &plan, message).await);
    }
    let max = s.config.max_dataset_bytes;
    let (digest, size, tmp) = match receive_upload(&s.blobs, &headers, body, max).await {
        Ok(upload) => upload,
        Err(UploadRefused::TooLarge) => {
            return Err(ApiError::too_large(
                "dataset_too_large",
                format!("dataset exceeds the limit of {max} bytes"),
            ));
        }
        Err(UploadRefused::Failed(e)) => return Err(e),
    };
    let (created, record) = service::create(&s, plan, digest, size, tmp).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatasetFilter {
    /// Restrict to one tenant (admins and auditors).
    pub tenant: Option<String>,
}

#[utoipa::path(get, tag = "datasets", path = "/v1/datasets", params(DatasetFilter), responses((status = 200, body = Vec<DatasetRecord>)))]
pub async fn list_datasets(
    State(s): State<AppState>,
    caller: Caller,
    Query(f): Query<DatasetFilter>,
) -> ApiResult<Json<Vec<DatasetRecord>>> {
    Ok(Json(service::list(&s, &caller, f.tenant.as_deref())?))
}

#[utoipa::path(get, tag = "datasets", path = "/v1/datasets/{id}",
    responses((status = 200, body = DatasetRecord), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DatasetRecord>> {
    Ok(Json(service::get(&s, &caller, &id)?))
}

#[utoipa::path(get, tag = "datasets", path = "/v1/datasets/{id}/content",
    responses((status = 200, content_type = "application/octet-stream", description = "The dataset bytes, streamed and checked against its digest (header `x-kasbah-digest`)"),
        (status = 403, body = ErrorBody, description = "only the owning tenant and its auditors download datasets"), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "`dataset_unavailable`: none of its zones' object stores can serve it now, or the server is not connected to the fleet; Retry-After")))]
pub async fn get_dataset_content(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let content = service::content(&s, &caller, &id).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, content.record.size.into());
    if let Ok(v) = content.record.digest.to_string().parse() {
        headers.insert("x-kasbah-digest", v);
    }
    Ok((headers, Body::from_stream(content.body)).into_response())
}
