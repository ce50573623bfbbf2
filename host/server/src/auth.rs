//! Authentication (bearer tokens, stored hashed) and the access rules every
//! handler applies. Objects outside the caller's reach are reported as 404,
//! never 403, so their existence does not leak.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use kasbah_core::api::{Role, Tenant};

use crate::AppState;
use crate::db::{Caller, TokenCheck};
use crate::error::{ApiError, ApiResult};

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("missing `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("malformed Authorization header"))?;
        match state.db.caller(token).await? {
            TokenCheck::Valid(c) => Ok(c),
            TokenCheck::Unknown => Err(ApiError::unauthenticated("unknown token")),
            // Distinct codes: they tell the holder whether to renew or to
            // ask why, and tell nobody else anything (it takes the secret
            // to get either answer).
            TokenCheck::Expired => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_expired",
                "this token has expired; ask for a new one",
            )),
            TokenCheck::Revoked => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_revoked",
                "this token has been revoked",
            )),
        }
    }
}

impl Caller {
    /// 403 unless the caller has one of `roles` (a role-level refusal: the
    /// caller knows the endpoint exists; no object is revealed).
    pub fn require(&self, roles: &[Role], action: &str) -> ApiResult<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "a {} token cannot {action}",
                self.role.as_str()
            )))
        }
    }

    /// Admins manage every tenant; operators their own.
    pub fn manages(&self, t: &Tenant) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Operator => t.operator_id.as_deref() == Some(self.subject.as_str()),
            _ => false,
        }
    }

    /// Who may read a tenant's modules and run records: admins, the tenant's
    /// developers, auditors granted that tenant. Operators see usage only.
    pub fn reads_records(&self, state: &AppState, tenant_id: &str) -> ApiResult<bool> {
        Ok(match self.role {
            Role::Admin => true,
            Role::Developer => self.subject == tenant_id,
            Role::Auditor => state.db.auditor_can_read(&self.subject, tenant_id)?,
            Role::Operator => false,
        })
    }

    /// Who may download a tenant's run outputs (data under its residency
    /// label): its developers and the auditors granted it. Admins read
    /// records, not data.
    pub fn reads_outputs(&self, state: &AppState, tenant_id: &str) -> ApiResult<bool> {
        Ok(match self.role {
            Role::Developer => self.subject == tenant_id,
            Role::Auditor => state.db.auditor_can_read(&self.subject, tenant_id)?,
            Role::Admin | Role::Operator => false,
        })
    }

    /// The tenant if the caller may see it at all, else 404.
    pub fn visible_tenant(&self, state: &AppState, tenant_id: &str) -> ApiResult<Tenant> {
        let t = state
            .db
            .tenant(tenant_id)?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        if self.manages(&t) || self.reads_records(state, tenant_id)? {
            Ok(t)
        } else {
            Err(ApiError::not_found("tenant"))
        }
    }

    /// The tenant if the caller manages it, else 404 (or 403 for roles that
    /// manage nothing).
    pub fn managed_tenant(&self, state: &AppState, tenant_id: &str) -> ApiResult<Tenant> {
        self.require(&[Role::Admin, Role::Operator], "manage tenants")?;
        let t = state
            .db
            .tenant(tenant_id)?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        if self.manages(&t) {
            Ok(t)
        } else {
            Err(ApiError::not_found("tenant"))
        }
    }

    /// Tenants whose records this caller reads (for list endpoints).
    pub fn readable_tenants(
        &self,
        state: &AppState,
        requested: Option<&str>,
    ) -> ApiResult<Vec<String>> {
        match (self.role, requested) {
            (Role::Developer, None) => Ok(vec![self.subject.clone()]),
            (Role::Auditor, None) => Ok(state.db.auditor_grants(&self.subject)?),
            (Role::Admin, None) => Ok(state.db.tenants(None)?.into_iter().map(|t| t.id).collect()),
            (_, Some(t)) => {
                if self.reads_records(state, t)? {
                    Ok(vec![t.to_string()])
                } else {
                    Err(ApiError::not_found("tenant"))
                }
            }
            (Role::Operator, None) => Err(ApiError::forbidden(
                "operators see their tenants' usage, not their modules or runs",
            )),
        }
    }
}
