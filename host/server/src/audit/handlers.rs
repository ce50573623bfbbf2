//! The audit log's HTTP handlers: key, checkpoint, entries, proofs,
//! receipts. The rules are in `service.rs`.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kasbah_audit::Receipt;
use kasbah_core::api::{AuditEntries, AuditReceipt, ConsistencyProof, InclusionProof};
use serde::Deserialize;

use super::{service, tiles};
use crate::auth::authenticate;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::query_error;
use crate::runs::service::visible_run;
use crate::state::AppState;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    q.map(|Query(t)| t).map_err(query_error)
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
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        service::checkpoint(&s)?,
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
    Ok(Json(service::entries(
        &s,
        &caller,
        q.start,
        q.end,
        q.tenant.as_deref(),
    )?))
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
    Ok(Json(service::inclusion(&s, q.index, q.size)?))
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
    Ok(Json(service::consistency(&s, q.old, q.new)?))
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
    Ok(Json(service::run_receipt(&s, &run)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReceiptQuery {
    /// The publishing tenant (admins and auditors reading several tenants).
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/modules/{digest}/receipt", tag = "audit", params(("digest" = String, Path, description = "The module: its digest (`sha256:…`), `name@version`, or `name` (the version its tenant published last)"), ReceiptQuery),
    responses((status = 200, body = AuditReceipt, description = "The module's `module_published` entry proven into the latest checkpoint"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody, description = "`invalid_module_ref`, `ambiguous_module`")))]
pub async fn module_receipt(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    q: Result<Query<ReceiptQuery>, QueryRejection>,
) -> ApiResult<Json<Receipt>> {
    let q = query(q)?;
    Ok(Json(service::module_receipt(
        &s,
        &caller,
        &digest,
        q.tenant.as_deref(),
    )?))
}

#[utoipa::path(get, path = "/v1/audit/entries/{index}/receipt", tag = "audit",
    params(("index" = u64, Path, description = "Entry index")),
    responses((status = 200, body = AuditReceipt, description = "Any entry the caller may read (e.g. a denial), proven into the latest checkpoint"),
        (status = 400, body = ErrorBody, description = "`invalid_request` (not a number)"),
        (status = 404, body = ErrorBody, description = "no such entry (past the end of the log), or another tenant's")))]
pub async fn entry_receipt(
    State(s): State<AppState>,
    caller: Caller,
    index: Result<Path<u64>, PathRejection>,
) -> ApiResult<Json<Receipt>> {
    let Path(index) = index.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    Ok(Json(service::entry_receipt(&s, &caller, index)?))
}

/// `Cache-Control` of the mutable checkpoint (C2SP: no caching beyond a
/// few seconds), of full tiles (immutable) and of partial ones.
const CHECKPOINT_CACHE: &str = "no-cache, max-age=0";
const FULL_TILE_CACHE: &str = "public, max-age=31536000, immutable";
const PARTIAL_TILE_CACHE: &str = "public, max-age=10";

/// The caller, when the configuration wants one for `path`.
async fn tile_caller(s: &AppState, headers: &HeaderMap, path: &str) -> ApiResult<()> {
    let caller = match tiles::required_role(s, path) {
        None => None,
        Some(_) => Some(authenticate(headers, s).await?),
    };
    tiles::authorize(s, path, caller.as_ref())
}

/// `GET /checkpoint` (C2SP tlog-tiles): the log's checkpoint with the
/// cosignatures collected so far. Not in the OpenAPI document: the format
/// is C2SP's. Public unless `audit_tiles_public = false`.
pub async fn tlog_checkpoint(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    tile_caller(&s, &headers, "checkpoint").await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, CHECKPOINT_CACHE),
        ],
        tiles::checkpoint(&s)?,
    )
        .into_response())
}

/// `GET /tile/<L>/<N>[.p/<W>]` and `GET /tile/entries/<N>[.p/<W>]` (C2SP
/// tlog-tiles): hash tiles of height 8 and entry bundles; 404 beyond the
/// tree, 400 for a path the spec does not allow.
pub async fn tlog_tile(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> ApiResult<Response> {
    tile_caller(&s, &headers, &path).await?;
    let t = tiles::tile(&s, &path)?;
    let public = tiles::required_role(&s, &path).is_none();
    let cache = match (t.full, public) {
        (true, true) => FULL_TILE_CACHE,
        (true, false) => "private, max-age=31536000, immutable",
        (false, true) => PARTIAL_TILE_CACHE,
        (false, false) => "private, max-age=10",
    };
    let mut resp = t.bytes.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kasbah_audit::{Entry, Log};

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
