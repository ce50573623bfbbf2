//! Tenancy's SQLite storage: operators, tenants, policy versions, auditors
//! (tokens: `tokens_sqlite.rs`). Writes go through the group-commit writer
//! ([`Db::write`]) with their audit entries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kasbah_core::Digest;
use kasbah_core::api::{Auditor, Operator, PolicyRecord, Role, Tenant, TokenCreated};
use kasbah_policy::{Ceiling, Policy};
use rusqlite::{Connection, OptionalExtension, params};

use super::storage::{NewToken, TenancyStore};
use super::token_rows::{TokenCache, insert_token, new_token_row};
use crate::audit::entries;
use crate::caller::Caller;
use crate::ids::{new_id, now_ms};
use crate::store::{CACHE_MAX, Db, DbResult, from_json, json, lock, parse_digest};

/// Tenancy over the platform's SQLite database.
pub struct SqliteTenancy {
    pub(super) db: Arc<Db>,
    /// Token hash → live token (see [`TokenCache`]).
    pub(super) callers: Mutex<TokenCache>,
    /// Tenant → current policy (see [`PolicyCache`]).
    policies: Mutex<PolicyCache>,
}

/// Current policies seen before. A lookup that read the database before a
/// new version committed must not put the old one back after the new
/// version's commit evicted it: setting a policy bumps `generation` (under
/// this lock, after its commit), and a lookup caches what it read only if
/// the generation is still the one it saw before reading.
#[derive(Default)]
struct PolicyCache {
    generation: u64,
    current: HashMap<String, Arc<PolicyRecord>>,
}

impl SqliteTenancy {
    pub fn new(db: Arc<Db>) -> Self {
        SqliteTenancy {
            db,
            callers: Mutex::default(),
            policies: Mutex::default(),
        }
    }
}

impl TenancyStore for SqliteTenancy {
    // ---- operators ------------------------------------------------------

