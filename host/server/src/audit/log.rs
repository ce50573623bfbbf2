//! The audit log inside the platform's SQLite database.
//!
//! Three tables, written only by the group-commit writer (`writer.rs`), in
//! the same transaction as the state changes the entries record:
//!
//! * `audit_nodes(leaf, hashes)`: every perfect-subtree hash of the RFC 6962
//!   tree, grouped by the leaf whose append completed it: row `k` holds leaf
//!   `k`'s hash followed by the hashes of the subtrees leaf `k` completes
//!   (levels 1, 2, … — as many as `k` has trailing one bits). That is the
//!   dense append order of [`NodeId::position`] cut into one row per entry
//!   (32–64 bytes on average), half the rows of one row per node. Never
//!   updated. Proofs and roots read O(log n) rows with one query.
//! * `audit_entries(idx, bytes, tenant_id, kind, subject)`: the canonical
//!   entry bytes (what the leaf hash covers) plus columns to filter on:
//!   the tenant the entry concerns (indexed, so a tenant's entries page
//!   quickly), its type, and for module and run entries the module digest
//!   or run id (indexed, for receipts).
//! * `audit_size`: one row, the number of entries.
//!
//! Triggers make the three tables append-only for any SQL run through
//! the database (a bug cannot rewrite history; someone with the file can,
//! which is what signed checkpoints and watchers are for).
//!
//! The log's Ed25519 key (`key.rs`) lives in the data dir (0600) and signs
//! C2SP checkpoints on demand; the latest one is cached.

use std::ops::Range;
use std::sync::PoisonError;

use kasbah_audit::hash::HASH_LEN;
use kasbah_audit::tree::nodes_for_size;
use kasbah_audit::{Entry, EntryBody, EntryError, Hash, Log, NodeId, NodeStore, TreeError};
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit_nodes (
    leaf INTEGER PRIMARY KEY,
    hashes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_entries (
    idx INTEGER PRIMARY KEY,
    bytes BLOB NOT NULL,
    tenant_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT
);
CREATE INDEX IF NOT EXISTS audit_entries_by_subject ON audit_entries(subject) WHERE subject IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_entries_by_tenant ON audit_entries(tenant_id);
CREATE TABLE IF NOT EXISTS audit_size (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    size INTEGER NOT NULL
);
INSERT OR IGNORE INTO audit_size(id, size) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_update BEFORE UPDATE ON audit_nodes
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_nodes_no_delete BEFORE DELETE ON audit_nodes
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_entries_no_update BEFORE UPDATE ON audit_entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_entries_no_delete BEFORE DELETE ON audit_entries
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_size_only_grows BEFORE UPDATE ON audit_size
    WHEN NEW.size < OLD.size
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_size_no_delete BEFORE DELETE ON audit_size
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#;

/// Why the SQLite node store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("the audit log in the database is corrupt: {0}")]
    Corrupt(String),
}

fn to_i64(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{v} does not fit in SQLite")))
}

/// The number of entries recorded in `conn`'s view of the database.
pub fn stored_size(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .prepare_cached("SELECT size FROM audit_size WHERE id = 0")?
        .query_row([], |r| r.get(0))?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative log size {n}")))
}

/// [`NodeStore`] over a SQLite connection (or transaction) at a known size.
///
/// The size is passed in rather than read on every call: the writer knows
/// it (it is the only writer), readers read it once per request in the
/// same read transaction as everything else they look at.
pub struct SqliteStore<'c> {
    conn: &'c Connection,
    size: u64,
    cache: Option<&'c NodeCache>,
}

impl<'c> SqliteStore<'c> {
    pub fn new(conn: &'c Connection, size: u64) -> Self {
        SqliteStore {
            conn,
            size,
            cache: None,
        }
    }

    /// A store at the size recorded in the database.
    pub fn open(conn: &'c Connection) -> Result<Self, StoreError> {
        Ok(Self::new(conn, stored_size(conn)?))
    }

    /// Read upper-level nodes through `cache` (readers only: the writer's
    /// nodes are not committed yet when it reads them).
    pub fn with_cache(mut self, cache: &'c NodeCache) -> Self {
        self.cache = Some(cache);
        self
    }
}

/// Upper-level tree nodes kept in memory once read. Every proof at size `n`
/// needs about log2(n) nodes, one per level, and the high levels are few and
/// shared by all proofs: nodes at level >= [`NodeCache::MIN_LEVEL`] (one per
/// 1024 entries, about 10k hashes at 10M entries) are served from here,
/// leaving ~10 row lookups per proof. Nodes never change once committed, so
/// the cache is never invalidated; only readers fill it, from committed data.
#[derive(Default)]
pub struct NodeCache {
    map: std::sync::RwLock<std::collections::HashMap<NodeId, Hash>>,
}

