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
//! A run's output can become a dataset too (`store_output_as`): see
//! [`store_output`], called in the run's finishing transaction.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use kasbah_audit::{DatasetCreated, Entry, EntryBody};
use kasbah_core::Digest;
use kasbah_core::api::{DatasetRecord, Role};
use kasbah_policy::{is_dataset_name, is_zone_name};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;

use crate::AppState;
use crate::api::{DRAIN_LIMIT, UploadRefused, drain, receive_upload};
use crate::db::{Caller, DbError, DbResult, new_id, now_ms};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::placement::{RunResidency, describe, residency_violation};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    label_json TEXT NOT NULL,
    source_run TEXT,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX IF NOT EXISTS datasets_by_digest ON datasets(tenant_id, digest);
"#;

/// Header carrying a dataset's label when the query does not.
pub const ZONES_HEADER: &str = "x-kasbah-zones";

/// Most datasets one run may mount.
pub const MAX_RUN_DATASETS: usize = 64;

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

/// Parse a comma-separated label. `Ok(None)` when absent.
pub fn parse_label(text: Option<&str>) -> ApiResult<Option<BTreeSet<String>>> {
    let Some(text) = text else { return Ok(None) };
    let zones: BTreeSet<String> = text
        .split(',')
        .map(str::trim)
        .filter(|z| !z.is_empty())
        .map(str::to_string)
        .collect();
    check_label(&zones)?;
    Ok(Some(zones))
}

