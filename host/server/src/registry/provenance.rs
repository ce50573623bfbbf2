//! Module provenance (issue 16): an in-toto Statement v1 with a SLSA
//! provenance v1 predicate, as `kasbah build` writes it, published next to
//! the module it describes and recorded in the log (entry type 11).
//!
//! Rules: the tenant's developers publish it for one of the tenant's
//! modules (others' modules are 404); at most [`MAX_PROVENANCE_BYTES`];
//! JSON whose `_type` is the in-toto Statement v1 and `predicateType` SLSA
//! provenance v1; exactly one subject, whose sha256 is the module's digest;
//! `source` and `Cargo.lock` materials with sha256 digests; a toolchain
//! (the `rustc` material's version, and the target) of at most
//! [`MAX_TOOLCHAIN`] bytes. One statement per module: the same bytes again
//! are answered with the record (200), other bytes are 409. The statement
//! is served back byte for byte to the tenant's developers and the auditors
//! granted the tenant. No HTTP here.

use kasbah_core::Digest;
use kasbah_core::api::{ProvenanceRecord, Role};
use serde_json::Value;

use super::storage::ModuleStore;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now_ms;
use crate::state::AppState;
use crate::validate::parse_digest;

/// Largest statement accepted (a `kasbah build` statement is ~2.5 KiB).
pub const MAX_PROVENANCE_BYTES: usize = 64 * 1024;
/// Longest toolchain description recorded in the log.
pub const MAX_TOOLCHAIN: usize = 256;
pub use kasbah_audit::dsse::{SLSA_PROVENANCE_V1, STATEMENT_TYPE};

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::unprocessable("invalid_provenance", m)
}

/// A `sha256` digest field of the statement (64 lowercase hex digits).
fn sha256_of(v: &Value, what: &str) -> ApiResult<Digest> {
    let hex = v["digest"]["sha256"]
        .as_str()
        .ok_or_else(|| invalid(format!("{what} has no digest.sha256")))?;
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(format!(
            "{what}'s digest.sha256 is not 64 lowercase hex digits"
        )));
    }
    format!("sha256:{hex}")
        .parse()
        .map_err(|_| invalid(format!("{what}'s digest.sha256 is not a digest")))
}

/// What the log records of a statement, checked against the module.
pub fn check(tenant: &str, module: &Digest, bytes: &[u8]) -> ApiResult<ProvenanceRecord> {
    if bytes.len() > MAX_PROVENANCE_BYTES {
        return Err(ApiError::too_large(
            "provenance_too_large",
            format!("a provenance statement is at most {MAX_PROVENANCE_BYTES} bytes"),
        ));
    }
    let st: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("the statement is not JSON: {e}")))?;
    if st["_type"] != STATEMENT_TYPE {
        return Err(invalid(format!("_type must be {STATEMENT_TYPE}")));
    }
    if st["predicateType"] != SLSA_PROVENANCE_V1 {
        return Err(invalid(format!(
            "predicateType must be {SLSA_PROVENANCE_V1}"
        )));
    }
    let subjects = st["subject"]
        .as_array()
        .ok_or_else(|| invalid("subject must be an array"))?;
    let [subject] = subjects.as_slice() else {
        return Err(invalid(format!(
            "the statement must have exactly one subject (the module), not {}",
            subjects.len()
        )));
    };
    let named = sha256_of(subject, "the subject")?;
    if named != *module {
        return Err(ApiError::unprocessable(
            "provenance_subject_mismatch",
            format!("the statement's subject is {named}, not the module {module}"),
        ));
    }
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .ok_or_else(|| invalid("predicate.buildDefinition.resolvedDependencies is missing"))?;
    let dep = |name: &str| {
        deps.iter()
            .find(|d| d["name"] == name)
            .ok_or_else(|| invalid(format!("no resolvedDependencies entry named {name:?}")))
    };
    let source = sha256_of(dep("source")?, "the source material")?;
    let cargo_lock = sha256_of(dep("Cargo.lock")?, "the Cargo.lock material")?;
    let rustc = dep("rustc")?["annotations"]["version"]
        .as_str()
        .ok_or_else(|| invalid("the rustc material has no annotations.version"))?;
    let target = st["predicate"]["buildDefinition"]["externalParameters"]["target"]
        .as_str()
        .ok_or_else(|| invalid("externalParameters.target is missing"))?;
    let toolchain = format!("{rustc}; target {target}");
    if toolchain.len() > MAX_TOOLCHAIN || toolchain.chars().any(char::is_control) {
        return Err(invalid(format!(
            "the toolchain (rustc version and target) must be at most {MAX_TOOLCHAIN} bytes of printable text"
        )));
    }
    Ok(ProvenanceRecord {
        module: *module,
        tenant_id: tenant.to_string(),
        statement: Digest::of(bytes),
        source,
        cargo_lock,
        toolchain,
        size: bytes.len() as u64,
        created_at: now_ms(),
    })
}

/// Publish a statement for one of the caller's tenant's modules.
/// `Ok((true, _))`: recorded now; `Ok((false, _))`: these bytes already were.
pub async fn publish(
    s: &AppState,
    caller: &Caller,
    digest: &str,
    bytes: &[u8],
) -> ApiResult<(bool, ProvenanceRecord)> {
    caller.require(
        &[Role::Developer],
        "publish provenance (use a tenant developer token)",
    )?;
    let module = parse_digest(digest)?;
    if s.modules.module(&caller.subject, &module)?.is_none() {
        return Err(ApiError::not_found("module"));
    }
    let record = check(&caller.subject, &module, bytes)?;
    match s.modules.insert_provenance(&record, bytes).await? {
        Ok(stored) if stored.created_at == record.created_at => Ok((true, stored)),
        Ok(existing) => Ok((false, existing)),
        Err(other) => Err(ApiError::conflict(
            "provenance_exists",
            format!("{module} already has a provenance statement ({other}); it is immutable"),
        )),
    }
}

/// The statement's bytes, for the tenant's developers and granted auditors.
pub fn statement(
    s: &AppState,
    caller: &Caller,
    digest: &str,
    tenant: Option<&str>,
) -> ApiResult<Vec<u8>> {
    let module = parse_digest(digest)?;
    for t in caller.readable_tenants(s, tenant)? {
        if !caller.reads_outputs(s, &t)? {
            continue;
        }
        if let Some((_, bytes)) = s.modules.provenance(&t, &module)? {
            return Ok(bytes);
        }
    }
    Err(ApiError::not_found("provenance"))
}
