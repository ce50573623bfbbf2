//! The access rules that read state: which tenants' records, outputs and
//! objects a caller reaches. Objects outside the caller's reach are
//! reported as 404, never 403, so their existence does not leak.

use kasbah_core::api::{Role, Tenant};

use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

impl Caller {
    /// Who may read a tenant's modules and run records: admins, the tenant's
    /// developers, auditors granted that tenant. Operators see usage only.
    pub fn reads_records(&self, state: &AppState, tenant_id: &str) -> ApiResult<bool> {
        Ok(match self.role {
            Role::Admin => true,
            Role::Developer => self.subject == tenant_id,
            Role::Auditor => state.tenancy.auditor_can_read(&self.subject, tenant_id)?,
            Role::Operator => false,
        })
    }

    /// Who may download a tenant's run outputs (data under its residency
    /// label): its developers and the auditors granted it. Admins read
    /// records, not data.
    pub fn reads_outputs(&self, state: &AppState, tenant_id: &str) -> ApiResult<bool> {
        Ok(match self.role {
            Role::Developer => self.subject == tenant_id,
            Role::Auditor => state.tenancy.auditor_can_read(&self.subject, tenant_id)?,
            Role::Admin | Role::Operator => false,
        })
    }

    /// The tenant if the caller may see it at all, else 404.
    pub fn visible_tenant(&self, state: &AppState, tenant_id: &str) -> ApiResult<Tenant> {
        let t = state
            .tenancy
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
            .tenancy
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
            (Role::Auditor, None) => Ok(state.tenancy.auditor_grants(&self.subject)?),
            (Role::Admin, None) => Ok(state
                .tenancy
                .tenants(None)?
                .into_iter()
                .map(|t| t.id)
                .collect()),
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
