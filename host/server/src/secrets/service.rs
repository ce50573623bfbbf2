//! Secrets' rules: a tenant's developers set, list and delete its
//! secrets (other roles 403; another tenant's secret is simply not there:
//! 404); names `[a-z0-9_-]{1,64}`, values at most [`MAX_SECRET_BYTES`];
//! runs get the secrets their policy grants, decrypted here. Nothing in
//! this file puts a value in an error, a log line or a record. No HTTP.

use kasbah_core::api::{Role, RunSecret, SecretRecord};
use kasbah_policy::{Policy, is_secret_name};
use kasbah_runtime::SecretValue;
use zeroize::Zeroizing;

use super::storage::{MAX_TENANT_SECRETS, SecretStore};
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Largest secret value (bytes).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

/// Only developer tokens manage secrets (checked before anything else).
pub fn may_manage(caller: &Caller) -> ApiResult<()> {
    caller.require(
        &[Role::Developer],
        "manage secrets (use a tenant developer token)",
    )
}

/// `422 invalid_secret_name` unless `name` is `[a-z0-9_-]{1,64}`.
pub fn check_name(name: &str) -> ApiResult<()> {
    if is_secret_name(name) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(
            "invalid_secret_name",
            "secret names are [a-z0-9_-]{1,64}",
        ))
    }
}

/// `413 secret_too_large`.
pub fn too_large() -> ApiError {
    ApiError::too_large(
        "secret_too_large",
        format!("a secret value is at most {MAX_SECRET_BYTES} bytes"),
    )
}

/// Store `value` as a new version of the caller's tenant's secret `name`.
pub async fn set(
    s: &AppState,
    caller: &Caller,
    name: &str,
    value: Zeroizing<Vec<u8>>,
) -> ApiResult<SecretRecord> {
    may_manage(caller)?;
    check_name(name)?;
    if value.len() > MAX_SECRET_BYTES {
        return Err(too_large());
    }
    let tenant = caller.subject.clone();
    let state = s.clone();
    let (t, n) = (tenant.clone(), name.to_string());
    let sealer = Box::new(move |version: u64| state.secret_key.seal(&t, &n, version, &value));
    match s.secrets.set(&tenant, name, sealer).await? {
        Some(r) => Ok(r),
        None => Err(ApiError::conflict(
            "too_many_secrets",
            format!("a tenant keeps at most {MAX_TENANT_SECRETS} secrets; delete one first"),
        )),
    }
}

/// The caller's tenant's secrets: names and versions.
pub fn list(s: &AppState, caller: &Caller) -> ApiResult<Vec<SecretRecord>> {
    may_manage(caller)?;
    Ok(s.secrets.list(&caller.subject)?)
}

/// Delete the caller's tenant's secret `name` (404 if it has none).
pub async fn delete(s: &AppState, caller: &Caller, name: &str) -> ApiResult<SecretRecord> {
    may_manage(caller)?;
    check_name(name)?;
    s.secrets
        .delete(&caller.subject, name)
        .await?
        .ok_or_else(|| ApiError::not_found("secret"))
}

/// The secrets `policy` grants, decrypted for one of `tenant`'s runs, and
/// what its record says of them (names, versions). Refused before anything
/// is recorded: a granted secret the tenant has not set (`422
/// secret_missing`), and any grant on a fleet control plane (`422
/// secrets_on_fleet`: values never go into NATS).
pub fn for_run(
    s: &AppState,
    tenant: &str,
    policy: &Policy,
) -> ApiResult<(Vec<SecretValue>, Vec<RunSecret>)> {
    if policy.secrets.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    if s.fleet.is_some() {
        return Err(ApiError::unprocessable(
            "secrets_on_fleet",
            "the tenant's policy grants secrets, and this server runs pipelines on fleet \
             workers, which secrets are not delivered to; remove the [secrets] grants or run \
             on a server without --nats",
        ));
    }
    let mut values = Vec::with_capacity(policy.secrets.len());
    let mut used = Vec::with_capacity(policy.secrets.len());
    for (name, grant) in &policy.secrets {
        let Some(stored) = s.secrets.sealed(tenant, name)? else {
            return Err(ApiError::unprocessable(
                "secret_missing",
                format!(
                    "the policy grants the secret {name:?}, which is not set \
                     (kasbah secret set {name})"
                ),
            ));
        };
        let version = stored.record.version;
        let value = s
            .secret_key
            .open(tenant, name, version, &stored.sealed)
            .map_err(|e| {
                ApiError::internal(format!(
                    "secret {name:?} version {version} of tenant {tenant}: {e}"
                ))
            })?;
        values.push(SecretValue {
            name: name.clone(),
            version,
            env: grant.env.clone(),
            file: grant.file.clone(),
            value,
        });
        used.push(RunSecret {
            name: name.clone(),
            version,
        });
    }
    Ok((values, used))
}
