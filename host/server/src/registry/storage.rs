//! The module registry's storage interface. SQLite implementation:
//! `sqlite.rs`.
//!
//! Contract: [`ModuleStore::insert_module`] commits the module's row and its
//! `module_published` entry in one transaction;
//! [`ModuleStore::insert_provenance`] a statement's row and its
//! `provenance_published` entry (type 11).

use std::future::Future;
use std::sync::Arc;

use kasbah_core::Digest;
use kasbah_core::api::{ModuleRecord, ProvenanceRecord};

use crate::store::DbResult;

pub trait ModuleStore: Send + Sync {
    /// Record a module for a tenant, with its `module_published` entry.
    /// Same digest again → the existing record (no new entry); same
    /// name+version with other bytes → `Ok(Err(existing digest))`.
    fn insert_module(
        &self,
        m: &ModuleRecord,
    ) -> impl Future<Output = DbResult<Result<ModuleRecord, Digest>>> + Send;
    fn module(&self, tenant_id: &str, digest: &Digest) -> DbResult<Option<ModuleRecord>>;
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
