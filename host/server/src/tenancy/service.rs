//! Tenancy's rules: who creates operators, tenants, auditors and tokens;
//! what ceiling an admin may give an operator and what policy its tenants
//! may get; who set each policy version. No HTTP here: `handlers.rs` parses
//! requests and calls these.

use std::sync::Arc;

use kasbah_core::api::{
    CreateAuditor, CreateOperator, CreateTenant, CreateToken, Operator, PolicyRecord, Role, Tenant,
    TokenCreated,
};
use kasbah_policy::{Bounds, Ceiling, DirGrant, Policy};

use super::storage::{NewToken, TenancyStore, TokenStore};
use super::tokens;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now_ms;
use crate::state::AppState;
use crate::validate::valid_name;

/// Most tenants one auditor is granted at creation.
const MAX_AUDITOR_TENANTS: usize = 1000;

/// The tenant's current policy (cached by the store), 404 if no tenant.
pub fn policy(s: &AppState, tenant: &str) -> ApiResult<Arc<PolicyRecord>> {
    s.tenancy
        .current_policy_cached(tenant)?
        .ok_or_else(|| ApiError::not_found("tenant"))
}

/// A new operator (admins only), with the standard ceiling unless given
/// one; its zones must be zones this node serves.
pub async fn create_operator(
    s: &AppState,
    caller: &Caller,
    req: CreateOperator,
) -> ApiResult<Operator> {
    caller.require(&[Role::Admin], "create operators")?;
    let name = valid_name(&req.name)?;
    let ceiling = req.ceiling.unwrap_or_else(Ceiling::standard);
    let node = &s.config.zones.node;
    check_ceiling(&ceiling, node)?;
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
    s.tenancy
        .create_operator(name, &ceiling, req.max_tenants, zones)
        .await
        .map_err(|e| {
            if e.is_unique_violation() {
                ApiError::conflict("name_taken", format!("an operator named {name:?} exists"))
            } else {
                e.into()
            }
        })
}

/// Admins see every operator, an operator itself.
pub fn operators(s: &AppState, caller: &Caller) -> ApiResult<Vec<Operator>> {
    match caller.role {
        Role::Admin => Ok(s.tenancy.operators()?),
        Role::Operator => Ok(s.tenancy.operator(&caller.subject)?.into_iter().collect()),
        _ => Err(ApiError::forbidden(
            "only admins and operators list operators",
        )),
    }
}

/// Replace an operator's ceiling (admins only). Its tenants' stored
/// policies are not re-checked: the new ceiling bounds their next change.
pub async fn set_ceiling(
    s: &AppState,
    caller: &Caller,
    id: &str,
    ceiling: Ceiling,
) -> ApiResult<Operator> {
    caller.require(&[Role::Admin], "set operator ceilings")?;
    check_ceiling(&ceiling, &s.config.zones.node)?;
    if !s.tenancy.set_operator_ceiling(id, &ceiling).await? {
        return Err(ApiError::not_found("operator"));
    }
    s.tenancy
        .operator(id)?
        .ok_or_else(|| ApiError::not_found("operator"))
}

/// A token for an operator (admins only).
pub async fn create_operator_token(
    s: &AppState,
    caller: &Caller,
    id: &str,
    req: CreateToken,
) -> ApiResult<TokenCreated> {
    caller.require(&[Role::Admin], "create operator tokens")?;
    s.tenancy
        .operator(id)?
        .ok_or_else(|| ApiError::not_found("operator"))?;
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    Ok(s.tenancy
        .create_token(
            NewToken {
                role: Role::Operator,
                subject: id,
                name: req.name.as_deref(),
                expires_at,
                tenants: Vec::new(),
            },
            Some(caller),
        )
        .await?)
}

/// A new tenant, by an admin (for any operator or none) or an operator
/// (its own), with policy version 1 within the operator's ceiling.
pub async fn create_tenant(s: &AppState, caller: &Caller, req: CreateTenant) -> ApiResult<Tenant> {
    caller.require(&[Role::Admin, Role::Operator], "create tenants")?;
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
            s.tenancy
                .operator(&id)?
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
    let (tenant, _policy) = s
        .tenancy
        .create_tenant(name, operator.as_ref(), &policy, &set_by(caller))
        .await?
        .map_err(|m| ApiError::unprocessable("tenant_quota_exceeded", m))?;
    Ok(tenant)
}

