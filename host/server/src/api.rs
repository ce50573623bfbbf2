//! HTTP handlers. Every handler authenticates (the `Caller` extractor), then
//! applies the access rules in `auth.rs`; bad input is a 4xx with a stable
//! code, never a 500.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt;
use kasbah_core::api::*;
use kasbah_core::{Digest, Outcome, RunReport};
use kasbah_policy::{Bounds, Ceiling, DirGrant, Policy};
use kasbah_runtime::{LoadError, Request};
use serde::Deserialize;

use crate::AppState;
use crate::db::{Caller, Finished, INLINE_OUTPUT_MAX, NewRun, NewToken, Period, now_ms};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::scheduler::{Admission, Refusal};
use crate::tokens;

// ---- identity ---------------------------------------------------------------

#[utoipa::path(get, path = "/v1/whoami", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        role: caller.role,
        subject: caller.subject,
    })
}

// ---- operators ----------------------------------------------------------------

#[utoipa::path(post, path = "/v1/operators", request_body = CreateOperator,
    responses((status = 201, body = Operator), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "`name_taken`"), (status = 422, body = ErrorBody)))]
pub async fn create_operator(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateOperator>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Operator>)> {
    caller.require(&[Role::Admin], "create operators")?;
    let Json(req) = body.map_err(json_error)?;
    let name = valid_name(&req.name)?;
    let ceiling = req.ceiling.unwrap_or_else(Ceiling::standard);
    check_ceiling(&ceiling, &s.config.zones.node)?;
    let node = &s.config.zones.node;
    for z in &req.zones {
        // Node zones are checked zone names: membership is the whole check.
        if !node.contains(z) {
            return Err(ApiError::unprocessable(
                "invalid_zones",
                format!(
                    "zones: {z:?} is not a zone this node serves ({})",
                    node.join(", ")
                ),
            ));
        }
    }
    let mut zones = req.zones;
    zones.sort();
    zones.dedup();
    let op =
        s.db.create_operator(name, &ceiling, req.max_tenants, zones)
            .await
            .map_err(|e| {
                if e.is_unique_violation() {
                    ApiError::conflict("name_taken", format!("an operator named {name:?} exists"))
                } else {
                    e.into()
                }
            })?;
    Ok((StatusCode::CREATED, Json(op)))
}

#[utoipa::path(get, path = "/v1/operators", responses((status = 200, body = Vec<Operator>)))]
pub async fn list_operators(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Operator>>> {
    match caller.role {
        Role::Admin => Ok(Json(s.db.operators()?)),
        Role::Operator => Ok(Json(s.db.operator(&caller.subject)?.into_iter().collect())),
        _ => Err(ApiError::forbidden(
            "only admins and operators list operators",
        )),
    }
}

#[utoipa::path(put, path = "/v1/operators/{id}/ceiling", request_body(content = Object, description = "The operator's new ceiling (see CreateOperator.ceiling)"),
    responses((status = 200, body = Operator), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// Replace an operator's ceiling (admins only). Its tenants' stored
/// policies are not re-checked: the new ceiling bounds their next change.
pub async fn put_operator_ceiling(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Ceiling>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<Operator>> {
    caller.require(&[Role::Admin], "set operator ceilings")?;
    let Json(ceiling) = body.map_err(json_error)?;
    check_ceiling(&ceiling, &s.config.zones.node)?;
    if !s.db.set_operator_ceiling(&id, &ceiling).await? {
        return Err(ApiError::not_found("operator"));
    }
    let op =
        s.db.operator(&id)?
            .ok_or_else(|| ApiError::not_found("operator"))?;
    Ok(Json(op))
}

#[utoipa::path(post, path = "/v1/operators/{id}/tokens", request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_ttl`")))]
pub async fn create_operator_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<CreateToken>>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.require(&[Role::Admin], "create operator tokens")?;
    s.db.operator(&id)?
        .ok_or_else(|| ApiError::not_found("operator"))?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    let token =
        s.db.create_token(
            NewToken {
                role: Role::Operator,
                subject: &id,
                name: req.name.as_deref(),
                expires_at,
                tenants: Vec::new(),
            },
            Some(&caller),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>, description = "Metadata (never the secret) of the tokens the caller manages: admins every token, operators their tenants' and their auditors'; newest first, at most 1000"),
        (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(tokens::list(&caller, &s.db)?))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (`tk_…`)")),
    responses((status = 200, body = TokenInfo, description = "Revoked (idempotent): refused from the next request on"),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody, description = "no such token, or one the caller does not manage")))]
