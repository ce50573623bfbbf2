//! The audit log's read rules: the checkpoint, the key and proofs are public
//! to any authenticated caller (they reveal hashes and sizes only); entries
//! are filtered to the tenants the caller reads (admins: all); receipts
//! follow the access rules of the run or module they are about. Also the
//! refusals every domain records as `denial` entries. No HTTP here.

use base64::Engine as _;
use kasbah_audit::{Entry, Hash, LogError, Receipt, TreeError};
use kasbah_core::Digest;
use kasbah_core::api::{
    AuditEntries, AuditEntryRecord, ConsistencyProof, InclusionProof, Role, RunRecord, RunStatus,
};

use super::log::{self as audit, StoreError};
use super::storage::AuditStore;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => corrupt(m),
            StoreError::Sql(e) => e.into(),
        }
    }
}

pub fn corrupt(detail: impl std::fmt::Display) -> ApiError {
    tracing::error!("AUDIT LOG CORRUPT: {detail}");
    ApiError::fault(
        "audit_log_corrupt",
        format!("the stored audit log is inconsistent: {detail}"),
    )
}

pub fn tree_error(e: TreeError) -> ApiError {
    match e {
        TreeError::IndexOutOfRange { .. } | TreeError::SizeOutOfRange { .. } => {
            ApiError::unprocessable("out_of_range", e.to_string())
        }
        TreeError::BadConsistencyRange { .. } => {
            ApiError::unprocessable("invalid_request", e.to_string())
        }
        TreeError::MissingNode(..) => corrupt(e),
        TreeError::Store(_) | TreeError::Full => ApiError::internal(e),
    }
}

pub fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::Tree(e) => tree_error(e),
        e @ (LogError::EntryMismatch { .. } | LogError::ProofFailed { .. }) => corrupt(e),
        e => ApiError::internal(e),
    }
}

fn b64(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_base64).collect()
}

/// The latest checkpoint, as a signed note: with witnesses configured, the
/// newest one they cosigned, with their cosignature lines (see
/// `AuditKey::served`).
pub fn checkpoint(s: &AppState) -> ApiResult<String> {
    let signed =
        s.db.audit_read(|snap| s.audit.served(snap))?
            .map_err(log_error)?;
    Ok(signed.note)
}

/// A page of entries from `start` (to `end`, default the log's size): of
/// indices for admins reading every tenant, of the caller's tenants'
/// entries for everyone else (`tenant`: one of them).
pub fn entries(
    s: &AppState,
    caller: &Caller,
    start: u64,
    end: Option<u64>,
    tenant: Option<&str>,
) -> ApiResult<AuditEntries> {
    if end.is_some_and(|e| e < start) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`end` is before `start`",
        ));
    }
    let filter = match (caller.role, tenant) {
        (Role::Admin, None) => None,
        (_, t) => Some(caller.readable_tenants(s, t)?),
    };
    let page = s.config.audit_page.max(1);
    let limit = usize::try_from(page).unwrap_or(usize::MAX);
    let (size, end, rows) = s.db.audit_read(|snap| {
        let (c, size) = (snap.conn, snap.size);
        if start > size {
            return Err(ApiError::unprocessable(
                "out_of_range",
                format!("start {start} is past the end of the log ({size} entries)"),
            ));
        }
        let end = end.unwrap_or(size).min(size);
        Ok(match &filter {
            // Everything: a page of indices.
            None => {
                let end = end.min(start.saturating_add(page));
                (size, end, audit::entries(c, start..end, None, limit)?)
            }
            // The caller's tenants: up to a page of *their* entries, found
            // through the tenant index; `end` is where the next page starts.
            Some(ts) => {
                let rows = audit::entries(c, start..end, Some(ts), limit)?;
                let end = match rows.last() {
                    Some(last) if rows.len() == limit => last.index + 1,
                    _ => end,
                };
                (size, end, rows)
            }
        })
    })??;
    let entries = rows
        .into_iter()
        .map(|e| AuditEntryRecord {
            index: e.index,
            entry: Entry::decode(&e.bytes)
                .ok()
                .and_then(|d| serde_json::to_value(d).ok())
                .unwrap_or(serde_json::Value::Null),
            bytes: base64::engine::general_purpose::STANDARD.encode(&e.bytes),
        })
        .collect();
    Ok(AuditEntries {
        size,
        start,
        end,
        entries,
    })
}

