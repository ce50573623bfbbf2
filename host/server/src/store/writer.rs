//! Group commit: one thread owns the only writing SQLite connection.
//!
//! Every state change (and every audit entry) is a *job* sent to this
//! thread over a bounded channel. The thread takes the first waiting job,
//! then everything else already queued (up to [`MAX_BATCH`]), and runs them
//! all in **one** `BEGIN IMMEDIATE … COMMIT` transaction:
//!
//! 1. each job's state change runs in its own `SAVEPOINT`, so a job that
//!    fails (a constraint, a refused request) is rolled back alone and the
//!    others still commit;
//! 2. the audit entries of the jobs that succeeded are appended to the
//!    Merkle tree in one batch (one frontier read, multi-row inserts);
//! 3. one `COMMIT`, i.e. one WAL fsync with `synchronous = FULL`;
//! 4. only then is each caller answered, with the log indices of its
//!    entries. Nothing is acknowledged before it is durable.
//!
//! While a batch commits, new jobs queue up and form the next batch: under
//! load, thousands of appends share one fsync, and with no load a lone job
//! commits at once (no timer, no added latency). If the batch transaction
//! itself fails, every job in it gets the error and nothing was written.
//!
//! WAL checkpoints (copying committed pages into the main database file)
//! run on a second thread with its own connection (`PASSIVE`: never blocks
//! the writer or readers), so the writer does not pay for them inline; the
//! writer only checkpoints itself if the WAL grows past
//! [`WAL_AUTOCHECKPOINT_PAGES`] anyway. The checkpointer waits until the
//! WAL holds [`CHECKPOINT_MIN_PAGES`] (the writer's WAL hook counts them):
//! after a complete checkpoint the next commit restarts the WAL from its
//! start, which costs an extra fsync (the new header's) with `synchronous
//! = FULL`. Checkpointing every few pages made the first request after
//! any 100 ms of idleness pay it — among them a restarted server's first
//! request (issue 15).

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc;

use crate::audit::log::{self as audit, Encoded};
use crate::store::error::DbError;

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 8192;

/// Jobs that may wait for the writer before submitters wait (backpressure).
pub const QUEUE: usize = 4 * MAX_BATCH;

/// The writer checkpoints inline only past this many WAL pages (SQLite's
/// default is 1000); the background checkpointer normally keeps it below.
pub const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// How often the background checkpointer looks at the WAL.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The background checkpointer copies the WAL back once it holds this many
/// pages (SQLite's own default autocheckpoint point; 4 MiB of 4 KiB pages).
pub const CHECKPOINT_MIN_PAGES: u32 = 1_000;

/// Called after the batch commits (with the job's entry indices) or fails.
pub type Reply = Box<dyn FnOnce(Result<Range<u64>, DbError>) + Send>;
/// Called when the job's own state change failed (rolled back alone).
pub type Fail = Box<dyn FnOnce(DbError) + Send>;

/// What a job's state change produced.
pub enum Staged {
    Done(Vec<Encoded>, Reply),
    Failed(DbError, Fail),
}

pub type Work = Box<dyn FnOnce(&Connection) -> Staged + Send>;

pub enum Job {
    /// A state change (in a savepoint) and the entries recording it.
    Work(Work),
    /// Entries alone (denials, benchmarks): no savepoint needed.
    Append(Vec<Encoded>, Reply),
    /// Commit what is queued before this, then stop.
    Stop,
    /// A change and its entries, made and rolled back (`Db::rehearse`).
    Rehearse(Rehearsal, tokio::sync::oneshot::Sender<Result<(), DbError>>),
}

/// The change a rehearsal makes: the entries it would append.
pub type Rehearsal = Box<dyn FnOnce(&Connection) -> Result<Vec<Encoded>, DbError> + Send>;

/// Writer counters, exported on `/metrics`.
#[derive(Clone)]
pub struct WriterStats {
    pub batches: Counter,
    pub jobs: Counter,
    pub entries: Counter,
    pub failed_batches: Counter,
    pub batch_jobs: Histogram,
    pub commit_seconds: Histogram,
}

impl Default for WriterStats {
    fn default() -> Self {
        WriterStats {
            batches: Counter::default(),
            jobs: Counter::default(),
            entries: Counter::default(),
            failed_batches: Counter::default(),
            batch_jobs: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
        }
    }
}

