//! Audit log entries and their canonical byte format.
//!
//! The leaf of the Merkle tree is `SHA-256(0x00 ‖ bytes)` of these bytes, so
//! the format is frozen: the same record must hash the same in every version
//! of kasbah. Format version 1, byte for byte:
//!
//! ```text
//! entry   = version:u8 (=1) type:u8 time_unix_ms:u64 body
//! u64     = 8 bytes, big-endian
//! str     = len:u32 (big-endian) + that many bytes of UTF-8
//! digest  = 32 raw bytes (the SHA-256 of `sha256:<hex>`)
//! opt<T>  = 0x00 | 0x01 T
//! set<T>  = count:u32 + T…, strictly ascending (sorted, no duplicates)
//!
//! type 1 tenant_created   tenant:str operator:str
//! type 2 policy_set       tenant:str policy:digest policy_version:u64
//! type 3 module_published tenant:str module:digest size:u64 name:str
//!                         version:str signer:opt<str>
//! type 4 run_executed     run_id:str tenant:str module:digest input:digest
//!                         datasets:set<digest> output:opt<digest>
//!                         output_label:set<str> zone:str adapter:opt<str>
//!                         policy_version:u64 outcome:str
//!                         wall_time_us:u64 fuel:opt<u64> peak_memory_bytes:u64
//!                         gpu_time_us:u64 gpu_bytes:u64
//! type 5 denial           tenant:str module:opt<digest> run_id:opt<str>
//!                         action:str reason:str
//! type 6 dataset_created  tenant:str dataset:digest size:u64 name:str
//!                         label:set<str> run_id:opt<str>
//! type 7 credential       action:str token_id:str role:str subject:str
//!                         tenant:str expires_unix_ms:opt<u64>
//!                         by_role:str by_subject:str
//! type 8 run_executed     (every type 4 field, in type 4's order) worker:str
//! type 9 module_published (every type 3 field, in type 3's order)
//!                         signers:set<str> (non-empty)
//! type 10 signing_key_revoked tenant:str key_id:str by_role:str by_subject:str
//! type 11 provenance_published tenant:str module:digest statement:digest
//!                         source:digest cargo_lock:digest toolchain:str
//! type 12 secret_changed  tenant:str name:str version:u64 action:str
//! ```
//!
//! Type 6 was added after types 1–5 were frozen, type 7 after type 6, type 8
//! after type 7, types 9 and 10 after type 8, 11 after 10, 12 after 11; the bytes of the older types
//! are unchanged.
//!
//! **Type 9 is a module publish with verified signers** (issue 16): type 3
//! plus the set of key ids (hex SHA-256 of each raw Ed25519 public key, see
//! `dsse.rs`) whose DSSE signatures of the module the server verified. Same
//! logical entry as type 3 (one variant, kind `module_published`), chosen
//! by the type number exactly as type 8 is for type 4: an empty `signers`
//! encodes as type 3, byte for byte as before; a non-empty one as type 9,
//! and a type 9 with an empty set is refused when decoding, so every record
//! keeps one encoding. (Type 3's own `signer:opt<str>` predates signing and
//! is written as absent by the server.)
//!
//! **Type 12 records a tenant's secret set or deleted** (issue 18): its
//! name, the version set (or the last version, deleted) and the action
//! (`set` or `delete`). Never the value, nor anything derived from it.
//!
//! **Type 10 records a signing key revoked** for a tenant's publishes, by
//! the admin or operator who sets that tenant's policy.
//!
//! **Type 8 is a run record that names the fleet worker that executed the
//! run** (issue 14). It is the same logical entry as type 4 — one Rust
//! variant, [`EntryBody::RunExecuted`], JSON `"type": "run_executed"`, kind
//! `run_executed` for filters, receipts and `kasbah audit verify --run` —
//! with one more field, `worker`, appended after type 4's last. The type
//! number says whether the field is there: `worker: None` encodes as type 4
//! (byte for byte what it always was: every in-process run, every run
//! interrupted before a worker answered), `worker: Some(w)` as type 8, whose
//! `worker` is therefore a plain `str`, not an `opt<str>`. An `opt<str>`
//! would give one record two encodings (type 4, and type 8 with tag 0x00),
//! breaking `encode(decode(b)) == b`; a separate variant would make every
//! reader that looks for a run's record (receipts, the CLI, the tests that
//! count one record per run) learn a second name for the same thing.
//!
//! Decoding is strict (unknown version or type, trailing bytes, non-0/1
//! option tags, unsorted sets, bad UTF-8 are all errors), so every byte string
//! decodes to at most one entry and `encode(decode(b)) == b`. A new field or
//! entry type means a new format version or type number; existing ones never
//! change meaning.