impl NodeCache {
    pub const MIN_LEVEL: u8 = 10;

    fn get(&self, id: &NodeId) -> Option<Hash> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .copied()
    }

    fn put(&self, found: &[(NodeId, Hash)]) {
        if !found.is_empty() {
            let mut m = self.map.write().unwrap_or_else(PoisonError::into_inner);
            m.extend(found.iter().copied());
        }
    }

    /// Number of cached nodes.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A reader's consistent view of the log: a read transaction and the size
/// it saw (see `Db::audit_read`).
pub struct Snapshot<'a> {
    pub conn: &'a Connection,
    pub size: u64,
    pub cache: Option<&'a NodeCache>,
}

impl<'a> Snapshot<'a> {
    /// The tree at `size` (at most the snapshot's size).
    pub fn store_at(&self, size: u64) -> SqliteStore<'a> {
        let s = SqliteStore::new(self.conn, size.min(self.size));
        match self.cache {
            Some(c) => s.with_cache(c),
            None => s,
        }
    }

    /// The log as of this snapshot.
    pub fn log(&self) -> Log<SqliteStore<'a>> {
        Log::new(self.store_at(self.size))
    }
}

/// `SELECT leaf, hashes FROM audit_nodes WHERE leaf IN (?, ?, ...)` for
/// `n` rows.
fn nodes_query(n: usize) -> String {
    let mut sql = String::with_capacity(64 + 2 * n);
    sql.push_str("SELECT leaf, hashes FROM audit_nodes WHERE leaf IN (?");
    for _ in 1..n {
        sql.push_str(",?");
    }
    sql.push(')');
    sql
}

/// Where a node is stored: the row of the leaf that completed it, at offset
/// `level` (`None` past `size` or on overflow).
fn slot(id: NodeId, size: u64) -> Option<(u64, usize)> {
    let end = id.end().filter(|e| *e <= size)?;
    Some((end - 1, usize::from(id.level)))
}

/// The SQL for a multi-row insert of `rows` rows of `cols` columns.
fn multi_insert(table_and_cols: &str, cols: usize, rows: usize) -> String {
    let one = format!("({})", vec!["?"; cols].join(","));
    format!(
        "INSERT INTO {table_and_cols} VALUES {}",
        vec![one; rows].join(",")
    )
}

/// Rows per multi-row insert statement.
const ROWS: usize = 32;

