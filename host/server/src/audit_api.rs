//! Audit log endpoints. The checkpoint, the log key and proofs are public
//! to any authenticated caller (they reveal hashes and sizes only); entries
//! are filtered to the tenants the caller reads (admins: all); receipts
//! follow the access rules of the run or module they are about.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kasbah_audit::{Entry, Hash, LogError, Receipt, TreeError};
use kasbah_core::api::{
    AuditEntries, AuditEntryRecord, AuditReceipt, ConsistencyProof, InclusionProof, Role, RunStatus,
};
use serde::Deserialize;

use crate::AppState;
use crate::api::{parse_digest, visible_run};
use crate::audit::{self, StoreError};
use crate::db::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => corrupt(m),
            StoreError::Sql(e) => e.into(),
        }
    }
}

fn corrupt(detail: impl std::fmt::Display) -> ApiError {
    tracing::error!("AUDIT LOG CORRUPT: {detail}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "audit_log_corrupt",
        format!("the stored audit log is inconsistent: {detail}"),
    )
}

fn tree_error(e: TreeError) -> ApiError {
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

fn log_error(e: LogError) -> ApiError {
    match e {
        LogError::Tree(e) => tree_error(e),
        e @ (LogError::EntryMismatch { .. } | LogError::ProofFailed { .. }) => corrupt(e),
        e => ApiError::internal(e),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))
}

fn b64(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(Hash::to_base64).collect()
}

#[utoipa::path(get, path = "/v1/audit/key", tag = "audit",
    responses((status = 200, content_type = "text/plain",
        description = "The log's verifier key (C2SP vkey `origin+keyid+base64`). Fetching it from the \
            server you are auditing is trust on first use: compare it with the one the operator \
            publishes out of band (`kasbah audit key --data-dir` on the host).")))]
pub async fn key(State(s): State<AppState>, _caller: Caller) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{}\n", s.audit.verifier()),
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, content_type = "text/plain",
        description = "The latest checkpoint: a C2SP tlog-checkpoint (origin, size, base64 root hash) \
            in a C2SP signed note, signed with the log's Ed25519 key.")))]
