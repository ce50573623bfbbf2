//! `cargo bench -p kasbah-server --bench audit_log`: the audit log as the
//! server runs it, on SQLite in a temp dir on the data disk.
//!
//! 1. **Group commit**: N concurrent appenders (tokio tasks), each appending
//!    one `run_executed` entry at a time through `Db::append` (encode + leaf
//!    hash in the task, then the writer thread's batch transaction, fsync
//!    with `synchronous = FULL`), for a few seconds. Reports appends/s,
//!    entries per commit, per-append latency. N = 1 is the baseline without
//!    group commit (one fsync per append).
//! 2. **Runs**: N concurrent "runs" recorded through the real methods
//!    (`insert_run`, then `finish_run` with its entry), i.e. two writer jobs
//!    per run, each in its own savepoint; as in the server, the insert is
//!    not waited for (the finish's commit implies it).
//! 3. **Proofs** at 1M entries (set `KASBAH_AUDIT_BENCH_MAX`, e.g. 10000000,
//!    for more): inclusion and consistency proofs, root, checkpoint and
//!    receipt through the server's read path (reader pool, one read
//!    transaction, one `IN (...)` query), plus client-side verification.
//!
//! `KASBAH_BENCH_SECS` (default 3) sets the duration of each load phase;
//! `KASBAH_BENCH_DIR` where the databases go (default: the system temp dir);
//! `KASBAH_BENCH_ONLY=appends,runs,proofs` picks phases.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kasbah_audit::{
    Entry, EntryBody, Hash, Log, LogSigner, RunExecuted, verify_consistency, verify_inclusion,
    verify_receipt,
};
use kasbah_core::{Digest, Outcome, Output, RunReport, Usage};
use kasbah_policy::Policy;
use kasbah_server::audit::key::AuditKey;
use kasbah_server::audit::log::{self as audit, Encoded, SqliteStore};
use kasbah_server::runs::sqlite::SqliteRuns;
use kasbah_server::runs::storage::{Finished, NewRun, RunStore};
use kasbah_server::store::Db;
use kasbah_server::tenancy::sqlite::SqliteTenancy;
use kasbah_server::tenancy::storage::TenancyStore;

