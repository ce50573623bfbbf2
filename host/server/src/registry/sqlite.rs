//! The module registry in SQLite: one row per (tenant, digest), unique
//! (tenant, name, version); `module_provenance`: at most one statement per
//! (tenant, module).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kasbah_core::Digest;
use kasbah_core::api::{ModuleRecord, ProvenanceRecord, SigningKeyRevocation};
use rusqlite::{Connection, OptionalExtension, params};

use super::storage::ModuleStore;
use crate::audit::entries;
use crate::store::{CACHE_MAX, Db, DbResult, from_json, json, lock, parse_digest};

pub struct SqliteModules {
    db: Arc<Db>,
    /// (tenant, module) → record, for modules seen before. Modules are
    /// immutable and never deleted.
    seen: Mutex<HashMap<(String, Digest), Arc<ModuleRecord>>>,
}

impl SqliteModules {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteModules {
            db,
            seen: Mutex::default(),
        }
    }
}

impl ModuleStore for SqliteModules {
    /// Record a module for a tenant, with its `module_published` audit
    /// entry. Same digest again → the existing record (no new entry);
    /// same name+version with other bytes → `Err(existing digest)`.
    async fn insert_module(
        &self,
        m: &ModuleRecord,
        signatures: Option<String>,
    ) -> DbResult<Result<ModuleRecord, Digest>> {
        let m = m.clone();
        let (result, _) = self
            .db
            .write(move |tx| {
                if let Some(existing) = module_row(tx, &m.tenant_id, &m.digest)? {
                    return Ok((Ok(existing), Vec::new()));
                }
                let clash: Option<String> = tx
                    .query_row(
                        "SELECT digest FROM modules WHERE tenant_id = ?1 AND name = ?2 AND version = ?3",
                        params![m.tenant_id, m.name, m.version],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(d) = clash {
                    return Ok((Err(parse_digest(&d)?), Vec::new()));
                }
                tx.execute(
                    "INSERT INTO modules(tenant_id, digest, name, version, size, imports_json, created_at,
                                         signers_json, signatures_json)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        m.tenant_id,
                        m.digest.to_string(),
                        m.name,
                        m.version,
                        m.size as i64,
                        json(&m.imports)?,
                        m.created_at,
                        if m.signers.is_empty() {
                            None
                        } else {
                            Some(json(&m.signers)?)
                        },
                        signatures,
                    ],
                )?;
                let e = entries::module_published(&m);
                Ok((Ok(m), vec![e]))
            })
            .await?;
        Ok(result)
    }

    async fn revoke_signing_key(&self, r: &SigningKeyRevocation) -> DbResult<SigningKeyRevocation> {
        let r = r.clone();
        let (result, _) = self
            .db
            .write(move |tx| {
                let existing = tx
                    .query_row(
                        "SELECT revoked_at, by_role, by_subject FROM signing_key_revocations
                         WHERE tenant_id = ?1 AND key_id = ?2",
                        params![r.tenant_id, r.key_id],
                        |row| {
                            Ok(SigningKeyRevocation {
                                tenant_id: r.tenant_id.clone(),
                                key_id: r.key_id.clone(),
                                revoked_at: row.get(0)?,
                                by_role: row.get(1)?,
                                by_subject: row.get(2)?,
                            })
                        },
                    )
                    .optional()?;
                if let Some(e) = existing {
                    return Ok((e, Vec::new()));
                }
                tx.execute(
                    "INSERT INTO signing_key_revocations(tenant_id, key_id, revoked_at, by_role, by_subject)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![r.tenant_id, r.key_id, r.revoked_at, r.by_role, r.by_subject],
                )?;
                let e = entries::signing_key_revoked(&r);
                Ok((r, vec![e]))
            })
            .await?;
        Ok(result)
    }

    fn revoked_signing_keys(&self, tenant_id: &str) -> DbResult<Vec<String>> {
        self.db.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT key_id FROM signing_key_revocations WHERE tenant_id = ?1 ORDER BY key_id",
            )?;
            st.query_map([tenant_id], |r| r.get(0))?.collect()
        })
    }

    fn module_signatures(&self, tenant_id: &str, digest: &Digest) -> DbResult<Option<String>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT signatures_json FROM modules WHERE tenant_id = ?1 AND digest = ?2",
                params![tenant_id, digest.to_string()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    fn module(&self, tenant_id: &str, digest: &Digest) -> DbResult<Option<ModuleRecord>> {
        self.db.with(|c| module_row(c, tenant_id, digest))
    }

    fn module_by_name(
        &self,
        tenant_id: &str,
        name: &str,
        version: Option<&str>,
    ) -> DbResult<Option<ModuleRecord>> {
        self.db.with(|c| match version {
            Some(v) => c
                .prepare_cached(
                    "SELECT tenant_id, digest, name, version, size, imports_json, created_at, signers_json
                     FROM modules WHERE tenant_id = ?1 AND name = ?2 AND version = ?3",
                )?
                .query_row(params![tenant_id, name, v], row_module)
                .optional(),
            None => c
                .prepare_cached(
                    "SELECT tenant_id, digest, name, version, size, imports_json, created_at, signers_json
                     FROM modules WHERE tenant_id = ?1 AND name = ?2
                     ORDER BY created_at DESC, rowid DESC LIMIT 1",
                )?
                .query_row(params![tenant_id, name], row_module)
                .optional(),
        })
    }

    /// [`Self::module`], with found modules cached (they are immutable).
    fn module_cached(
        &self,
        tenant_id: &str,
        digest: &Digest,
    ) -> DbResult<Option<Arc<ModuleRecord>>> {
        let key = (tenant_id.to_string(), *digest);
        if let Some(m) = lock(&self.seen).get(&key) {
            return Ok(Some(m.clone()));
        }
        let Some(m) = self.module(tenant_id, digest)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        let mut cache = lock(&self.seen);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(Some(m))
    }

    fn modules(&self, tenant_ids: &[String]) -> DbResult<Vec<ModuleRecord>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT tenant_id, digest, name, version, size, imports_json, created_at, signers_json
                 FROM modules WHERE tenant_id = ?1 ORDER BY created_at",
            )?;
            let mut out = Vec::new();
            for t in tenant_ids {
                for m in st.query_map([t], row_module)? {
                    out.push(m?);
                }
            }
            Ok(out)
        })
    }

    async fn insert_provenance(
        &self,
        p: &ProvenanceRecord,
        statement: &[u8],
    ) -> DbResult<Result<ProvenanceRecord, Digest>> {
        let p = p.clone();
        let statement = statement.to_vec();
        let (result, _) = self
            .db
            .write(move |tx| {
                if let Some((existing, _)) = provenance_row(tx, &p.tenant_id, &p.module)? {
                    return Ok(if existing.statement == p.statement {
                        (Ok(existing), Vec::new())
                    } else {
                        (Err(existing.statement), Vec::new())
                    });
                }
                tx.execute(
                    "INSERT INTO module_provenance(tenant_id, module, statement_digest, source, cargo_lock,
                         toolchain, statement, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![
                        p.tenant_id,
                        p.module.to_string(),
                        p.statement.to_string(),
                        p.source.to_string(),
                        p.cargo_lock.to_string(),
                        p.toolchain,
                        statement,
                        p.created_at
                    ],
                )?;
                let e = entries::provenance_published(&p);
                Ok((Ok(p), vec![e]))
            })
            .await?;
        Ok(result)
    }

    fn provenance(
        &self,
        tenant_id: &str,
        module: &Digest,
    ) -> DbResult<Option<(ProvenanceRecord, Vec<u8>)>> {
        self.db.with(|c| provenance_row(c, tenant_id, module))
    }
}

