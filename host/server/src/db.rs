//! Metadata store: one embedded SQLite database (WAL) in the data dir.
//!
//! Writes go through the group-commit writer (`writer.rs`): one thread owns
//! the only writing connection and commits queued writes together, with
//! their audit log entries, in one transaction and one fsync. A write is
//! acknowledged only after its batch committed. Reads use a small pool of
//! read-only connections (WAL readers never block the writer or each other).

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};

use kasbah_audit::{
    Credential, Denial as DenialEntry, Entry, EntryBody, EntryError, ModulePublished, PolicySet,
    RunExecuted, TenantCreated,
};
use kasbah_core::api::{
    Auditor, ModuleRecord, Operator, OutputRef, PolicyRecord, Role, RunRecord, RunStatus, Tenant,
    TokenCreated, TokenInfo, UsageRow,
};
use kasbah_core::{Digest, RunReport};
use kasbah_policy::{Ceiling, Policy};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::audit::{self, Encoded};
use crate::placement::{ResidencyColumns, RunResidency};
use crate::writer::{Job, Staged, Writer, WriterStats};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS operators (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ceiling_json TEXT NOT NULL,
    max_tenants INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    zones_json TEXT
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
    set_by TEXT,
    PRIMARY KEY (tenant_id, version)
);
CREATE TABLE IF NOT EXISTS auditors (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    operator_id TEXT
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
    created_at INTEGER NOT NULL,
    id TEXT,
    expires_at INTEGER,
    last_used_at INTEGER,
    revoked_at INTEGER,
    created_by TEXT
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
    finished_at INTEGER,
    zone TEXT,
    adapter TEXT,
    datasets TEXT,
    input_label TEXT,
    output_label TEXT,
    store_output_as TEXT,
    output_dataset TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs(tenant_id, created_at);
-- Runs accepted and not yet ended: a row here from admission until the
-- run's final row goes into `runs` (same transaction that deletes it). A
-- run's `runs` row is thus written once, complete; this table stays a
-- handful of hot pages. At start-up what is left here was interrupted.
CREATE TABLE IF NOT EXISTS runs_inflight (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    policy_version INTEGER NOT NULL,
    input_digest TEXT NOT NULL,
    input_size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    zone TEXT,
    adapter TEXT,
    datasets TEXT,
    input_label TEXT,
    output_label TEXT,
    store_output_as TEXT
) WITHOUT ROWID;
"#;

/// Columns `runs` gained when run residency moved into it (databases made
/// before that have them in a `run_residency` table: see [`migrate`]).
const RESIDENCY_COLUMNS: [&str; 7] = [
    "zone",
    "adapter",
    "datasets",
    "input_label",
    "output_label",
    "store_output_as",
    "output_dataset",
];

/// `ALTER TABLE table ADD COLUMN column ty` unless the table has it (names
/// are this file's constants, never input).
fn add_missing_column(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    column: &str,
    ty: &str,
) -> rusqlite::Result<()> {
    let have = tx
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
        ))?
        .exists([column])?;
    if !have {
        tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))?;
    }
    Ok(())
}

/// Bring a database made by an earlier kasbah to the current schema, in one
/// transaction (nothing stored is dropped):
/// - `run_residency` rows move into the residency columns of `runs`;
/// - runs still `queued`/`running` in `runs` (the old way of recording
///   runs in flight) move to `runs_inflight`, where start-up marks them
///   interrupted like any other;
/// - the `runs_by_status` index (only that start-up scan used it) goes;
/// - operators gain `zones_json` (NULL: no zone restriction);
/// - policy versions gain `set_by`, tokens their id, expiry, last use,
///   revocation and creator, auditors the operator that created them.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for col in RESIDENCY_COLUMNS {
        add_missing_column(&tx, "runs", col, "TEXT")?;
    }
    add_missing_column(&tx, "operators", "zones_json", "TEXT")?;
    // Versions from before it was recorded read back with `set_by: null`.
    add_missing_column(&tx, "policies", "set_by", "TEXT")?;
    // Token lifecycle (issue 13): ids, expiry, last use, revocation; who
    // created an auditor. Tokens from before get a random id here and an
    // expiry at the next start (`Db::expire_unbounded_tokens`).
    for (col, ty) in [
        ("id", "TEXT"),
        ("expires_at", "INTEGER"),
        ("last_used_at", "INTEGER"),
        ("revoked_at", "INTEGER"),
        ("created_by", "TEXT"),
    ] {
        add_missing_column(&tx, "tokens", col, ty)?;
    }
    tx.execute_batch(
        "UPDATE tokens SET id = 'tk_' || lower(hex(randomblob(8))) WHERE id IS NULL;
         CREATE UNIQUE INDEX IF NOT EXISTS tokens_by_id ON tokens(id);
         CREATE INDEX IF NOT EXISTS tokens_by_subject ON tokens(role, subject);",
    )?;
    add_missing_column(&tx, "auditors", "operator_id", "TEXT")?;
    let table_exists = |name: &str| -> rusqlite::Result<bool> {
        tx.query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if table_exists("run_residency")? {
        tx.execute_batch(
            "UPDATE runs SET zone = rr.zone, adapter = rr.adapter, datasets = rr.datasets,
                    input_label = rr.input_label, output_label = rr.output_label,
                    store_output_as = rr.store_output_as, output_dataset = rr.output_dataset
             FROM run_residency rr WHERE rr.run_id = runs.id;
             DROP TABLE run_residency;",
        )?;
    }
    // Only a database that still has `runs_by_status` can hold unfinished
    // `runs` rows (and the index makes finding them cheap): a current one is
    // not scanned at every start.
    let legacy: bool = tx.query_row(
        "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index' AND name = 'runs_by_status'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if legacy {
        let moved = tx.execute(
            "INSERT INTO runs_inflight(id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as)
             SELECT id, tenant_id, module_digest, policy_version, input_digest, input_size,
                 created_at, zone, adapter, datasets, input_label, output_label, store_output_as
             FROM runs WHERE status IN ('queued', 'running')",
            [],
        )?;
        if moved > 0 {
            tx.execute("DELETE FROM runs WHERE status IN ('queued', 'running')", [])?;
        }
        tx.execute_batch("DROP INDEX runs_by_status")?;
    }
    tx.commit()
}

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
pub struct Finished {
    pub report: RunReport,
    pub output: Option<(Digest, u64, String, Option<Vec<u8>>)>,
}

/// A run as the API accepted it: what its record and its audit entry need
/// besides the result. Kept in memory for the run's lifetime so finishing
/// it needs no read of its row.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: String,
    pub tenant_id: String,
    pub module: Digest,
    pub policy_version: u32,
    pub input_digest: Digest,
    pub input_size: u64,
    pub created_at: i64,
    /// Where placement put the run (written with its row, in the same
    /// transaction, so an acknowledged run always has both).
    pub residency: Option<RunResidency>,
}