/// A label names at least one zone, each a valid zone name.
pub fn check_label(zones: &BTreeSet<String>) -> ApiResult<()> {
    if zones.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid_label",
            "a residency label names at least one zone",
        ));
    }
    if let Some(bad) = zones.iter().find(|z| !is_zone_name(z)) {
        return Err(ApiError::unprocessable(
            "invalid_label",
            format!("{bad:?} is not a zone name (lowercase letters, digits and '-')"),
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/datasets", params(CreateDatasetParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The dataset bytes, streamed"),
    responses((status = 201, body = DatasetRecord), (status = 200, body = DatasetRecord, description = "the same dataset already exists"),
        (status = 403, body = ErrorBody, description = "`residency_violation`: the label is not within the tenant's zones"),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_dataset(
    State(s): State<AppState>,
    caller: Caller,
    params: Result<Query<CreateDatasetParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<DatasetRecord>)> {
    let checked = (|| {
        caller.require(
            &[Role::Developer],
            "create datasets (use a tenant developer token)",
        )?;
        let Query(p) =
            params.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
        if !is_dataset_name(&p.name) {
            return Err(ApiError::unprocessable(
                "invalid_name",
                format!(
                    "{:?}: dataset names are [a-z0-9][a-z0-9._-]{{0,63}}",
                    p.name
                ),
            ));
        }
        let from_header = headers.get(ZONES_HEADER).and_then(|v| v.to_str().ok());
        let label = parse_label(p.zones.as_deref().or(from_header))?;
        let policy = s.policy(&caller.subject)?;
        Ok::<_, ApiError>((p.name, label, policy))
    })();
    let (name, label, policy) = match checked {
        Ok(v) => v,
        Err(e) => {
            drain(body, DRAIN_LIMIT).await;
            return Err(e);
        }
    };
    let tenant = caller.subject.clone();
    let allowed = policy.policy.allowed_zones(&s.config.zones.node);
    let label = label.unwrap_or_else(|| allowed.clone());
    if !label.is_subset(&allowed) {
        let outside: BTreeSet<String> = label.difference(&allowed).cloned().collect();
        let message = format!(
            "dataset {name:?}: label {} is not within the tenant's zones {} (outside: {})",
            describe(&label),
            describe(&allowed),
            describe(&outside)
        );
        drain(body, DRAIN_LIMIT).await;
        return Err(residency_violation(&s, &tenant, None, "dataset", message).await);
    }

    let max = s.config.max_dataset_bytes;
    let (digest, size, tmp) = match receive_upload(&s, &headers, body, max).await {
        Ok(upload) => upload,
        Err(UploadRefused::TooLarge) => {
            return Err(ApiError::too_large(
                "dataset_too_large",
                format!("dataset exceeds the limit of {max} bytes"),
            ));
        }
        Err(UploadRefused::Failed(e)) => return Err(e),
    };
    s.blobs.commit(tmp, &digest).map_err(ApiError::internal)?;
    seal_blob(&s, &digest);

    let record = DatasetRecord {
        id: new_id("ds"),
        tenant_id: tenant,
        name,
        digest,
        size,
        label: label.into_iter().collect(),
        source_run: None,
        created_at: now_ms(),
    };
    let row = record.clone();
    let (result, _) =
        s.db.write(move |c| {
            if let Some(existing) = by_name(c, &row.tenant_id, &row.name)? {
                return Ok((Err(existing), Vec::new()));
            }
            insert(c, &row)?;
            let e = created_entry(&row);
            Ok((Ok(row), vec![e]))
        })
        .await?;
    match result {
        Ok(r) => Ok((StatusCode::CREATED, Json(r))),
        Err(existing) if existing.digest == record.digest && existing.label == record.label => {
            Ok((StatusCode::OK, Json(existing)))
        }
        Err(existing) => Err(ApiError::conflict(
            "dataset_exists",
            format!(
                "dataset {:?} already exists ({}, label {}); datasets are immutable",
                existing.name,
                existing.digest,
                existing.label.join(",")
            ),
        )),
    }
}

/// Dataset blobs are never written again: make them read-only on disk
/// (0400: the kasbah user's only), so a hard link into a run's `/datasets`
/// cannot be written even by mistake.
pub(crate) fn seal_blob(s: &AppState, digest: &Digest) {
    let path = s.blobs.path(digest);
    if let Err(e) = crate::at_rest::seal(&path) {
        tracing::warn!("making {} read-only: {e}", path.display());
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DatasetFilter {
    /// Restrict to one tenant (admins and auditors).
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/datasets", params(DatasetFilter), responses((status = 200, body = Vec<DatasetRecord>)))]
pub async fn list_datasets(
    State(s): State<AppState>,
    caller: Caller,
    Query(f): Query<DatasetFilter>,
) -> ApiResult<Json<Vec<DatasetRecord>>> {
    let tenants = caller.readable_tenants(&s, f.tenant.as_deref())?;
    let mut out = Vec::new();
    for t in tenants {
        out.extend(s.db.with(|c| {
            c.prepare_cached(&format!(
                "{COLUMNS} WHERE tenant_id = ?1 ORDER BY created_at, name"
            ))?
            .query_map([&t], row_dataset)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/datasets/{id}",
    responses((status = 200, body = DatasetRecord), (status = 404, body = ErrorBody)))]
pub async fn get_dataset(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<DatasetRecord>> {
    let d =
        s.db.with(|c| {
            c.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))?
                .query_row([&id], row_dataset)
                .optional()
        })?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    if caller.reads_records(&s, &d.tenant_id)? {
        Ok(Json(d))
    } else {
        Err(ApiError::not_found("dataset"))
    }
}

/// The tenant's datasets named by `refs` (names, or `sha256:` digests that
/// match exactly one of its datasets), in request order.
pub fn resolve(s: &AppState, tenant: &str, refs: &[String]) -> ApiResult<Vec<DatasetRecord>> {
    if refs.len() > MAX_RUN_DATASETS {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("a run mounts at most {MAX_RUN_DATASETS} datasets"),
        ));
    }
    let mut out: Vec<DatasetRecord> = Vec::with_capacity(refs.len());
    for r in refs {
        let found = if r.starts_with("sha256:") {
            let digest = crate::api::parse_digest(r)?;
            let mut all = s.db.with(|c| {
                c.prepare_cached(&format!(
                    "{COLUMNS} WHERE tenant_id = ?1 AND digest = ?2 ORDER BY name"
                ))?
                .query_map(params![tenant, digest.to_string()], row_dataset)?
                .collect::<rusqlite::Result<Vec<_>>>()
            })?;
            if all.len() > 1 {
                let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
                return Err(ApiError::unprocessable(
                    "ambiguous_dataset",
                    format!(
                        "{r} is the content of several datasets ({}); name one",
                        names.join(", ")
                    ),
                ));
            }
            all.pop()
        } else {
            s.db.with(|c| by_name(c, tenant, r))?
        };
        let d = found.ok_or_else(|| ApiError::not_found(&format!("dataset {r:?}")))?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(ApiError::unprocessable(
                "invalid_request",
                format!("dataset {:?} is named twice", d.name),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// In a run's finishing transaction: store its output as the dataset the
/// run asked for (`store_output_as`), labelled with the run's output label.
/// The output blob is already in the blob store. Returns the id of the
/// dataset the output is now (if any) and its `dataset_created` entry (if
/// it was created here).
pub(crate) fn store_output(
    c: &Connection,
    run_id: &str,
    tenant: &str,
    residency: &RunResidency,
    digest: Digest,
    size: u64,
) -> DbResult<(Option<String>, Option<Entry>)> {
    let Some(name) = &residency.store_output_as else {
        return Ok((None, None));
    };
    let id = match by_name(c, tenant, name)? {
        Some(existing) if existing.digest == digest && existing.label == residency.output_label => {
            existing.id
        }
        Some(existing) => {
            tracing::warn!(
                run = run_id,
                "output not stored as dataset {name:?}: it exists with other bytes or label ({})",
                existing.id
            );
            return Ok((None, None));
        }
        None => {
            let row = DatasetRecord {
                id: new_id("ds"),
                tenant_id: tenant.to_string(),
                name: name.clone(),
                digest,
                size,
                label: residency.output_label.clone(),
                source_run: Some(run_id.to_string()),
                created_at: now_ms(),
            };
            insert(c, &row)?;
            return Ok((Some(row.id.clone()), Some(created_entry(&row))));
        }
    };
    Ok((Some(id), None))
}

/// Whether `tenant` has a dataset named `name`.
pub fn exists(s: &AppState, tenant: &str, name: &str) -> ApiResult<Option<DatasetRecord>> {
    Ok(s.db.with(|c| by_name(c, tenant, name))?)
}

fn created_entry(d: &DatasetRecord) -> Entry {
    Entry::new(
        u64::try_from(d.created_at).unwrap_or(0),
        EntryBody::DatasetCreated(DatasetCreated {
            tenant: d.tenant_id.clone(),
            dataset: d.digest,
            size: d.size,
            name: d.name.clone(),
            label: d.label.clone(),
            run_id: d.source_run.clone(),
        }),
    )
}

const COLUMNS: &str =
    "SELECT id, tenant_id, name, digest, size, label_json, source_run, created_at FROM datasets";

fn by_name(c: &Connection, tenant: &str, name: &str) -> rusqlite::Result<Option<DatasetRecord>> {
    c.prepare_cached(&format!("{COLUMNS} WHERE tenant_id = ?1 AND name = ?2"))?
        .query_row(params![tenant, name], row_dataset)
        .optional()
}

fn insert(c: &Connection, d: &DatasetRecord) -> DbResult<()> {
    let label = serde_json::to_string(&d.label)
        .map_err(|e| DbError::Sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    c.prepare_cached(
        "INSERT INTO datasets(id, tenant_id, name, digest, size, label_json, source_run, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        d.id,
        d.tenant_id,
        d.name,
        d.digest.to_string(),
        d.size as i64,
        label,
        d.source_run,
        d.created_at
    ])?;
    Ok(())
}

fn conversion(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn row_dataset(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        digest: r.get::<_, String>(3)?.parse().map_err(conversion)?,
        size: r.get::<_, i64>(4)? as u64,
        label: serde_json::from_str(&r.get::<_, String>(5)?).map_err(conversion)?,
        source_run: r.get(6)?,
        created_at: r.get(7)?,
    })
}

/// Remove dataset directories left behind by a process that died mid-run.
pub fn clean_scratch(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
        if let Err(err) = std::fs::remove_dir_all(&p) {
            tracing::warn!("removing stale scratch dir {}: {err}", p.display());
        }
    }
}
