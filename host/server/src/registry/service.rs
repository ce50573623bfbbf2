//! The module registry's rules: who publishes (a tenant's developers), how
//! large a module may be (the policy's `max_module_bytes`, within the
//! server's), what a module must be (a component exporting the pipeline
//! world whose imports the tenant's policy grants and this host links).
//! A refusal for imports is a policy decision and is audited. Signatures:
//! `signing.rs`. No HTTP here.

use std::sync::Arc;

use kasbah_core::Digest;
use kasbah_core::api::{ModuleRecord, PolicyRecord, Role};
use kasbah_runtime::LoadError;

use super::signing::{self, Requirement, Signatures};
use super::storage::ModuleStore;
use crate::audit::storage::AuditStore;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now_ms;
use crate::runs::fleet::{OutputStream, checked_stream};
use crate::state::AppState;
use crate::tenancy::service::policy;
use crate::validate::{ModuleRef, parse_module_ref, valid_name};

/// A publish that passed the checks made before its bytes are read.
pub struct Publish {
    tenant: String,
    name: String,
    version: String,
    policy: Arc<PolicyRecord>,
    /// Most bytes the module may have.
    pub max: u64,
    /// What the tenant's policy demands of signatures, and what came.
    requirement: Option<Requirement>,
    signatures: Signatures,
}

/// Only developer tokens publish (checked before anything else).
pub fn may_publish(caller: &Caller) -> ApiResult<()> {
    caller.require(
        &[Role::Developer],
        "publish modules (use a tenant developer token)",
    )
}

/// The checks before the upload: caller, name, version, the tenant's
/// policy, the signatures' shape (`signatures`: the header values).
pub fn plan<'a>(
    s: &AppState,
    caller: &Caller,
    name: &str,
    version: &str,
    signatures: impl ExactSizeIterator<Item = &'a [u8]>,
) -> ApiResult<Publish> {
    may_publish(caller)?;
    let name = valid_name(name)?.to_string();
    let version = valid_name(version)?.to_string();
    let policy = policy(s, &caller.subject)?;
    let max = policy
        .policy
        .limits
        .max_module_bytes
        .min(s.config.max_module_bytes);
    let signatures = signing::parse(signatures)?;
    let requirement = signing::requirement(s, &caller.subject, &policy)?;
    Ok(Publish {
        tenant: caller.subject.clone(),
        name,
        version,
        policy,
        max,
        requirement,
        signatures,
    })
}

/// Before the upload is read: enough valid signatures, whatever bytes
/// they name (the exact check follows in [`publish`]).
pub async fn check_signatures_early(s: &AppState, p: &Publish) -> ApiResult<()> {
    signing::check(s, &p.tenant, p.requirement.as_ref(), &p.signatures, None)
        .await
        .map(drop)
}

/// Count a refused publish (by code) and pass its error on.
pub fn refused(s: &AppState, code: &'static str, e: ApiError) -> ApiError {
    s.metrics
        .publishes_refused
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: code.to_string(),
        })
        .inc();
    e
}

/// The refusal of an upload past [`Publish::max`].
pub fn too_large(s: &AppState, p: &Publish) -> ApiError {
    refused(
        s,
        "module_too_large",
        ApiError::too_large(
            "module_too_large",
            format!("module exceeds the limit of {} bytes", p.max),
        ),
    )
}

/// Validate the uploaded bytes (streamed to `tmp`, hashed to `digest`),
/// then store and record the module. `Ok((true, _))`: newly published;
/// `Ok((false, _))`: identical bytes already were.
pub async fn publish(
    s: &AppState,
    p: Publish,
    digest: Digest,
    size: u64,
    tmp: tempfile::NamedTempFile,
) -> ApiResult<(bool, ModuleRecord)> {
    if size == 0 {
        return Err(refused(
            s,
            "empty_module",
            ApiError::unprocessable("empty_module", "the upload is empty"),
        ));
    }
    // Signed by enough listed, unrevoked keys: these bytes, not others.
    let signers = signing::check(
        s,
        &p.tenant,
        p.requirement.as_ref(),
        &p.signatures,
        Some(&digest),
    )
    .await?;
    // Validate: a component exporting the pipeline world, imports granted.
    let bytes = std::fs::read(tmp.path()).map_err(ApiError::internal)?;
    let runtime = s.runtime.clone();
    let module = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| {
            let code = match e {
                LoadError::NotAComponent => "not_a_component",
                LoadError::MissingExport => "missing_export",
                LoadError::Invalid(_) => "invalid_module",
            };
            refused(s, code, ApiError::unprocessable(code, e.to_string()))
        })?;
    let not_granted = p
        .policy
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
                &p.tenant,
                Some(digest),
                "publish",
                &format!("imports_not_granted: {message}"),
            )
            .await
        {
            tracing::error!("auditing a refused publish: {e}");
        }
        return Err(refused(
            s,
            "imports_not_granted",
            ApiError::unprocessable("imports_not_granted", message),
        ));
    }

    s.blobs.commit(tmp, &digest).map_err(ApiError::internal)?;
    let record = ModuleRecord {
        digest,
        tenant_id: p.tenant,
        name: p.name,
        version: p.version,
        size,
        imports: module.imports().to_vec(),
        created_at: now_ms(),
        signers,
    };
    let envelopes = if record.signers.is_empty() {
        None
    } else {
        p.signatures.to_json()
    };
    match s.modules.insert_module(&record, envelopes).await? {
        Ok(stored) if stored.created_at == record.created_at => {
            s.metrics.modules_published.inc();
            Ok((true, stored))
        }
        Ok(existing) => Ok((false, existing)),
        Err(other) => Err(ApiError::conflict(
            "version_exists",
            format!(
                "{}@{} is already published with other bytes ({other}); modules are immutable",
                record.name, record.version
            ),
        )),
    }
}

