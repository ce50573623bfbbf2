//! The storage core: one embedded SQLite database (WAL) in the data dir,
//! shared by every domain's SQLite storage (`*/sqlite.rs`).
//!
//! Writes go through the group-commit writer (`writer.rs`): one thread owns
//! the only writing connection and commits queued writes together, with
//! their audit log entries, in one transaction and one fsync. A write is
//! acknowledged only after its batch committed. Reads use a small pool of
//! read-only connections (WAL readers never block the writer or each other).
//!
//! This is the one place that knows how a change and its audit entries
//! become durable together ([`Db::write`]): every domain's SQLite storage
//! makes its changes through it. A second backend (PostgreSQL) implements
//! the domains' storage traits with the same contract: the change and the
//! entries recording it commit in one transaction, or neither does.

pub mod error;
pub mod schema;
pub mod starts;
pub mod writer;

use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, TryLockError};

use kasbah_audit::Entry;
use kasbah_core::Digest;
use rusqlite::Connection;
use tokio::sync::oneshot;

use self::error::abandoned;
pub use self::error::{DbError, DbResult};
use self::writer::{Job, Staged, Writer, WriterStats};
use crate::audit::log::{self as audit, Encoded};

/// A submitted write not yet known to be durable.
pub struct Pending(pub(crate) oneshot::Receiver<DbResult<((), Range<u64>)>>);

impl Pending {
    /// Wait until the write's batch committed (or failed).
    pub async fn durable(self) -> DbResult<()> {
        self.0.await.map_err(|_| abandoned())?.map(|_| ())
    }
}

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
pub const READERS: usize = 4;

pub struct Db {
    readers: Readers,
    writer: Writer,
    stats: WriterStats,
    nodes: audit::NodeCache,
}

/// Bound on each of the in-memory lookup caches of the domains' storage; a
/// full cache is cleared.
pub const CACHE_MAX: usize = 65_536;

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A value as a JSON column.
pub fn json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// A JSON column read back.
pub fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A digest column read back.
pub fn parse_digest(s: &str) -> rusqlite::Result<Digest> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
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
        // No `wal_autocheckpoint` pragma: the writer's WAL hook replaces
        // SQLite's autocheckpoint and does its job (`writer.rs`).
        let mut conn = conn;
        schema::create(&mut conn)?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        starts::record_start(&mut conn, now_ms)?;
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

    /// Run `f` on a read-only connection of the pool.
    pub fn with<R>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<R>) -> DbResult<R> {
        Ok(self.readers.with(f)?)
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
    pub(crate) async fn submit<R: Send + 'static>(
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

    /// Rehearse a write: the writer runs `f` and appends the entries it
    /// returns to the audit log exactly as for a real job, then rolls both
    /// back. Nothing is written (no WAL frame, no fsync); the writer's
    /// statements are prepared and the pages they touch are in its cache,
    /// so the first real write of that kind does not pay for them (the
    /// start-up warm-up, `runs/warmup.rs`).
    pub async fn rehearse(
        &self,
        f: impl FnOnce(&Connection) -> DbResult<Vec<Entry>> + Send + 'static,
    ) -> DbResult<()> {
        let (tx, rx) = oneshot::channel();
        let work = Box::new(move |c: &Connection| {
            f(c).and_then(|entries| {
                entries
                    .iter()
                    .map(Encoded::new)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(DbError::from)
            })
        });
        self.writer.submit(Job::Rehearse(work, tx)).await?;
        rx.await.map_err(|_| abandoned())?
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::entries::entry;
    use kasbah_audit::{EntryBody, TenantCreated};
    use rusqlite::params;
    use std::sync::Arc;

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
}