/// A submitted write not yet known to be durable.
pub struct Pending(oneshot::Receiver<DbResult<((), Range<u64>)>>);

impl Pending {
    /// Wait until the write's batch committed (or failed).
    pub async fn durable(self) -> DbResult<()> {
        self.0.await.map_err(|_| abandoned())?.map(|_| ())
    }
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot encode audit entry: {0}")]
    Entry(#[from] EntryError),
    #[error(transparent)]
    Audit(#[from] audit::StoreError),
    #[error("appending to the audit log: {0}")]
    Append(#[from] audit::AppendError),
    /// The batch this write was part of could not commit; nothing of it
    /// was written.
    #[error("database write failed: {0}")]
    Batch(Arc<str>),
    #[error("the database writer has stopped")]
    Closed,
}

impl DbError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Sql(rusqlite::Error::SqliteFailure(f, _))
            if f.code == rusqlite::ErrorCode::ConstraintViolation)
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// Read-only connections, handed out round-robin.
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    fn with<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let n = self.conns.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        for i in 0..n {
            match self.conns[(first + i) % n].try_lock() {
                Ok(mut c) => return f(&mut c),
                Err(TryLockError::Poisoned(p)) => return f(&mut p.into_inner()),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let mut c = self.conns[first]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut c)
    }
}

/// Read connections in the pool.
const READERS: usize = 4;

pub struct Db {
    readers: Readers,
    writer: Writer,
    stats: WriterStats,
    nodes: audit::NodeCache,
    /// Token hash → live token, for tokens seen before (see
    /// [`TokenCache`]: revocation evicts, expiry is checked on every hit).
    callers: Mutex<TokenCache>,
    /// (tenant, module) → record, for modules seen before. Modules are
    /// immutable and never deleted.
    modules_seen: Mutex<HashMap<(String, Digest), Arc<ModuleRecord>>>,
    /// Runs executing now → their start time. "running" is not written to
    /// the database (a crash turns `queued` and `running` alike into
    /// `interrupted`); reads overlay it on `queued` records.
    running: Mutex<HashMap<String, i64>>,
}

/// Live tokens seen before. Only revocation makes a cached token invalid
/// (expiry is checked against the clock on every hit). A lookup that read
/// the database before a revocation committed must not put the token back
/// after the revocation evicted it: revocation bumps `generation` (under
/// this same lock, after its commit), and a lookup caches what it read only
/// if the generation is still the one it saw before reading.
#[derive(Default)]
struct TokenCache {
    generation: u64,
    live: HashMap<String, CachedToken>,
}

#[derive(Clone)]
struct CachedToken {
    caller: Caller,
    expires_at: Option<i64>,
    /// The `last_used_at` last written (or read) for this token.
    last_used_at: Option<i64>,
}

/// `last_used_at` is written at most this often per token (ms).
pub const LAST_USED_EVERY_MS: i64 = 60_000;

/// What a bearer token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Valid(Caller),
    Unknown,
    Expired,
    Revoked,
}

/// A token to create, and who creates it (for its audit entry).
pub struct NewToken<'a> {
    pub role: Role,
    pub subject: &'a str,
    pub name: Option<&'a str>,
    /// ms since the Unix epoch.
    pub expires_at: i64,
    /// The tenants it reaches (one `credential` entry each; none: one entry
    /// with an empty tenant).
    pub tenants: Vec<String>,
}

fn credential_entry(
    action: &str,
    id: &str,
    role: Role,
    subject: &str,
    tenants: &[String],
    expires_at: Option<i64>,
    by: &Caller,
) -> Vec<Entry> {
    let one = |tenant: &str| {
        entry(EntryBody::Credential(Credential {
            action: action.to_string(),
            token_id: id.to_string(),
            role: role.as_str().to_string(),
            subject: subject.to_string(),
            tenant: tenant.to_string(),
            expires_unix_ms: expires_at.and_then(|e| u64::try_from(e).ok()),
            by_role: by.role.as_str().to_string(),
            by_subject: by.subject.clone(),
        }))
    };
    if tenants.is_empty() {
        vec![one("")]
    } else {
        tenants.iter().map(|t| one(t)).collect()
    }
}

fn row_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenInfo> {
    let role: String = r.get("role")?;
    let revoked_at: Option<i64> = r.get("revoked_at")?;
    Ok(TokenInfo {
        id: r.get("id")?,
        role: Role::parse(&role).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown role {role:?}").into(),
            )
        })?,
        subject: r.get("subject")?,
        name: r.get("name")?,
        created_at: r.get("created_at")?,
        created_by: r.get("created_by")?,
        expires_at: r.get("expires_at")?,
        last_used_at: r.get("last_used_at")?,
        revoked: revoked_at.is_some(),
        revoked_at,
    })
}

const TOKEN_COLUMNS: &str =
    "id, role, subject, name, created_at, created_by, expires_at, last_used_at, revoked_at";

/// Most tokens one listing returns (newest first).
pub const TOKEN_LIST_MAX: u32 = 1000;

/// Bound on each of the in-memory lookup caches; a full cache is cleared.
const CACHE_MAX: usize = 65_536;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

fn entry(body: EntryBody) -> Entry {
    Entry::new(u64::try_from(now_ms()).unwrap_or(0), body)
}

/// Longest free-text field (denial reasons) put in an audit entry.
const MAX_REASON: usize = 4096;