/// The tenants' modules the caller reads.
pub fn modules(
    s: &AppState,
    caller: &Caller,
    tenant: Option<&str>,
) -> ApiResult<Vec<ModuleRecord>> {
    let tenants = caller.readable_tenants(s, tenant)?;
    Ok(s.modules.modules(&tenants)?)
}

/// The tenant's module `r` names, for running it: a digest (cached:
/// modules are immutable), `name@version`, or `name` (the version the
/// tenant published last). Unknown → 404 `not_found`.
pub fn resolve(s: &AppState, tenant: &str, r: &ModuleRef) -> ApiResult<Arc<ModuleRecord>> {
    let found = match r {
        ModuleRef::Digest(d) => s.modules.module_cached(tenant, d)?,
        ModuleRef::Name { name, version } => s
            .modules
            .module_by_name(tenant, name, version.as_deref())?
            .map(Arc::new),
    };
    found.ok_or_else(|| ApiError::not_found(&format!("module {r}")))
}

/// The module `reference` names among `tenants`. A digest: the first
/// tenant's that has it (a module's bytes are the same for all). A name:
/// exactly one tenant may have it, else 422 `ambiguous_module` (an admin
/// or auditor reading several tenants passes `tenant`).
fn find(s: &AppState, tenants: &[String], reference: &str) -> ApiResult<ModuleRecord> {
    let r = parse_module_ref(reference)?;
    let mut found: Vec<ModuleRecord> = Vec::new();
    for t in tenants {
        let m = match &r {
            ModuleRef::Digest(d) => s.modules.module(t, d)?,
            ModuleRef::Name { name, version } => {
                s.modules.module_by_name(t, name, version.as_deref())?
            }
        };
        if let Some(m) = m {
            if matches!(r, ModuleRef::Digest(_)) {
                return Ok(m);
            }
            found.push(m);
        }
    }
    match found.len() {
        0 => Err(ApiError::not_found(&format!("module {r}"))),
        1 => Ok(found.remove(0)),
        _ => {
            let tenants: Vec<&str> = found.iter().map(|m| m.tenant_id.as_str()).collect();
            Err(ApiError::unprocessable(
                "ambiguous_module",
                format!(
                    "module {r} is published by several tenants ({}); pass ?tenant= or the digest",
                    tenants.join(", ")
                ),
            ))
        }
    }
}

/// A module by reference (digest, `name@version`, `name`) among the
/// tenants the caller reads.
pub fn module(
    s: &AppState,
    caller: &Caller,
    reference: &str,
    tenant: Option<&str>,
) -> ApiResult<ModuleRecord> {
    find(s, &caller.readable_tenants(s, tenant)?, reference)
}

/// A module's bytes, for its tenant's developers and the auditors granted
/// it (404 for everyone else, admins included: they read records, not
/// code), checked against its digest and size while streamed.
pub async fn content(
    s: &AppState,
    caller: &Caller,
    reference: &str,
    tenant: Option<&str>,
) -> ApiResult<(ModuleRecord, OutputStream)> {
    let mut code_readers = Vec::new();
    for t in caller.readable_tenants(s, tenant)? {
        if caller.reads_outputs(s, &t)? {
            code_readers.push(t);
        }
    }
    let m = find(s, &code_readers, reference)?;
    let f = tokio::fs::File::open(s.blobs.path(&m.digest))
        .await
        .map_err(ApiError::internal)?;
    let body = checked_stream(f, m.digest, m.size);
    Ok((m, body))
}

/// The DSSE envelopes a signed module's publish carried (an empty array
/// for a module published without verified signers), for whoever reads the
/// module's record.
pub fn signatures(
    s: &AppState,
    caller: &Caller,
    digest: &str,
    tenant: Option<&str>,
) -> ApiResult<serde_json::Value> {
    let m = module(s, caller, digest, tenant)?;
    match s.modules.module_signatures(&m.tenant_id, &m.digest)? {
        Some(text) => serde_json::from_str(&text).map_err(ApiError::internal),
        None => Ok(serde_json::Value::Array(Vec::new())),
    }
}
