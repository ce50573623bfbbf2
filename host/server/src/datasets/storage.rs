//! Datasets' storage interface. SQLite implementation: `sqlite.rs`.
//!
//! Contract: [`DatasetStore::create`] commits the dataset's row and its
//! `dataset_created` entry in one transaction; so does storing a run's
//! output as a dataset, inside the run's finishing transaction (the SQLite
//! implementation's `store_output`, called by the runs' storage).

use std::future::Future;

use kasbah_core::Digest;
use kasbah_core::api::DatasetRecord;

use crate::store::DbResult;

pub trait DatasetStore: Send + Sync {
    /// Record a new dataset with its `dataset_created` entry; a dataset of
    /// that name already there → `Ok(Err(existing))`, nothing written.
    fn create(
        &self,
        d: &DatasetRecord,
    ) -> impl Future<Output = DbResult<Result<DatasetRecord, DatasetRecord>>> + Send;
    fn by_name(&self, tenant: &str, name: &str) -> DbResult<Option<DatasetRecord>>;
    /// The tenant's datasets with these bytes, by name.
    fn by_digest(&self, tenant: &str, digest: &Digest) -> DbResult<Vec<DatasetRecord>>;
    /// The tenant's datasets, oldest first.
    fn list(&self, tenant: &str) -> DbResult<Vec<DatasetRecord>>;
    fn get(&self, id: &str) -> DbResult<Option<DatasetRecord>>;
}
