//! Datasets' rules: who creates them (a tenant's developers), which label
//! a dataset may carry (within the tenant's zones; default: the tenant's
//! zones; anything else is a `residency_violation`, audited), how a run
//! names the datasets it mounts. No HTTP here.

use std::collections::BTreeSet;
use std::sync::Arc;

use kasbah_core::Digest;
use kasbah_core::api::{DatasetRecord, PolicyRecord, Role};
use kasbah_policy::{is_dataset_name, is_zone_name};

use super::storage::DatasetStore;
use crate::audit::service::residency_violation;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::{new_id, now_ms};
use crate::runs::fleet::{OutputStream, checked_stream};
use crate::state::AppState;
use crate::tenancy::service::policy;
use crate::validate::parse_digest;
use kasbah_runtime::residency::describe;

/// Most datasets one run may mount.
pub const MAX_RUN_DATASETS: usize = 64;

/// A dataset creation that passed the checks made before its bytes are read.
pub struct Create {
    tenant: String,
    name: String,
    /// The label asked for (`None`: the tenant's zones).
    label: Option<BTreeSet<String>>,
    policy: Arc<PolicyRecord>,
}

/// Only developer tokens create datasets (checked before anything else).
pub fn may_create(caller: &Caller) -> ApiResult<()> {
    caller.require(
        &[Role::Developer],
        "create datasets (use a tenant developer token)",
    )
}

/// The checks before the upload: caller, name, label syntax, policy.
pub fn plan(s: &AppState, caller: &Caller, name: String, label: Option<&str>) -> ApiResult<Create> {
    may_create(caller)?;
    if !is_dataset_name(&name) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("{name:?}: dataset names are [a-z0-9][a-z0-9._-]{{0,63}}"),
        ));
    }
    let label = parse_label(label)?;
    let policy = policy(s, &caller.subject)?;
    Ok(Create {
        tenant: caller.subject.clone(),
        name,
        label,
        policy,
    })
}

/// The dataset's label, within the tenant's zones; otherwise the refusal
/// message (the caller drains the upload, then [`refuse`]s).
pub fn label_within_zones(s: &AppState, c: &mut Create) -> Result<(), String> {
    let allowed = c.policy.policy.allowed_zones(&s.config.zones.node);
    let label = c.label.take().unwrap_or_else(|| allowed.clone());
    if !label.is_subset(&allowed) {
        let outside: BTreeSet<String> = label.difference(&allowed).cloned().collect();
        return Err(format!(
            "dataset {:?}: label {} is not within the tenant's zones {} (outside: {})",
            c.name,
            describe(&label),
            describe(&allowed),
            describe(&outside)
        ));
    }
    c.label = Some(label);
    Ok(())
}

/// `403 residency_violation` for a label outside the tenant's zones, audited.
pub async fn refuse(s: &AppState, c: &Create, message: String) -> ApiError {
    residency_violation(s, &c.tenant, None, "dataset", message).await
}

/// Store the uploaded bytes (streamed to `tmp`, hashed to `digest`) and
/// record the dataset. `Ok((true, _))`: created; `Ok((false, _))`: the
/// same dataset (bytes and label) already existed; another one of that
/// name is `409 dataset_exists`.
///
/// Fleet mode: the bytes go to the object store bucket of each zone of the
/// label (created if missing) and nowhere else; `tmp` is removed once they
/// are there, and the record says `zone_stored`. A bucket that cannot take
/// them is `503 zone_store_unavailable` (Retry-After), nothing recorded.
/// Embedded mode: into the blob store, sealed read-only.
pub async fn create(
    s: &AppState,
    c: Create,
    digest: Digest,
    size: u64,
    tmp: tempfile::NamedTempFile,
) -> ApiResult<(bool, DatasetRecord)> {
    let label: Vec<String> = c.label.unwrap_or_default().into_iter().collect();
    let zone_stored = match s.fleet.as_ref() {
        Some(fleet) => {
            // A name taken already: answer before putting bytes anywhere.
            if let Some(existing) = s.datasets.by_name(&c.tenant, &c.name)? {
                return existing_or_conflict(existing, &digest, &label);
            }
            let stored = fleet.store_dataset(&label, &digest, size, tmp.path()).await;
            drop(tmp);
            stored.map_err(|e| {
                tracing::error!("storing dataset {:?} in its zones: {e:#}", c.name);
                ApiError::unavailable(
                    "zone_store_unavailable",
                    format!(
                        "the dataset could not be stored in the object store of its zones ({})",
                        label.join(",")
                    ),
                    5,
                )
            })?;
            true
        }
        None => {
            s.blobs.commit(tmp, &digest).map_err(ApiError::internal)?;
            seal_blob(s, &digest);
            false
        }
    };
    let record = DatasetRecord {
        id: new_id("ds"),
        tenant_id: c.tenant,
        name: c.name,
        digest,
        size,
        label,
        source_run: None,
        created_at: now_ms(),
        zone_stored,
    };
    match s.datasets.create(&record).await? {
        Ok(r) => Ok((true, r)),
        Err(existing) => existing_or_conflict(existing, &record.digest, &record.label),
    }
}