pub async fn revoke_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenInfo>> {
    Ok(Json(tokens::revoke(&caller, &s.db, &id).await?))
}

// ---- tenants & policies -------------------------------------------------------

#[utoipa::path(post, path = "/v1/tenants", request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 422, body = ErrorBody)))]
pub async fn create_tenant(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateTenant>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    caller.require(&[Role::Admin, Role::Operator], "create tenants")?;
    let Json(req) = body.map_err(json_error)?;
    let name = valid_name(&req.name)?;
    let operator = match (caller.role, req.operator_id) {
        (Role::Operator, Some(op)) if op != caller.subject => {
            return Err(ApiError::not_found("operator"));
        }
        (Role::Operator, _) => Some(caller.subject.clone()),
        (_, op) => op,
    };
    let operator = match operator {
        Some(id) => Some(
            s.db.operator(&id)?
                .ok_or_else(|| ApiError::not_found("operator"))?,
        ),
        None => None,
    };
    // A zoned operator's tenant created without a policy gets the
    // operator's zones (the default policy's "every node zone" may exceed them).
    let policy = req.policy.unwrap_or_else(|| Policy {
        zones: operator
            .as_ref()
            .map(|o| o.zones.iter().cloned().collect())
            .unwrap_or_default(),
        ..Policy::default()
    });
    check_policy(&policy, operator.as_ref(), caller.role, &[])?;
    let (tenant, _policy) =
        s.db.create_tenant(name, operator.as_ref(), &policy, &set_by(&caller))
            .await?
            .map_err(|m| ApiError::unprocessable("tenant_quota_exceeded", m))?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(get, path = "/v1/tenants", responses((status = 200, body = Vec<Tenant>)))]
pub async fn list_tenants(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Tenant>>> {
    Ok(Json(match caller.role {
        Role::Admin => s.db.tenants(None)?,
        Role::Operator => s.db.tenants(Some(&caller.subject))?,
        Role::Developer => s.db.tenant(&caller.subject)?.into_iter().collect(),
        Role::Auditor => {
            let mut v = Vec::new();
            for t in s.db.auditor_grants(&caller.subject)? {
                v.extend(s.db.tenant(&t)?);
            }
            v
        }
    }))
}

#[utoipa::path(get, path = "/v1/tenants/{id}", responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
pub async fn get_tenant(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(caller.visible_tenant(&s, &id)?))
}

#[utoipa::path(get, path = "/v1/tenants/{id}/policy", responses((status = 200, body = PolicyRecord), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PolicyRecord>> {
    caller.visible_tenant(&s, &id)?;
    let p =
        s.db.current_policy(&id)?
            .ok_or_else(|| ApiError::not_found("policy"))?;
    Ok(Json(p))
}

#[utoipa::path(get, path = "/v1/tenants/{id}/policy/versions",
    responses((status = 200, body = Vec<PolicyRecord>, description = "Every version, oldest first, with who set it"), (status = 404, body = ErrorBody)))]
pub async fn policy_versions(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<PolicyRecord>>> {
    caller.visible_tenant(&s, &id)?;
    Ok(Json(s.db.policy_versions(&id)?))
}

/// Who a policy version is recorded as set by: `admin` or the operator's id.
fn set_by(caller: &Caller) -> String {
    match caller.role {
        Role::Admin => "admin".to_string(),
        _ => caller.subject.clone(),
    }
}

#[utoipa::path(put, path = "/v1/tenants/{id}/policy", request_body(content = Object, description = "A capability policy (JSON). \
    Sent by an operator without a `files` key, the admin's host-directory grants of the current version are carried forward; \
    with `files`, each entry must be one of them (kept, or narrowed to `ro`)."),
    responses((status = 200, body = PolicyRecord, description = "The new version, or the current one with `unchanged: true` when identical"),
        (status = 422, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn put_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<PolicyRecord>> {
    let tenant = caller.managed_tenant(&s, &id)?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("invalid_request", "policy body is not UTF-8"))?;
    // serde would also read a struct from a JSON array: a policy is an object.
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::unprocessable(
            "invalid_policy",
            "a policy is a JSON object",
        ));
    }
    let mut policy = Policy::from_json(text)
        .map_err(|e| ApiError::unprocessable("invalid_policy", e.to_string()))?;
    let current = s.db.current_policy(&id)?;
    let admin_files: &[DirGrant] = current.as_ref().map_or(&[], |c| &c.policy.files);
    if caller.role != Role::Admin && !admin_files.is_empty() && !has_files_key(text) {
        // Operators cannot grant host directories, so a policy of theirs
        // without `files` leaves the admin's as they are.
        policy.files = admin_files.to_vec();
    }
    let operator = match &tenant.operator_id {
        Some(op) => s.db.operator(op)?,
        None => None,
    };
    check_policy(&policy, operator.as_ref(), caller.role, admin_files)?;
    let record = s.db.set_policy(&id, &policy, &set_by(&caller)).await?;
    if !record.unchanged {
        s.forget_policy(&id);
    }
    Ok(Json(record))
}

