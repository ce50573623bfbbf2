//! The JSON shapes of the kasbah HTTP API, shared by the server (which
//! derives the OpenAPI document from them) and clients (CLI, SDK client).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{Captured, Denial, Digest, Logs, Outcome, Usage};
use kasbah_policy::{Ceiling, Policy};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// Caller roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the platform: creates operators, tenants, auditors; sees everything.
    Admin,
    /// White-label reseller: manages its own tenants within its ceilings.
    Operator,
    /// A tenant's developer: publishes modules and runs them.
    Developer,
    /// Read-only: modules and run records of the tenants it is granted.
    Auditor,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Developer => "developer",
            Role::Auditor => "auditor",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "admin" => Role::Admin,
            "operator" => Role::Operator,
            "developer" => Role::Developer,
            "auditor" => Role::Auditor,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct WhoAmI {
    pub role: Role,
    /// Operator id, tenant id or auditor id (`admin` for admins).
    pub subject: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateOperator {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._+-]{1,128}$"))]
    pub name: String,
    /// What this operator may grant its tenants: every limit, datasets,
    /// environment, network destinations, GPU (see `kasbah_policy::Ceiling`).
    /// Absent: `Ceiling::standard()` (no host variables, no special
    /// addresses, no DNS names).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    #[serde(default)]
    pub ceiling: Option<Ceiling>,
    /// How many tenants the operator may create.
    #[serde(default = "default_max_tenants")]
    pub max_tenants: u32,
    /// Residency zones the operator's tenants may be given (their policies'
    /// `zones` must be a non-empty subset). Empty: no zone restriction.
    #[serde(default)]
    pub zones: Vec<String>,
}

fn default_max_tenants() -> u32 {
    100
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Operator {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub ceiling: Ceiling,
    pub max_tenants: u32,
    /// Zones its tenants are limited to (empty: none).
    #[serde(default)]
    pub zones: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._+-]{1,128}$"))]
    pub name: String,
    /// Admins may place the tenant under an operator; operators' tenants are
    /// always their own.
    #[serde(default)]
    pub operator_id: Option<String>,
    /// Initial policy (deny-by-default when absent).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default)]
    pub policy: Option<Policy>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub operator_id: Option<String>,
    pub policy_version: u32,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PolicyRecord {
    pub tenant_id: String,
    pub version: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub digest: Digest,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub policy: Policy,
    pub created_at: i64,
    /// Who set this version: `admin` or the operator's id (`None`: a
    /// version stored before this was recorded).
    #[serde(default)]
    pub set_by: Option<String>,
    /// The policy set was identical to the current version: no new version
    /// was made (and no audit entry); this is the current one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A label for the token (who or what holds it).
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds (default: the server's `token_ttl_seconds`, at
    /// most its `token_max_ttl_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenCreated {
    /// The bearer token. Shown once; the server keeps only its hash.
    pub token: String,
    pub role: Role,
    pub subject: String,
    /// The token's id (for `GET /v1/tokens` and `DELETE /v1/tokens/{id}`).
    #[serde(default)]
    pub id: String,
    /// When it stops working (ms since the Unix epoch).
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// A token's metadata: never its secret nor the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    /// Whose token it is: operator id, tenant id, auditor id, or `admin`.
    pub subject: String,
    pub name: Option<String>,
    pub created_at: i64,
    /// Who created it (`role:subject`; absent for tokens from before this
    /// was recorded).
    pub created_by: Option<String>,
    /// ms since the Unix epoch; absent: never (only tokens from before
    /// expiry existed and that no start has given an expiry yet).
    pub expires_at: Option<i64>,
    /// Last successful authentication (updated at most once a minute).
    pub last_used_at: Option<i64>,
    pub revoked: bool,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateAuditor {
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9._+-]{1,128}$"))]
    pub name: String,
    /// Tenants whose modules and runs this auditor may read (an operator:
    /// only its own tenants).
    pub tenants: Vec<String>,
    /// Lifetime of the auditor's token in seconds (see `CreateToken`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Auditor {
    pub id: String,
    pub name: String,
    pub tenants: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ModuleRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "sha256:4c44…"))]
    pub digest: Digest,
    pub tenant_id: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    /// Every interface the component imports.
    pub imports: Vec<String>,
    pub created_at: i64,
    /// Key ids (hex SHA-256 of each raw Ed25519 public key) whose DSSE
    /// signatures of the module the server verified at publish, sorted;
    /// absent when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
}

/// A module signing key revoked for a tenant's publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SigningKeyRevocation {
    pub tenant_id: String,
    /// Hex SHA-256 of the raw Ed25519 public key.
    pub key_id: String,
    pub revoked_at: i64,
    /// The revoker's role and subject.
    pub by_role: String,
    pub by_subject: String,
}