fn provenance_row(
    c: &Connection,
    tenant_id: &str,
    module: &Digest,
) -> rusqlite::Result<Option<(ProvenanceRecord, Vec<u8>)>> {
    c.prepare_cached(
        "SELECT statement_digest, source, cargo_lock, toolchain, statement, created_at
         FROM module_provenance WHERE tenant_id = ?1 AND module = ?2",
    )?
    .query_row(params![tenant_id, module.to_string()], |r| {
        let statement: Vec<u8> = r.get(4)?;
        Ok((
            ProvenanceRecord {
                module: *module,
                tenant_id: tenant_id.to_string(),
                statement: parse_digest(&r.get::<_, String>(0)?)?,
                source: parse_digest(&r.get::<_, String>(1)?)?,
                cargo_lock: parse_digest(&r.get::<_, String>(2)?)?,
                toolchain: r.get(3)?,
                size: statement.len() as u64,
                created_at: r.get(5)?,
            },
            statement,
        ))
    })
    .optional()
}

fn row_module(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModuleRecord> {
    Ok(ModuleRecord {
        tenant_id: r.get(0)?,
        digest: parse_digest(&r.get::<_, String>(1)?)?,
        name: r.get(2)?,
        version: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        imports: from_json(&r.get::<_, String>(5)?)?,
        created_at: r.get(6)?,
        signers: match r.get::<_, Option<String>>(7)? {
            Some(s) => from_json(&s)?,
            None => Vec::new(),
        },
    })
}

fn module_row(
    c: &Connection,
    tenant_id: &str,
    digest: &Digest,
) -> rusqlite::Result<Option<ModuleRecord>> {
    c.prepare_cached(
        "SELECT tenant_id, digest, name, version, size, imports_json, created_at, signers_json
         FROM modules WHERE tenant_id = ?1 AND digest = ?2",
    )?
    .query_row(params![tenant_id, digest.to_string()], row_module)
    .optional()
}
