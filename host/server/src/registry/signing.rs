//! Module signatures at publish, and signing-key revocation (issue 16).
//!
//! A publish carries its signatures as `Kasbah-Signature` request headers,
//! one DSSE envelope each (base64 of its JSON; see
//! [`kasbah_audit::dsse`]), so the module body stays a plain streamed
//! upload. A tenant whose policy has `signatures = { keys, threshold }`
//! publishes only modules with `threshold` valid signatures by distinct
//! listed keys that are not revoked for it, each inside an envelope whose
//! in-toto statement names the module's SHA-256; anything less is `422
//! signature_required` (naming the accepted key ids and the threshold), a
//! denial entry, and nothing stored. A wrong key, a bad signature or a
//! statement about other bytes does not count; a malformed envelope is
//! `422 invalid_signature`. The verified signer ids go into the module's
//! record and its `module_published` entry (type 9).
//!
//! Checked twice: before the upload is read (enough signatures over any
//! subject, so an unsigned upload is refused without reading it), and
//! after, against the digest of the bytes actually received.

use kasbah_audit::dsse::{self, CheckedEnvelope, Envelope, PublicKey};
use kasbah_core::Digest;
use kasbah_core::api::{PolicyRecord, SigningKeyRevocation};

use super::storage::ModuleStore;
use crate::audit::storage::AuditStore;
use crate::caller::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ids::now_ms;
use crate::state::AppState;

/// The request header carrying one envelope (repeatable).
pub const SIGNATURE_HEADER: &str = "kasbah-signature";
/// Most envelopes one publish may carry.
pub const MAX_ENVELOPES: usize = 16;
/// Longest header value: the base64 of the largest envelope.
pub const MAX_HEADER_BYTES: usize = dsse::MAX_ENVELOPE_BYTES.div_ceil(3) * 4;

/// The signatures a publish carries, parsed.
#[derive(Default)]
pub struct Signatures(Vec<CheckedEnvelope>);

fn invalid(message: String) -> ApiError {
    ApiError::unprocessable("invalid_signature", message)
}

/// Parse the header values: each bounded, base64, a DSSE envelope around an
/// in-toto statement of a kasbah module signature.
pub fn parse<'a>(values: impl ExactSizeIterator<Item = &'a [u8]>) -> ApiResult<Signatures> {
    if values.len() > MAX_ENVELOPES {
        return Err(invalid(format!(
            "{} {SIGNATURE_HEADER} headers; at most {MAX_ENVELOPES}",
            values.len()
        )));
    }
    let mut out = Vec::new();
    for (i, v) in values.enumerate() {
        if v.len() > MAX_HEADER_BYTES {
            return Err(invalid(format!(
                "{SIGNATURE_HEADER} #{i} is longer than {MAX_HEADER_BYTES} bytes"
            )));
        }
        use base64::Engine as _;
        let json = base64::engine::general_purpose::STANDARD
            .decode(v.trim_ascii())
            .map_err(|_| {
                invalid(format!(
                    "{SIGNATURE_HEADER} #{i} is not base64 (of a DSSE envelope's JSON)"
                ))
            })?;
        let env =
            Envelope::parse(&json).map_err(|e| invalid(format!("{SIGNATURE_HEADER} #{i}: {e}")))?;
        out.push(env);
    }
    Ok(Signatures(out))
}

/// What a tenant's policy demands, with revoked keys taken out.
pub struct Requirement {
    /// Listed keys not revoked for the tenant.
    keys: Vec<PublicKey>,
    /// Listed key ids, revoked or not (for the refusal message).
    listed: Vec<String>,
    revoked: Vec<String>,
    threshold: u32,
}