/// The policy JSON (already parsed as a policy, so an object) names `files`.
fn has_files_key(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|m| m.contains_key("files"))
}

#[utoipa::path(post, path = "/v1/tenants/{id}/tokens", request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_ttl`")))]
pub async fn create_tenant_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<CreateToken>>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.managed_tenant(&s, &id)?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    let token =
        s.db.create_token(
            NewToken {
                role: Role::Developer,
                subject: &id,
                name: req.name.as_deref(),
                expires_at,
                tenants: vec![id.clone()],
            },
            Some(&caller),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

// ---- auditors -------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/auditors", request_body = CreateAuditor,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "a tenant that does not exist or (operators) is not the caller's"),
        (status = 422, body = ErrorBody)))]
pub async fn create_auditor(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateAuditor>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.require(&[Role::Admin, Role::Operator], "create auditors")?;
    let Json(req) = body.map_err(json_error)?;
    let name = valid_name(&req.name)?;
    if req.tenants.len() > MAX_AUDITOR_TENANTS {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("an auditor is granted at most {MAX_AUDITOR_TENANTS} tenants"),
        ));
    }
    // Operators: their own tenants only (others are 404, as everywhere).
    for t in &req.tenants {
        caller.managed_tenant(&s, t)?;
    }
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    let operator = (caller.role == Role::Operator).then_some(caller.subject.as_str());
    let (_, token) =
        s.db.create_auditor(name, &req.tenants, operator, expires_at, &caller)
            .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

/// Most tenants one auditor is granted at creation.
const MAX_AUDITOR_TENANTS: usize = 1000;

// ---- modules --------------------------------------------------------------------

/// How much of a refused upload is read and discarded before answering.
pub(crate) const DRAIN_LIMIT: u64 = 64 << 20;

/// Read and discard up to `limit` bytes of a request body.
pub(crate) async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}

/// Why [`receive_upload`] stored nothing.
pub(crate) enum UploadRefused {
    /// Over `max` bytes (declared, or found while streaming).
    TooLarge,
    Failed(ApiError),
}

/// Stream an upload to a temp file in the blob store while hashing it,
/// storing at most `max` bytes. The rest of an oversize body is read and
/// discarded (up to [`DRAIN_LIMIT`]) so the client gets the 413 instead of a
/// reset connection; a declared `Content-Length` past that is refused at once.
pub(crate) async fn receive_upload(
    s: &AppState,
    headers: &HeaderMap,
    body: Body,
    max: u64,
) -> Result<(Digest, u64, tempfile::NamedTempFile), UploadRefused> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max.saturating_add(DRAIN_LIMIT)) {
        return Err(UploadRefused::TooLarge);
    }
    let failed = |e: ApiError| UploadRefused::Failed(e);
    let mut w = s
        .blobs
        .writer()
        .map_err(|e| failed(ApiError::internal(e)))?;
    let mut stream = body.into_data_stream();
    let mut over = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            failed(ApiError::bad_request(
                "invalid_request",
                format!("upload failed: {e}"),
            ))
        })?;
        if over > 0 || w.size() + chunk.len() as u64 > max {
            over += chunk.len() as u64;
            if over > DRAIN_LIMIT {
                break;
            }
            continue;
        }
        w.write(&chunk).map_err(|e| failed(ApiError::internal(e)))?;
    }
    if over > 0 {
        return Err(UploadRefused::TooLarge);
    }
    Ok(s.blobs.finish(w))
}

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

