//! Secrets in SQLite: one row per tenant and name with the latest version
//! only (older values are gone once replaced); a deleted secret keeps its
//! row without a value, so its numbering goes on. Ciphertexts only.

use std::sync::Arc;

use kasbah_core::api::SecretRecord;
use rusqlite::{Connection, OptionalExtension, params};

use super::storage::{MAX_TENANT_SECRETS, Sealed, Sealer, SecretStore, StoredSecret};
use crate::audit::entries;
use crate::ids::now_ms;
use crate::store::{Db, DbError, DbResult};

/// The table (created with the others: `store/schema.rs`).
pub const SCHEMA: &str = r#"
-- Tenant secrets (issue 18): the latest version of each, sealed
-- (XChaCha20-Poly1305, secrets/seal.rs). nonce/ciphertext NULL: deleted.
CREATE TABLE IF NOT EXISTS secrets (
    tenant_id TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    nonce BLOB,
    ciphertext BLOB,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) WITHOUT ROWID;
"#;

pub struct SqliteSecrets {
    db: Arc<Db>,
}

impl SqliteSecrets {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteSecrets { db }
    }
}

impl SecretStore for SqliteSecrets {
    async fn set(&self, tenant: &str, name: &str, seal: Sealer) -> DbResult<Option<SecretRecord>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        let (r, _) =
            self.db
                .write(move |c| {
                    let last: Option<(u64, bool)> = c
                        .prepare_cached(
                            "SELECT version, ciphertext IS NOT NULL FROM secrets
                         WHERE tenant_id = ?1 AND name = ?2",
                        )?
                        .query_row(params![tenant, name], |r| {
                            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
                        })
                        .optional()?;
                    if !last.is_some_and(|(_, live)| live)
                        && count(c, &tenant)? >= MAX_TENANT_SECRETS
                    {
                        return Ok((None, Vec::new()));
                    }
                    let version = last.map_or(1, |(v, _)| v + 1);
                    let Sealed { nonce, ciphertext } =
                        seal(version).map_err(|e| DbError::Batch(Arc::from(e.as_str())))?;
                    let created_at = now_ms();
                    c.prepare_cached(
                    "INSERT INTO secrets(tenant_id, name, version, nonce, ciphertext, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (tenant_id, name) DO UPDATE SET version = ?3, nonce = ?4,
                         ciphertext = ?5, created_at = ?6",
                )?
                .execute(params![tenant, name, version as i64, nonce, ciphertext, created_at])?;
                    let e = entries::secret_changed(&tenant, &name, version, "set");
                    let record = SecretRecord {
                        name,
                        version,
                        created_at,
                    };
                    Ok((Some(record), vec![e]))
                })
                .await?;
        Ok(r)
    }

    async fn delete(&self, tenant: &str, name: &str) -> DbResult<Option<SecretRecord>> {
        let (tenant, name) = (tenant.to_string(), name.to_string());
        let (r, _) = self
            .db
            .write(move |c| {
                let Some(record) = live(c, &tenant, &name)? else {
                    return Ok((None, Vec::new()));
                };
                c.prepare_cached(
                    "UPDATE secrets SET nonce = NULL, ciphertext = NULL
                     WHERE tenant_id = ?1 AND name = ?2",
                )?
                .execute(params![tenant, name])?;
                let e = entries::secret_changed(&tenant, &name, record.version, "delete");
                Ok((Some(record), vec![e]))
            })
            .await?;
        Ok(r)
    }

    fn list(&self, tenant: &str) -> DbResult<Vec<SecretRecord>> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT name, version, created_at FROM secrets
                 WHERE tenant_id = ?1 AND ciphertext IS NOT NULL ORDER BY name",
            )?
            .query_map([tenant], row_record)?
            .collect()
        })
    }

    fn sealed(&self, tenant: &str, name: &str) -> DbResult<Option<StoredSecret>> {
        self.db.with(|c| {
            c.prepare_cached(
                "SELECT name, version, created_at, nonce, ciphertext FROM secrets
                 WHERE tenant_id = ?1 AND name = ?2 AND ciphertext IS NOT NULL",
            )?
            .query_row(params![tenant, name], |r| {
                Ok(StoredSecret {
                    record: row_record(r)?,
                    sealed: Sealed {
                        nonce: r.get(3)?,
                        ciphertext: r.get(4)?,
                    },
                })
            })
            .optional()
        })
    }
}

fn count(c: &Connection, tenant: &str) -> rusqlite::Result<usize> {
    c.prepare_cached(
        "SELECT count(*) FROM secrets WHERE tenant_id = ?1 AND ciphertext IS NOT NULL",
    )?
    .query_row([tenant], |r| r.get::<_, i64>(0))
    .map(|n| n as usize)
}

fn live(c: &Connection, tenant: &str, name: &str) -> rusqlite::Result<Option<SecretRecord>> {
    c.prepare_cached(
        "SELECT name, version, created_at FROM secrets
         WHERE tenant_id = ?1 AND name = ?2 AND ciphertext IS NOT NULL",
    )?
    .query_row(params![tenant, name], row_record)
    .optional()
}

fn row_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<SecretRecord> {
    Ok(SecretRecord {
        name: r.get(0)?,
        version: r.get::<_, i64>(1)? as u64,
        created_at: r.get(2)?,
    })
}