use kasbah_core::Digest;
use serde::{Deserialize, Serialize};

/// The only format version this code writes.
pub const ENTRY_FORMAT_V1: u8 = 1;

/// Longest string field accepted (bytes). Keeps a hostile entry from making
/// a verifier allocate much.
pub const MAX_STR_LEN: usize = 64 * 1024;

/// Most elements in a set field.
pub const MAX_SET_LEN: usize = 4096;

/// One audit log record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// When the log appended it, in milliseconds since the Unix epoch (the
    /// operator's clock: informative, not proven).
    pub time_unix_ms: u64,
    #[serde(flatten)]
    pub body: EntryBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryBody {
    TenantCreated(TenantCreated),
    PolicySet(PolicySet),
    ModulePublished(ModulePublished),
    RunExecuted(RunExecuted),
    Denial(Denial),
    DatasetCreated(DatasetCreated),
    Credential(Credential),
    SigningKeyRevoked(SigningKeyRevoked),
    ProvenancePublished(ProvenancePublished),
    SecretChanged(SecretChanged),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCreated {
    pub tenant: String,
    /// The operator the tenant belongs to.
    pub operator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySet {
    pub tenant: String,
    /// SHA-256 of the policy document as the server stores it.
    pub policy: Digest,
    pub policy_version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModulePublished {
    pub tenant: String,
    pub module: Digest,
    pub size: u64,
    pub name: String,
    pub version: String,
    /// The key that signed the module digest, if it was signed (type 3's
    /// field from before signing existed; the server writes `None`).
    pub signer: Option<String>,
    /// Key ids whose signatures of the module the server verified at
    /// publish (a set: sorted, no duplicates). Non-empty = entry type 9,
    /// empty = type 3 (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
}

/// A module signing key stops counting for a tenant's new publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyRevoked {
    pub tenant: String,
    /// The key id (hex SHA-256 of the raw Ed25519 public key).
    pub key_id: String,
    /// Who revoked it: the acting token's role and subject.
    pub by_role: String,
    pub by_subject: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExecuted {
    pub run_id: String,
    pub tenant: String,
    pub module: Digest,
    pub input: Digest,
    /// Datasets mounted into the run (a set: sorted, no duplicates).
    pub datasets: Vec<Digest>,
    /// Absent when the run produced no output.
    pub output: Option<Digest>,
    /// Residency label of the output: the zones it may be processed in (a
    /// set: sorted, no duplicates).
    pub output_label: Vec<String>,
    /// Zone the run was placed in.
    pub zone: String,
    /// GPU adapter the run was bound to, if any.
    pub adapter: Option<String>,
    pub policy_version: u64,
    /// `kasbah_core::Outcome::kind()`: `ok`, `guest_error`, `trap`, ...
    pub outcome: String,
    pub wall_time_us: u64,
    pub fuel: Option<u64>,
    pub peak_memory_bytes: u64,
    pub gpu_time_us: u64,
    pub gpu_bytes: u64,
    /// The fleet worker that executed the run (its id in the workers
    /// registry); absent for runs executed by the server itself, and for
    /// fleet runs recorded `interrupted` with no worker's result. Present =
    /// entry type 8, absent = type 4 (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub tenant: String,
    pub module: Option<Digest>,
    pub run_id: Option<String>,
    /// What was refused, e.g. `run`, `publish`, `net.connect example.com:443`.
    pub action: String,
    /// Why, e.g. `residency_violation: dataset X may not leave eu-paris-1`.
    pub reason: String,
}

/// A tenant stored a dataset (an upload, or a run's output stored as one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetCreated {
    pub tenant: String,
    /// SHA-256 of the dataset's bytes.
    pub dataset: Digest,
    pub size: u64,
    pub name: String,
    /// Residency label: the zones the dataset may be processed in (a set:
    /// sorted, no duplicates).
    pub label: Vec<String>,
    /// The run whose output this dataset is, if it is one.
    pub run_id: Option<String>,
}

/// A bearer token was created or revoked (operators', tenants' and
/// auditors' tokens; creating an auditor is creating its token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    /// `created` or `revoked`.
    pub action: String,
    /// The token's id (never its secret).
    pub token_id: String,
    /// The role the token carries: `operator`, `developer`, `auditor`, `admin`.
    pub role: String,
    /// Whose token: operator id, tenant id, auditor id, `admin`.
    pub subject: String,
    /// The tenant the credential reaches (a developer token's tenant; one
    /// entry per granted tenant for an auditor); empty when none (operator
    /// and admin tokens, an auditor granted nothing).
    pub tenant: String,
    /// When the token expires, if it does.
    pub expires_unix_ms: Option<u64>,
    /// Who did it: the acting token's role and subject.
    pub by_role: String,
    pub by_subject: String,
}

/// A module's build provenance (an in-toto Statement v1 with a SLSA
/// provenance v1 predicate, from `kasbah build`) was published next to it
/// (type 11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenancePublished {
    pub tenant: String,
    /// The module the statement's subject names.
    pub module: Digest,
    /// SHA-256 of the statement's bytes as uploaded (and served back).
    pub statement: Digest,
    /// The `source` material: the source tree digest (`kasbah-source-tree/v1`).
    pub source: Digest,
    /// The `Cargo.lock` material.
    pub cargo_lock: Digest,
    /// The toolchain that built it (rustc's version line, and the target).
    pub toolchain: String,
}