/// The tenant's signature requirement; `None` when its policy has none.
/// Without one, signatures are still verified against nothing: no signer
/// can be recorded without a key to check it by.
pub fn requirement(
    s: &AppState,
    tenant: &str,
    policy: &PolicyRecord,
) -> ApiResult<Option<Requirement>> {
    let Some(sp) = &policy.policy.signatures else {
        return Ok(None);
    };
    let revoked = s.modules.revoked_signing_keys(tenant)?;
    let mut keys = Vec::new();
    let mut listed = Vec::new();
    for k in &sp.keys {
        // The policy was validated when set; a key that is not a valid
        // point cannot verify anything and counts as absent.
        let Ok(k) = k.parse::<PublicKey>() else {
            continue;
        };
        let id = k.key_id();
        if !revoked.contains(&id) {
            keys.push(k);
        }
        listed.push(id);
    }
    Ok(Some(Requirement {
        keys,
        listed,
        revoked,
        threshold: sp.threshold,
    }))
}

impl Signatures {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Distinct key ids with a valid signature, in an envelope naming
    /// `digest` (any subject when `None`), sorted.
    pub fn signers(&self, keys: &[PublicKey], digest: Option<&Digest>) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .iter()
            .filter(|e| digest.is_none_or(|d| e.names(d)))
            .flat_map(|e| e.signers(keys))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The envelopes as a JSON array, to store with the module.
    pub fn to_json(&self) -> Option<String> {
        let envs: Vec<&Envelope> = self.0.iter().map(|e| &e.envelope).collect();
        serde_json::to_string(&envs).ok()
    }
}

/// The verified signers if `sigs` meet the requirement (or there is none),
/// else the `signature_required` refusal, audited as a denial.
pub async fn check(
    s: &AppState,
    tenant: &str,
    req: Option<&Requirement>,
    sigs: &Signatures,
    digest: Option<&Digest>,
) -> ApiResult<Vec<String>> {
    let Some(req) = req else {
        return Ok(Vec::new());
    };
    let signers = sigs.signers(&req.keys, digest);
    if signers.len() >= req.threshold as usize {
        return Ok(signers);
    }
    let message = format!(
        "the tenant's policy requires {} valid signature(s) of the module by distinct keys among \
         [{}]{}; {} found{}",
        req.threshold,
        req.listed.join(", "),
        if req.revoked.is_empty() {
            String::new()
        } else {
            format!(" (revoked, not counted: [{}])", req.revoked.join(", "))
        },
        signers.len(),
        if sigs.is_empty() {
            " (send each DSSE envelope from `kasbah sign` as a Kasbah-Signature header)"
        } else {
            ""
        }
    );
    if let Err(e) =
        s.db.record_denial(
            tenant,
            digest.copied(),
            "publish",
            &format!("signature_required: {message}"),
        )
        .await
    {
        tracing::error!("auditing a refused publish: {e}");
    }
    s.metrics
        .publishes_refused
        .get_or_create(&crate::metrics::ReasonLabel {
            reason: "signature_required".to_string(),
        })
        .inc();
    Err(ApiError::unprocessable("signature_required", message))
}

/// Revoke a signing key for a tenant's publishes: admins, or the operator
/// that manages the tenant (who set its policy). Idempotent.
pub async fn revoke(
    s: &AppState,
    caller: &Caller,
    tenant: &str,
    key_id: &str,
) -> ApiResult<SigningKeyRevocation> {
    let t = caller.managed_tenant(s, tenant)?;
    if key_id.len() != 64
        || !key_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(ApiError::unprocessable(
            "invalid_key_id",
            "a key id is 64 lowercase hex digits (the SHA-256 of the raw Ed25519 public key, as \
             `kasbah key generate` prints it)",
        ));
    }
    let r = SigningKeyRevocation {
        tenant_id: t.id,
        key_id: key_id.to_string(),
        revoked_at: now_ms(),
        by_role: caller.role.as_str().to_string(),
        by_subject: caller.subject.clone(),
    };
    Ok(s.modules.revoke_signing_key(&r).await?)
}

/// The key ids revoked for a tenant (whoever sees the tenant).
pub fn revoked(s: &AppState, caller: &Caller, tenant: &str) -> ApiResult<Vec<String>> {
    caller.visible_tenant(s, tenant)?;
    Ok(s.modules.revoked_signing_keys(tenant)?)
}