pub struct Writer {
    tx: mpsc::Sender<Job>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Start the writer thread on `conn`, whose audit log has `size`
    /// entries, and the checkpointer thread on `checkpointer` (another
    /// connection to the same database).
    pub fn spawn(
        conn: Connection,
        checkpointer: Connection,
        size: u64,
        stats: WriterStats,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (stop_cp, stopped) = std::sync::mpsc::channel::<()>();
        // Pages in the WAL after the writer's last commit. The hook replaces
        // SQLite's autocheckpoint (also a WAL hook): it does its job too.
        let wal_pages = Arc::new(AtomicU32::new(0));
        let counted = wal_pages.clone();
        let mut conn = conn;
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            let pages = u32::try_from(pages).unwrap_or(0);
            counted.store(pages, Ordering::Relaxed);
            if pages >= WAL_AUTOCHECKPOINT_PAGES {
                wal.checkpoint()?;
            }
            Ok(())
        }))
        .map_err(std::io::Error::other)?;
        let cp = std::thread::Builder::new()
            .name("kasbah-db-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, &wal_pages, stopped))?;
        let thread = std::thread::Builder::new()
            .name("kasbah-db-writer".into())
            .spawn(move || {
                writer_loop(conn, size, rx, stats);
                drop(stop_cp);
                let _ = cp.join();
            })?;
        Ok(Writer {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a job (waits only if the queue is full).
    pub async fn submit(&self, job: Job) -> Result<(), DbError> {
        self.tx.send(job).await.map_err(|_| DbError::Closed)
    }

    /// Commit what is queued, then stop the thread and wait for it. Later
    /// submissions fail with [`DbError::Closed`]. Call from outside an async
    /// context (or from `spawn_blocking`).
    pub fn stop(&self) {
        let _ = self.tx.blocking_send(Job::Stop);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut size: u64,
    mut rx: mpsc::Receiver<Job>,
    stats: WriterStats,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.blocking_recv() else {
            return;
        };
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let stop = jobs.iter().any(|j| matches!(j, Job::Stop));
        commit_batch(&mut conn, &mut size, std::mem::take(&mut jobs), &stats);
        if stop {
            rx.close();
            // Answer anything that raced in after the stop.
            while let Ok(j) = rx.try_recv() {
                refuse(j);
            }
            return;
        }
    }
}

fn checkpoint_loop(conn: Connection, wal_pages: &AtomicU32, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if wal_pages.load(Ordering::Relaxed) < CHECKPOINT_MIN_PAGES {
            continue;
        }
        // (busy, pages in the WAL, pages copied back)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            // All copied: the next commit restarts the WAL (and reports).
            Ok((log, done)) if log == done => wal_pages.store(0, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!("background WAL checkpoint: {e}"),
        }
    }
}

fn refuse(job: Job) {
    match job {
        Job::Append(_, reply) => reply(Err(DbError::Closed)),
        // Dropping the work drops its reply channel: the caller sees Closed.
        Job::Work(_) | Job::Rehearse(..) | Job::Stop => {}
    }
}

/// Run one batch, count it, then answer its callers.
fn commit_batch(conn: &mut Connection, size: &mut u64, jobs: Vec<Job>, stats: &WriterStats) {
    let n = jobs.len();
    let started = Instant::now();
    let mut ok: Vec<(Reply, Range<u64>)> = Vec::with_capacity(n);
    let mut failed: Vec<(Fail, DbError)> = Vec::new();
    let result = stage_and_commit(conn, *size, jobs, &mut ok, &mut failed);
    stats.batches.inc();
    stats.jobs.inc_by(n as u64);
    stats.batch_jobs.observe(n as f64);
    stats
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(new_size) => {
            stats.entries.inc_by(new_size - *size);
            *size = new_size;
            for (reply, range) in ok {
                reply(Ok(range));
            }
        }
        Err(e) => {
            stats.failed_batches.inc();
            tracing::error!("database write batch rolled back: {e}");
            let msg: Arc<str> = Arc::from(e.to_string());
            for (reply, _) in ok {
                reply(Err(DbError::Batch(msg.clone())));
            }
        }
    }
    for (fail, e) in failed {
        fail(e);
    }
}

fn stage_and_commit(
    conn: &mut Connection,
    size: u64,
    jobs: Vec<Job>,
    ok: &mut Vec<(Reply, Range<u64>)>,
    failed: &mut Vec<(Fail, DbError)>,
) -> Result<u64, DbError> {
    let mut phases = kasbah_core::phases::Phases::new();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    phases.mark("begin");
    let mut entries: Vec<Encoded> = Vec::new();
    let mut next = size;
    let mut take = |mut e: Vec<Encoded>, reply: Reply, entries: &mut Vec<Encoded>| {
        let range = next..next + e.len() as u64;
        next = range.end;
        entries.append(&mut e);
        ok.push((reply, range));
    };
    for job in jobs {
        match job {
            Job::Stop => {}
            Job::Append(e, reply) => take(e, reply, &mut entries),
            Job::Rehearse(work, reply) => {
                // Appended where the committed log ends (the batch's own
                // entries are appended after every job): rolled back before.
                // The real jobs' savepoint statements, prepared here too.
                tx.prepare_cached("SAVEPOINT job")?.execute([])?;
                let rehearsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    work(&tx).and_then(|e| audit::append(&tx, size, &e).map_err(DbError::from))
                }))
                .unwrap_or_else(|_| Err(DbError::Batch(Arc::from("the rehearsal panicked"))));
                tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                let _ = reply.send(rehearsed.map(|_| ()));
            }
            Job::Work(work) => {
                tx.prepare_cached("SAVEPOINT job")?.execute([])?;
                // A panicking job must not take the writer (and with it every
                // later write) down: roll it back like a failed one.
                let staged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&tx)))
                    .unwrap_or_else(|_| {
                        tracing::error!("a database write job panicked; rolled back");
                        Staged::Failed(
                            DbError::Batch(Arc::from("the write panicked")),
                            Box::new(|_| {}),
                        )
                    });
                match staged {
                    Staged::Done(e, reply) => {
                        tx.prepare_cached("RELEASE job")?.execute([])?;
                        take(e, reply, &mut entries);
                    }
                    Staged::Failed(e, fail) => {
                        tx.execute_batch("ROLLBACK TO job; RELEASE job")?;
                        failed.push((fail, e));
                    }
                }
            }
        }
    }
    phases.mark("jobs");
    let new_size = audit::append(&tx, size, &entries)?;
    phases.mark("audit");
    tx.commit()?;
    phases.mark("commit");
    tracing::debug!(target: "kasbah::phases", entries = entries.len(), "write batch {phases}");
    Ok(new_size)
}