#[utoipa::path(post, path = "/v1/modules", params(PublishParams),
    request_body(content = Vec<u8>, content_type = "application/wasm", description = "The component bytes, streamed"),
    responses((status = 201, body = ModuleRecord), (status = 200, body = ModuleRecord, description = "identical bytes already published"),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn publish_module(
    State(s): State<AppState>,
    caller: Caller,
    params: Result<Query<PublishParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<ModuleRecord>)> {
    // Refusals before the upload is read still read (and discard) a bounded
    // amount of it, so the client sees the error instead of a reset.
    let checked = (|| {
        caller.require(
            &[Role::Developer],
            "publish modules (use a tenant developer token)",
        )?;
        let Query(p) =
            params.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
        let name = valid_name(&p.name)?.to_string();
        let version = valid_name(&p.version)?.to_string();
        let policy = s.policy(&caller.subject)?;
        Ok::<_, ApiError>((name, version, policy))
    })();
    let (name, version, policy) = match checked {
        Ok(v) => v,
        Err(e) => {
            drain(body, DRAIN_LIMIT).await;
            return Err(e);
        }
    };
    let tenant = caller.subject.clone();
    let max = policy
        .policy
        .limits
        .max_module_bytes
        .min(s.config.max_module_bytes);

    let refused = |code: &'static str, e: ApiError| {
        s.metrics
            .publishes_refused
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: code.to_string(),
            })
            .inc();
        e
    };

    let (digest, size, tmp) = match receive_upload(&s, &headers, body, max).await {
        Ok(upload) => upload,
        Err(UploadRefused::TooLarge) => {
            return Err(refused(
                "module_too_large",
                ApiError::too_large(
                    "module_too_large",
                    format!("module exceeds the limit of {max} bytes"),
                ),
            ));
        }
        Err(UploadRefused::Failed(e)) => return Err(e),
    };
    if size == 0 {
        return Err(refused(
            "empty_module",
            ApiError::unprocessable("empty_module", "the upload is empty"),
        ));
    }

    // Validate: a component exporting the pipeline world, imports granted.
    let bytes = std::fs::read(tmp.path()).map_err(ApiError::internal)?;
    let runtime = s.runtime.clone();
    let module = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            LoadError::NotAComponent => refused(
                "not_a_component",
                ApiError::unprocessable("not_a_component", e.to_string()),
            ),
            LoadError::MissingExport => refused(
                "missing_export",
                ApiError::unprocessable("missing_export", e.to_string()),
            ),
            LoadError::Invalid(_) => refused(
                "invalid_module",
                ApiError::unprocessable("invalid_module", e.to_string()),
            ),
        })?;
    let not_granted = policy
        .policy
        .refused_imports(module.imports().iter().map(String::as_str));
    let import_refusal = if !not_granted.is_empty() {
        let list: Vec<String> = not_granted
            .iter()
            .map(|r| format!("{} ({})", r.import, r.reason))
            .collect();
        Some(format!(
            "the tenant's policy does not grant: {}",
            list.join(", ")
        ))
    } else {
        module
            .link_error()
            .map(|e| format!("this host cannot link the module: {e}"))
    };
    if let Some(message) = import_refusal {
        // The refusal is a policy decision: audit it (durably, before
        // answering). If the log cannot record it, the publish is refused
        // all the same.
        if let Err(e) =
            s.db.record_denial(
                &tenant,
                Some(digest),
                "publish",
                &format!("imports_not_granted: {message}"),
            )
            .await
        {
            tracing::error!("auditing a refused publish: {e}");
        }
        return Err(refused(
            "imports_not_granted",
            ApiError::unprocessable("imports_not_granted", message),
        ));
    }

    s.blobs.commit(tmp, &digest).map_err(ApiError::internal)?;
    let record = ModuleRecord {
        digest,
        tenant_id: tenant,
        name,
        version,
        size,
        imports: module.imports().to_vec(),
        created_at: now_ms(),
    };
    match s.db.insert_module(&record).await? {
        Ok(stored) if stored.created_at == record.created_at => {
            s.metrics.modules_published.inc();
            Ok((StatusCode::CREATED, Json(stored)))
        }
        Ok(existing) => Ok((StatusCode::OK, Json(existing))),
        Err(other) => Err(ApiError::conflict(
            "version_exists",
            format!(
                "{}@{} is already published with other bytes ({other}); modules are immutable",
                record.name, record.version
            ),
        )),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantFilter {
    /// Restrict to one tenant (admins and auditors).
    pub tenant: Option<String>,
}

#[utoipa::path(get, path = "/v1/modules", params(TenantFilter), responses((status = 200, body = Vec<ModuleRecord>)))]
pub async fn list_modules(
    State(s): State<AppState>,
    caller: Caller,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Json<Vec<ModuleRecord>>> {
    let tenants = caller.readable_tenants(&s, f.tenant.as_deref())?;
    Ok(Json(s.db.modules(&tenants)?))
}

#[utoipa::path(get, path = "/v1/modules/{digest}", params(TenantFilter),
    responses((status = 200, body = ModuleRecord), (status = 404, body = ErrorBody)))]