/// A tenant's secret was set (a new version) or deleted (type 12). Names
/// and versions only: values never enter the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretChanged {
    pub tenant: String,
    /// The secret's name (`[a-z0-9_-]{1,64}`).
    pub name: String,
    /// The version set, or the version deleted.
    pub version: u64,
    /// `set` or `delete`.
    pub action: String,
}

impl EntryBody {
    fn tag(&self) -> u8 {
        match self {
            EntryBody::TenantCreated(_) => 1,
            EntryBody::PolicySet(_) => 2,
            EntryBody::ModulePublished(e) if !e.signers.is_empty() => 9,
            EntryBody::ModulePublished(_) => 3,
            EntryBody::RunExecuted(e) if e.worker.is_some() => 8,
            EntryBody::RunExecuted(_) => 4,
            EntryBody::Denial(_) => 5,
            EntryBody::DatasetCreated(_) => 6,
            EntryBody::Credential(_) => 7,
            EntryBody::SigningKeyRevoked(_) => 10,
            EntryBody::ProvenancePublished(_) => 11,
            EntryBody::SecretChanged(_) => 12,
        }
    }

    /// The stable name of the entry type (same as the JSON `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            EntryBody::TenantCreated(_) => "tenant_created",
            EntryBody::PolicySet(_) => "policy_set",
            EntryBody::ModulePublished(_) => "module_published",
            EntryBody::RunExecuted(_) => "run_executed",
            EntryBody::Denial(_) => "denial",
            EntryBody::DatasetCreated(_) => "dataset_created",
            EntryBody::Credential(_) => "credential",
            EntryBody::SigningKeyRevoked(_) => "signing_key_revoked",
            EntryBody::ProvenancePublished(_) => "provenance_published",
            EntryBody::SecretChanged(_) => "secret_changed",
        }
    }

    /// The tenant the entry concerns.
    pub fn tenant(&self) -> &str {
        match self {
            EntryBody::TenantCreated(e) => &e.tenant,
            EntryBody::PolicySet(e) => &e.tenant,
            EntryBody::ModulePublished(e) => &e.tenant,
            EntryBody::RunExecuted(e) => &e.tenant,
            EntryBody::Denial(e) => &e.tenant,
            EntryBody::DatasetCreated(e) => &e.tenant,
            EntryBody::Credential(e) => &e.tenant,
            EntryBody::SigningKeyRevoked(e) => &e.tenant,
            EntryBody::ProvenancePublished(e) => &e.tenant,
            EntryBody::SecretChanged(e) => &e.tenant,
        }
    }

    /// The module the entry names, if any.
    pub fn module(&self) -> Option<Digest> {
        match self {
            EntryBody::ModulePublished(e) => Some(e.module),
            EntryBody::RunExecuted(e) => Some(e.module),
            EntryBody::Denial(e) => e.module,
            EntryBody::ProvenancePublished(e) => Some(e.module),
            EntryBody::TenantCreated(_)
            | EntryBody::PolicySet(_)
            | EntryBody::DatasetCreated(_)
            | EntryBody::Credential(_)
            | EntryBody::SigningKeyRevoked(_)
            | EntryBody::SecretChanged(_) => None,
        }
    }
}