pub async fn checkpoint(State(s): State<AppState>, _caller: Caller) -> ApiResult<Response> {
    let signed =
        s.db.audit_read(|snap| s.audit.checkpoint(snap))?
            .map_err(log_error)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        signed.note,
    )
        .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntriesQuery {
    /// First index.
    pub start: u64,
    /// One past the last index (default: the log size). At most a page
    /// (the server's `audit_page`, 1000 by default) is returned: of indices
    /// for admins, of the caller's own entries for everyone else.
    pub end: Option<u64>,
    /// Only this tenant's entries.
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit/entries", tag = "audit", params(EntriesQuery),
    responses((status = 200, body = AuditEntries),
        (status = 400, body = ErrorBody, description = "`invalid_request`: bad numbers"),
        (status = 422, body = ErrorBody, description = "`invalid_request` (end before start) or `out_of_range` (start past the log)"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn entries(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<EntriesQuery>, QueryRejection>,
) -> ApiResult<Json<AuditEntries>> {
    let q = query(q)?;
    if q.end.is_some_and(|e| e < q.start) {
        return Err(ApiError::unprocessable(
            "invalid_request",
            "`end` is before `start`",
        ));
    }
    let filter = match (caller.role, q.tenant.as_deref()) {
        (Role::Admin, None) => None,
        (_, t) => Some(caller.readable_tenants(&s, t)?),
    };
    let page = s.config.audit_page.max(1);
    let limit = usize::try_from(page).unwrap_or(usize::MAX);
    let (size, end, rows) = s.db.audit_read(|snap| {
        let (c, size) = (snap.conn, snap.size);
        if q.start > size {
            return Err(ApiError::unprocessable(
                "out_of_range",
                format!(
                    "start {} is past the end of the log ({size} entries)",
                    q.start
                ),
            ));
        }
        let end = q.end.unwrap_or(size).min(size);
        Ok(match &filter {
            // Everything: a page of indices.
            None => {
                let end = end.min(q.start.saturating_add(page));
                (size, end, audit::entries(c, q.start..end, None, limit)?)
            }
            // The caller's tenants: up to a page of *their* entries, found
            // through the tenant index; `end` is where the next page starts.
            Some(ts) => {
                let rows = audit::entries(c, q.start..end, Some(ts), limit)?;
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
    Ok(Json(AuditEntries {
        size,
        start: q.start,
        end,
        entries,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InclusionQuery {
    /// Leaf index.
    pub index: u64,
    /// Tree size (that of a checkpoint).
    pub size: u64,
}

#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit", params(InclusionQuery),
    responses((status = 200, body = InclusionProof),
        (status = 400, body = ErrorBody, description = "`invalid_request`: bad numbers"),
        (status = 422, body = ErrorBody, description = "`out_of_range` (index >= size, size past the log)")))]
pub async fn inclusion(
    State(s): State<AppState>,
    _caller: Caller,
    q: Result<Query<InclusionQuery>, QueryRejection>,
) -> ApiResult<Json<InclusionProof>> {
    let q = query(q)?;
    let proof =
        s.db.audit_read(|snap| snap.log().inclusion_proof(q.index, q.size))?
            .map_err(tree_error)?;
    Ok(Json(InclusionProof {
        index: q.index,
        size: q.size,
        proof: b64(&proof),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistencyQuery {
    /// Old tree size (> 0).
    pub old: u64,
    /// New tree size (>= old).
    pub new: u64,
}

#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit", params(ConsistencyQuery),
    responses((status = 200, body = ConsistencyProof),
        (status = 400, body = ErrorBody, description = "`invalid_request`: bad numbers"),
        (status = 422, body = ErrorBody, description = "`invalid_request` (old = 0, old > new) or `out_of_range` (new past the log)")))]
pub async fn consistency(
    State(s): State<AppState>,
    _caller: Caller,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> ApiResult<Json<ConsistencyProof>> {
    let q = query(q)?;
    let proof =
        s.db.audit_read(|snap| snap.log().consistency_proof(q.old, q.new))?
            .map_err(tree_error)?;
    Ok(Json(ConsistencyProof {
        old: q.old,
        new: q.new,
        proof: b64(&proof),
    }))
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

#[utoipa::path(get, path = "/v1/runs/{id}/receipt", tag = "audit",
    responses((status = 200, body = AuditReceipt, description = "The run's `run_executed` entry proven into the latest checkpoint"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "`run_not_finished`")))]
pub async fn run_receipt(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Receipt>> {
    let run = visible_run(&s, &caller, &id)?;
    match receipt_for(&s, "run_executed", &id, &run.tenant_id)? {
        Some(r) => Ok(Json(r)),
        None if matches!(run.status, RunStatus::Queued | RunStatus::Running) => {
            Err(ApiError::conflict(
                "run_not_finished",
                "the run has not finished; its entry is appended when it does",
            ))
        }
        None => Err(ApiError::not_found("audit entry for this run")),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceiptQuery {
    /// The publishing tenant (admins and auditors reading several tenants).
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/modules/{digest}/receipt", tag = "audit", params(ReceiptQuery),
    responses((status = 200, body = AuditReceipt, description = "The module's `module_published` entry proven into the latest checkpoint"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn module_receipt(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    q: Result<Query<ReceiptQuery>, QueryRejection>,
) -> ApiResult<Json<Receipt>> {
    let q = query(q)?;
    let digest = parse_digest(&digest)?;
    for t in caller.readable_tenants(&s, q.tenant.as_deref())? {
        if s.db.module(&t, &digest)?.is_some() {
            return receipt_for(&s, "module_published", &digest.to_string(), &t)?
                .map(Json)
                .ok_or_else(|| ApiError::not_found("audit entry for this module"));
        }
    }
    Err(ApiError::not_found("module"))
}

#[utoipa::path(get, path = "/v1/audit/entries/{index}/receipt", tag = "audit",
    params(("index" = u64, Path, description = "Entry index")),
    responses((status = 200, body = AuditReceipt, description = "Any entry the caller may read (e.g. a denial), proven into the latest checkpoint"),
        (status = 400, body = ErrorBody, description = "`invalid_request` (not a number)"),
        (status = 404, body = ErrorBody, description = "no such entry (past the end of the log), or another tenant's")))]
pub async fn entry_receipt(
    State(s): State<AppState>,
    caller: Caller,
    index: Result<Path<u64>, axum::extract::rejection::PathRejection>,
) -> ApiResult<Json<Receipt>> {
    let Path(index) = index.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let readable = match caller.role {
        Role::Admin => None,
        _ => Some(caller.readable_tenants(&s, None)?),
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
        s.audit.receipt(snap, e).map(Json).map_err(log_error)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasbah_audit::Log;

    #[test]
    fn documented_receipt_shape_is_the_real_one() {
        let key = kasbah_audit::LogSigner::from_seed("kasbah.test/log", &[1; 32]).expect("key");
        let mut log = Log::new(kasbah_audit::MemoryStore::new());
        let a = log
            .append(&Entry::new(
                1,
                kasbah_audit::EntryBody::TenantCreated(kasbah_audit::TenantCreated {
                    tenant: "t".into(),
                    operator: String::new(),
                }),
            ))
            .expect("append");
        let cp = log.checkpoint(&key).expect("cp");
        let r = log.receipt(a.bytes, a.index, &cp).expect("receipt");
        let json = serde_json::to_string(&r).expect("json");
        let doc: AuditReceipt = serde_json::from_str(&json).expect("doc shape");
        let back: Receipt =
            serde_json::from_str(&serde_json::to_string(&doc).expect("json")).expect("back");
        assert_eq!(back, r);
    }
}