pub async fn get_module(
    State(s): State<AppState>,
    caller: Caller,
    Path(digest): Path<String>,
    Query(f): Query<TenantFilter>,
) -> ApiResult<Json<ModuleRecord>> {
    let digest = parse_digest(&digest)?;
    for t in caller.readable_tenants(&s, f.tenant.as_deref())? {
        if let Some(m) = s.db.module(&t, &digest)? {
            return Ok(Json(m));
        }
    }
    Err(ApiError::not_found("module"))
}

// ---- runs -----------------------------------------------------------------------

#[utoipa::path(post, path = "/v1/runs", request_body = CreateRun,
    responses((status = 200, body = RunRecord, description = "finished (wait = true)"),
        (status = 202, body = RunRecord, description = "accepted; poll GET /v1/runs/{id}"),
        (status = 403, body = ErrorBody, description = "`residency_violation`: no zone satisfies the tenant's zones, the input label, every dataset label and (for GPU modules) a usable adapter"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_run(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateRun>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<RunRecord>)> {
    caller.require(
        &[Role::Developer],
        "start runs (use a tenant developer token)",
    )?;
    let Json(req) = body.map_err(json_error)?;
    let tenant = caller.subject.clone();
    let digest = parse_digest(&req.module)?;
    let input = match (req.input, req.input_base64) {
        (Some(t), None) => t.into_bytes(),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| {
                ApiError::unprocessable("invalid_request", format!("input_base64: {e}"))
            })?,
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "invalid_request",
                "give `input` or `input_base64`, not both",
            ));
        }
    };
    let module =
        s.db.module_cached(&tenant, &digest)?
            .ok_or_else(|| ApiError::not_found("module"))?;
    let policy = s.policy(&tenant)?;
    let limits = &policy.policy.limits;
    if input.len() as u64 > limits.max_input_bytes {
        return Err(ApiError::too_large(
            "input_too_large",
            format!(
                "input of {} bytes exceeds limits.max_input_bytes = {}",
                input.len(),
                limits.max_input_bytes
            ),
        ));
    }
    // Residency: refused (403, audited) before anything is admitted or run.
    let placed = crate::placement::place_run(
        &s,
        &tenant,
        &policy.policy,
        &module,
        &req.datasets,
        req.input_label.as_deref(),
        req.store_output_as.as_deref(),
    )
    .await?;
    let admission = match s.scheduler.admit(&tenant, limits.max_concurrent_runs) {
        Ok(a) => a,
        Err(r) => {
            let (reason, msg) = match r {
                Refusal::TenantLimit(n) => (
                    "tenant_limit",
                    format!(
                        "the tenant already has {n} runs in flight (limits.max_concurrent_runs)"
                    ),
                ),
                Refusal::ServerFull(n) => (
                    "server_full",
                    format!("the server is at capacity ({n} runs in flight)"),
                ),
            };
            s.metrics
                .runs_rejected
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: reason.into(),
                })
                .inc();
            if let Err(e) =
                s.db.record_denial(
                    &tenant,
                    Some(digest),
                    "run",
                    &format!("rate_limited: {reason}: {msg}"),
                )
                .await
            {
                tracing::error!("auditing a refused run: {e}");
            }
            return Err(ApiError::overloaded(msg, 1));
        }
    };

    let run = NewRun {
        id: crate::db::new_run_id(),
        tenant_id: tenant,
        module: digest,
        policy_version: policy.version,
        input_digest: Digest::of(&input),
        input_size: input.len() as u64,
        created_at: now_ms(),
        residency: Some(placed.row.clone()),
    };
    // The insert is queued, not waited for: the run starts while it
    // commits, and nobody hears of the run before it is durable (below).
    // The result's commit, later in the same writer, implies it.
    let inserted = s.db.insert_run(&run).await?;
    let mut request = Request::new(input);
    if let Some(ct) = req.content_type {
        request = request.with_content_type(ct);
    }
    request.metadata = req.metadata.into_iter().collect();

    let wait = Duration::from_millis(
        s.config
            .sync_wait_ms
            .min(limits.wall_time_ms.saturating_add(5_000)),
    );
    let task_state = s.clone();
    let policy_for_run = policy.clone();
    let accepted = crate::db::queued_record(&run);
    s.metrics.runs_in_flight.inc();
    let run_to_end = async move {
        let record = execute(&task_state, run, policy_for_run, request, admission, placed).await;
        task_state.metrics.runs_in_flight.dec();
        record
    };
    if req.wait {
        // The run executes in this handler's own task (no hand-off to another
        // task and back); past the wait, or if the client goes away, it goes
        // on detached.
        let mut running = Detached::new(run_to_end);
        if let Ok(done) = tokio::time::timeout(wait, &mut running).await {
            return match done {
                Some(record) => Ok((StatusCode::OK, Json(record))),
                None => Err(ApiError::internal("the run's result could not be stored")),
            };
        }
    } else {
        tokio::spawn(run_to_end);
    }
    inserted.durable().await?;
    let r = s.db.run(&accepted.id)?.unwrap_or(accepted);
    Ok((StatusCode::ACCEPTED, Json(r)))
}