fn bounded(s: &str) -> String {
    if s.len() <= MAX_REASON {
        return s.to_string();
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Db {
    /// Open (creating if needed) the database at `path` and start its
    /// writer. `synchronous_full`: fsync the WAL on every commit (one per
    /// batch); without it a commit survives a process crash but not a power
    /// loss, and a power loss could then make the audit log fork (see
    /// ARCHITECTURE.md).
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
        conn.set_prepared_statement_cache_capacity(256);
        // The writer touches the right edges of a few B-trees; a big cache
        // only makes SQLite's end-of-transaction page-cache truncation slower
        // (it showed at 4% of CPU under load with 64 MiB).
        conn.pragma_update(None, "cache_size", -8_192)?; // 8 MiB
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            crate::writer::WAL_AUTOCHECKPOINT_PAGES,
        )?;
        let mut conn = conn;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::datasets::SCHEMA)?;
        conn.execute_batch(audit::SCHEMA)?;
        migrate(&mut conn)?;
        let size = audit::check(&conn)
            .map_err(|e| anyhow::anyhow!("{}: {e}; refusing to start", path.display()))?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            r.busy_timeout(std::time::Duration::from_secs(5))?;
            r.set_prepared_statement_cache_capacity(256);
            r.pragma_update(None, "mmap_size", 0i64)?;
            r.pragma_update(None, "cache_size", -65_536)?; // 64 MiB
            readers.push(Mutex::new(r));
        }
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        let stats = WriterStats::default();
        let writer = Writer::spawn(conn, checkpointer, size, stats.clone())?;
        Ok(Db {
            readers: Readers {
                conns: readers,
                next: AtomicUsize::new(0),
            },
            writer,
            stats,
            nodes: audit::NodeCache::default(),
            callers: Mutex::default(),
            modules_seen: Mutex::default(),
            running: Mutex::default(),
        })
    }

    /// The writer's counters (for `/metrics`).
    pub fn writer_stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commit what is queued and stop the writer (see [`Writer::stop`]).
    pub fn close(&self) {
        self.writer.stop();
    }

    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        self.readers.with(f)
    }

    /// Run `f` in the writer's next batch transaction (in its own
    /// savepoint) and append the entries it returns in the same
    /// transaction. Returns once the batch is durable, with the entries'
    /// log indices. An error from `f` rolls back `f`'s changes only.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> DbResult<(R, Vec<Entry>)> + Send + 'static,
    ) -> DbResult<(R, Range<u64>)> {
        self.submit(f).await?.await.map_err(|_| abandoned())?
    }

    /// Queue `f` for the writer's next batch and return a receiver for its
    /// result, without waiting for the commit (see [`Self::write`]).
    async fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> DbResult<(R, Vec<Entry>)> + Send + 'static,
    ) -> DbResult<oneshot::Receiver<DbResult<(R, Range<u64>)>>> {
        let (tx, rx) = oneshot::channel::<DbResult<(R, Range<u64>)>>();
        let work = Box::new(move |conn: &Connection| -> Staged {
            let staged = f(conn).and_then(|(r, entries)| {
                let enc = entries
                    .iter()
                    .map(Encoded::new)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((r, enc))
            });
            match staged {
                Ok((r, enc)) => Staged::Done(
                    enc,
                    Box::new(move |res| {
                        let _ = tx.send(res.map(|range| (r, range)));
                    }),
                ),
                Err(e) => Staged::Failed(
                    e,
                    Box::new(move |e| {
                        let _ = tx.send(Err(e));
                    }),
                ),
            }
        });
        self.writer.submit(Job::Work(work)).await?;
        Ok(rx)
    }

    /// Queue a write and return without waiting for its commit (status
    /// hints whose loss in a crash is harmless).
    pub async fn write_nowait(
        &self,
        f: impl FnOnce(&Connection) -> DbResult<()> + Send + 'static,
    ) -> DbResult<()> {
        let work = Box::new(move |conn: &Connection| -> Staged {
            match f(conn) {
                Ok(()) => Staged::Done(Vec::new(), Box::new(|_| {})),
                Err(e) => Staged::Failed(
                    e,
                    Box::new(|e| tracing::error!("background write failed: {e}")),
                ),
            }
        });
        self.writer.submit(Job::Work(work)).await
    }

    /// Append audit entries that record no other state change (denials).
    /// Encoding and hashing happen here, in the caller's task. Returns once
    /// they are durable, with their indices.
    pub async fn append(&self, entries: &[Entry]) -> DbResult<Range<u64>> {
        let enc = entries
            .iter()
            .map(Encoded::new)
            .collect::<Result<Vec<_>, _>>()?;
        self.append_encoded(enc).await
    }

    /// [`Self::append`] for entries already encoded.
    pub async fn append_encoded(&self, entries: Vec<Encoded>) -> DbResult<Range<u64>> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |res| {
            let _ = tx.send(res);
        });
        self.writer.submit(Job::Append(entries, reply)).await?;
        rx.await.map_err(|_| abandoned())?
    }

    /// Run `f` on a consistent snapshot of the audit log: a read
    /// transaction on a reader connection, the log size it sees, and the
    /// shared cache of upper tree nodes.
    pub fn audit_read<R>(&self, f: impl FnOnce(&audit::Snapshot<'_>) -> R) -> DbResult<R> {
        self.readers.with(|c| {
            let tx = c.transaction()?;
            let size = audit::stored_size(&tx)?;
            Ok(f(&audit::Snapshot {
                conn: &tx,
                size,
                cache: Some(&self.nodes),
            }))
        })
    }

    // ---- tokens ---------------------------------------------------------

    /// Create a token; returns the secret (shown once) with its id. `by`:
    /// who creates it (its `credential` entries); `None` only for the
    /// bootstrap admin token.
    pub async fn create_token(
        &self,
        t: NewToken<'_>,
        by: Option<&Caller>,
    ) -> DbResult<TokenCreated> {
        let (created, row, entries) = new_token_row(&t, by);
        self.write(move |c| {
            insert_token(c, &row)?;
            Ok(((), entries))
        })
        .await?;
        Ok(created)
    }

    /// On first start, or when no admin token is live any more (all
    /// expired or revoked), create a platform-admin token; `None` otherwise.
    pub async fn bootstrap_admin(&self, ttl_ms: i64) -> DbResult<Option<String>> {
        let has_admin: bool = self.with(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM tokens WHERE role = 'admin' AND revoked_at IS NULL
                     AND (expires_at IS NULL OR expires_at > ?1))",
                [now_ms()],
                |r| r.get(0),
            )
        })?;
        if has_admin {
            return Ok(None);
        }
        self.create_token(
            NewToken {
                role: Role::Admin,
                subject: "admin",
                name: Some("bootstrap"),
                expires_at: now_ms().saturating_add(ttl_ms),
                tenants: Vec::new(),
            },
            None,
        )
        .await
        .map(|t| Some(t.token))
    }

    /// Give tokens from before expiry existed the default lifetime from
    /// now (so no token lives for ever). Returns how many.
    pub async fn expire_unbounded_tokens(&self, ttl_ms: i64) -> DbResult<usize> {
        let expires = now_ms().saturating_add(ttl_ms);
        let (n, _) = self
            .write(move |c| {
                let n = c.execute(
                    "UPDATE tokens SET expires_at = ?1 WHERE expires_at IS NULL",
                    [expires],
                )?;
                Ok((n, Vec::new()))
            })
            .await?;
        if n > 0 {
            let mut cache = lock(&self.callers);
            cache.generation += 1;
            cache.live.clear();
        }
        Ok(n)
    }

    /// Who a bearer token belongs to, if it is live. Reads the database for
    /// tokens not seen before (and for revoked ones, which are never
    /// cached); checks expiry on every call; records the use at most once
    /// a minute per token (a background write).
    pub async fn caller(&self, token: &str) -> DbResult<TokenCheck> {
        let hash = hash_token(token);
        let now = now_ms();
        let (cached, generation) = {
            let cache = lock(&self.callers);
            (cache.live.get(&hash).cloned(), cache.generation)
        };
        let tok = match cached {
            Some(t) => t,
            None => {
                type Row = (String, String, Option<i64>, Option<i64>, Option<i64>);
                let row: Option<Row> = self.with(|c| {
                    c.prepare_cached(
                        "SELECT role, subject, expires_at, revoked_at, last_used_at
                         FROM tokens WHERE hash = ?1",
                    )?
                    .query_row([&hash], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .optional()
                })?;
                let Some((role, subject, expires_at, revoked_at, last_used_at)) = row else {
                    return Ok(TokenCheck::Unknown);
                };
                let Some(role) = Role::parse(&role) else {
                    return Ok(TokenCheck::Unknown);
                };
                if revoked_at.is_some() {
                    return Ok(TokenCheck::Revoked);
                }
                let t = CachedToken {
                    caller: Caller { role, subject },
                    expires_at,
                    last_used_at,
                };
                let mut cache = lock(&self.callers);
                if cache.generation == generation {
                    if cache.live.len() >= CACHE_MAX {
                        cache.live.clear();
                    }
                    cache.live.insert(hash.clone(), t.clone());
                }
                t
            }
        };
        if tok.expires_at.is_some_and(|e| e <= now) {
            return Ok(TokenCheck::Expired);
        }
        if tok
            .last_used_at
            .is_none_or(|l| now.saturating_sub(l) >= LAST_USED_EVERY_MS)
        {
            let due = {
                let mut cache = lock(&self.callers);
                match cache.live.get_mut(&hash) {
                    Some(c) if c.last_used_at == tok.last_used_at => {
                        c.last_used_at = Some(now);
                        true
                    }
                    // Another request already recorded this minute's use.
                    Some(_) => false,
                    // Not cached (a full cache, a revocation in between):
                    // record it anyway; the write is idempotent.
                    None => true,
                }
            };
            if due {
                self.write_nowait(move |c| {
                    c.prepare_cached(
                        "UPDATE tokens SET last_used_at = ?1
                         WHERE hash = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
                    )?
                    .execute(params![now, hash])?;
                    Ok(())
                })
                .await?;
            }
        }
        Ok(TokenCheck::Valid(tok.caller))
    }

    /// One token's metadata.
    pub fn token(&self, id: &str) -> rusqlite::Result<Option<TokenInfo>> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
                .query_row([id], row_token)
                .optional()
        })
    }

    /// Tokens' metadata, newest first, at most [`TOKEN_LIST_MAX`]: every
    /// token (`None`), or those of an operator's tenants and auditors.
    pub fn tokens(&self, operator: Option<&str>) -> rusqlite::Result<Vec<TokenInfo>> {
        self.with(|c| match operator {
            None => c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at DESC, id LIMIT ?1"
                ))?
                .query_map([TOKEN_LIST_MAX], row_token)?
                .collect(),
            Some(op) => c
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE (role = 'developer' AND subject IN
                               (SELECT id FROM tenants WHERE operator_id = ?1))
                        OR (role = 'auditor' AND subject IN
                               (SELECT id FROM auditors WHERE operator_id = ?1))
                     ORDER BY created_at DESC, id LIMIT ?2"
                ))?
                .query_map(params![op, TOKEN_LIST_MAX], row_token)?
                .collect(),
        })
    }

    /// Revoke a token: from the next request on it is refused. Returns the
    /// token's metadata after the change, and whether this call revoked it
    /// (`false`: it was already revoked; nothing is written).
    pub async fn revoke_token(
        &self,
        id: &str,
        tenants: Vec<String>,
        by: &Caller,
    ) -> DbResult<Option<(TokenInfo, bool)>> {
        let (id, by) = (id.to_string(), by.clone());
        let (result, _) = self
            .write(move |c| {
                let Some(t) = c
                    .prepare_cached(&format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"))?
                    .query_row([&id], row_token)
                    .optional()?
                else {
                    return Ok((None, Vec::new()));
                };
                if t.revoked {
                    return Ok((Some((t, false)), Vec::new()));
                }
                let now = now_ms();
                c.execute(
                    "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2",
                    params![now, id],
                )?;
                let entries = credential_entry(
                    "revoked",
                    &id,
                    t.role,
                    &t.subject,
                    &tenants,
                    t.expires_at,
                    &by,
                );
                let t = TokenInfo {
                    revoked: true,
                    revoked_at: Some(now),
                    ..t
                };
                Ok((Some((t, true)), entries))
            })
            .await?;
        if let Some((_, true)) = &result {
            // After the commit: a lookup that read the row before it must
            // not cache it (see `TokenCache`).
            let mut cache = lock(&self.callers);
            cache.generation += 1;
            cache.live.clear();
        }
        Ok(result)
    }

    /// The operator that created an auditor (`None`: an admin did, or no
    /// such auditor).
    pub fn auditor_operator(&self, auditor_id: &str) -> rusqlite::Result<Option<String>> {
        self.with(|c| {
            c.query_row(
                "SELECT operator_id FROM auditors WHERE id = ?1",
                [auditor_id],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
        })
    }

    // ---- operators ------------------------------------------------------

    pub async fn create_operator(
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
        self.write(move |c| {
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
    pub async fn set_operator_ceiling(&self, id: &str, ceiling: &Ceiling) -> DbResult<bool> {
        let (id, ceiling) = (id.to_string(), json(ceiling)?);
        let (n, _) = self
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

    pub fn operators(&self) -> rusqlite::Result<Vec<Operator>> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, name, ceiling_json, max_tenants, created_at, zones_json FROM operators ORDER BY created_at",
            )?;
            st.query_map([], row_operator)?.collect()
        })
    }

    pub fn operator(&self, id: &str) -> rusqlite::Result<Option<Operator>> {
        self.with(|c| {
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
    pub async fn create_tenant(
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
                    entry(EntryBody::TenantCreated(TenantCreated {
                        tenant: tenant.id.clone(),
                        operator: tenant.operator_id.clone().unwrap_or_default(),
                    })),
                    policy_entry(&record),
                ];
                Ok((Ok((tenant, record)), entries))
            })
            .await?;
        Ok(result)
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

    /// Store a new policy version (set by `set_by`: `admin` or an operator
    /// id) and make it current, with its `policy_set` audit entry. A policy
    /// identical to the current version (same digest) makes no version and
    /// no entry: the current record comes back with `unchanged: true`.
    pub async fn set_policy(
        &self,
        tenant_id: &str,
        policy: &Policy,
        set_by: &str,
    ) -> DbResult<PolicyRecord> {
        let now = now_ms();
        let (tenant_id, policy) = (tenant_id.to_string(), policy.clone());
        let set_by = set_by.to_string();
        let (record, _) = self
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
                let e = policy_entry(&record);
                Ok((record, vec![e]))
            })
            .await?;
        Ok(record)
    }

    /// The tenant's current policy.
    pub fn current_policy(&self, tenant_id: &str) -> rusqlite::Result<Option<PolicyRecord>> {
        self.with(|c| {
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

    /// Every policy version of a tenant, oldest first, each with who set it.
    pub fn policy_versions(&self, tenant_id: &str) -> rusqlite::Result<Vec<PolicyRecord>> {
        self.with(|c| {
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
    pub async fn create_auditor(
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
        self.write(move |tx| {
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

    /// Record a module for a tenant, with its `module_published` audit
    /// entry. Same digest again → the existing record (no new entry);
    /// same name+version with other bytes → `Err(existing digest)`.
    pub async fn insert_module(&self, m: &ModuleRecord) -> DbResult<Result<ModuleRecord, Digest>> {
        let m = m.clone();
        let (result, _) = self
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
                let e = entry(EntryBody::ModulePublished(ModulePublished {
                    tenant: m.tenant_id.clone(),
                    module: m.digest,
                    size: m.size,
                    name: m.name.clone(),
                    version: m.version.clone(),
                    signer: None,
                }));
                Ok((Ok(m), vec![e]))
            })
            .await?;
        Ok(result)
    }

    pub fn module(
        &self,
        tenant_id: &str,
        digest: &Digest,
    ) -> rusqlite::Result<Option<ModuleRecord>> {
        self.with(|c| module_row(c, tenant_id, digest))
    }

    /// [`Self::module`], with found modules cached (they are immutable).
    pub fn module_cached(
        &self,
        tenant_id: &str,
        digest: &Digest,
    ) -> rusqlite::Result<Option<Arc<ModuleRecord>>> {
        let key = (tenant_id.to_string(), *digest);
        if let Some(m) = lock(&self.modules_seen).get(&key) {
            return Ok(Some(m.clone()));
        }
        let Some(m) = self.module(tenant_id, digest)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        let mut cache = lock(&self.modules_seen);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, m.clone());
        Ok(Some(m))
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

    /// Record an accepted run as `queued`. Returns once the insert is
    /// queued for the writer's next batch, not when it is durable: the
    /// caller may start the run meanwhile and must wait on the returned
    /// [`Pending`] before telling anyone the run exists.
    pub async fn insert_run(&self, run: &NewRun) -> DbResult<Pending> {
        let run = run.clone();
        let rx = self
            .submit(move |c| {
                let [zone, adapter, datasets, input_label, output_label, store_output_as] =
                    crate::placement::residency_params(run.residency.as_ref())?;
                c.prepare_cached(
                    "INSERT INTO runs_inflight(id, tenant_id, module_digest, policy_version, input_digest,
                         input_size, created_at, zone, adapter, datasets, input_label, output_label,
                         store_output_as)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )?
                .execute(params![
                    run.id,
                    run.tenant_id,
                    run.module.to_string(),
                    run.policy_version,
                    run.input_digest.to_string(),
                    run.input_size as i64,
                    run.created_at,
                    zone,
                    adapter,
                    datasets,
                    input_label,
                    output_label,
                    store_output_as
                ])?;
                Ok(((), Vec::new()))
            })
            .await?;
        Ok(Pending(rx))
    }

    /// Note that a run started executing (in memory only; see `running`).
    pub fn mark_running(&self, id: &str) -> i64 {
        let now = now_ms();
        lock(&self.running).insert(id.to_string(), now);
        now
    }

    /// Store a run's result with its `run_executed` audit entry and one
    /// `denial` entry per capability use the policy refused during the run,
    /// all in one transaction. Returns the stored record, built in memory
    /// (what a read of the row would give) and the index of the run entry.
    pub async fn finish_run(
        &self,
        run: &NewRun,
        started_at: i64,
        f: Finished,
    ) -> DbResult<(RunRecord, u64)> {
        let finished_at = now_ms();
        // The report minus the output body (stored separately).
        let mut slim = f.report;
        if let kasbah_core::Outcome::Ok { output } = &mut slim.outcome {
            output.body = Vec::new();
        }
        let report_json = json(&slim)?;
        let output_ref = f.output.as_ref().map(|(d, size, ct, inline)| OutputRef {
            digest: *d,
            size: *size,
            content_type: ct.clone(),
            url: format!("/v1/runs/{}/output", run.id),
            inline: inline.as_ref().map(|bytes| kasbah_core::Captured {
                bytes: bytes.clone(),
                dropped_bytes: 0,
            }),
        });
        let mut record = assemble_run(
            run.clone(),
            RunStatus::Done,
            Some(slim),
            output_ref,
            Some(started_at),
            Some(finished_at),
            run.residency
                .as_ref()
                .map(ResidencyColumns::placed)
                .unwrap_or_default(),
        );
        let entries = {
            let r = &record;
            let mut entries = vec![run_entry(r)];
            entries.extend(r.denials.iter().map(|d| {
                entry(EntryBody::Denial(DenialEntry {
                    tenant: r.tenant_id.clone(),
                    module: Some(r.module),
                    run_id: Some(r.id.clone()),
                    action: bounded(&d.capability),
                    reason: bounded(&d.detail),
                }))
            }));
            entries
        };
        let stored_output = match (
            &f.output,
            record.outcome.as_ref().is_some_and(|o| o.is_ok()),
        ) {
            (Some((d, size, _, _)), true) => Some((*d, *size)),
            _ => None,
        };
        let (od, os, oct, inline) = match f.output {
            Some((d, s, ct, inline)) => (Some(d.to_string()), Some(s as i64), Some(ct), inline),
            None => (None, None, None, None),
        };
        let outcome_kind = record.outcome.as_ref().map(|o| o.kind());
        let usage = record.usage.clone().unwrap_or_default();
        let new_run = run.clone();
        let written = self
            .write(move |c| {
                let run = new_run;
                let mut entries = entries;
                let mut output_dataset = None;
                if let (Some(res), Some((d, size))) = (&run.residency, stored_output) {
                    let (ds, e) =
                        crate::datasets::store_output(c, &run.id, &run.tenant_id, res, d, size)?;
                    output_dataset = ds;
                    entries.extend(e);
                }
                finalize_run(
                    c,
                    &run.id,
                    RunStatus::Done,
                    FinalColumns {
                        outcome_kind,
                        output: (od, os, oct, inline),
                        wall_us: Some(usage.wall_time.as_micros() as i64),
                        fuel: usage.fuel_consumed.map(|f| f as i64),
                        peak_memory: Some(usage.peak_memory_bytes as i64),
                        report_json: Some(report_json),
                        started_at: Some(started_at),
                        finished_at,
                        output_dataset: output_dataset.clone(),
                    },
                )?;
                Ok((output_dataset, entries))
            })
            .await;
        lock(&self.running).remove(&run.id);
        let (output_dataset, range) = written?;
        record.output_dataset = output_dataset;
        Ok((record, range.start))
    }

    /// At start-up: runs that were queued or running when the last process
    /// died are marked `interrupted`, each with a `run_executed` entry of
    /// outcome `interrupted` (so every run the API ever accepted has an
    /// entry). Returns how many.
    pub async fn interrupt_inflight(&self) -> DbResult<usize> {
        let (n, _) = self
            .write(|c| {
                let runs: Vec<RunRecord> = c
                    .prepare(&format!("{INFLIGHT_COLUMNS} ORDER BY created_at"))?
                    .query_map([], row_run)?
                    .collect::<rusqlite::Result<_>>()?;
                let mut entries = Vec::with_capacity(runs.len());
                for mut r in runs {
                    let now = now_ms();
                    finalize_run(
                        c,
                        &r.id,
                        RunStatus::Interrupted,
                        FinalColumns {
                            finished_at: now,
                            ..FinalColumns::default()
                        },
                    )?;
                    r.status = RunStatus::Interrupted;
                    r.finished_at = Some(now);
                    entries.push(run_entry(&r));
                }
                let n = entries.len();
                Ok((n, entries))
            })
            .await?;
        Ok(n)
    }

    /// Record a refusal that changed no other state (a publish refused
    /// for its imports, a run refused at admission). Returns its index.
    pub async fn record_denial(
        &self,
        tenant: &str,
        module: Option<Digest>,
        action: &str,
        reason: &str,
    ) -> DbResult<u64> {
        let e = entry(EntryBody::Denial(DenialEntry {
            tenant: tenant.to_string(),
            module,
            run_id: None,
            action: bounded(action),
            reason: bounded(reason),
        }));
        Ok(self.append(&[e]).await?.start)
    }

    pub fn run(&self, id: &str) -> rusqlite::Result<Option<RunRecord>> {
        let r = self.with(|c| {
            match c
                .prepare_cached(&format!("{RUN_COLUMNS} WHERE id = ?1"))?
                .query_row([id], row_run)
                .optional()?
            {
                Some(r) => Ok(Some(r)),
                None => c
                    .prepare_cached(&format!("{INFLIGHT_COLUMNS} WHERE id = ?1"))?
                    .query_row([id], row_run)
                    .optional(),
            }
        })?;
        Ok(r.map(|r| self.overlay_running(r)))
    }

    /// A tenant's most recent runs (ended or not), newest first.
    pub fn runs(&self, tenant_id: &str, limit: u32) -> rusqlite::Result<Vec<RunRecord>> {
        let rs: Vec<RunRecord> = self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT * FROM ({RUN_COLUMNS} WHERE tenant_id = ?1
                     ORDER BY created_at DESC LIMIT ?2)
                 UNION ALL
                 SELECT * FROM ({INFLIGHT_COLUMNS} WHERE tenant_id = ?1)
                 ORDER BY created_at DESC LIMIT ?2"
            ))?
            .query_map(params![tenant_id, limit], row_run)?
            .collect()
        })?;
        Ok(rs.into_iter().map(|r| self.overlay_running(r)).collect())
    }

    /// A `queued` record of a run executing now reads as `running`.
    fn overlay_running(&self, mut r: RunRecord) -> RunRecord {
        if r.status == RunStatus::Queued
            && let Some(t) = lock(&self.running).get(&r.id)
        {
            r.status = RunStatus::Running;
            r.started_at = Some(*t);
        }
        r
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

/// A token row to insert (see [`Db::create_token`]).
struct TokenRow {
    hash: String,
    id: String,
    role: Role,
    subject: String,
    name: Option<String>,
    created_at: i64,
    created_by: Option<String>,
    expires_at: i64,
}

fn new_token_row(t: &NewToken<'_>, by: Option<&Caller>) -> (TokenCreated, TokenRow, Vec<Entry>) {
    let mut b = [0u8; 32];
    fill_random(&mut b);
    let secret = format!("kbh_{}", hex::encode(b));
    let id = new_id("tk");
    let entries = by.map_or_else(Vec::new, |by| {
        credential_entry(
            "created",
            &id,
            t.role,
            t.subject,
            &t.tenants,
            Some(t.expires_at),
            by,
        )
    });
    let row = TokenRow {
        hash: hash_token(&secret),
        id: id.clone(),
        role: t.role,
        subject: t.subject.to_string(),
        name: t.name.map(str::to_string),
        created_at: now_ms(),
        created_by: by.map(|b| format!("{}:{}", b.role.as_str(), b.subject)),
        expires_at: t.expires_at,
    };
    let created = TokenCreated {
        token: secret,
        role: t.role,
        subject: t.subject.to_string(),
        id,
        expires_at: Some(t.expires_at),
    };
    (created, row, entries)
}

fn insert_token(c: &Connection, t: &TokenRow) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO tokens(hash, id, role, subject, name, created_at, created_by, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            t.hash,
            t.id,
            t.role.as_str(),
            t.subject,
            t.name,
            t.created_at,
            t.created_by,
            t.expires_at
        ],
    )?;
    Ok(())
}

pub fn hash_token(token: &str) -> String {
    Digest::of(token.as_bytes()).hex()
}

fn abandoned() -> DbError {
    DbError::Batch(Arc::from(
        "the write was abandoned when its batch failed (see the server log)",
    ))
}

fn policy_entry(r: &PolicyRecord) -> Entry {
    entry(EntryBody::PolicySet(PolicySet {
        tenant: r.tenant_id.clone(),
        policy: r.digest,
        policy_version: u64::from(r.version),
    }))
}

fn run_entry(r: &RunRecord) -> Entry {
    let usage = r.usage.clone().unwrap_or_default();
    let gpu = usage.gpu.as_ref();
    entry(EntryBody::RunExecuted(RunExecuted {
        run_id: r.id.clone(),
        tenant: r.tenant_id.clone(),
        module: r.module,
        input: r.input_digest,
        datasets: r.datasets.iter().map(|d| d.digest).collect(),
        output: r.output.as_ref().map(|o| o.digest),
        output_label: r.output_label.clone(),
        zone: r.zone.clone().unwrap_or_default(),
        adapter: r.adapter.clone(),
        policy_version: u64::from(r.policy_version),
        // A run without an outcome never finished: interrupted.
        outcome: r
            .outcome
            .as_ref()
            .map_or(RunStatus::Interrupted.as_str(), |o| o.kind())
            .to_string(),
        wall_time_us: u64::try_from(usage.wall_time.as_micros()).unwrap_or(u64::MAX),
        fuel: usage.fuel_consumed,
        peak_memory_bytes: usage.peak_memory_bytes,
        gpu_time_us: gpu.map_or(0, |g| {
            u64::try_from(g.gpu_time.as_micros()).unwrap_or(u64::MAX)
        }),
        gpu_bytes: gpu.map_or(0, |g| g.bytes_allocated),
    }))
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
    output_digest, output_size, output_content_type, output_inline, report_json, created_at, started_at, finished_at,
    zone, adapter, datasets, input_label, output_label, output_dataset
    FROM runs";

/// [`RUN_COLUMNS`] of a run in flight (read by the same [`row_run`]).
const INFLIGHT_COLUMNS: &str =
    "SELECT id, tenant_id, module_digest, policy_version, 'queued', input_digest, input_size,
    NULL, NULL, NULL, NULL, NULL, created_at, NULL, NULL,
    zone, adapter, datasets, input_label, output_label, NULL
    FROM runs_inflight";

/// What a run's final row holds besides what its in-flight row held.
#[derive(Default)]
struct FinalColumns {
    outcome_kind: Option<&'static str>,
    /// Digest, size, content type, inline bytes.
    output: (Option<String>, Option<i64>, Option<String>, Option<Vec<u8>>),
    wall_us: Option<i64>,
    fuel: Option<i64>,
    peak_memory: Option<i64>,
    report_json: Option<String>,
    started_at: Option<i64>,
    finished_at: i64,
    output_dataset: Option<String>,
}

/// Turn a run's in-flight row into its one and only `runs` row (when it
/// ended): the facts and placement are copied from `runs_inflight`, the
/// result from `f`; the in-flight row goes. Fails if there is no in-flight
/// row (its insert failed).
fn finalize_run(c: &Connection, id: &str, status: RunStatus, f: FinalColumns) -> DbResult<()> {
    let (od, os, oct, inline) = f.output;
    let n = c
        .prepare_cached(
            "INSERT INTO runs(id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as, status, outcome_kind, output_digest, output_size,
                 output_content_type, output_inline, wall_us, fuel, peak_memory, report_json,
                 started_at, finished_at, output_dataset)
             SELECT id, tenant_id, module_digest, policy_version, input_digest,
                 input_size, created_at, zone, adapter, datasets, input_label, output_label,
                 store_output_as, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14
             FROM runs_inflight WHERE id = ?1",
        )?
        .execute(params![
            id,
            status.as_str(),
            f.outcome_kind,
            od,
            os,
            oct,
            inline,
            f.wall_us,
            f.fuel,
            f.peak_memory,
            f.report_json,
            f.started_at,
            f.finished_at,
            f.output_dataset
        ])?;
    if n != 1 {
        return Err(DbError::Batch(Arc::from(
            "the run's record is missing (its insert failed)",
        )));
    }
    c.prepare_cached("DELETE FROM runs_inflight WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

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
    let residency = crate::placement::residency_columns(r, 15)?;
    let run = NewRun {
        tenant_id: r.get(1)?,
        module: parse_digest(&r.get::<_, String>(2)?)?,
        policy_version: r.get(3)?,
        input_digest: parse_digest(&r.get::<_, String>(5)?)?,
        input_size: r.get::<_, i64>(6)? as u64,
        created_at: r.get(12)?,
        residency: None,
        id,
    };
    Ok(assemble_run(
        run,
        RunStatus::parse(&status).unwrap_or(RunStatus::Interrupted),
        report,
        output,
        r.get(13)?,
        r.get(14)?,
        residency,
    ))
}

/// The record of a run just accepted (what a read of its row gives).
pub fn queued_record(run: &NewRun) -> RunRecord {
    assemble_run(
        run.clone(),
        RunStatus::Queued,
        None,
        None,
        None,
        None,
        run.residency
            .as_ref()
            .map(ResidencyColumns::placed)
            .unwrap_or_default(),
    )
}

/// A run record from its parts (a row read back, or a run just finished).
fn assemble_run(
    run: NewRun,
    status: RunStatus,
    report: Option<RunReport>,
    output: Option<OutputRef>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    residency: ResidencyColumns,
) -> RunRecord {
    let (outcome, usage, stdout, stderr, logs, denials) = match report {
        Some(r) => (
            Some(r.outcome),
            Some(r.usage),
            Some(r.stdout),
            Some(r.stderr),
            Some(r.logs),
            r.denials,
        ),
        None => (None, None, None, None, None, Vec::new()),
    };
    RunRecord {
        id: run.id,
        tenant_id: run.tenant_id,
        module: run.module,
        policy_version: run.policy_version,
        status,
        input_digest: run.input_digest,
        input_size: run.input_size,
        output,
        outcome,
        usage,
        stdout,
        stderr,
        logs,
        denials,
        created_at: run.created_at,
        started_at,
        finished_at,
        zone: residency.zone,
        adapter: residency.adapter,
        datasets: residency.datasets,
        input_label: residency.input_label,
        output_label: residency.output_label,
        output_dataset: residency.output_dataset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_or_panicking_write_rolls_back_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(Db::open(&dir.path().join("kasbah.db"), false).expect("open"));
        let mut tasks = Vec::new();
        for i in 0..60u32 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write(move |c| {
                    c.execute(
                        "INSERT INTO operators(id, name, ceiling_json, max_tenants, created_at)
                         VALUES (?1, ?2, '{}', 1, 0)",
                        params![format!("op{i}"), format!("name{i}")],
                    )?;
                    match i % 10 {
                        3 => Err(DbError::Closed),
                        7 => panic!("job {i} panics on purpose"),
                        _ => Ok((
                            i,
                            vec![entry(EntryBody::TenantCreated(TenantCreated {
                                tenant: format!("t{i}"),
                                operator: String::new(),
                            }))],
                        )),
                    }
                })
                .await
            }));
        }
        let mut ok = Vec::new();
        for t in tasks {
            if let Ok((i, range)) = t.await.expect("task") {
                assert_eq!(range.end - range.start, 1);
                ok.push((range.start, i));
            }
        }
        assert_eq!(ok.len(), 48);
        let (ops, size, tenants) = db
            .audit_read(|snap| {
                let ops: i64 = snap
                    .conn
                    .query_row("SELECT COUNT(*) FROM operators", [], |r| r.get(0))
                    .expect("count");
                let tenants: Vec<String> = audit::entries(snap.conn, 0..snap.size, None, 100)
                    .expect("entries")
                    .into_iter()
                    .map(|e| e.tenant)
                    .collect();
                (ops, snap.size, tenants)
            })
            .expect("read");
        // Only the successful jobs' changes and entries are there, each at
        // the index its caller was told.
        assert_eq!((ops, size), (48, 48));
        for (idx, i) in ok {
            assert_eq!(tenants[idx as usize], format!("t{i}"));
        }
        // The writer survived the panics.
        db.append(&[entry(EntryBody::TenantCreated(TenantCreated {
            tenant: "after".into(),
            operator: String::new(),
        }))])
        .await
        .expect("still writing");
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
    }

    /// A database written by the kasbah before runs kept their residency in
    /// `runs` (and their in-flight state in `runs_inflight`) opens with
    /// nothing lost: a finished run keeps its zone and labels, a run that
    /// was in flight is interrupted (zone kept, audited), and both read
    /// back through the API's queries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_of_the_previous_schema_opens_with_nothing_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kasbah.db");
        let d = Digest::of(b"m").to_string();
        {
            let c = Connection::open(&path).expect("open old");
            c.execute_batch(&format!(
                "CREATE TABLE operators (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                     ceiling_json TEXT NOT NULL, max_tenants INTEGER NOT NULL, created_at INTEGER NOT NULL);
                 INSERT INTO operators VALUES ('op_old', 'telecom',
                     '{{\"memory_bytes\":1048576,\"wall_time_ms\":1000,\"fuel\":5000}}', 3, 0);
                 CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                     operator_id TEXT, policy_version INTEGER NOT NULL, created_at INTEGER NOT NULL);
                 INSERT INTO tenants VALUES ('tn_a', 'a', NULL, 1, 0);
                 CREATE TABLE policies (tenant_id TEXT NOT NULL REFERENCES tenants(id),
                     version INTEGER NOT NULL, policy_json TEXT NOT NULL, digest TEXT NOT NULL,
                     created_at INTEGER NOT NULL, PRIMARY KEY (tenant_id, version));
                 INSERT INTO policies VALUES ('tn_a', 1, '{{}}', '{d}', 0);
                 CREATE TABLE runs (id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(id),
                     module_digest TEXT NOT NULL, policy_version INTEGER NOT NULL, status TEXT NOT NULL,
                     input_digest TEXT NOT NULL, input_size INTEGER NOT NULL, outcome_kind TEXT,
                     output_digest TEXT, output_size INTEGER, output_content_type TEXT, output_inline BLOB,
                     wall_us INTEGER, fuel INTEGER, peak_memory INTEGER, report_json TEXT,
                     created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER);
                 CREATE INDEX runs_by_tenant ON runs(tenant_id, created_at);
                 CREATE INDEX runs_by_status ON runs(status);
                 CREATE TABLE run_residency (run_id TEXT PRIMARY KEY REFERENCES runs(id),
                     zone TEXT NOT NULL, adapter TEXT, datasets TEXT NOT NULL, input_label TEXT NOT NULL,
                     output_label TEXT NOT NULL, store_output_as TEXT, output_dataset TEXT);
                 INSERT INTO runs(id, tenant_id, module_digest, policy_version, status, input_digest,
                     input_size, outcome_kind, wall_us, created_at, started_at, finished_at)
                     VALUES ('run_done', 'tn_a', '{d}', 1, 'done', '{d}', 1, 'ok', 5, 10, 11, 12);
                 INSERT INTO runs(id, tenant_id, module_digest, policy_version, status, input_digest,
                     input_size, created_at)
                     VALUES ('run_flying', 'tn_a', '{d}', 1, 'queued', '{d}', 1, 20);
                 INSERT INTO run_residency VALUES ('run_done', 'zone-a', NULL, '[]', '[\"zone-a\"]',
                     '[\"zone-a\"]', NULL, 'ds_x');
                 INSERT INTO run_residency VALUES ('run_flying', 'zone-b', 'gpu0', '[]',
                     '[\"zone-b\"]', '[\"zone-b\"]', NULL, NULL);"
            ))
            .expect("old schema");
        }
        let db = Db::open(&path, false).expect("open migrated");
        let op = db.operator("op_old").expect("read").expect("operator kept");
        assert_eq!((op.name.as_str(), op.max_tenants), ("telecom", 3));
        assert!(
            op.zones.is_empty(),
            "an old operator has no zone restriction"
        );
        // Its ceiling, stored as a bare `Limits`, loads: those limits and
        // nothing beyond (no datasets, env, network or GPU to grant).
        assert_eq!(
            op.ceiling,
            Ceiling::from_legacy(kasbah_policy::Limits {
                memory_bytes: 1 << 20,
                wall_time_ms: 1000,
                fuel: Some(5000),
                ..kasbah_policy::Limits::default()
            })
        );
        assert!(op.ceiling.gpu.is_none() && op.ceiling.network.allow.is_empty());
        // Policy versions from before `set_by` read back without it; new
        // ones record it.
        let v1 = db.current_policy("tn_a").expect("read").expect("v1");
        assert_eq!((v1.version, v1.set_by), (1, None));

        assert_eq!(db.interrupt_inflight().await.expect("interrupt"), 1);
        let done = db.run("run_done").expect("read").expect("done run");
        assert_eq!(done.status, RunStatus::Done);
        assert_eq!(done.zone.as_deref(), Some("zone-a"));
        assert_eq!(done.output_label, vec!["zone-a".to_string()]);
        assert_eq!(done.output_dataset.as_deref(), Some("ds_x"));
        let flying = db.run("run_flying").expect("read").expect("flying run");
        assert_eq!(flying.status, RunStatus::Interrupted);
        assert_eq!(flying.zone.as_deref(), Some("zone-b"));
        assert_eq!(flying.adapter.as_deref(), Some("gpu0"));
        assert_eq!(flying.input_label, vec!["zone-b".to_string()]);
        let listed: Vec<String> = db
            .runs("tn_a", 10)
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(listed, ["run_flying", "run_done"]);
        let (kinds, zone) = db
            .audit_read(|snap| {
                let e = audit::entries(snap.conn, 0..snap.size, None, 10).expect("entries");
                let zone: Option<String> = snap
                    .conn
                    .query_row(
                        "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('run_residency', 'runs_by_status')",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .ok()
                    .map(|n| n.to_string());
                let zones: Vec<String> = e
                    .iter()
                    .map(|e| match Entry::decode(&e.bytes).expect("decode").body {
                        EntryBody::RunExecuted(r) => format!("{} {} {}", r.run_id, r.outcome, r.zone),
                        other => format!("{other:?}"),
                    })
                    .collect();
                (zones, zone)
            })
            .expect("audit");
        assert_eq!(kinds, ["run_flying interrupted zone-b"]);
        assert_eq!(zone.as_deref(), Some("0"), "old table and index dropped");
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
        // Opening again changes nothing.
        let db = Db::open(&path, false).expect("reopen");
        assert_eq!(db.interrupt_inflight().await.expect("interrupt"), 0);
        assert_eq!(
            db.run("run_flying").expect("read").map(|r| r.status),
            Some(RunStatus::Interrupted)
        );
        let v2 = db
            .set_policy("tn_a", &Policy::default(), "admin")
            .await
            .expect("set");
        assert_eq!((v2.version, v2.set_by.as_deref()), (2, Some("admin")));
        tokio::task::spawn_blocking(move || db.close())
            .await
            .expect("close");
    }
}
