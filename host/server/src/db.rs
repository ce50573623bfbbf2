//! Metadata store: one embedded SQLite database (WAL) in the data dir.
//!
//! Every acknowledged write is committed before the response is sent
//! (`synchronous = NORMAL` in WAL mode survives a process crash / kill -9;
//! `FULL` can be configured for power-loss durability).

use std::path::Path;
use std::sync::{Mutex, PoisonError};

use kasbah_core::api::{
    Auditor, ModuleRecord, Operator, OutputRef, PolicyRecord, Role, RunRecord, RunStatus, Tenant,
    UsageRow,
};
use kasbah_core::{Digest, RunReport};
use kasbah_policy::{Limits, Policy};
use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ceiling_json TEXT NOT NULL,
    max_tenants INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    operator_id TEXT REFERENCES operators(id),
    policy_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tenants_by_operator ON tenants(operator_id);
CREATE TABLE IF NOT EXISTS policies (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    version INTEGER NOT NULL,
    policy_json TEXT NOT NULL,
    digest TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE TABLE IF NOT EXISTS auditors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS auditor_grants (
    auditor_id TEXT NOT NULL REFERENCES auditors(id),
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    PRIMARY KEY (auditor_id, tenant_id)
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    subject TEXT NOT NULL,
    name TEXT,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS modules (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    digest TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size INTEGER NOT NULL,
    imports_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, digest),
    UNIQUE (tenant_id, name, version)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    module_digest TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    status TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    input_size INTEGER NOT NULL,
    outcome_kind TEXT,
    outcome_json TEXT,
    output_digest TEXT,
    output_size INTEGER,
    output_content_type TEXT,
    output_inline BLOB,
    wall_us INTEGER,
    fuel INTEGER,
    peak_memory INTEGER,
    report_json TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs(tenant_id, created_at);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status);
"#;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `prefix_` + 16 random hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 8];
    fill_random(&mut b);
    format!("{prefix}_{}", hex::encode(b))
}

/// Run ids sort by creation time: `run_` + ms timestamp + random.
pub fn new_run_id() -> String {
    let mut b = [0u8; 6];
    fill_random(&mut b);
    format!("run_{:012x}{}", now_ms(), hex::encode(b))
}

pub fn fill_random(buf: &mut [u8]) {
    // The OS RNG failing is not recoverable for a security service.
    if let Err(e) = getrandom::fill(buf) {
        panic!("operating system RNG failed: {e}");
    }
}

/// The caller a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    pub subject: String,
}

/// What the run worker stores when a run ends.
pub struct Finished<'a> {
    pub report: &'a RunReport,
    pub output: Option<(Digest, u64, String, Option<Vec<u8>>)>,
}

pub struct Db {
    conn: Mutex<Connection>,
}