/// A module's build provenance as the log recorded it (entry type 11). The
/// statement itself: `GET /v1/modules/{digest}/provenance`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ProvenanceRecord {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "sha256:4c44…"))]
    pub module: Digest,
    pub tenant_id: String,
    /// SHA-256 of the statement's bytes.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub statement: Digest,
    /// The `source` material (kasbah-source-tree/v1 digest).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub source: Digest,
    /// The `Cargo.lock` material.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub cargo_lock: Digest,
    /// rustc's version line and the target.
    pub toolchain: String,
    pub size: u64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    /// The module, published by the caller's tenant: its digest
    /// (`sha256:…`), `name@version`, or `name` (the version published
    /// last). The record names the digest that ran.
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^(sha256:[0-9a-f]{64}|[A-Za-z0-9._+-]{1,128}(@[A-Za-z0-9._+-]{1,128})?)$"
        )
    )]
    pub module: String,
    /// Input as UTF-8 text…
    #[serde(default)]
    pub input: Option<String>,
    /// …or as base64 bytes.
    #[serde(default)]
    pub input_base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// `true` (default): wait for the outcome (bounded by the server's sync
    /// wait; 202 with the run id if it takes longer). `false`: 202 at once.
    #[serde(default = "yes")]
    pub wait: bool,
    /// Datasets of the caller's tenant to mount read-only, by name or by
    /// digest (`sha256:…`). The guest sees each as the file
    /// `/datasets/<dataset-name>`. The run is placed only in a zone every
    /// dataset's label allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
    /// Residency label of the input: the zones it may be processed in.
    /// Default: the tenant's zones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_label: Option<Vec<String>>,
    /// Store the output (when the run succeeds) as a new dataset of this
    /// name, labelled with the run's output label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_output_as: Option<String>,
}

impl Default for CreateRun {
    fn default() -> Self {
        CreateRun {
            module: String::new(),
            input: None,
            input_base64: None,
            content_type: None,
            metadata: BTreeMap::new(),
            wait: true,
            datasets: Vec::new(),
            input_label: None,
            store_output_as: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// A tenant's dataset: immutable bytes (content-addressed) with a name and
/// a residency label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DatasetRecord {
    /// `ds_…`
    pub id: String,
    pub tenant_id: String,
    /// `[a-z0-9][a-z0-9._-]{0,63}`, unique per tenant; the file name the
    /// guest sees under `/datasets/`.
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub digest: Digest,
    pub size: u64,
    /// Residency label: the zones this dataset may be processed in.
    pub label: Vec<String>,
    /// The run whose output this dataset is, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_run: Option<String>,
    pub created_at: i64,
    /// Uploaded to a fleet control plane: the bytes live only in the object
    /// store buckets of the label's zones (`kasbah-zone-<zone>`), never on
    /// the control plane's disk. Absent (false): in the server's blob store
    /// (or, for a fleet run's output, in the bucket of the zone it ran in).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zone_stored: bool,
}

/// A dataset a run mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunDataset {
    pub id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub digest: Digest,
    pub label: Vec<String>,
}

/// A secret a run was granted: its name and the version it got (never
/// its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunSecret {
    #[cfg_attr(feature = "openapi", schema(example = "api_key"))]
    pub name: String,
    pub version: u64,
}

/// A tenant's stored secret as the API shows it: name and version, never
/// the value (`PUT`/`GET`/`DELETE /v1/secrets…`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SecretRecord {
    #[cfg_attr(feature = "openapi", schema(example = "api_key"))]
    pub name: String,
    /// 1 for the first value set under this name, one more at each set
    /// (deleting and setting again goes on counting).
    pub version: u64,
    /// When this version was set (ms since the Unix epoch).
    pub created_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Done,
    /// The server stopped (crash, kill) while the run was queued or running.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Interrupted => "interrupted",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "done" => RunStatus::Done,
            "interrupted" => RunStatus::Interrupted,
            _ => return None,
        })
    }
}

