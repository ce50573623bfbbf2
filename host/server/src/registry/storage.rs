//! The module registry's storage interface. SQLite implementation:
//! `sqlite.rs`.
//!
//! Contract: [`ModuleStore::insert_module`] commits the module's row and its
//! `module_published` entry in one transaction;
//! [`ModuleStore::revoke_signing_key`] the revocation and its
//! `signing_key_revoked` entry;
//! [`ModuleStore::insert_provenance`] a statement's row and its
//! `provenance_published` entry (type 11).

use std::future::Future;
use std::sync::Arc;

use kasbah_core::Digest;
use kasbah_core::api::{ModuleRecord, ProvenanceRecord, SigningKeyRevocation};

use crate::store::DbResult;

pub trait ModuleStore: Send + Sync {
    /// Record a module for a tenant, with its `module_published` entry
    /// (type 9 when `m.signers` is not empty) and the DSSE envelopes the
    /// publish carried (`signatures`, a JSON array). Same digest again → the existing
    /// record (no new entry); same name+version with other bytes →
    /// `Ok(Err(existing digest))`.
    fn insert_module(
        &self,
        m: &ModuleRecord,
        signatures: Option<String>,
    ) -> impl Future<Output = DbResult<Result<ModuleRecord, Digest>>> + Send;
    /// Revoke a signing key for a tenant, with its `signing_key_revoked`
    /// entry. Already revoked → the existing revocation (no new entry).
    fn revoke_signing_key(
        &self,
        r: &SigningKeyRevocation,
    ) -> impl Future<Output = DbResult<SigningKeyRevocation>> + Send;
    /// The key ids revoked for a tenant.
    fn revoked_signing_keys(&self, tenant_id: &str) -> DbResult<Vec<String>>;
    /// The DSSE envelopes (JSON array) stored with a tenant's module.
    fn module_signatures(&self, tenant_id: &str, digest: &Digest) -> DbResult<Option<String>>;
    fn module(&self, tenant_id: &str, digest: &Digest) -> DbResult<Option<ModuleRecord>>;
    /// A tenant's module by name: that `version`, or (`None`) the version
    /// published last (newest `created_at`; the later insert on a tie).
    fn module_by_name(
        &self,
        tenant_id: &str,
        name: &str,
        version: Option<&str>,
    ) -> DbResult<Option<ModuleRecord>>;
    /// [`Self::module`] for the run path: modules are immutable and never
    /// deleted, so implementations may cache what they found.
    fn module_cached(
        &self,
        tenant_id: &str,
        digest: &Digest,
    ) -> DbResult<Option<Arc<ModuleRecord>>>;
    /// The tenants' modules, oldest first.
    fn modules(&self, tenant_ids: &[String]) -> DbResult<Vec<ModuleRecord>>;
    /// Record a module's provenance statement, with its
    /// `provenance_published` entry. The same statement again → the
    /// existing record (no new entry); another statement for the module →
    /// `Ok(Err(existing statement digest))`.
    fn insert_provenance(
        &self,
        p: &ProvenanceRecord,
        statement: &[u8],
    ) -> impl Future<Output = DbResult<Result<ProvenanceRecord, Digest>>> + Send;
    /// A module's provenance record and statement bytes.
    fn provenance(
        &self,
        tenant_id: &str,
        module: &Digest,
    ) -> DbResult<Option<(ProvenanceRecord, Vec<u8>)>>;
}