/// The tenants a caller sees: admins all, operators theirs, developers
/// their own, auditors those granted.
pub fn tenants(s: &AppState, caller: &Caller) -> ApiResult<Vec<Tenant>> {
    Ok(match caller.role {
        Role::Admin => s.tenancy.tenants(None)?,
        Role::Operator => s.tenancy.tenants(Some(&caller.subject))?,
        Role::Developer => s.tenancy.tenant(&caller.subject)?.into_iter().collect(),
        Role::Auditor => {
            let mut v = Vec::new();
            for t in s.tenancy.auditor_grants(&caller.subject)? {
                v.extend(s.tenancy.tenant(&t)?);
            }
            v
        }
    })
}

/// A tenant's current policy, for whoever sees the tenant.
pub fn visible_policy(s: &AppState, caller: &Caller, id: &str) -> ApiResult<PolicyRecord> {
    caller.visible_tenant(s, id)?;
    s.tenancy
        .current_policy(id)?
        .ok_or_else(|| ApiError::not_found("policy"))
}

/// Every policy version of a tenant, for whoever sees the tenant.
pub fn policy_versions(s: &AppState, caller: &Caller, id: &str) -> ApiResult<Vec<PolicyRecord>> {
    caller.visible_tenant(s, id)?;
    Ok(s.tenancy.policy_versions(id)?)
}

/// Set a tenant's policy from its JSON text (admins, or the tenant's
/// operator). Sent by an operator without a `files` key, the admin's
/// host-directory grants of the current version are carried forward.
pub async fn set_policy(
    s: &AppState,
    caller: &Caller,
    id: &str,
    body: &[u8],
) -> ApiResult<PolicyRecord> {
    let tenant = caller.managed_tenant(s, id)?;
    let text = std::str::from_utf8(body)
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
    let current = s.tenancy.current_policy(id)?;
    let admin_files: &[DirGrant] = current.as_ref().map_or(&[], |c| &c.policy.files);
    if caller.role != Role::Admin && !admin_files.is_empty() && !has_files_key(text) {
        // Operators cannot grant host directories, so a policy of theirs
        // without `files` leaves the admin's as they are.
        policy.files = admin_files.to_vec();
    }
    let operator = match &tenant.operator_id {
        Some(op) => s.tenancy.operator(op)?,
        None => None,
    };
    check_policy(&policy, operator.as_ref(), caller.role, admin_files)?;
    Ok(s.tenancy.set_policy(id, &policy, &set_by(caller)).await?)
}

/// A developer token for a tenant (its managers only).
pub async fn create_tenant_token(
    s: &AppState,
    caller: &Caller,
    id: &str,
    req: CreateToken,
) -> ApiResult<TokenCreated> {
    caller.managed_tenant(s, id)?;
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    Ok(s.tenancy
        .create_token(
            NewToken {
                role: Role::Developer,
                subject: id,
                name: req.name.as_deref(),
                expires_at,
                tenants: vec![id.to_string()],
            },
            Some(caller),
        )
        .await?)
}

/// An auditor granted some tenants (an operator: its own only), and its
/// token.
pub async fn create_auditor(
    s: &AppState,
    caller: &Caller,
    req: CreateAuditor,
) -> ApiResult<TokenCreated> {
    caller.require(&[Role::Admin, Role::Operator], "create auditors")?;
    let name = valid_name(&req.name)?;
    if req.tenants.len() > MAX_AUDITOR_TENANTS {
        return Err(ApiError::unprocessable(
            "invalid_request",
            format!("an auditor is granted at most {MAX_AUDITOR_TENANTS} tenants"),
        ));
    }
    // Operators: their own tenants only (others are 404, as everywhere).
    for t in &req.tenants {
        caller.managed_tenant(s, t)?;
    }
    let expires_at = tokens::expires_at(&s.config, req.ttl_seconds, now_ms())?;
    let operator = (caller.role == Role::Operator).then_some(caller.subject.as_str());
    let (_, token) = s
        .tenancy
        .create_auditor(name, &req.tenants, operator, expires_at, caller)
        .await?;
    Ok(token)
}

/// Who a policy version is recorded as set by: `admin` or the operator's id.
fn set_by(caller: &Caller) -> String {
    match caller.role {
        Role::Admin => "admin".to_string(),
        _ => caller.subject.clone(),
    }
}

/// The policy JSON (already parsed as a policy, so an object) names `files`.
fn has_files_key(text: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
        .is_ok_and(|m| m.contains_key("files"))
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