/// Where a run's output is: inline when small, otherwise by digest + link.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OutputRef {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub digest: Digest,
    pub size: u64,
    pub content_type: String,
    /// `GET` this (same credentials) for the bytes. Absent in a local
    /// run's record (`kasbah run FILE.wasm --json`), whose output is inline.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// The bytes themselves when small (text, or `{"base64": …}`).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<Captured>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunRecord {
    pub id: String,
    pub tenant_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub module: Digest,
    pub policy_version: u32,
    pub status: RunStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub input_digest: Digest,
    pub input_size: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub outcome: Option<Outcome>,
    pub output: Option<OutputRef>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub usage: Option<Usage>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub stdout: Option<Captured>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub stderr: Option<Captured>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub logs: Option<Logs>,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub denials: Vec<Denial>,
    /// Zone the run was placed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// GPU adapter entry the run was bound to (runs of modules that use the GPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// Datasets mounted into the run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<RunDataset>,
    /// Residency label of the input.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub input_label: Vec<String>,
    /// Residency label of the output: tenant zones ∩ input label ∩ every
    /// dataset label. Egress (network, writable storage) is limited to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub output_label: Vec<String>,
    /// The dataset the output was stored as (`store_output_as`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dataset: Option<String>,
    /// The fleet worker that executed the run (fleet mode: its id in the
    /// workers registry, a worker of `zone`); absent for runs the server
    /// executed itself and for runs no worker answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Secrets the run was granted, with the version each got (policy
    /// `[secrets]`); names and versions only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<RunSecret>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// `GET /v1/runs/{id}/logs` (without `follow`): a run's logs and stdio so
/// far.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RunLogs {
    pub id: String,
    pub status: RunStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub logs: Logs,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub stdout: Captured,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub stderr: Captured,
    /// The run ended: these are its record's, with its drop counts. While
    /// it runs: what its live feed kept so far (drop counts come at the end).
    pub complete: bool,
}

/// A live fleet worker as the control plane last heard from it
/// (`GET /v1/fleet/workers`, fleet mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FleetWorker {
    /// Its id in the workers registry (what run records name).
    pub id: String,
    /// The zones it takes runs for, in its order of preference.
    pub zones: Vec<String>,
    /// Its GPU adapter entries.
    pub adapters: Vec<FleetAdapter>,
    /// Runs it executes at once.
    pub capacity: u32,
    /// Runs executing on it at its last heartbeat.
    pub active: u32,
    /// Its build (`kasbah-fleet` version).
    pub version: String,
    /// Milliseconds since its last heartbeat (at most the heartbeat TTL:
    /// older ones are not live).
    pub heartbeat_age_ms: u64,
}

/// A GPU adapter entry of a fleet worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FleetAdapter {
    pub label: String,
    pub zone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct UsageRow {
    pub tenant_id: String,
    /// Start of the period, e.g. `2026-11-21` for `period=day`.
    pub period: String,
    pub runs: u64,
    pub ok_runs: u64,
    pub wall_time_us: u64,
    pub fuel: u64,
    /// Largest peak memory of any run in the period.
    pub peak_memory_bytes: u64,
    /// Sum of per-run peak memory × wall seconds (byte-seconds), for billing.
    pub memory_byte_seconds: f64,
}

// ---- audit log ----------------------------------------------------------------

/// One audit log entry, as `GET /v1/audit/entries` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditEntryRecord {
    /// Position in the log (the Merkle leaf index).
    pub index: u64,
    /// The canonical entry bytes, base64. The Merkle leaf is
    /// `SHA-256(0x00 ‖ bytes)`; these bytes, not the decoded form, are what
    /// proofs cover.
    pub bytes: String,
    /// The same entry decoded: `type` (`tenant_created`, `policy_set`,
    /// `module_published`, `run_executed`, `denial`), `time_unix_ms` and the
    /// record's fields. `null` if the stored bytes do not decode.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub entry: serde_json::Value,
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AuditEntries {
    /// Number of entries in the log when it was read.
    pub size: u64,
    /// First index examined.
    pub start: u64,
    /// One past the last index examined: ask for `start = end` next
    /// (done when `end == size`).
    pub end: u64,
    /// The entries in `[start, end)` the caller may read (its own tenants',
    /// or all for admins), in index order.
    pub entries: Vec<AuditEntryRecord>,
}

/// `GET /v1/audit/proof/inclusion`: RFC 9162 §2.1.3 inclusion proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    /// Base64 SHA-256 hashes, from the leaf's sibling up to the root.
    pub proof: Vec<String>,
}

/// `GET /v1/audit/proof/consistency`: RFC 9162 §2.1.4 consistency proof.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConsistencyProof {
    pub old: u64,
    pub new: u64,
    /// Base64 SHA-256 hashes.
    pub proof: Vec<String>,
}

/// A receipt: one entry proven into a signed checkpoint, verifiable offline
/// with only the log's public key (`kasbah audit verify`). The JSON of
/// `kasbah_audit::Receipt`, described here for the API document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditReceipt {
    /// Receipt format version (1).
    pub version: u32,
    /// The canonical entry bytes, base64.
    pub entry: String,
    /// The entry's index in the log.
    pub index: u64,
    /// Base64 hashes from the leaf to the checkpoint's root.
    pub inclusion_proof: Vec<String>,
    /// The C2SP signed checkpoint (a signed note) the proof leads to.
    pub checkpoint: String,
}
