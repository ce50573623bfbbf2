//! Builders of the audit entries the server writes, one per entry type.
//! Entries are appended by the storage, in the same transaction as the
//! change they record (see `store/mod.rs`). A new entry type: its frozen
//! byte format in `kasbah-audit` (`host/audit/src/entry.rs`), a builder
//! here, and a storage write that returns it.

use kasbah_audit::{
    Credential, DatasetCreated, Denial, Entry, EntryBody, ModulePublished, PolicySet,
    ProvenancePublished, RunExecuted, SecretChanged, SigningKeyRevoked, TenantCreated,
};
use kasbah_core::Digest;
use kasbah_core::api::{
    DatasetRecord, ModuleRecord, PolicyRecord, ProvenanceRecord, Role, RunRecord, RunStatus,
    SigningKeyRevocation,
};

use crate::caller::Caller;
use crate::ids::now_ms;

/// A tenant's secret was set (`version`: the new one) or deleted
/// (`version`: the last one) — type 12: names and versions, never values.
pub fn secret_changed(tenant: &str, name: &str, version: u64, action: &str) -> Entry {
    entry(EntryBody::SecretChanged(SecretChanged {
        tenant: tenant.to_string(),
        name: name.to_string(),
        version,
        action: action.to_string(),
    }))
}

/// An entry stamped now.
pub fn entry(body: EntryBody) -> Entry {
    Entry::new(u64::try_from(now_ms()).unwrap_or(0), body)
}

/// Longest free-text field (denial reasons) put in an audit entry.
const MAX_REASON: usize = 4096;

fn bounded(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_string();
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A token was created or revoked: one entry per tenant it reaches (none:
/// one entry with an empty tenant).
pub fn credential(
    action: &str,
    id: &str,
    role: Role,
    subject: &str,
    tenants: &[String],
    expires_at: Option<i64>,
    by: &Caller,
) -> Vec<Entry> {
    let one = |tenant: &str| {
        entry(EntryBody::Credential(Credential {
            action: action.to_string(),
            token_id: id.to_string(),
            role: role.as_str().to_string(),
            subject: subject.to_string(),
            tenant: tenant.to_string(),
            expires_unix_ms: expires_at.and_then(|e| u64::try_from(e).ok()),
            by_role: by.role.as_str().to_string(),
            by_subject: by.subject.clone(),
        }))
    };
    if tenants.is_empty() {
        vec![one("")]
    } else {
        tenants.iter().map(|t| one(t)).collect()
    }
}

/// A tenant was created by an operator (empty: by an admin).
pub fn tenant_created(tenant: &str, operator: Option<&str>) -> Entry {
    entry(EntryBody::TenantCreated(TenantCreated {
        tenant: tenant.to_string(),
        operator: operator.unwrap_or_default().to_string(),
    }))
}

/// A policy version was set.
pub fn policy_set(r: &PolicyRecord) -> Entry {
    entry(EntryBody::PolicySet(PolicySet {
        tenant: r.tenant_id.clone(),
        policy: r.digest,
        policy_version: u64::from(r.version),
    }))
}

/// A run ended (or was found interrupted at start-up).
pub fn run_executed(r: &RunRecord) -> Entry {
    let usage = r.usage.clone().unwrap_or_default();
    let gpu = usage.gpu.as_ref();
    entry(EntryBody::RunExecuted(RunExecuted {
        run_id: r.id.clone(),
        tenant: r.tenant_id.clone(),
        module: r.module,
        input: r.input_digest,
        datasets: r.datasets.iter().map(|d| d.digest).collect(),
        output: r.output.as_ref().map(|o| o.digest),
        output_label: r.output_label.clone(),
        zone: r.zone.clone().unwrap_or_default(),
        adapter: r.adapter.clone(),
        policy_version: u64::from(r.policy_version),
        // A run without an outcome never finished: interrupted.
        outcome: r
            .outcome
            .as_ref()
            .map_or(RunStatus::Interrupted.as_str(), |o| o.kind())
            .to_string(),
        wall_time_us: u64::try_from(usage.wall_time.as_micros()).unwrap_or(u64::MAX),
        fuel: usage.fuel_consumed,
        peak_memory_bytes: usage.peak_memory_bytes,
        gpu_time_us: gpu.map_or(0, |g| {
            u64::try_from(g.gpu_time.as_micros()).unwrap_or(u64::MAX)
        }),
        gpu_bytes: gpu.map_or(0, |g| g.bytes_allocated),
        // Fleet runs: entry type 8 (see `kasbah_audit::entry`).
        worker: r.worker.clone(),
    }))
}

/// A refusal: a capability use refused during a run, a publish refused for
/// its imports, a run or dataset refused at admission or for residency.
pub fn denial(
    tenant: &str,
    module: Option<Digest>,
    run_id: Option<&str>,
    action: &str,
    reason: &str,
) -> Entry {
    entry(EntryBody::Denial(Denial {
        tenant: tenant.to_string(),
        module,
        run_id: run_id.map(str::to_string),
        action: bounded(action),
        reason: bounded(reason),
    }))
}

/// A dataset was created (uploaded, or a run's output stored as one).
pub fn dataset_created(d: &DatasetRecord) -> Entry {
    Entry::new(
        u64::try_from(d.created_at).unwrap_or(0),
        EntryBody::DatasetCreated(DatasetCreated {
            tenant: d.tenant_id.clone(),
            dataset: d.digest,
            size: d.size,
            name: d.name.clone(),
            label: d.label.clone(),
            run_id: d.source_run.clone(),
        }),
    )
}

/// A module's provenance statement was published (type 11).
pub fn provenance_published(p: &ProvenanceRecord) -> Entry {
    entry(EntryBody::ProvenancePublished(ProvenancePublished {
        tenant: p.tenant_id.clone(),
        module: p.module,
        statement: p.statement,
        source: p.source,
        cargo_lock: p.cargo_lock,
        toolchain: p.toolchain.clone(),
    }))
}

/// A module was published (the first time these bytes were, for this
/// tenant): type 3, or type 9 naming the verified signers.
pub fn module_published(m: &ModuleRecord) -> Entry {
    entry(EntryBody::ModulePublished(ModulePublished {
        tenant: m.tenant_id.clone(),
        module: m.digest,
        size: m.size,
        name: m.name.clone(),
        version: m.version.clone(),
        signer: None,
        signers: m.signers.clone(),
    }))
}

/// A signing key was revoked for a tenant's publishes (type 10).
pub fn signing_key_revoked(r: &SigningKeyRevocation) -> Entry {
    entry(EntryBody::SigningKeyRevoked(SigningKeyRevoked {
        tenant: r.tenant_id.clone(),
        key_id: r.key_id.clone(),
        by_role: r.by_role.clone(),
        by_subject: r.by_subject.clone(),
    }))
}
