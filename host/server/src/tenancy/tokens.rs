//! Token lifecycle rules (issue 13): expiry, who may list and revoke which
//! tokens. No HTTP here; `handlers.rs` calls these.
//!
//! Who manages a token is who may create it: admins every token; an
//! operator its tenants' developer tokens and the tokens of auditors it
//! created; developers and auditors none (they cannot create tokens). A
//! token outside the caller's reach is 404, like every other object.

use kasbah_core::api::{Role, TokenInfo};

use super::storage::{TenancyStore, TokenStore};
use crate::caller::Caller;
use crate::config::ServerConfig;
use crate::error::{ApiError, ApiResult};

/// When a token created now with `ttl_seconds` (default: the server's)
/// expires, in ms since the Unix epoch; 422 `invalid_ttl` outside
/// `1..=token_max_ttl_seconds`.
pub fn expires_at(config: &ServerConfig, ttl_seconds: Option<u64>, now_ms: i64) -> ApiResult<i64> {
    let max = config.token_max_ttl_seconds;
    let ttl = ttl_seconds.unwrap_or(config.token_ttl_seconds);
    if ttl == 0 || ttl > max {
        return Err(ApiError::unprocessable(
            "invalid_ttl",
            format!("ttl_seconds must be between 1 and {max} (the server's token_max_ttl_seconds)"),
        ));
    }
    let ms = i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_add(ms))
}

/// The default lifetime in ms (bootstrap admin token, tokens from before
/// expiry existed).
pub fn default_ttl_ms(config: &ServerConfig) -> i64 {
    i64::try_from(config.token_ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The tenants a token reaches: its tenant (developer), its grants
/// (auditor), none (operator, admin). Its `credential` entries go to them.
pub fn reached_tenants(
    db: &(impl TenancyStore + TokenStore),
    role: Role,
    subject: &str,
) -> ApiResult<Vec<String>> {
    Ok(match role {
        Role::Developer => vec![subject.to_string()],
        Role::Auditor => db.auditor_grants(subject)?,
        Role::Admin | Role::Operator => Vec::new(),
    })
}

/// Whether `caller` manages `t` (may see its metadata and revoke it).
fn manages(
    caller: &Caller,
    db: &(impl TenancyStore + TokenStore),
    t: &TokenInfo,
) -> ApiResult<bool> {
    Ok(match (caller.role, t.role) {
        (Role::Admin, _) => true,
        (Role::Operator, Role::Developer) => db
            .tenant(&t.subject)?
            .is_some_and(|tenant| tenant.operator_id.as_deref() == Some(caller.subject.as_str())),
        (Role::Operator, Role::Auditor) => {
            db.auditor_operator(&t.subject)?.as_deref() == Some(caller.subject.as_str())
        }
        _ => false,
    })
}

/// The tokens `caller` manages (metadata only, newest first, bounded).
pub fn list(caller: &Caller, db: &(impl TenancyStore + TokenStore)) -> ApiResult<Vec<TokenInfo>> {
    caller.require(&[Role::Admin, Role::Operator], "list tokens")?;
    Ok(match caller.role {
        Role::Admin => db.tokens(None)?,
        _ => db.tokens(Some(&caller.subject))?,
    })
}

/// Revoke token `id` if `caller` manages it (404 otherwise; 403 for roles
/// that manage no tokens). Idempotent: revoking a revoked token changes
/// nothing and writes no entry. Takes effect on the next request.
pub async fn revoke(
    caller: &Caller,
    db: &(impl TenancyStore + TokenStore),
    id: &str,
) -> ApiResult<TokenInfo> {
    caller.require(&[Role::Admin, Role::Operator], "revoke tokens")?;
    let t = db.token(id)?.ok_or_else(|| ApiError::not_found("token"))?;
    if !manages(caller, db, &t)? {
        return Err(ApiError::not_found("token"));
    }
    let tenants = reached_tenants(db, t.role, &t.subject)?;
    let (t, _) = db
        .revoke_token(id, tenants, caller)
        .await?
        .ok_or_else(|| ApiError::not_found("token"))?;
    Ok(t)
}