impl NodeStore for SqliteStore<'_> {
    type Error = StoreError;

    fn size(&self) -> Result<u64, StoreError> {
        Ok(self.size)
    }

    fn node(&self, id: NodeId) -> Result<Option<Hash>, StoreError> {
        Ok(self.nodes(&[id])?.pop().flatten())
    }

    /// One query for all ids (the tree issues one call per operation).
    fn nodes(&self, ids: &[NodeId]) -> Result<Vec<Option<Hash>>, StoreError> {
        let mut cached: Vec<Option<Hash>> = vec![None; ids.len()];
        let slots: Vec<Option<(u64, usize)>> = ids
            .iter()
            .zip(cached.iter_mut())
            .map(|(id, c)| {
                let s = slot(*id, self.size)?;
                if let Some(cache) = self.cache.filter(|_| id.level >= NodeCache::MIN_LEVEL) {
                    *c = cache.get(id);
                }
                match c {
                    Some(_) => None,
                    None => Some(s),
                }
            })
            .collect();
        let mut want: Vec<i64> = slots
            .iter()
            .flatten()
            .map(|(leaf, _)| to_i64(*leaf))
            .collect::<Result<_, _>>()?;
        want.sort_unstable();
        want.dedup();
        if want.is_empty() {
            return Ok(cached);
        }
        let mut st = self.conn.prepare_cached(&nodes_query(want.len()))?;
        let mut rows = st.query(params_from_iter(want.iter()))?;
        let mut found: Vec<(u64, Vec<u8>)> = Vec::with_capacity(want.len());
        while let Some(row) = rows.next()? {
            let leaf: i64 = row.get(0)?;
            let leaf = u64::try_from(leaf)
                .map_err(|_| StoreError::Corrupt(format!("negative node row {leaf}")))?;
            found.push((leaf, row.get(1)?));
        }
        found.sort_unstable_by_key(|f| f.0);
        let out: Vec<Option<Hash>> = slots
            .iter()
            .zip(ids)
            .zip(cached)
            .map(|((s, id), c)| {
                let Some((leaf, level)) = s else {
                    return Ok(c);
                };
                let Ok(i) = found.binary_search_by_key(leaf, |f| f.0) else {
                    return Ok(None);
                };
                let blob = &found[i].1;
                match blob.get(level * HASH_LEN..(level + 1) * HASH_LEN) {
                    Some(h) => Ok(Hash::from_slice(h)),
                    None => Err(StoreError::Corrupt(format!(
                        "node row {leaf} holds {} bytes, too few for {id:?}",
                        blob.len()
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        if let Some(cache) = self.cache {
            let upper: Vec<(NodeId, Hash)> = ids
                .iter()
                .zip(&slots)
                .zip(&out)
                .filter(|((id, s), _)| s.is_some() && id.level >= NodeCache::MIN_LEVEL)
                .filter_map(|((id, _), h)| h.map(|h| (*id, h)))
                .collect();
            cache.put(&upper);
        }
        Ok(out)
    }

    /// Nodes arrive in append (post-)order: a leaf, then the subtrees it
    /// completes. They are stored one row per leaf (its hash followed by
    /// those of the subtrees it completes, lowest first): ~1 row per entry
    /// instead of ~2, half the B-tree inserts.
    fn extend(&mut self, new_size: u64, nodes: &[(NodeId, Hash)]) -> Result<(), StoreError> {
        let mut next = nodes_for_size(self.size);
        let mut rows: Vec<(i64, Vec<u8>)> = Vec::with_capacity(nodes.len() / 2 + 1);
        for (id, h) in nodes {
            if id.position() != Some(next) {
                return Err(StoreError::Corrupt(format!(
                    "out-of-order append: {id:?} at position {next}"
                )));
            }
            next += 1;
            if id.level == 0 {
                rows.push((to_i64(id.index)?, Vec::with_capacity(2 * HASH_LEN)));
            }
            match rows.last_mut() {
                Some((_, blob)) => blob.extend_from_slice(&h.0),
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "append starts with {id:?}, not a leaf"
                    )));
                }
            }
        }
        if next != nodes_for_size(new_size) {
            return Err(StoreError::Corrupt(format!(
                "extend to size {new_size} left {next} nodes, expected {}",
                nodes_for_size(new_size)
            )));
        }
        let mut full =
            self.conn
                .prepare_cached(&multi_insert("audit_nodes(leaf, hashes)", 2, ROWS))?;
        let mut one = self
            .conn
            .prepare_cached("INSERT INTO audit_nodes(leaf, hashes) VALUES (?1, ?2)")?;
        for chunk in rows.chunks(ROWS) {
            if chunk.len() == ROWS {
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(2 * ROWS);
                for (leaf, blob) in chunk {
                    args.push(leaf);
                    args.push(blob);
                }
                full.execute(args.as_slice())?;
            } else {
                for (leaf, blob) in chunk {
                    one.execute(params![leaf, blob])?;
                }
            }
        }
        self.conn
            .prepare_cached("UPDATE audit_size SET size = ?1 WHERE id = 0")?
            .execute([to_i64(new_size)?])?;
        self.size = new_size;
        Ok(())
    }
}

/// An entry ready to append: canonical bytes, leaf hash and the columns the
/// server filters on. Encoding and hashing happen in the caller's task, not
/// on the writer thread.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub leaf: Hash,
    pub tenant: String,
    pub kind: &'static str,
    pub subject: Option<String>,
}

impl Encoded {
    pub fn new(entry: &Entry) -> Result<Self, EntryError> {
        let bytes = entry.encode()?;
        let subject = match &entry.body {
            EntryBody::ModulePublished(m) => Some(m.module.to_string()),
            EntryBody::RunExecuted(r) => Some(r.run_id.clone()),
            EntryBody::Credential(c) => Some(c.token_id.clone()),
            EntryBody::ProvenancePublished(p) => Some(p.module.to_string()),
            EntryBody::SecretChanged(s) => Some(s.name.clone()),
            _ => None,
        };
        Ok(Encoded {
            leaf: Hash::leaf(&bytes),
            bytes,
            tenant: entry.body.tenant().to_string(),
            kind: entry.body.kind(),
            subject,
        })
    }
}

