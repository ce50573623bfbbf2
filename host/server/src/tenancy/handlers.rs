//! Tenancy's HTTP handlers: identity, operators and their ceilings,
//! tenants and policies, auditors, tokens. Each parses the request, calls
//! `service.rs` (or `tokens.rs`) and answers; the rules live there.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use kasbah_core::api::{
    CreateAuditor, CreateOperator, CreateTenant, CreateToken, Operator, PolicyRecord, Role, Tenant,
    TokenCreated, TokenInfo, WhoAmI,
};
use kasbah_policy::Ceiling;

use super::{service, tokens};
use crate::caller::Caller;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::json_error;
use crate::state::AppState;

#[utoipa::path(get, tag = "api", path = "/v1/whoami", responses((status = 200, body = WhoAmI)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(WhoAmI {
        role: caller.role,
        subject: caller.subject,
    })
}

#[utoipa::path(post, tag = "api", path = "/v1/operators", request_body = CreateOperator,
    responses((status = 201, body = Operator), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody, description = "`name_taken`"), (status = 422, body = ErrorBody)))]
pub async fn create_operator(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateOperator>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Operator>)> {
    caller.require(&[Role::Admin], "create operators")?;
    let Json(req) = body.map_err(json_error)?;
    let op = service::create_operator(&s, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(op)))
}

#[utoipa::path(get, tag = "api", path = "/v1/operators", responses((status = 200, body = Vec<Operator>)))]
pub async fn list_operators(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Operator>>> {
    Ok(Json(service::operators(&s, &caller)?))
}

#[utoipa::path(put, tag = "api", path = "/v1/operators/{id}/ceiling", request_body(content = Object, description = "The operator's new ceiling (see CreateOperator.ceiling)"),
    responses((status = 200, body = Operator), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
/// Replace an operator's ceiling (admins only). Its tenants' stored
/// policies are not re-checked: the new ceiling bounds their next change.
pub async fn put_operator_ceiling(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<Json<Ceiling>, JsonRejection>,
) -> ApiResult<Json<Operator>> {
    caller.require(&[Role::Admin], "set operator ceilings")?;
    let Json(ceiling) = body.map_err(json_error)?;
    Ok(Json(service::set_ceiling(&s, &caller, &id, ceiling).await?))
}

#[utoipa::path(post, tag = "api", path = "/v1/operators/{id}/tokens", request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_ttl`")))]
pub async fn create_operator_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<CreateToken>>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let token = service::create_operator_token(&s, &caller, &id, req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>, description = "Metadata (never the secret) of the tokens the caller manages: admins every token, operators their tenants' and their auditors'; newest first, at most 1000"),
        (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    Ok(Json(tokens::list(&caller, &s.tenancy)?))
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
    Ok(Json(tokens::revoke(&caller, &s.tenancy, &id).await?))
}

#[utoipa::path(post, tag = "api", path = "/v1/tenants", request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 422, body = ErrorBody)))]
pub async fn create_tenant(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateTenant>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Tenant>)> {
    caller.require(&[Role::Admin, Role::Operator], "create tenants")?;
    let Json(req) = body.map_err(json_error)?;
    let tenant = service::create_tenant(&s, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

#[utoipa::path(get, tag = "api", path = "/v1/tenants", responses((status = 200, body = Vec<Tenant>)))]
pub async fn list_tenants(
    State(s): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Tenant>>> {
    Ok(Json(service::tenants(&s, &caller)?))
}

#[utoipa::path(get, tag = "api", path = "/v1/tenants/{id}", responses((status = 200, body = Tenant), (status = 404, body = ErrorBody)))]
pub async fn get_tenant(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Tenant>> {
    Ok(Json(caller.visible_tenant(&s, &id)?))
}

#[utoipa::path(get, tag = "api", path = "/v1/tenants/{id}/policy", responses((status = 200, body = PolicyRecord), (status = 404, body = ErrorBody)))]
pub async fn get_policy(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<PolicyRecord>> {
    Ok(Json(service::visible_policy(&s, &caller, &id)?))
}

#[utoipa::path(get, tag = "api", path = "/v1/tenants/{id}/policy/versions",
    responses((status = 200, body = Vec<PolicyRecord>, description = "Every version, oldest first, with who set it"), (status = 404, body = ErrorBody)))]
pub async fn policy_versions(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<PolicyRecord>>> {
    Ok(Json(service::policy_versions(&s, &caller, &id)?))
}

#[utoipa::path(put, tag = "api", path = "/v1/tenants/{id}/policy", request_body(content = Object, description = "A capability policy (JSON). \
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
    Ok(Json(service::set_policy(&s, &caller, &id, &body).await?))
}

#[utoipa::path(post, tag = "api", path = "/v1/tenants/{id}/tokens", request_body = CreateToken,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "`invalid_ttl`")))]
pub async fn create_tenant_token(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Option<Json<CreateToken>>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let req = body.map(|b| b.0).unwrap_or_default();
    let token = service::create_tenant_token(&s, &caller, &id, req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

#[utoipa::path(post, tag = "api", path = "/v1/auditors", request_body = CreateAuditor,
    responses((status = 201, body = TokenCreated), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "a tenant that does not exist or (operators) is not the caller's"),
        (status = 422, body = ErrorBody)))]
pub async fn create_auditor(
    State(s): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateAuditor>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    caller.require(&[Role::Admin, Role::Operator], "create auditors")?;
    let Json(req) = body.map_err(json_error)?;
    let token = service::create_auditor(&s, &caller, req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}