fn json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn parse_digest(s: &str) -> rusqlite::Result<Digest> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Db {
    pub fn open(path: &Path, synchronous_full: bool) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    fn with<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let mut c = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut c)
    }

    // ---- tokens ---------------------------------------------------------

    /// Create a token for `role`/`subject`; returns the secret (shown once).
    pub fn create_token(
        &self,
        role: Role,
        subject: &str,
        name: Option<&str>,
    ) -> rusqlite::Result<String> {
        let mut b = [0u8; 32];
        fill_random(&mut b);
        let token = format!("kbh_{}", hex::encode(b));
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens(hash, role, subject, name, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash_token(&token), role.as_str(), subject, name, now_ms()],
            )
        })?;
        Ok(token)
    }

    /// On first start, create the platform-admin token; `None` afterwards.
    pub fn bootstrap_admin(&self) -> rusqlite::Result<Option<String>> {
        let has_admin: bool = self.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE role = 'admin')",
                [],
                |r| r.get(0),
            )
        })?;
        if has_admin {
            return Ok(None);
        }
        self.create_token(Role::Admin, "admin", Some("bootstrap"))
            .map(Some)
    }

    pub fn caller(&self, token: &str) -> rusqlite::Result<Option<Caller>> {
        let row: Option<(String, String)> = self.with(|c| {
            c.prepare_cached("SELECT role, subject FROM tokens WHERE hash = ?1")?
                .query_row([hash_token(token)], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })?;
        Ok(row.and_then(|(role, subject)| Role::parse(&role).map(|role| Caller { role, subject })))
    }

    // ---- operators ------------------------------------------------------

    pub fn create_operator(
        &self,
        name: &str,
        ceiling: &Limits,
        max_tenants: u32,
    ) -> rusqlite::Result<Operator> {
        let op = Operator {
            id: new_id("op"),
            name: name.to_string(),
            ceiling: ceiling.clone(),
            max_tenants,
            created_at: now_ms(),
        };
        self.with(|c| {
            c.execute(
                "INSERT INTO operators(id, name, ceiling_json, max_tenants, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![op.id, op.name, json(&op.ceiling)?, op.max_tenants, op.created_at],
            )
        })?;
        Ok(op)
    }

    pub fn operators(&self) -> rusqlite::Result<Vec<Operator>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, ceiling_json, max_tenants, created_at FROM operators ORDER BY created_at",
            )?;
            st.query_map([], row_operator)?.collect()
        })
    }

    pub fn operator(&self, id: &str) -> rusqlite::Result<Option<Operator>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, name, ceiling_json, max_tenants, created_at FROM operators WHERE id = ?1",
                [id],
                row_operator,
            )
            .optional()
        })
    }

    // ---- tenants and policies -------------------------------------------

    /// Create a tenant with policy version 1, atomically; refuses when the
    /// operator is at its tenant quota.
    pub fn create_tenant(
        &self,
        name: &str,
        operator: Option<&Operator>,
        policy: &Policy,
    ) -> rusqlite::Result<Result<(Tenant, PolicyRecord), String>> {
        let now = now_ms();
        let tenant = Tenant {
            id: new_id("tn"),
            name: name.to_string(),
            operator_id: operator.map(|o| o.id.clone()),
            policy_version: 1,
            created_at: now,
        };
        let record = policy_record(&tenant.id, 1, policy, now)?;
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(op) = operator {
                let n: u32 = tx.query_row(
                    "SELECT COUNT(*) FROM tenants WHERE operator_id = ?1",
                    [&op.id],
                    |r| r.get(0),
                )?;
                if n >= op.max_tenants {
                    return Ok(Err(format!(
                        "operator {} already has {n} tenants (max_tenants = {})",
                        op.id, op.max_tenants
                    )));
                }
            }
            tx.execute(
                "INSERT INTO tenants(id, name, operator_id, policy_version, created_at) VALUES (?1, ?2, ?3, 1, ?4)",
                params![tenant.id, tenant.name, tenant.operator_id, now],
            )?;
            insert_policy(&tx, &record)?;
            tx.commit()?;
            Ok(Ok((tenant.clone(), record.clone())))
        })
    }

    pub fn tenant(&self, id: &str) -> rusqlite::Result<Option<Tenant>> {
        self.with(|c| {
            c.query_row(
                "SELECT id, name, operator_id, policy_version, created_at FROM tenants WHERE id = ?1",
                [id],
                row_tenant,
            )
            .optional()
        })
    }

    pub fn tenants(&self, operator: Option<&str>) -> rusqlite::Result<Vec<Tenant>> {
        self.with(|c| {
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

    /// Store a new policy version and make it current.
    pub fn set_policy(&self, tenant_id: &str, policy: &Policy) -> rusqlite::Result<PolicyRecord> {
        let now = now_ms();
        self.with(|c| {
            let tx = c.transaction()?;
            let v: u32 = tx.query_row(
                "SELECT policy_version FROM tenants WHERE id = ?1",
                [tenant_id],
                |r| r.get(0),
            )?;
            let record = policy_record(tenant_id, v + 1, policy, now)?;
            insert_policy(&tx, &record)?;
            tx.execute(
                "UPDATE tenants SET policy_version = ?1 WHERE id = ?2",
                params![record.version, tenant_id],
            )?;
            tx.commit()?;
            Ok(record)
        })
    }

    /// The tenant's current policy.
    pub fn current_policy(&self, tenant_id: &str) -> rusqlite::Result<Option<PolicyRecord>> {
        self.with(|c| {
            c.query_row(
                "SELECT p.tenant_id, p.version, p.policy_json, p.digest, p.created_at
                 FROM policies p JOIN tenants t ON t.id = p.tenant_id AND t.policy_version = p.version
                 WHERE t.id = ?1",
                [tenant_id],
                |r| {
                    Ok(PolicyRecord {
                        tenant_id: r.get(0)?,
                        version: r.get(1)?,
                        policy: from_json(&r.get::<_, String>(2)?)?,
                        digest: parse_digest(&r.get::<_, String>(3)?)?,
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()
        })
    }

    // ---- auditors -------------------------------------------------------

    pub fn create_auditor(&self, name: &str, tenants: &[String]) -> rusqlite::Result<Auditor> {
        let a = Auditor {
            id: new_id("au"),
            name: name.to_string(),
            tenants: tenants.to_vec(),
            created_at: now_ms(),
        };
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO auditors(id, name, created_at) VALUES (?1, ?2, ?3)",
                params![a.id, a.name, a.created_at],
            )?;
            for t in tenants {
                tx.execute(
                    "INSERT OR IGNORE INTO auditor_grants(auditor_id, tenant_id) VALUES (?1, ?2)",
                    params![a.id, t],
                )?;
            }
            tx.commit()
        })?;
        Ok(a)
    }

    pub fn auditor_grants(&self, auditor_id: &str) -> rusqlite::Result<Vec<String>> {
        self.with(|c| {
            c.prepare(
                "SELECT tenant_id FROM auditor_grants WHERE auditor_id = ?1 ORDER BY tenant_id",
            )?
            .query_map([auditor_id], |r| r.get(0))?
            .collect()
        })
    }

    pub fn auditor_can_read(&self, auditor_id: &str, tenant_id: &str) -> rusqlite::Result<bool> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM auditor_grants WHERE auditor_id = ?1 AND tenant_id = ?2)",
                [auditor_id, tenant_id],
                |r| r.get(0),
            )
        })
    }

    // ---- modules --------------------------------------------------------

    /// Record a module for a tenant. Same digest again → the existing record;
    /// same name+version with other bytes → `Err(existing digest)`.
    pub fn insert_module(
        &self,
        m: &ModuleRecord,
    ) -> rusqlite::Result<Result<ModuleRecord, Digest>> {
        self.with(|c| {
            let tx = c.transaction()?;
            if let Some(existing) = module_row(&tx, &m.tenant_id, &m.digest)? {
                return Ok(Ok(existing));
            }
            let clash: Option<String> = tx
                .query_row(
                    "SELECT digest FROM modules WHERE tenant_id = ?1 AND name = ?2 AND version = ?3",
                    params![m.tenant_id, m.name, m.version],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(d) = clash {
                return Ok(Err(parse_digest(&d)?));
            }
            tx.execute(
                "INSERT INTO modules(tenant_id, digest, name, version, size, imports_json, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    m.tenant_id,
                    m.digest.to_string(),
                    m.name,
                    m.version,
                    m.size as i64,
                    json(&m.imports)?,
                    m.created_at
                ],
            )?;
            tx.commit()?;
            Ok(Ok(m.clone()))
        })
    }

    pub fn module(
        &self,
        tenant_id: &str,
        digest: &Digest,
    ) -> rusqlite::Result<Option<ModuleRecord>> {
        self.with(|c| module_row(c, tenant_id, digest))
    }

    pub fn modules(&self, tenant_ids: &[String]) -> rusqlite::Result<Vec<ModuleRecord>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT tenant_id, digest, name, version, size, imports_json, created_at
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

    // ---- runs -----------------------------------------------------------

    pub fn insert_run(
        &self,
        id: &str,
        tenant_id: &str,
        module: &Digest,
        policy_version: u32,
        input_digest: &Digest,
        input_size: u64,
    ) -> rusqlite::Result<i64> {
        let now = now_ms();
        self.with(|c| {
            c.prepare_cached(
                "INSERT INTO runs(id, tenant_id, module_digest, policy_version, status, input_digest, input_size, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7)",
            )?
            .execute(params![id, tenant_id, module.to_string(), policy_version, input_digest.to_string(), input_size as i64, now])
        })?;
        Ok(now)
    }

    pub fn mark_running(&self, id: &str) -> rusqlite::Result<()> {
        self.with(|c| {
            c.prepare_cached("UPDATE runs SET status = 'running', started_at = ?1 WHERE id = ?2")?
                .execute(params![now_ms(), id])
        })?;
        Ok(())
    }

    pub fn finish_run(&self, id: &str, f: Finished<'_>) -> rusqlite::Result<()> {
        let r = f.report;
        // The report minus the output body (stored separately).
        let mut slim = r.clone();
        if let kasbah_core::Outcome::Ok { output } = &mut slim.outcome {
            output.body.clear();
        }
        let (od, os, oct, inline) = match f.output {
            Some((d, s, ct, inline)) => (Some(d.to_string()), Some(s as i64), Some(ct), inline),
            None => (None, None, None, None),
        };
        self.with(|c| {
            c.prepare_cached(
                "UPDATE runs SET status = 'done', outcome_kind = ?1, outcome_json = ?2,
                    output_digest = ?3, output_size = ?4, output_content_type = ?5, output_inline = ?6,
                    wall_us = ?7, fuel = ?8, peak_memory = ?9, report_json = ?10, finished_at = ?11
                 WHERE id = ?12",
            )?
            .execute(params![
                    r.outcome.kind(),
                    json(&slim.outcome)?,
                    od,
                    os,
                    oct,
                    inline,
                    r.usage.wall_time.as_micros() as i64,
                    r.usage.fuel_consumed.map(|f| f as i64),
                    r.usage.peak_memory_bytes as i64,
                    json(&slim)?,
                    now_ms(),
                    id
                ],
            )
        })?;
        Ok(())
    }

    /// At start-up: runs that were queued or running when the last process
    /// died are marked `interrupted`. Returns how many.
    pub fn interrupt_inflight(&self) -> rusqlite::Result<usize> {
        self.with(|c| {
            c.execute(
                "UPDATE runs SET status = 'interrupted', finished_at = ?1 WHERE status IN ('queued', 'running')",
                [now_ms()],
            )
        })
    }

    pub fn run(&self, id: &str) -> rusqlite::Result<Option<RunRecord>> {
        self.with(|c| {
            c.prepare_cached(&format!("{RUN_COLUMNS} WHERE id = ?1"))?
                .query_row([id], row_run)
                .optional()
        })
    }

    pub fn runs(&self, tenant_id: &str, limit: u32) -> rusqlite::Result<Vec<RunRecord>> {
        self.with(|c| {
            c.prepare(&format!(
                "{RUN_COLUMNS} WHERE tenant_id = ?1 ORDER BY created_at DESC LIMIT ?2"
            ))?
            .query_map(params![tenant_id, limit], row_run)?
            .collect()
        })
    }

    /// The inline output bytes of a run, if stored inline.
    pub fn run_output_inline(&self, id: &str) -> rusqlite::Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.query_row("SELECT output_inline FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map(Option::flatten)
        })
    }

    // ---- usage ----------------------------------------------------------

    pub fn usage(
        &self,
        tenant_ids: &[String],
        period: Period,
        from_ms: i64,
        to_ms: i64,
    ) -> rusqlite::Result<Vec<UsageRow>> {
        let fmt = period.strftime();
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT tenant_id, strftime('{fmt}', created_at / 1000, 'unixepoch') AS p,
                        COUNT(*), SUM(outcome_kind = 'ok'), COALESCE(SUM(wall_us), 0),
                        COALESCE(SUM(fuel), 0), COALESCE(MAX(peak_memory), 0),
                        COALESCE(SUM(CAST(peak_memory AS REAL) * wall_us / 1e6), 0)
                 FROM runs
                 WHERE tenant_id = ?1 AND created_at >= ?2 AND created_at < ?3
                 GROUP BY tenant_id, p ORDER BY p"
            ))?;
            let mut out = Vec::new();
            for t in tenant_ids {
                for row in st.query_map(params![t, from_ms, to_ms], |r| {
                    Ok(UsageRow {
                        tenant_id: r.get(0)?,
                        period: r.get(1)?,
                        runs: r.get::<_, i64>(2)? as u64,
                        ok_runs: r.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                        wall_time_us: r.get::<_, i64>(4)? as u64,
                        fuel: r.get::<_, i64>(5)? as u64,
                        peak_memory_bytes: r.get::<_, i64>(6)? as u64,
                        memory_byte_seconds: r.get(7)?,
                    })
                })? {
                    out.push(row?);
                }
            }
            Ok(out)
        })
    }
}

