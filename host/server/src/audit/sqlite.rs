//! The audit log's writes in SQLite: appended by the group-commit writer
//! ([`Db::append`]), in a batch transaction of their own.

use kasbah_core::Digest;

use super::entries;
use super::storage::AuditStore;
use crate::store::{Db, DbResult};

impl AuditStore for Db {
    async fn record_denial(
        &self,
        tenant: &str,
        module: Option<Digest>,
        action: &str,
        reason: &str,
    ) -> DbResult<u64> {
        let e = entries::denial(tenant, module, None, action, reason);
        Ok(self.append(&[e]).await?.start)
    }
}