/// Proof that entry `index` is in the tree of size `size`.
pub fn inclusion(s: &AppState, index: u64, size: u64) -> ApiResult<InclusionProof> {
    let proof =
        s.db.audit_read(|snap| snap.log().inclusion_proof(index, size))?
            .map_err(tree_error)?;
    Ok(InclusionProof {
        index,
        size,
        proof: b64(&proof),
    })
}

/// Proof that the tree of size `old` is a prefix of the tree of size `new`.
pub fn consistency(s: &AppState, old: u64, new: u64) -> ApiResult<ConsistencyProof> {
    let proof =
        s.db.audit_read(|snap| snap.log().consistency_proof(old, new))?
            .map_err(tree_error)?;
    Ok(ConsistencyProof {
        old,
        new,
        proof: b64(&proof),
    })
}

/// The receipt of the entry of `kind` about `subject` for `tenant`.
fn receipt_for(
    s: &AppState,
    kind: &str,
    subject: &str,
    tenant: &str,
) -> ApiResult<Option<Receipt>> {
    s.db.audit_read(|snap| {
        let Some(e) = audit::entry_about(snap.conn, kind, subject, tenant)? else {
            return Ok(None);
        };
        s.audit.receipt(snap, e).map(Some).map_err(log_error)
    })?
}

/// The receipt of a run's `run_executed` entry (the caller already may
/// see the run: `runs::service::visible_run`).
pub fn run_receipt(s: &AppState, run: &RunRecord) -> ApiResult<Receipt> {
    match receipt_for(s, "run_executed", &run.id, &run.tenant_id)? {
        Some(r) => Ok(r),
        None if matches!(run.status, RunStatus::Queued | RunStatus::Running) => {
            Err(ApiError::conflict(
                "run_not_finished",
                "the run has not finished; its entry is appended when it does",
            ))
        }
        None => Err(ApiError::not_found("audit entry for this run")),
    }
}

/// The receipt of a module's `module_published` entry, among the tenants
/// the caller reads (`reference`: digest, `name@version` or `name`).
pub fn module_receipt(
    s: &AppState,
    caller: &Caller,
    reference: &str,
    tenant: Option<&str>,
) -> ApiResult<Receipt> {
    let m = crate::registry::service::module(s, caller, reference, tenant)?;
    receipt_for(s, "module_published", &m.digest.to_string(), &m.tenant_id)?
        .ok_or_else(|| ApiError::not_found("audit entry for this module"))
}

/// The receipt of any entry the caller may read (its tenants' entries;
/// admins every entry).
pub fn entry_receipt(s: &AppState, caller: &Caller, index: u64) -> ApiResult<Receipt> {
    let readable = match caller.role {
        Role::Admin => None,
        _ => Some(caller.readable_tenants(s, None)?),
    };
    s.db.audit_read(|snap| {
        // Past the end is a client's mistake, not corruption (an index near
        // 2^64 does not even fit in SQLite's integers).
        if index >= snap.size {
            return Err(ApiError::not_found("audit entry"));
        }
        let Some(e) = audit::entries(snap.conn, index..index.saturating_add(1), None, 1)?.pop()
        else {
            return Err(ApiError::not_found("audit entry"));
        };
        if readable.as_ref().is_some_and(|ts| !ts.contains(&e.tenant)) {
            return Err(ApiError::not_found("audit entry"));
        }
        s.audit.receipt(snap, e).map_err(log_error)
    })?
}

/// Refuse with `403 residency_violation`, recorded as a denial entry first.
pub async fn residency_violation(
    s: &AppState,
    tenant: &str,
    module: Option<Digest>,
    action: &str,
    message: String,
) -> ApiError {
    if let Err(e) =
        s.db.record_denial(
            tenant,
            module,
            action,
            &format!("residency_violation: {message}"),
        )
        .await
    {
        tracing::error!("auditing a residency refusal: {e}");
    }
    if action == "run" {
        s.metrics
            .runs_rejected
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: "residency_violation".into(),
            })
            .inc();
    }
    ApiError::refused("residency_violation", message)
}
