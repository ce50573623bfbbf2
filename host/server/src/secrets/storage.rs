//! Secrets' storage interface. SQLite implementation: `sqlite.rs`.
//!
//! Contract: [`SecretStore::set`] and [`SecretStore::delete`] commit the
//! change and its `secret_changed` entry (type 12: tenant, name, version,
//! action) in one transaction. Only ciphertexts are stored: the value is
//! sealed by the caller's closure for the version the write picks.

use std::future::Future;

use kasbah_core::api::SecretRecord;

use crate::store::DbResult;

/// Most secrets one tenant keeps (64 KiB each at most).
pub const MAX_TENANT_SECRETS: usize = 1000;

/// A sealed value: nonce and ciphertext (with its tag).
#[derive(Clone)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// A stored secret: its record and its sealed value.
pub struct StoredSecret {
    pub record: SecretRecord,
    pub sealed: Sealed,
}

/// Seals the value for the version the write picks.
/// `Err`: sealing failed (the OS random source), nothing is stored.
pub type Sealer = Box<dyn FnOnce(u64) -> Result<Sealed, String> + Send>;

pub trait SecretStore: Send + Sync {
    /// Store a new version of `tenant`'s secret `name` (1, or one more than
    /// the last, even a deleted one), replacing the previous value.
    /// `Ok(None)`: the tenant has [`MAX_TENANT_SECRETS`] others already.
    fn set(
        &self,
        tenant: &str,
        name: &str,
        seal: Sealer,
    ) -> impl Future<Output = DbResult<Option<SecretRecord>>> + Send;
    /// Delete the value (the version number is remembered). `Ok(None)`: no
    /// such secret.
    fn delete(
        &self,
        tenant: &str,
        name: &str,
    ) -> impl Future<Output = DbResult<Option<SecretRecord>>> + Send;
    /// The tenant's secrets, by name.
    fn list(&self, tenant: &str) -> DbResult<Vec<SecretRecord>>;
    /// The tenant's secret `name`, sealed (`None`: not set).
    fn sealed(&self, tenant: &str, name: &str) -> DbResult<Option<StoredSecret>>;
}