#[derive(Debug, Clone, Copy, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Hour,
    Day,
    Month,
}

impl Period {
    fn strftime(&self) -> &'static str {
        match self {
            Period::Hour => "%Y-%m-%dT%H:00",
            Period::Day => "%Y-%m-%d",
            Period::Month => "%Y-%m",
        }
    }
}

pub fn hash_token(token: &str) -> String {
    Digest::of(token.as_bytes()).hex()
}

fn policy_record(
    tenant_id: &str,
    version: u32,
    policy: &Policy,
    now: i64,
) -> rusqlite::Result<PolicyRecord> {
    Ok(PolicyRecord {
        tenant_id: tenant_id.to_string(),
        version,
        digest: Digest::of(json(policy)?.as_bytes()),
        policy: policy.clone(),
        created_at: now,
    })
}

fn insert_policy(c: &Connection, r: &PolicyRecord) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO policies(tenant_id, version, policy_json, digest, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![r.tenant_id, r.version, json(&r.policy)?, r.digest.to_string(), r.created_at],
    )?;
    Ok(())
}

fn row_operator(r: &rusqlite::Row<'_>) -> rusqlite::Result<Operator> {
    Ok(Operator {
        id: r.get(0)?,
        name: r.get(1)?,
        ceiling: from_json(&r.get::<_, String>(2)?)?,
        max_tenants: r.get(3)?,
        created_at: r.get(4)?,
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

fn row_module(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModuleRecord> {
    Ok(ModuleRecord {
        tenant_id: r.get(0)?,
        digest: parse_digest(&r.get::<_, String>(1)?)?,
        name: r.get(2)?,
        version: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        imports: from_json(&r.get::<_, String>(5)?)?,
        created_at: r.get(6)?,
    })
}

fn module_row(
    c: &Connection,
    tenant_id: &str,
    digest: &Digest,
) -> rusqlite::Result<Option<ModuleRecord>> {
    c.prepare_cached(
        "SELECT tenant_id, digest, name, version, size, imports_json, created_at
         FROM modules WHERE tenant_id = ?1 AND digest = ?2",
    )?
    .query_row(params![tenant_id, digest.to_string()], row_module)
    .optional()
}

const RUN_COLUMNS: &str = "SELECT id, tenant_id, module_digest, policy_version, status, input_digest, input_size,
    output_digest, output_size, output_content_type, output_inline, report_json, created_at, started_at, finished_at
    FROM runs";

/// Inline outputs up to this size are returned in the run record itself.
pub const INLINE_OUTPUT_MAX: usize = 64 * 1024;

fn row_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRecord> {
    let id: String = r.get(0)?;
    let report: Option<RunReport> = match r.get::<_, Option<String>>(11)? {
        Some(s) => Some(from_json(&s)?),
        None => None,
    };
    let output = match r.get::<_, Option<String>>(7)? {
        Some(d) => Some(OutputRef {
            digest: parse_digest(&d)?,
            size: r.get::<_, i64>(8)? as u64,
            content_type: r.get::<_, Option<String>>(9)?.unwrap_or_default(),
            url: format!("/v1/runs/{id}/output"),
            inline: r
                .get::<_, Option<Vec<u8>>>(10)?
                .map(|bytes| kasbah_core::Captured {
                    bytes,
                    dropped_bytes: 0,
                }),
        }),
        None => None,
    };
    let status: String = r.get(4)?;
    Ok(RunRecord {
        tenant_id: r.get(1)?,
        module: parse_digest(&r.get::<_, String>(2)?)?,
        policy_version: r.get(3)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
        input_digest: parse_digest(&r.get::<_, String>(5)?)?,
        input_size: r.get::<_, i64>(6)? as u64,
        output,
        outcome: report.as_ref().map(|r| r.outcome.clone()),
        usage: report.as_ref().map(|r| r.usage.clone()),
        stdout: report.as_ref().map(|r| r.stdout.clone()),
        stderr: report.as_ref().map(|r| r.stderr.clone()),
        logs: report.as_ref().map(|r| r.logs.clone()),
        denials: report.map(|r| r.denials).unwrap_or_default(),
        created_at: r.get(12)?,
        started_at: r.get(13)?,
        finished_at: r.get(14)?,
        id,
    })
}