const SAMPLES: usize = 20_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn run_entry(i: u64, module: Digest) -> Entry {
    Entry::new(
        1_767_225_600_000 + i,
        EntryBody::RunExecuted(RunExecuted {
            run_id: format!("run_{:012x}{:012x}", 1_767_225_600_000 + i, i),
            tenant: "tn_00000000deadbeef".into(),
            module,
            input: Digest::from_bytes([(i % 251) as u8; 32]),
            datasets: vec![],
            output: Some(Digest::from_bytes([(i % 241) as u8; 32])),
            output_label: vec![],
            zone: String::new(),
            adapter: None,
            policy_version: 7,
            outcome: "ok".into(),
            wall_time_us: 1000 + i % 977,
            fuel: Some(1_000_000 + i),
            peak_memory_bytes: 1 << 20,
            gpu_time_us: 0,
            gpu_bytes: 0,
            worker: None,
        }),
    )
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("KASBAH_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

fn secs() -> Duration {
    Duration::from_secs(
        std::env::var("KASBAH_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    )
}

async fn close(db: Arc<Db>) {
    tokio::task::spawn_blocking(move || db.close())
        .await
        .expect("close");
}

/// N appenders, one entry per call, for `secs()`.
async fn appenders(n: usize, fsync: bool, module: Digest) {
    let dir = bench_dir();
    let db = Arc::new(Db::open(&dir.path().join("kasbah.db"), fsync).expect("open"));
    let stop = Instant::now() + secs();
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (db, counter) = (db.clone(), counter.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                db.append(&[run_entry(i, module)]).await.expect("append");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = db.writer_stats();
    let (entries, batches) = (stats.entries.get(), stats.batches.get());
    assert_eq!(entries, lat.len() as u64);
    println!(
        "{n:>5} appenders, fsync {:<3}: {:>9.0} appends/s  {:>6.1} entries/commit  {:>7.0} commits/s  \
         latency p50 {:>8.1} us  p99 {:>8.1} us",
        if fsync { "on" } else { "off" },
        entries as f64 / elapsed,
        entries as f64 / batches.max(1) as f64,
        batches as f64 / elapsed,
        us(pct(&mut lat, 50)),
        us(pct(&mut lat, 99)),
    );
    close(db).await;
}

fn report(module: Digest, ok: bool) -> RunReport {
    RunReport {
        module,
        outcome: if ok {
            Outcome::Ok {
                output: Output {
                    content_type: "text/plain".into(),
                    body: b"HELLO".to_vec(),
                },
            }
        } else {
            Outcome::Trap {
                message: "boom".into(),
            }
        },
        usage: Usage {
            wall_time: Duration::from_micros(1234),
            fuel_consumed: Some(4321),
            peak_memory_bytes: 1 << 20,
            gpu: None,
            http: None,
        },
        stdout: Default::default(),
        stderr: Default::default(),
        logs: Default::default(),
        denials: Vec::new(),
    }
}

/// N concurrent runs recorded as the server records them.
async fn runs(n: usize) {
    let dir = bench_dir();
    let db = Arc::new(Db::open(&dir.path().join("kasbah.db"), true).expect("open"));
    let runs = Arc::new(SqliteRuns::new(db.clone()));
    let (tenant, _) = SqliteTenancy::new(db.clone())
        .create_tenant("bench", None, &Policy::default(), "admin")
        .await
        .expect("tenant")
        .expect("quota");
    let module = Digest::of(b"bench module");
    let input = Digest::of(b"input");
    let stop = Instant::now() + secs();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (db, tenant) = (runs.clone(), tenant.id.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let run = NewRun {
                    id: kasbah_server::ids::new_run_id(),
                    tenant_id: tenant.clone(),
                    module,
                    policy_version: 1,
                    input_digest: input,
                    input_size: 5,
                    created_at: kasbah_server::ids::now_ms(),
                    residency: None,
                };
                let _inserted = db.insert_run(&run).await.expect("insert");
                let started = db.mark_running(&run.id);
                db.finish_run(
                    &run,
                    started,
                    Finished {
                        report: report(module, true),
                        output: Some((Digest::of(b"HELLO"), 5, "text/plain".into(), None)),
                        worker: None,
                        output_zone: None,
                    },
                )
                .await
                .expect("finish");
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = db.writer_stats();
    println!(
        "{n:>5} concurrent runs, fsync on: {:>8.0} runs/s = run entries/s ({} jobs/commit)  \
         per-run p50 {:>8.1} us  p99 {:>8.1} us",
        lat.len() as f64 / elapsed,
        stats.jobs.get() / stats.batches.get().max(1),
        us(pct(&mut lat, 50)),
        us(pct(&mut lat, 99)),
    );
    close(db).await;
}

fn measure(mut f: impl FnMut(usize)) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..SAMPLES)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed()
        })
        .collect();
    (pct(&mut t, 50), pct(&mut t, 99))
}

fn line(what: &str, (p50, p99): (Duration, Duration), extra: &str) {
    println!(
        "{what:<34} median {:>7.2} us  p99 {:>7.2} us  {extra}",
        us(p50),
        us(p99)
    );
}

async fn proofs(module: Digest) {
    let max: u64 = std::env::var("KASBAH_AUDIT_BENCH_MAX")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut sizes = vec![1_000_000u64.min(max), max];
    sizes.dedup();
    let dir = bench_dir();
    let path = dir.path().join("kasbah.db");
    let db = Arc::new(Db::open(&path, true).expect("open"));
    let key = AuditKey::from_signer(LogSigner::from_seed("bench.kasbah/log", &[1; 32]).expect("k"));
    let vkey = key.verifier();
    let mut done = 0u64;
    let mut build = Duration::ZERO;
    for n in sizes {
        // Bulk-load through the real writer path, 50k entries per commit.
        let t = Instant::now();
        while done < n {
            let k = (n - done).min(50_000);
            let enc: Vec<Encoded> = (done..done + k)
                .map(|i| Encoded::new(&run_entry(i, module)).expect("encode"))
                .collect();
            db.append_encoded(enc).await.expect("append");
            done += k;
        }
        build += t.elapsed();
        let db_bytes: u64 = ["kasbah.db", "kasbah.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum();
        println!(
            "\n== {n} entries on SQLite (bulk load {:.0} entries/s in 50k-entry commits; db {:.0} MiB) ==",
            done as f64 / build.as_secs_f64(),
            db_bytes as f64 / (1 << 20) as f64
        );
        let mut rng = Rng(n);
        let q: Vec<(u64, u64)> = (0..SAMPLES)
            .map(|_| {
                let size = if rng.below(2) == 0 {
                    n
                } else {
                    1 + rng.below(n)
                };
                (rng.below(size), size)
            })
            .collect();
        let c: Vec<(u64, u64)> = (0..SAMPLES)
            .map(|_| {
                let new = if rng.below(2) == 0 {
                    n
                } else {
                    2 + rng.below(n - 1)
                };
                (1 + rng.below(new - 1), new)
            })
            .collect();

        // Warm the page cache the way a running server would be.
        for &(i, s) in q.iter().take(2000) {
            db.audit_read(|snap| black_box(snap.log().inclusion_proof(i, s)))
                .expect("read")
                .expect("proof");
        }

        let mut lens = Vec::with_capacity(SAMPLES);
        let st = measure(|k| {
            let p = db
                .audit_read(|snap| snap.log().inclusion_proof(q[k].0, q[k].1))
                .expect("read")
                .expect("proof");
            lens.push(p.len());
        });
        lens.sort_unstable();
        line(
            "inclusion proof (API read path):",
            st,
            &format!(
                "size median {} hashes ({} B), max {}",
                lens[SAMPLES / 2],
                lens[SAMPLES / 2] * 32,
                lens[SAMPLES - 1]
            ),
        );
        let mut clens = Vec::with_capacity(SAMPLES);
        let st = measure(|k| {
            let p = db
                .audit_read(|snap| snap.log().consistency_proof(c[k].0, c[k].1))
                .expect("read")
                .expect("proof");
            clens.push(p.len());
        });
        clens.sort_unstable();
        line(
            "consistency proof (API read path):",
            st,
            &format!(
                "size median {} hashes ({} B), max {}",
                clens[SAMPLES / 2],
                clens[SAMPLES / 2] * 32,
                clens[SAMPLES - 1]
            ),
        );
        // The same proofs on one connection held open (no pool, no BEGIN).
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.set_prepared_statement_cache_capacity(256);
        let log = Log::new(SqliteStore::new(&conn, n));
        line(
            "inclusion proof (1 conn, no cache):",
            measure(|k| {
                black_box(log.inclusion_proof(q[k].0, q[k].1).expect("proof"));
            }),
            "",
        );
        line(
            "root at a random size:",
            measure(|k| {
                black_box(log.root_at(q[k].1).expect("root"));
            }),
            "",
        );
        line(
            "sign checkpoint (root + Ed25519):",
            measure(|k| {
                // A new size each time, so the cache never answers.
                let s = n - (k as u64 % 1000);
                black_box(
                    Log::new(SqliteStore::new(&conn, s))
                        .checkpoint_at(
                            s,
                            &LogSigner::from_seed("bench.kasbah/log", &[1; 32]).expect("k"),
                        )
                        .expect("cp"),
                );
            }),
            "(includes deriving the key from its seed)",
        );
        let st = measure(|k| {
            let idx = q[k].0;
            let r = db
                .audit_read(|snap| {
                    let e = audit::entries(snap.conn, idx..idx + 1, None, 1)
                        .expect("entry")
                        .remove(0);
                    key.receipt(snap, e)
                })
                .expect("read")
                .expect("receipt");
            black_box(r);
        });
        line(
            "receipt (entry + proof + cached cp):",
            st,
            "server side, incl. its own proof check",
        );

        // Client side.
        let roots: Vec<Hash> = q
            .iter()
            .map(|&(_, s)| log.root_at(s).expect("root"))
            .collect();
        let ps: Vec<Vec<Hash>> = q
            .iter()
            .map(|&(i, s)| log.inclusion_proof(i, s).expect("proof"))
            .collect();
        let leaves: Vec<Hash> = q
            .iter()
            .map(|&(i, _)| Hash::leaf(&run_entry(i, module).encode().expect("enc")))
            .collect();
        line(
            "verify inclusion (client):",
            measure(|k| {
                verify_inclusion(&leaves[k], q[k].0, q[k].1, &ps[k], &roots[k]).expect("verify");
            }),
            "",
        );
        let cr: Vec<(Hash, Hash)> = c
            .iter()
            .map(|&(a, b)| (log.root_at(a).expect("r"), log.root_at(b).expect("r")))
            .collect();
        let cps: Vec<Vec<Hash>> = c
            .iter()
            .map(|&(a, b)| log.consistency_proof(a, b).expect("proof"))
            .collect();
        line(
            "verify consistency (client):",
            measure(|k| {
                verify_consistency(c[k].0, c[k].1, &cr[k].0, &cr[k].1, &cps[k]).expect("verify");
            }),
            "",
        );
        let receipt = db
            .audit_read(|snap| {
                let e = audit::entries(snap.conn, n / 2..n / 2 + 1, None, 1)
                    .expect("entry")
                    .remove(0);
                key.receipt(snap, e)
            })
            .expect("read")
            .expect("receipt");
        let json = serde_json::to_string(&receipt).expect("json");
        line(
            "verify receipt (client, offline):",
            measure(|_| {
                black_box(verify_receipt(&receipt, &vkey, Some(module)).expect("verify"));
            }),
            &format!(
                "Ed25519 + inclusion + decode; receipt JSON {} B",
                json.len()
            ),
        );
    }
    close(db).await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio");
    let module = Digest::of(b"bench module");
    let bytes = run_entry(0, module).encode().expect("encode").len();
    println!(
        "kasbah-server audit bench: SQLite WAL, run_executed entries of {bytes} B, {} CPUs, {} s per load phase",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        secs().as_secs()
    );
    let only = std::env::var("KASBAH_BENCH_ONLY").unwrap_or_default();
    let phase = |p: &str| only.is_empty() || only.split(',').any(|o| o == p);
    rt.block_on(async {
        if phase("appends") {
            println!("\n-- group commit: one entry per append call --");
            for n in [1, 16, 256, 1024, 4096] {
                appenders(n, true, module).await;
            }
            appenders(1024, false, module).await;
        }
        if phase("runs") {
            println!("\n-- runs recorded through insert_run + finish_run --");
            for n in [1, 64, 1024] {
                runs(n).await;
            }
        }
        if phase("proofs") {
            proofs(module).await;
        }
    });
}