/// Why an append failed (the whole batch transaction is rolled back).
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// Append `entries` to the log of `size` entries inside the caller's
/// transaction (tree nodes, entry rows, size). Returns the new size.
pub fn append(conn: &Connection, size: u64, entries: &[Encoded]) -> Result<u64, AppendError> {
    if entries.is_empty() {
        return Ok(size);
    }
    let leaves: Vec<Hash> = entries.iter().map(|e| e.leaf).collect();
    let mut log = Log::new(SqliteStore::new(conn, size));
    let first = log.append_leaf_hashes(&leaves)?;
    if first != size {
        return Err(StoreError::Corrupt(format!("appended at {first}, expected {size}")).into());
    }
    let mut full = conn.prepare_cached(&multi_insert(
        "audit_entries(idx, bytes, tenant_id, kind, subject)",
        5,
        ROWS,
    ))?;
    let mut one = conn.prepare_cached(
        "INSERT INTO audit_entries(idx, bytes, tenant_id, kind, subject) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut idx = size;
    for chunk in entries.chunks(ROWS) {
        if chunk.len() == ROWS {
            let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(ROWS * 5);
            let idxs: Vec<i64> = (idx..idx + ROWS as u64)
                .map(to_i64)
                .collect::<Result<_, _>>()?;
            for (e, i) in chunk.iter().zip(&idxs) {
                args.push(i);
                args.push(&e.bytes);
                args.push(&e.tenant);
                args.push(&e.kind);
                args.push(&e.subject);
            }
            full.execute(args.as_slice())?;
        } else {
            for (e, i) in chunk.iter().zip(idx..) {
                one.execute(params![to_i64(i)?, e.bytes, e.tenant, e.kind, e.subject])?;
            }
        }
        idx += chunk.len() as u64;
    }
    Ok(size + entries.len() as u64)
}

/// At start-up: the recorded size, after checking that the tables agree
/// with it and that the tree's root can be computed. A mismatch means the
/// database was edited outside the server; refuse to serve rather than sign
/// checkpoints over a damaged log.
pub fn check(conn: &Connection) -> Result<u64, StoreError> {
    let size = stored_size(conn)?;
    let entries: i64 = conn.query_row(
        "SELECT COALESCE(MAX(idx) + 1, 0) FROM audit_entries",
        [],
        |r| r.get(0),
    )?;
    let nodes: i64 = conn.query_row(
        "SELECT COALESCE(MAX(leaf) + 1, 0) FROM audit_nodes",
        [],
        |r| r.get(0),
    )?;
    if entries != to_i64(size)? || nodes != to_i64(size)? {
        return Err(StoreError::Corrupt(format!(
            "the log records {size} entries, but audit_entries ends at {entries} and \
             audit_nodes at {nodes}"
        )));
    }
    Log::new(SqliteStore::new(conn, size))
        .root()
        .map_err(|e| StoreError::Corrupt(format!("cannot compute the root: {e}")))?;
    Ok(size)
}

/// One stored entry.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    pub index: u64,
    pub bytes: Vec<u8>,
    pub tenant: String,
}

fn stored(idx: i64, bytes: Vec<u8>, tenant: String) -> Result<StoredEntry, StoreError> {
    Ok(StoredEntry {
        index: u64::try_from(idx)
            .map_err(|_| StoreError::Corrupt(format!("negative entry index {idx}")))?,
        bytes,
        tenant,
    })
}

/// At most `limit` entries with index in `range`, in index order; only
/// those of `tenants` when given (read through the tenant index, so a
/// tenant with few entries in a large log pages quickly).
pub fn entries(
    conn: &Connection,
    range: Range<u64>,
    tenants: Option<&[String]>,
    limit: usize,
) -> Result<Vec<StoredEntry>, StoreError> {
    let (start, end) = (to_i64(range.start)?, to_i64(range.end)?);
    let lim = i64::try_from(limit).unwrap_or(i64::MAX);
    let row = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, String>(2)?,
        ))
    };
    let mut out = Vec::new();
    match tenants {
        None => {
            let mut st = conn.prepare_cached(
                "SELECT idx, bytes, tenant_id FROM audit_entries
                 WHERE idx >= ?1 AND idx < ?2 ORDER BY idx LIMIT ?3",
            )?;
            for r in st.query_map(params![start, end, lim], row)? {
                let (i, b, t) = r?;
                out.push(stored(i, b, t)?);
            }
        }
        Some(ts) => {
            let mut st = conn.prepare_cached(
                "SELECT idx, bytes, tenant_id FROM audit_entries
                 WHERE tenant_id = ?1 AND idx >= ?2 AND idx < ?3 ORDER BY idx LIMIT ?4",
            )?;
            for t in ts {
                for r in st.query_map(params![t, start, end, lim], row)? {
                    let (i, b, t) = r?;
                    out.push(stored(i, b, t)?);
                }
            }
            out.sort_unstable_by_key(|e| e.index);
            out.truncate(limit);
        }
    }
    Ok(out)
}

/// The first entry of `kind` about `subject` (a module digest or run id)
/// for `tenant`.
pub fn entry_about(
    conn: &Connection,
    kind: &str,
    subject: &str,
    tenant: &str,
) -> Result<Option<StoredEntry>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT idx, bytes FROM audit_entries
             WHERE subject = ?1 AND kind = ?2 AND tenant_id = ?3 ORDER BY idx LIMIT 1",
        )?
        .query_row(params![subject, kind, tenant], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })
        .optional()?;
    row.map(|(idx, bytes)| {
        Ok(StoredEntry {
            index: u64::try_from(idx)
                .map_err(|_| StoreError::Corrupt(format!("negative entry index {idx}")))?,
            bytes,
            tenant: tenant.to_string(),
        })
    })
    .transpose()
}