/// Why bytes are not a valid entry (or an entry cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("entry format version {0} is not supported (this build reads version 1)")]
    UnsupportedVersion(u8),
    #[error("unknown entry type {0}")]
    UnknownType(u8),
    #[error("entry ends early while reading {0}")]
    Truncated(&'static str),
    #[error("{0} trailing bytes after the entry")]
    TrailingBytes(usize),
    #[error("field {0} is not valid UTF-8")]
    BadUtf8(&'static str),
    #[error("field {0} is longer than the format allows")]
    TooLong(&'static str),
    #[error("field {0} has option tag {1}, expected 0 or 1")]
    BadOptionTag(&'static str, u8),
    #[error("set {0} is not strictly ascending (unsorted or duplicated)")]
    UnsortedSet(&'static str),
    #[error("set {0} is empty where the entry type requires members")]
    EmptySet(&'static str),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn len(&mut self, field: &'static str, n: usize, max: usize) -> Result<(), EntryError> {
        if n > max {
            return Err(EntryError::TooLong(field));
        }
        self.u32(u32::try_from(n).map_err(|_| EntryError::TooLong(field))?);
        Ok(())
    }
    fn str(&mut self, field: &'static str, s: &str) -> Result<(), EntryError> {
        self.len(field, s.len(), MAX_STR_LEN)?;
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
    fn digest(&mut self, d: &Digest) {
        self.0.extend_from_slice(d.as_bytes());
    }
    fn opt_str(&mut self, field: &'static str, s: Option<&str>) -> Result<(), EntryError> {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(field, s)?;
            }
        }
        Ok(())
    }
    fn opt_digest(&mut self, d: Option<&Digest>) {
        match d {
            None => self.u8(0),
            Some(d) => {
                self.u8(1);
                self.digest(d);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    /// Sets are written sorted and deduplicated whatever order the caller
    /// gave, so the same set always encodes the same.
    fn str_set(&mut self, field: &'static str, set: &[String]) -> Result<(), EntryError> {
        let mut v: Vec<&str> = set.iter().map(String::as_str).collect();
        v.sort_unstable();
        v.dedup();
        self.len(field, v.len(), MAX_SET_LEN)?;
        for s in v {
            self.str(field, s)?;
        }
        Ok(())
    }
    fn digest_set(&mut self, field: &'static str, set: &[Digest]) -> Result<(), EntryError> {
        let mut v: Vec<&Digest> = set.iter().collect();
        v.sort_unstable();
        v.dedup();
        self.len(field, v.len(), MAX_SET_LEN)?;
        for d in v {
            self.digest(d);
        }
        Ok(())
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated(field));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, EntryError> {
        Ok(self.take(1, field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, EntryError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, EntryError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_be_bytes(a))
    }
    fn len(&mut self, field: &'static str, max: usize) -> Result<usize, EntryError> {
        let n = usize::try_from(self.u32(field)?).map_err(|_| EntryError::TooLong(field))?;
        if n > max {
            return Err(EntryError::TooLong(field));
        }
        Ok(n)
    }
    fn str(&mut self, field: &'static str) -> Result<String, EntryError> {
        let n = self.len(field, MAX_STR_LEN)?;
        let b = self.take(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| EntryError::BadUtf8(field))
    }
    fn digest(&mut self, field: &'static str) -> Result<Digest, EntryError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32, field)?);
        Ok(Digest::from_bytes(a))
    }
    fn present(&mut self, field: &'static str) -> Result<bool, EntryError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(EntryError::BadOptionTag(field, t)),
        }
    }
    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, EntryError> {
        Ok(if self.present(field)? {
            Some(self.str(field)?)
        } else {
            None
        })
    }
    fn opt_digest(&mut self, field: &'static str) -> Result<Option<Digest>, EntryError> {
        Ok(if self.present(field)? {
            Some(self.digest(field)?)
        } else {
            None
        })
    }
    fn opt_u64(&mut self, field: &'static str) -> Result<Option<u64>, EntryError> {
        Ok(if self.present(field)? {
            Some(self.u64(field)?)
        } else {
            None
        })
    }
    fn str_set(&mut self, field: &'static str) -> Result<Vec<String>, EntryError> {
        let n = self.len(field, MAX_SET_LEN)?;
        let mut v: Vec<String> = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let s = self.str(field)?;
            if v.last().is_some_and(|prev| prev.as_str() >= s.as_str()) {
                return Err(EntryError::UnsortedSet(field));
            }
            v.push(s);
        }
        Ok(v)
    }
    fn digest_set(&mut self, field: &'static str) -> Result<Vec<Digest>, EntryError> {
        let n = self.len(field, MAX_SET_LEN)?;
        let mut v: Vec<Digest> = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            let d = self.digest(field)?;
            if v.last().is_some_and(|prev| *prev >= d) {
                return Err(EntryError::UnsortedSet(field));
            }
            v.push(d);
        }
        Ok(v)
    }
}

impl Entry {
    pub fn new(time_unix_ms: u64, body: EntryBody) -> Self {
        Entry { time_unix_ms, body }
    }

    /// The canonical bytes (format version 1). Fails only if a field is
    /// longer than [`MAX_STR_LEN`] or a set larger than [`MAX_SET_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut w = Writer(Vec::with_capacity(256));
        w.u8(ENTRY_FORMAT_V1);
        w.u8(self.body.tag());
        w.u64(self.time_unix_ms);
        match &self.body {
            EntryBody::TenantCreated(e) => {
                w.str("tenant", &e.tenant)?;
                w.str("operator", &e.operator)?;
            }
            EntryBody::PolicySet(e) => {
                w.str("tenant", &e.tenant)?;
                w.digest(&e.policy);
                w.u64(e.policy_version);
            }
            EntryBody::ModulePublished(e) => {
                w.str("tenant", &e.tenant)?;
                w.digest(&e.module);
                w.u64(e.size);
                w.str("name", &e.name)?;
                w.str("version", &e.version)?;
                w.opt_str("signer", e.signer.as_deref())?;
                // Type 9 only (the tag says so, see the module docs).
                if !e.signers.is_empty() {
                    w.str_set("signers", &e.signers)?;
                }
            }
            EntryBody::RunExecuted(e) => {
                w.str("run_id", &e.run_id)?;
                w.str("tenant", &e.tenant)?;
                w.digest(&e.module);
                w.digest(&e.input);
                w.digest_set("datasets", &e.datasets)?;
                w.opt_digest(e.output.as_ref());
                w.str_set("output_label", &e.output_label)?;
                w.str("zone", &e.zone)?;
                w.opt_str("adapter", e.adapter.as_deref())?;
                w.u64(e.policy_version);
                w.str("outcome", &e.outcome)?;
                w.u64(e.wall_time_us);
                w.opt_u64(e.fuel);
                w.u64(e.peak_memory_bytes);
                w.u64(e.gpu_time_us);
                w.u64(e.gpu_bytes);
                // Type 8 only (the tag says so, see the module docs).
                if let Some(worker) = &e.worker {
                    w.str("worker", worker)?;
                }
            }
            EntryBody::Denial(e) => {
                w.str("tenant", &e.tenant)?;
                w.opt_digest(e.module.as_ref());
                w.opt_str("run_id", e.run_id.as_deref())?;
                w.str("action", &e.action)?;
                w.str("reason", &e.reason)?;
            }
            EntryBody::DatasetCreated(e) => {
                w.str("tenant", &e.tenant)?;
                w.digest(&e.dataset);
                w.u64(e.size);
                w.str("name", &e.name)?;
                w.str_set("label", &e.label)?;
                w.opt_str("run_id", e.run_id.as_deref())?;
            }
            EntryBody::Credential(e) => {
                w.str("action", &e.action)?;
                w.str("token_id", &e.token_id)?;
                w.str("role", &e.role)?;
                w.str("subject", &e.subject)?;
                w.str("tenant", &e.tenant)?;
                w.opt_u64(e.expires_unix_ms);
                w.str("by_role", &e.by_role)?;
                w.str("by_subject", &e.by_subject)?;
            }
            EntryBody::SigningKeyRevoked(e) => {
                w.str("tenant", &e.tenant)?;
                w.str("key_id", &e.key_id)?;
                w.str("by_role", &e.by_role)?;
                w.str("by_subject", &e.by_subject)?;
            }
            EntryBody::ProvenancePublished(e) => {
                w.str("tenant", &e.tenant)?;
                w.digest(&e.module);
                w.digest(&e.statement);
                w.digest(&e.source);
                w.digest(&e.cargo_lock);
                w.str("toolchain", &e.toolchain)?;
            }
            EntryBody::SecretChanged(e) => {
                w.str("tenant", &e.tenant)?;
                w.str("name", &e.name)?;
                w.u64(e.version);
                w.str("action", &e.action)?;
            }
        }
        Ok(w.0)
    }

    /// Parse canonical bytes, strictly.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let mut r = Reader(bytes);
        let version = r.u8("version")?;
        if version != ENTRY_FORMAT_V1 {
            return Err(EntryError::UnsupportedVersion(version));
        }
        let tag = r.u8("type")?;
        let time_unix_ms = r.u64("time_unix_ms")?;
        let body = match tag {
            1 => EntryBody::TenantCreated(TenantCreated {
                tenant: r.str("tenant")?,
                operator: r.str("operator")?,
            }),
            2 => EntryBody::PolicySet(PolicySet {
                tenant: r.str("tenant")?,
                policy: r.digest("policy")?,
                policy_version: r.u64("policy_version")?,
            }),
            3 | 9 => EntryBody::ModulePublished(ModulePublished {
                tenant: r.str("tenant")?,
                module: r.digest("module")?,
                size: r.u64("size")?,
                name: r.str("name")?,
                version: r.str("version")?,
                signer: r.opt_str("signer")?,
                signers: if tag == 9 {
                    let set = r.str_set("signers")?;
                    if set.is_empty() {
                        return Err(EntryError::EmptySet("signers"));
                    }
                    set
                } else {
                    Vec::new()
                },
            }),
            4 | 8 => EntryBody::RunExecuted(RunExecuted {
                run_id: r.str("run_id")?,
                tenant: r.str("tenant")?,
                module: r.digest("module")?,
                input: r.digest("input")?,
                datasets: r.digest_set("datasets")?,
                output: r.opt_digest("output")?,
                output_label: r.str_set("output_label")?,
                zone: r.str("zone")?,
                adapter: r.opt_str("adapter")?,
                policy_version: r.u64("policy_version")?,
                outcome: r.str("outcome")?,
                wall_time_us: r.u64("wall_time_us")?,
                fuel: r.opt_u64("fuel")?,
                peak_memory_bytes: r.u64("peak_memory_bytes")?,
                gpu_time_us: r.u64("gpu_time_us")?,
                gpu_bytes: r.u64("gpu_bytes")?,
                worker: if tag == 8 {
                    Some(r.str("worker")?)
                } else {
                    None
                },
            }),
            5 => EntryBody::Denial(Denial {
                tenant: r.str("tenant")?,
                module: r.opt_digest("module")?,
                run_id: r.opt_str("run_id")?,
                action: r.str("action")?,
                reason: r.str("reason")?,
            }),
            6 => EntryBody::DatasetCreated(DatasetCreated {
                tenant: r.str("tenant")?,
                dataset: r.digest("dataset")?,
                size: r.u64("size")?,
                name: r.str("name")?,
                label: r.str_set("label")?,
                run_id: r.opt_str("run_id")?,
            }),
            7 => EntryBody::Credential(Credential {
                action: r.str("action")?,
                token_id: r.str("token_id")?,
                role: r.str("role")?,
                subject: r.str("subject")?,
                tenant: r.str("tenant")?,
                expires_unix_ms: r.opt_u64("expires_unix_ms")?,
                by_role: r.str("by_role")?,
                by_subject: r.str("by_subject")?,
            }),
            10 => EntryBody::SigningKeyRevoked(SigningKeyRevoked {
                tenant: r.str("tenant")?,
                key_id: r.str("key_id")?,
                by_role: r.str("by_role")?,
                by_subject: r.str("by_subject")?,
            }),
            11 => EntryBody::ProvenancePublished(ProvenancePublished {
                tenant: r.str("tenant")?,
                module: r.digest("module")?,
                statement: r.digest("statement")?,
                source: r.digest("source")?,
                cargo_lock: r.digest("cargo_lock")?,
                toolchain: r.str("toolchain")?,
            }),
            12 => EntryBody::SecretChanged(SecretChanged {
                tenant: r.str("tenant")?,
                name: r.str("name")?,
                version: r.u64("version")?,
                action: r.str("action")?,
            }),
            t => return Err(EntryError::UnknownType(t)),
        };
        if !r.0.is_empty() {
            return Err(EntryError::TrailingBytes(r.0.len()));
        }
        Ok(Entry { time_unix_ms, body })
    }

    /// The Merkle leaf hash of this entry's canonical bytes.
    pub fn leaf_hash(&self) -> Result<crate::Hash, EntryError> {
        Ok(crate::Hash::leaf(&self.encode()?))
    }
}