    async fn create_operator(
        &self,
        name: &str,
        ceiling: &Ceiling,
        max_tenants: u32,
        zones: Vec<String>,
    ) -> DbResult<Operator> {
        let op = Operator {
            id: new_id("op"),
            name: name.to_string(),
            ceiling: ceiling.clone(),
            max_tenants,
            zones,
            created_at: now_ms(),
        };
        let row = op.clone();
        self.db
            .write(move |c| {
                c.execute(
                "INSERT INTO operators(id, name, ceiling_json, max_tenants, created_at, zones_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    row.id,
                    row.name,
                    json(&row.ceiling)?,
                    row.max_tenants,
                    row.created_at,
                    (!row.zones.is_empty())
                        .then(|| json(&row.zones))
                        .transpose()?
                ],
            )?;
                Ok(((), Vec::new()))
            })
            .await?;
        Ok(op)
    }

    /// Replace an operator's ceiling; `false` when there is no such operator.
    async fn set_operator_ceiling(&self, id: &str, ceiling: &Ceiling) -> DbResult<bool> {
        let (id, ceiling) = (id.to_string(), json(ceiling)?);
        let (n, _) = self
            .db
            .write(move |c| {
                let n = c.execute(
                    "UPDATE operators SET ceiling_json = ?1 WHERE id = ?2",
                    params![ceiling, id],
                )?;
                Ok((n, Vec::new()))
            })
            .await?;
        Ok(n > 0)
    }

    fn operators(&self) -> DbResult<Vec<Operator>> {
        self.db.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, ceiling_json, max_tenants, created_at, zones_json FROM operators ORDER BY created_at",
            )?;
            st.query_map([], row_operator)?.collect()
        })
    }

    fn operator(&self, id: &str) -> DbResult<Option<Operator>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT id, name, ceiling_json, max_tenants, created_at, zones_json FROM operators WHERE id = ?1",
                [id],
                row_operator,
            )
            .optional()
        })
    }

    // ---- tenants and policies -------------------------------------------

    /// Create a tenant with policy version 1 (set by `set_by`: `admin` or
    /// an operator id), atomically, with its `tenant_created` and
    /// `policy_set` audit entries; refuses when the operator is at its
    /// tenant quota.
    async fn create_tenant(
        &self,
        name: &str,
        operator: Option<&Operator>,
        policy: &Policy,
        set_by: &str,
    ) -> DbResult<Result<(Tenant, PolicyRecord), String>> {
        let now = now_ms();
        let tenant = Tenant {
            id: new_id("tn"),
            name: name.to_string(),
            operator_id: operator.map(|o| o.id.clone()),
            policy_version: 1,
            created_at: now,
        };
        let record = policy_record(&tenant.id, 1, policy, now, set_by)?;
        let quota = operator.map(|o| (o.id.clone(), o.max_tenants));
        let (result, _) = self
            .db
            .write(move |tx| {
                if let Some((op, max)) = &quota {
                    let n: u32 = tx.query_row(
                        "SELECT COUNT(*) FROM tenants WHERE operator_id = ?1",
                        [op],
                        |r| r.get(0),
                    )?;
                    if n >= *max {
                        return Ok((
                            Err(format!(
                                "operator {op} already has {n} tenants (max_tenants = {max})"
                            )),
                            Vec::new(),
                        ));
                    }
                }
                tx.execute(
                    "INSERT INTO tenants(id, name, operator_id, policy_version, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                    params![tenant.id, tenant.name, tenant.operator_id, now],
                )?;
                insert_policy(tx, &record)?;
                let entries = vec![
                    entries::tenant_created(&tenant.id, tenant.operator_id.as_deref()),
                    entries::policy_set(&record),
                ];
                Ok((Ok((tenant, record)), entries))
            })
            .await?;
        Ok(result)
    }

    fn tenant(&self, id: &str) -> DbResult<Option<Tenant>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT id, name, operator_id, policy_version, created_at FROM tenants WHERE id = ?1",
                [id],
                row_tenant,
            )
            .optional()
        })
    }

    fn tenants(&self, operator: Option<&str>) -> DbResult<Vec<Tenant>> {
        self.db.with(|c| {
            let sql = "SELECT id, name, operator_id, policy_version, created_at FROM tenants";
            match operator {
                Some(op) => c
                    .prepare(&format!("{sql} WHERE operator_id = ?1 ORDER BY created_at"))?
                    .query_map([op], row_tenant)?
                    .collect(),
                None => c
                    .prepare(&format!("{sql} ORDER BY created_at"))?
                    .query_map([], row_tenant)?
                    .collect(),
            }
        })
    }

    /// Store a new policy version (set by `set_by`: `admin` or an operator
    /// id) and make it current, with its `policy_set` audit entry. A policy
    /// identical to the current version (same digest) makes no version and
    /// no entry: the current record comes back with `unchanged: true`.
    async fn set_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
        set_by: &str,
    ) -> DbResult<PolicyRecord> {
        let now = now_ms();
        let (tenant_id, policy) = (tenant_id.to_string(), policy.clone());
        let set_by = set_by.to_string();
        let (record, _) = self
            .db
            .write(move |tx| {
                let v: u32 = tx.query_row(
                    "SELECT policy_version FROM tenants WHERE id = ?1",
                    [&tenant_id],
                    |r| r.get(0),
                )?;
                let record = policy_record(&tenant_id, v + 1, &policy, now, &set_by)?;
                // Compared inside the write, so two identical concurrent
                // sets make one version, not two.
                if let Some(mut current) = policy_version_in(tx, &tenant_id, v)?
                    && current.digest == record.digest
                {
                    current.unchanged = true;
                    return Ok((current, Vec::new()));
                }
                insert_policy(tx, &record)?;
                tx.execute(
                    "UPDATE tenants SET policy_version = ?1 WHERE id = ?2",
                    params![record.version, tenant_id],
                )?;
                let e = entries::policy_set(&record);
                Ok((record, vec![e]))
            })
            .await?;
        if !record.unchanged {
            // After the commit: a lookup that read the old version before
            // it must not cache it (see `PolicyCache`).
            let mut cache = lock(&self.policies);
            cache.generation += 1;
            cache.current.remove(&record.tenant_id);
        }
        Ok(record)
    }

    fn current_policy(&self, tenant_id: &str) -> DbResult<Option<PolicyRecord>> {
        self.db.with(|c| {
            c.query_row(
                &format!(
                    "{POLICY_COLUMNS} JOIN tenants t ON t.id = p.tenant_id AND t.policy_version = p.version
                     WHERE t.id = ?1"
                ),
                [tenant_id],
                row_policy,
            )
            .optional()
        })
    }

    /// The tenant's current policy, cached (see [`PolicyCache`]).
    fn current_policy_cached(&self, tenant_id: &str) -> DbResult<Option<Arc<PolicyRecord>>> {
        let generation = {
            let cache = lock(&self.policies);
            if let Some(p) = cache.current.get(tenant_id) {
                return Ok(Some(p.clone()));
            }
            cache.generation
        };
        let Some(p) = self.current_policy(tenant_id)? else {
            return Ok(None);
        };
        let p = Arc::new(p);
        let mut cache = lock(&self.policies);
        if cache.generation == generation {
            if cache.current.len() >= CACHE_MAX {
                cache.current.clear();
            }
            cache.current.insert(tenant_id.to_string(), p.clone());
        }
        Ok(Some(p))
    }

    /// Every policy version of a tenant, oldest first, each with who set it.
    fn policy_versions(&self, tenant_id: &str) -> DbResult<Vec<PolicyRecord>> {
        self.db.with(|c| {
            c.prepare(&format!(
                "{POLICY_COLUMNS} WHERE p.tenant_id = ?1 ORDER BY p.version"
            ))?
            .query_map([tenant_id], row_policy)?
            .collect()
        })
    }

    // ---- auditors -------------------------------------------------------

    /// Create an auditor granted `tenants` and its token, in one
    /// transaction with the token's `credential` entries. `operator`: the
    /// operator creating it (its tenants only; the caller checks).
    async fn create_auditor(
        &self,
        name: &str,
        tenants: &[String],
        operator: Option<&str>,
        expires_at: i64,
        by: &Caller,
    ) -> DbResult<(Auditor, TokenCreated)> {
        let mut tenants = tenants.to_vec();
        tenants.sort();
        tenants.dedup();
        let a = Auditor {
            id: new_id("au"),
            name: name.to_string(),
            tenants: tenants.clone(),
            created_at: now_ms(),
        };
        let (created, token_row, entries) = new_token_row(
            &NewToken {
                role: Role::Auditor,
                subject: &a.id,
                name: Some(name),
                expires_at,
                tenants,
            },
            Some(by),
        );
        let (row, operator) = (a.clone(), operator.map(str::to_string));
        self.db
            .write(move |tx| {
                tx.execute(
                "INSERT INTO auditors(id, name, created_at, operator_id) VALUES (?1, ?2, ?3, ?4)",
                params![row.id, row.name, row.created_at, operator],
            )?;
                for t in &row.tenants {
                    tx.execute(
                    "INSERT OR IGNORE INTO auditor_grants(auditor_id, tenant_id) VALUES (?1, ?2)",
                    params![row.id, t],
                )?;
                }
                insert_token(tx, &token_row)?;
                Ok(((), entries))
            })
            .await?;
        Ok((a, created))
    }

    fn auditor_grants(&self, auditor_id: &str) -> DbResult<Vec<String>> {
        self.db.with(|c| {
            c.prepare(
                "SELECT tenant_id FROM auditor_grants WHERE auditor_id = ?1 ORDER BY tenant_id",
            )?
            .query_map([auditor_id], |r| r.get(0))?
            .collect()
        })
    }

    fn auditor_can_read(&self, auditor_id: &str, tenant_id: &str) -> DbResult<bool> {
        self.db.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM auditor_grants WHERE auditor_id = ?1 AND tenant_id = ?2)",
                [auditor_id, tenant_id],
                |r| r.get(0),
            )
        })
    }

    /// The operator that created an auditor (`None`: an admin did, or no
    /// such auditor).
    fn auditor_operator(&self, auditor_id: &str) -> DbResult<Option<String>> {
        self.db.with(|c| {
            c.query_row(
                "SELECT operator_id FROM auditors WHERE id = ?1",
                [auditor_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }
}

fn policy_record(
    tenant_id: &str,
    version: u32,
    policy: &Policy,
    now: i64,
    set_by: &str,
) -> rusqlite::Result<PolicyRecord> {
    Ok(PolicyRecord {
        tenant_id: tenant_id.to_string(),
        version,
        digest: Digest::of(json(policy)?.as_bytes()),
        policy: policy.clone(),
        created_at: now,
        set_by: Some(set_by.to_string()),
        unchanged: false,
    })
}

fn insert_policy(c: &Connection, r: &PolicyRecord) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO policies(tenant_id, version, policy_json, digest, created_at, set_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            r.tenant_id,
            r.version,
            json(&r.policy)?,
            r.digest.to_string(),
            r.created_at,
            r.set_by
        ],
    )?;
    Ok(())
}

const POLICY_COLUMNS: &str = "SELECT p.tenant_id, p.version, p.policy_json, p.digest, p.created_at, p.set_by FROM policies p";

fn row_policy(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRecord> {
    Ok(PolicyRecord {
        tenant_id: r.get(0)?,
        version: r.get(1)?,
        policy: from_json(&r.get::<_, String>(2)?)?,
        digest: parse_digest(&r.get::<_, String>(3)?)?,
        created_at: r.get(4)?,
        set_by: r.get(5)?,
        unchanged: false,
    })
}

fn policy_version_in(
    c: &Connection,
    tenant_id: &str,
    version: u32,
) -> rusqlite::Result<Option<PolicyRecord>> {
    c.query_row(
        &format!("{POLICY_COLUMNS} WHERE p.tenant_id = ?1 AND p.version = ?2"),
        params![tenant_id, version],
        row_policy,
    )
    .optional()
}

fn row_operator(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operator> {
    Ok(Operator {
        id: r.get(0)?,
        name: r.get(1)?,
        ceiling: Ceiling::from_stored_json(&r.get::<_, String>(2)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?,
        max_tenants: r.get(3)?,
        created_at: r.get(4)?,
        zones: match r.get::<_, Option<String>>(5)? {
            Some(z) => from_json(&z)?,
            None => Vec::new(),
        },
    })
}

fn row_tenant(r: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: r.get(0)?,
        name: r.get(1)?,
        operator_id: r.get(2)?,
        policy_version: r.get(3)?,
        created_at: r.get(4)?,
    })
}