/// A dataset of the same name exists: the same one (bytes and label) is
/// answered as it is, any other is `409 dataset_exists`.
fn existing_or_conflict(
    existing: DatasetRecord,
    digest: &Digest,
    label: &[String],
) -> ApiResult<(bool, DatasetRecord)> {
    if existing.digest == *digest && existing.label == label {
        return Ok((false, existing));
    }
    Err(ApiError::conflict(
        "dataset_exists",
        format!(
            "dataset {:?} already exists ({}, label {}); datasets are immutable",
            existing.name,
            existing.digest,
            existing.label.join(",")
        ),
    ))
}

/// A dataset's bytes, for download.
pub struct DatasetContent {
    pub record: DatasetRecord,
    pub body: OutputStream,
}

/// A dataset's bytes, for its tenant's developers and the auditors granted
/// it (403 for others who see the record; 404 for those who do not),
/// checked against its digest and size while streamed: from the blob store
/// if there, else (fleet mode) from the first of its label zones' buckets
/// that serves them. None can: `503 dataset_unavailable` + Retry-After.
pub async fn content(s: &AppState, caller: &Caller, id: &str) -> ApiResult<DatasetContent> {
    let d = get(s, caller, id)?;
    if !caller.reads_outputs(s, &d.tenant_id)? {
        return Err(ApiError::forbidden(
            "dataset bytes are released only to the owning tenant and its auditors",
        ));
    }
    if !d.zone_stored {
        match tokio::fs::File::open(s.blobs.path(&d.digest)).await {
            Ok(f) => {
                let body = checked_stream(f, d.digest, d.size);
                return Ok(DatasetContent { record: d, body });
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ApiError::internal(e));
            }
            // A fleet run's output stored as a dataset: in a zone bucket.
            Err(_) => {}
        }
    }
    let Some(fleet) = s.fleet.as_ref() else {
        return Err(ApiError::unavailable(
            "dataset_unavailable",
            format!(
                "dataset {:?} is kept in the object stores of its zones ({}) and this server is \
                 not connected to the fleet (start it with --nats)",
                d.name,
                d.label.join(",")
            ),
            60,
        ));
    };
    match fleet.dataset(&d.label, &d.digest, d.size).await {
        Ok(body) => Ok(DatasetContent { record: d, body }),
        Err(e) => {
            tracing::error!(dataset = %d.id, "reading the dataset from its zones: {e:#}");
            Err(ApiError::unavailable(
                "dataset_unavailable",
                format!(
                    "dataset {:?} could not be read from the object store of any of its zones ({})",
                    d.name,
                    d.label.join(",")
                ),
                5,
            ))
        }
    }
}

/// The tenants' datasets the caller reads.
pub fn list(s: &AppState, caller: &Caller, tenant: Option<&str>) -> ApiResult<Vec<DatasetRecord>> {
    let mut out = Vec::new();
    for t in caller.readable_tenants(s, tenant)? {
        out.extend(s.datasets.list(&t)?);
    }
    Ok(out)
}

/// A dataset by id, if the caller reads its tenant's records.
pub fn get(s: &AppState, caller: &Caller, id: &str) -> ApiResult<DatasetRecord> {
    let d = s
        .datasets
        .get(id)?
        .ok_or_else(|| ApiError::not_found("dataset"))?;
    if caller.reads_records(s, &d.tenant_id)? {
        Ok(d)
    } else {
        Err(ApiError::not_found("dataset"))
    }
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

/// Dataset blobs are never written again: make them read-only on disk
/// (0400: the kasbah user's only), so a hard link into a run's `/datasets`
/// cannot be written even by mistake.
pub fn seal_blob(s: &AppState, digest: &Digest) {
    let path = s.blobs.path(digest);
    if let Err(e) = crate::at_rest::seal(&path) {
        tracing::warn!("making {} read-only: {e}", path.display());
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
            let digest = parse_digest(r)?;
            let mut all = s.datasets.by_digest(tenant, &digest)?;
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
            s.datasets.by_name(tenant, r)?
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

/// Whether `tenant` has a dataset named `name`.
pub fn exists(s: &AppState, tenant: &str, name: &str) -> ApiResult<Option<DatasetRecord>> {
    Ok(s.datasets.by_name(tenant, name)?)
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