/// A future polled in place by its caller that, if dropped before it
/// finished, is spawned to finish on its own: an admitted run is never
/// cancelled because its client stopped waiting or went away.
struct Detached<F: Future + Send + 'static>(Option<std::pin::Pin<Box<F>>>)
where
    F::Output: Send;

impl<F: Future + Send + 'static> Detached<F>
where
    F::Output: Send,
{
    fn new(f: F) -> Self {
        Detached(Some(Box::pin(f)))
    }
}

impl<F: Future + Send + 'static> Future for Detached<F>
where
    F::Output: Send,
{
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(f) = self.0.as_mut() else {
            return std::task::Poll::Pending;
        };
        let out = std::task::ready!(f.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(out)
    }
}

impl<F: Future + Send + 'static> Drop for Detached<F>
where
    F::Output: Send,
{
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(f);
                }
                Err(_) => tracing::error!("a run was dropped outside the runtime (shutdown)"),
            }
        }
    }
}

/// Run one admitted request to completion and store its record; returns
/// the stored record (`None` if storing failed, logged). Never panics on
/// guest behaviour; host faults end up in the record as outcomes.
async fn execute(
    s: &AppState,
    run: NewRun,
    policy: Arc<PolicyRecord>,
    request: Request,
    admission: Admission,
    placed: crate::placement::Placed,
) -> Option<RunRecord> {
    let _admission = admission;
    let worker = s.scheduler.worker().await?;
    let id = run.id.as_str();
    let digest = run.module;
    let started_at = s.db.mark_running(id);
    let report = match s.module(&digest).await {
        Ok(module) => {
            // On the guest threads, not this request's (see `GuestThreads`).
            let runtime = s.runtime.clone();
            let options = placed.options.clone();
            let run = s.guests.spawn(async move {
                runtime
                    .run_with(&module, &policy.policy, request, &options)
                    .await
            });
            match run {
                Some(handle) => match handle.await {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => {
                        host_failure(digest, format!("host could not run the module: {e}"))
                    }
                    Err(e) => host_failure(digest, format!("the run's task failed: {e}")),
                },
                None => host_failure(digest, "the guest runtime has shut down".into()),
            }
        }
        Err(e) => host_failure(digest, e),
    };
    // The worker permit bounds runs *executing*; storing the result waits on
    // a group commit (an fsync) and needs no CPU, so the next run starts now.
    // The admission slot, held until the run is recorded, still bounds the
    // runs in flight. (Holding the permit through the commit capped a
    // 2-core box at ~10k sync runs/s with 8 workers: ~19k without.)
    drop(worker);
    let output = match &report.outcome {
        Outcome::Ok { output } => {
            let d = Digest::of(&output.body);
            // An output stored as a dataset lives in the blob store.
            if placed.stores_output() {
                match s.blobs.put(&output.body) {
                    Ok(_) => crate::datasets::seal_blob(s, &d),
                    Err(e) => tracing::error!(run = id, "storing output as a dataset: {e}"),
                }
            }
            if output.body.len() <= INLINE_OUTPUT_MAX {
                Some((
                    d,
                    output.body.len() as u64,
                    output.content_type.clone(),
                    Some(output.body.clone()),
                ))
            } else {
                match s.blobs.put(&output.body) {
                    Ok(_) => Some((
                        d,
                        output.body.len() as u64,
                        output.content_type.clone(),
                        None,
                    )),
                    Err(e) => {
                        tracing::error!(run = id, "storing output: {e}");
                        None
                    }
                }
            }
        }
        _ => None,
    };
    s.metrics
        .runs
        .get_or_create(&crate::metrics::OutcomeLabel {
            outcome: report.outcome.kind().into(),
        })
        .inc();
    s.metrics
        .run_seconds
        .observe(report.usage.wall_time.as_secs_f64());
    match s
        .db
        .finish_run(&run, started_at, Finished { report, output })
        .await
    {
        Ok((record, _)) => Some(record),
        Err(e) => {
            tracing::error!(run = id, "finish run: {e}");
            None
        }
    }
}

