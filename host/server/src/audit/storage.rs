//! The audit log's storage interface for writes that record no other
//! state change (refusals). Every other entry is appended by the domain
//! storage that makes the change it records, in the same transaction.
//!
//! Reads (checkpoints, proofs, entries, receipts) run on one consistent
//! snapshot ([`crate::store::Db::audit_read`], `log.rs`): the log's tree
//! is read through `kasbah-audit`'s `NodeStore` trait, which is the seam a
//! second backend implements.

use std::future::Future;

use kasbah_core::Digest;

use crate::store::DbResult;

pub trait AuditStore: Send + Sync {
    /// Record a refusal that changed no other state (a publish refused for
    /// its imports, a run refused at admission or for residency). Returns
    /// once it is durable, with its index.
    fn record_denial(
        &self,
        tenant: &str,
        module: Option<Digest>,
        action: &str,
        reason: &str,
    ) -> impl Future<Output = DbResult<u64>> + Send;
}
