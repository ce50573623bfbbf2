//! Datasets in SQLite: one row per dataset (unique per tenant and name),
//! the bytes in the blob store, or (`zone_stored`, uploads to a fleet
//! control plane) in the label zones' object store buckets only.

use std::sync::Arc;

use kasbah_audit::Entry;
use kasbah_core::Digest;
use kasbah_core::api::DatasetRecord;
use rusqlite::{Connection, OptionalExtension, params};

use super::storage::DatasetStore;
use crate::audit::entries;
use crate::ids::{new_id, now_ms};
use crate::runs::storage::RunResidency;
use crate::store::{Db, DbError, DbResult};

pub struct SqliteDatasets {
    db: Arc<Db>,
}

impl SqliteDatasets {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteDatasets { db }
    }
}

impl DatasetStore for SqliteDatasets {
    async fn create(&self, d: &DatasetRecord) -> DbResult<Result<DatasetRecord, DatasetRecord>> {
        let row = d.clone();
        let (result, _) = self
            .db
            .write(move |c| {
                if let Some(existing) = by_name(c, &row.tenant_id, &row.name)? {
                    return Ok((Err(existing), Vec::new()));
                }
                insert(c, &row)?;
                let e = entries::dataset_created(&row);
                Ok((Ok(row), vec![e]))
            })
            .await?;
        Ok(result)
    }

    fn by_name(&self, tenant: &str, name: &str) -> DbResult<Option<DatasetRecord>> {
        self.db.with(|c| by_name(c, tenant, name))
    }

    fn by_digest(&self, tenant: &str, digest: &Digest) -> DbResult<Vec<DatasetRecord>> {
        self.db.with(|c| {
            c.prepare_cached(&format!(
                "{COLUMNS} WHERE tenant_id = ?1 AND digest = ?2 ORDER BY name"
            ))?
            .query_map(params![tenant, digest.to_string()], row_dataset)?
            .collect()
        })
    }

    fn list(&self, tenant: &str) -> DbResult<Vec<DatasetRecord>> {
        self.db.with(|c| {
            c.prepare_cached(&format!(
                "{COLUMNS} WHERE tenant_id = ?1 ORDER BY created_at, name"
            ))?
            .query_map([tenant], row_dataset)?
            .collect()
        })
    }

    fn get(&self, id: &str) -> DbResult<Option<DatasetRecord>> {
        self.db.with(|c| {
            c.prepare_cached(&format!("{COLUMNS} WHERE id = ?1"))?
                .query_row([id], row_dataset)
                .optional()
        })
    }
}

/// In a run's finishing transaction: store its output as the dataset the
/// run asked for (`store_output_as`), labelled with the run's output label.
/// The output blob is already in the blob store. Returns the id of the
/// dataset the output is now (if any) and its `dataset_created` entry (if
/// it was created here).
pub(crate) fn store_output(
    c: &Connection,
    run_id: &str,
    tenant: &str,
    residency: &RunResidency,
    digest: Digest,
    size: u64,
) -> DbResult<(Option<String>, Option<Entry>)> {
    let Some(name) = &residency.store_output_as else {
        return Ok((None, None));
    };
    let id = match by_name(c, tenant, name)? {
        Some(existing) if existing.digest == digest && existing.label == residency.output_label => {
            existing.id
        }
        Some(existing) => {
            tracing::warn!(
                run = run_id,
                "output not stored as dataset {name:?}: it exists with other bytes or label ({})",
                existing.id
            );
            return Ok((None, None));
        }
        None => {
            let row = DatasetRecord {
                id: new_id("ds"),
                tenant_id: tenant.to_string(),
                name: name.clone(),
                digest,
                size,
                label: residency.output_label.clone(),
                source_run: Some(run_id.to_string()),
                created_at: now_ms(),
                zone_stored: false,
            };
            insert(c, &row)?;
            return Ok((Some(row.id.clone()), Some(entries::dataset_created(&row))));
        }
    };
    Ok((Some(id), None))
}

const COLUMNS: &str = "SELECT id, tenant_id, name, digest, size, label_json, source_run, created_at, zone_stored \
     FROM datasets";

pub(crate) fn by_name(
    c: &Connection,
    tenant: &str,
    name: &str,
) -> rusqlite::Result<Option<DatasetRecord>> {
    c.prepare_cached(&format!("{COLUMNS} WHERE tenant_id = ?1 AND name = ?2"))?
        .query_row(params![tenant, name], row_dataset)
        .optional()
}

fn insert(c: &Connection, d: &DatasetRecord) -> DbResult<()> {
    let label = serde_json::to_string(&d.label)
        .map_err(|e| DbError::Sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    c.prepare_cached(
        "INSERT INTO datasets(id, tenant_id, name, digest, size, label_json, source_run, created_at,
                              zone_stored)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        d.id,
        d.tenant_id,
        d.name,
        d.digest.to_string(),
        d.size as i64,
        label,
        d.source_run,
        d.created_at,
        d.zone_stored.then_some(1i64)
    ])?;
    Ok(())
}

fn conversion(e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
}

fn row_dataset(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRecord> {
    Ok(DatasetRecord {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        name: r.get(2)?,
        digest: r.get::<_, String>(3)?.parse().map_err(conversion)?,
        size: r.get::<_, i64>(4)? as u64,
        label: serde_json::from_str(&r.get::<_, String>(5)?).map_err(conversion)?,
        source_run: r.get(6)?,
        created_at: r.get(7)?,
        zone_stored: r.get::<_, Option<i64>>(8)?.is_some_and(|v| v != 0),
    })
}