fn host_failure(module: Digest, reason: String) -> RunReport {
    tracing::error!("{reason}");
    RunReport {
        module,
        outcome: Outcome::Denied { reason },
        usage: Default::default(),
        stdout: Default::default(),
        stderr: Default::default(),
        logs: Default::default(),
        denials: Vec::new(),
    }
}

#[utoipa::path(get, path = "/v1/runs/{id}", responses((status = 200, body = RunRecord), (status = 404, body = ErrorBody)))]
pub async fn get_run(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<RunRecord>> {
    let mut r = visible_run(&s, &caller, &id)?;
    redact_output(&s, &caller, &mut r)?;
    Ok(Json(r))
}

/// Output bytes (inline in the record) only for the callers who may
/// download them; others see the digest and size.
fn redact_output(s: &AppState, caller: &Caller, r: &mut RunRecord) -> ApiResult<()> {
    if !caller.reads_outputs(s, &r.tenant_id)?
        && let Some(out) = r.output.as_mut()
    {
        out.inline = None;
    }
    Ok(())
}

pub(crate) fn visible_run(s: &AppState, caller: &Caller, id: &str) -> ApiResult<RunRecord> {
    let r = s.db.run(id)?.ok_or_else(|| ApiError::not_found("run"))?;
    if caller.reads_records(s, &r.tenant_id)? {
        Ok(r)
    } else {
        Err(ApiError::not_found("run"))
    }
}

#[utoipa::path(get, path = "/v1/runs/{id}/output", responses((status = 200, content_type = "*/*", description = "The output bytes, with the content type the guest gave them"),
    (status = 403, body = ErrorBody, description = "only the owning tenant and its auditors download outputs"), (status = 404, body = ErrorBody)))]
pub async fn get_run_output(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let r = visible_run(&s, &caller, &id)?;
    if !caller.reads_outputs(&s, &r.tenant_id)? {
        return Err(ApiError::forbidden(
            "run outputs are released only to the owning tenant and its auditors",
        ));
    }
    let out = r.output.ok_or_else(|| ApiError::not_found("output"))?;
    let bytes = match s.db.run_output_inline(&id)? {
        Some(b) => b,
        None => s
            .blobs
            .get(&out.digest)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal(format!("output blob {} missing", out.digest)))?,
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = out.content_type.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = out.digest.to_string().parse() {
        headers.insert("x-kasbah-digest", v);
    }
    Ok((headers, bytes).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    pub tenant: Option<String>,
    /// At most this many, newest first (default 50, max 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/runs", params(RunsQuery), responses((status = 200, body = Vec<RunRecord>)))]
pub async fn list_runs(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Vec<RunRecord>>> {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let mut out = Vec::new();
    for t in caller.readable_tenants(&s, q.tenant.as_deref())? {
        out.extend(s.db.runs(&t, limit)?);
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at));
    out.truncate(limit as usize);
    for r in &mut out {
        redact_output(&s, &caller, r)?;
    }
    Ok(Json(out))
}

// ---- usage ----------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    pub tenant: Option<String>,
    /// `hour`, `day` (default) or `month`.
    pub period: Option<Period>,
    /// Unix ms, inclusive (default: 0).
    pub from: Option<i64>,
    /// Unix ms, exclusive (default: now + 1 day).
    pub to: Option<i64>,
}

#[utoipa::path(get, path = "/v1/usage", params(UsageQuery), responses((status = 200, body = Vec<UsageRow>)))]
pub async fn usage(
    State(s): State<AppState>,
    caller: Caller,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<UsageRow>>> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_request", e.body_text()))?;
    let tenants: Vec<String> = match (caller.role, q.tenant.as_deref()) {
        (Role::Admin, None) => s.db.tenants(None)?.into_iter().map(|t| t.id).collect(),
        (Role::Operator, None) => {
            s.db.tenants(Some(&caller.subject))?
                .into_iter()
                .map(|t| t.id)
                .collect()
        }
        (Role::Developer, None) => vec![caller.subject.clone()],
        (Role::Auditor, _) => return Err(ApiError::forbidden("auditors do not read usage")),
        (_, Some(t)) => vec![caller.visible_tenant(&s, t)?.id],
    };
    let rows = s.db.usage(
        &tenants,
        q.period.unwrap_or(Period::Day),
        q.from.unwrap_or(0),
        q.to.unwrap_or(now_ms() + 86_400_000),
    )?;
    Ok(Json(rows))
}

// ---- metrics --------------------------------------------------------------------

#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "application/openmetrics-text", description = "Prometheus metrics (OpenMetrics text)")))]
pub async fn metrics(State(s): State<AppState>, caller: Caller) -> ApiResult<Response> {
    caller.require(&[Role::Admin], "read metrics")?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response())
}

// ---- helpers --------------------------------------------------------------------

fn json_error(e: axum::extract::rejection::JsonRejection) -> ApiError {
    use axum::extract::rejection::JsonRejection::*;
    match e {
        JsonDataError(e) => ApiError::unprocessable("invalid_request", e.body_text()),
        MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected `Content-Type: application/json`",
        ),
        BytesRejection(e) => {
            let (status, text) = (e.status(), e.body_text());
            crate::error::body_error(status, text, &e)
        }
        other => ApiError::bad_request("invalid_request", other.body_text()),
    }
}

pub(crate) fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: kasbah_core::InvalidDigest| {
        ApiError::bad_request("invalid_digest", e.to_string())
    })
}

fn valid_name(n: &str) -> ApiResult<&str> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    if ok {
        Ok(n)
    } else {
        Err(ApiError::unprocessable(
            "invalid_name",
            format!("{n:?}: names are 1-128 characters of letters, digits and -_.+"),
        ))
    }
}

/// A ceiling an admin may give an operator: within the platform's hard
/// ceilings, GPU zones the node serves.
fn check_ceiling(c: &Ceiling, node: &[String]) -> ApiResult<()> {
    let mut problems = c.problems();
    if let Some(g) = &c.gpu {
        for z in g.zones.iter().filter(|z| !node.contains(z)) {
            problems.push(format!("gpu.zones: {z:?} is not a zone this node serves"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_ceiling",
            format!("invalid ceiling: {}", problems.join("; ")),
        ))
    }
}

/// A policy as its setter may give it: valid; for an operator's tenant,
/// every field within the operator's ceiling and zones (whoever sets it);
/// host directories only from admins, or kept from the admin's grants
/// (`admin_files`, the current version's) when an operator sets it.
fn check_policy(
    p: &Policy,
    operator: Option<&Operator>,
    setter: Role,
    admin_files: &[DirGrant],
) -> ApiResult<()> {
    p.validate()
        .map_err(|e| ApiError::unprocessable("invalid_policy", e.to_string()))?;
    let files = (setter != Role::Admin).then_some(admin_files);
    let excess = match operator {
        Some(op) => p.exceeding(
            &op.ceiling,
            Bounds {
                zones: &op.zones,
                files,
            },
        ),
        None => files.map(|f| p.files_beyond(f)).unwrap_or_default(),
    };
    if excess.is_empty() {
        return Ok(());
    }
    let parts: Vec<String> = excess.iter().map(|e| e.to_string()).collect();
    Err(ApiError::unprocessable(
        "policy_exceeds_ceiling",
        format!("exceeds the operator's ceiling: {}", parts.join("; ")),
    ))
}
