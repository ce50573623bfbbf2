//! A zone worker: pulls its zones' jobs from JetStream, runs them in the
//! sandbox, publishes the results. See the crate docs for the protocol.
//!
//! Per job: decode and check it (a job that does not decode, is for a zone
//! this worker does not serve, or fails [`Job::check`] is terminated with a
//! log line, never executed); send `+WPI` every `ack_wait / 3` while it
//! runs; fetch the module (object store [`MODULES_BUCKET`], verified against
//! its digest; the runtime caches compiled modules) and the datasets (the
//! zone's object store, verified, cached in `work_dir/datasets/<hex>`,
//! mode 0400, at most `max_dataset_cache_bytes`, least recently used out
//! first, never a running job's: [`crate::cache`]); run it with the job's policy, its residency and a wall limit
//! that ends at the job's deadline; put an output over
//! [`INLINE_OUTPUT_MAX`] (or one stored as a dataset) in the zone's object
//! store under its digest, so the result carries a [`StoredOutput`] instead
//! of the bytes; publish the [`JobResult`] and wait for JetStream's ack;
//! then ack the job (double ack). A failure to reach NATS
//! while fetching or publishing leaves the job unacked (negatively acked
//! where possible): it is delivered again, at most `max_deliver` times.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, object_store::ObjectStore};
use futures_util::StreamExt;
use kasbah_core::{Digest, Outcome, RunReport};
use kasbah_runtime::kasbah_gpu::GpuConfig;
use kasbah_runtime::{
    DatasetMount, Request, Residency, RunOptions, Runtime, RuntimeConfig, ZonesConfig,
};
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};

use crate::cache::DatasetCache;
use crate::proto::{
    ConsumerTiming, HEARTBEAT_INTERVAL, INLINE_OUTPUT_MAX, Job, JobResult, MODULES_BUCKET,
    MSG_ID_HEADER, StoredOutput, WORKERS_BUCKET, WorkerAdapter, WorkerInfo, ensure_streams,
    ensure_zone, heartbeat_key, job_subject, result_subject, zone_bucket,
};

/// Most jobs one pull asks for.
const MAX_PULL_BATCH: usize = 16;
/// How long one pull waits for jobs (also how soon a pull loop sees a
/// shutdown).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// Wait after a failed pull (NATS down) before the next.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// Delay asked for when a job is handed back (`-NAK`) for a transient
/// failure.
const NAK_DELAY: Duration = Duration::from_secs(1);

/// A worker's configuration (TOML, unknown keys rejected).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Unique worker id, `[A-Za-z0-9_-]{1,64}` (its keys in the workers KV
    /// are `<zone>.<id>`).
    /// Default: `<hostname>-<pid>`.
    pub id: String,
    /// NATS server URL(s), comma-separated.
    pub nats: String,
    /// Runs executing at once.
    pub capacity: u32,
    /// Cached datasets (`datasets/`, at most `max_dataset_cache_bytes`)
    /// and per-run dataset directories. One per worker: partial files are
    /// cleared at start.
    pub work_dir: PathBuf,
    /// GPU adapter entries (label, zone, backend/name match), as the
    /// server's `[gpu]`. None by default.
    pub gpu: GpuConfig,
    /// The zones this worker serves (`[zones] node`, or derived from the
    /// zoned entries as for the server) and the zones of network and
    /// storage destinations, as the server's `[zones]`.
    pub zones: ZonesConfig,
    /// PEM files of CA certificates outgoing HTTPS also trusts, beyond the
    /// system roots: as the server's `http_extra_ca` (give every worker the
    /// same list as the server, or runs behave differently per node).
    pub http_extra_ca: Vec<PathBuf>,
    /// How long a job may go without progress before it is redelivered
    /// (the per-zone consumer's ack wait; the last worker started sets it).
    pub ack_wait_ms: u64,
    /// Most deliveries of one job.
    pub max_deliver: i64,
    /// NATS user and password (a zone's credentials, see
    /// [`crate::proto::worker_permissions`]); none by default.
    pub nats_user: Option<String>,
    pub nats_password: Option<String>,
    /// A NATS `.creds` file (JWT + nkey seed) instead of user/password.
    pub nats_creds: Option<PathBuf>,
    /// Prefix of the reply subjects this worker subscribes to; the zone's
    /// credentials allow `<prefix>.>` only.
    pub nats_inbox_prefix: String,
    /// Largest module fetched from the modules bucket.
    pub max_module_bytes: u64,
    /// Largest dataset fetched from a zone bucket.
    pub max_dataset_bytes: u64,
    /// Bytes of compiled modules kept on disk (`<work_dir>/compiled/`,
    /// HMAC-checked with `<work_dir>/compiled.key`) across restarts;
    /// least recently used first out. 0: none.
    pub compiled_cache_bytes: u64,
    /// Bytes of datasets kept in `work_dir/datasets` (least recently used
    /// evicted first; datasets of running jobs are never evicted, so a
    /// job's own datasets may exceed it while it runs).
    pub max_dataset_cache_bytes: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: default_id(),
            nats: "nats://127.0.0.1:4222".into(),
            capacity: 4,
            work_dir: PathBuf::from("kasbah-worker"),
            gpu: GpuConfig::default(),
            zones: ZonesConfig::default(),
            http_extra_ca: Vec::new(),
            ack_wait_ms: crate::proto::ACK_WAIT.as_millis() as u64,
            max_deliver: crate::proto::MAX_DELIVER,
            nats_user: None,
            nats_password: None,
            nats_creds: None,
            nats_inbox_prefix: "_INBOX".into(),
            max_module_bytes: 256 << 20,
            max_dataset_bytes: 4 << 30,
            compiled_cache_bytes: 1 << 30,
            max_dataset_cache_bytes: 16 << 30,
        }
    }
}

fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let host = if host.is_empty() {
        "worker".into()
    } else {
        host
    };
    format!("{host}-{}", std::process::id())
}

impl WorkerConfig {
    /// Read and check a TOML file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read worker config {}", path.display()))?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("worker config {}: {}", path.display(), e.message()))?;
        config
            .check()
            .with_context(|| format!("worker config {}", path.display()))?;
        Ok(config)
    }

    /// The zones this worker takes jobs for, in order of preference.
    pub fn served_zones(&self) -> Vec<String> {
        self.zones
            .node_zones(self.gpu.adapters.iter().map(|a| a.zone.as_str()))
    }

    /// Every problem with the configuration, as one error.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut p = Vec::new();
        if self.id.is_empty()
            || self.id.len() > 64
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.push(format!("id {:?} must be 1-64 of [A-Za-z0-9_-]", self.id));
        }
        if !(1..=4096).contains(&self.capacity) {
            p.push("capacity must be between 1 and 4096".into());
        }
        if !(300..=3_600_000).contains(&self.ack_wait_ms) {
            p.push("ack_wait_ms must be between 300 and 3600000".into());
        }
        if !(1..=100).contains(&self.max_deliver) {
            p.push("max_deliver must be between 1 and 100".into());
        }
        p.extend(self.nats_auth().problems());
        if self.nats.trim().is_empty() {
            p.push("nats: no server URL".into());
        }
        p.extend(
            self.zones
                .problems(self.gpu.adapters.iter().map(|a| a.zone.as_str())),
        );
        anyhow::ensure!(p.is_empty(), "{}", p.join("; "));
        Ok(())
    }

    /// The NATS credentials of this worker (`nats_user`, `nats_password`,
    /// `nats_creds`, `nats_inbox_prefix`).
    pub fn nats_auth(&self) -> crate::NatsAuth {
        crate::NatsAuth {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            creds: self.nats_creds.clone(),
            inbox_prefix: self.nats_inbox_prefix.clone(),
        }
    }

    fn timing(&self) -> ConsumerTiming {
        ConsumerTiming {
            ack_wait: Duration::from_millis(self.ack_wait_ms),
            max_deliver: self.max_deliver,
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Worker {
    id: String,
    zones: Vec<String>,
    adapters: Vec<WorkerAdapter>,
    capacity: u32,
    active: AtomicU32,
    client: async_nats::Client,
    js: jetstream::Context,
    runtime: Runtime,
    modules: ObjectStore,
    zone_stores: HashMap<String, ObjectStore>,
    datasets: Arc<DatasetCache>,
    tmp_dir: PathBuf,
    timing: ConsumerTiming,
    max_module_bytes: u64,
    max_dataset_bytes: u64,
    /// Its runs by id, for the control plane's cancels.
    cancels: Arc<crate::cancels::Cancels>,
}

/// Run a worker until `shutdown` completes, then drain: remove its
/// heartbeat, stop pulling, finish the runs in progress (results published,
/// jobs acked). Errors only at start (configuration, first connection,
/// streams or buckets missing); once running, NATS outages are retried
/// (async-nats reconnects).
pub async fn run(config: WorkerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.check()?;
    let zones = config.served_zones();
    let timing = config.timing();
    let datasets_dir = config.work_dir.join("datasets");
    let tmp_dir = config.work_dir.join("tmp");
    let scratch = config.work_dir.join("scratch");
    for d in [&datasets_dir, &tmp_dir, &scratch] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Leftovers of an earlier process: partial downloads, run directories.
    for d in [&tmp_dir, &scratch] {
        clear_dir(d);
    }
    let datasets = DatasetCache::open(&datasets_dir, config.max_dataset_cache_bytes)
        .with_context(|| format!("dataset cache {}", datasets_dir.display()))?;

    let client = crate::connect(
        &config.nats,
        &format!("kasbah-worker {}", config.id),
        &config.nats_auth(),
    )
    .await?;
    let js = jetstream::new(client.clone());
    // Zone credentials may not administer streams: then what the control
    // plane created must already be there.
    if !streams_exist(&js).await
        && let Err(e) = ensure_streams(&js).await
    {
        tracing::warn!(
            worker = config.id,
            "not setting up streams ({e}); using existing ones"
        );
    }
    let mut consumers = Vec::new();
    let mut zone_stores = HashMap::new();
    for z in &zones {
        let consumer = match ensure_zone(&js, z, timing).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    worker = config.id,
                    zone = z,
                    "not setting up the zone ({e})"
                );
                let name = crate::proto::zone_consumer(z);
                js.get_stream(crate::proto::JOBS_STREAM)
                    .await
                    .map_err(|e2| anyhow::anyhow!("zone {z}: {e}; stream: {e2}"))?
                    .get_consumer(&name)
                    .await
                    .map_err(|e2| anyhow::anyhow!("zone {z}: {e}; consumer {name}: {e2}"))?
            }
        };
        consumers.push((z.clone(), consumer));
        let store = js
            .get_object_store(zone_bucket(z))
            .await
            .map_err(|e| anyhow::anyhow!("object store {}: {e}", zone_bucket(z)))?;
        zone_stores.insert(z.clone(), store);
    }
    let modules = js
        .get_object_store(MODULES_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("object store {MODULES_BUCKET}: {e}"))?;
    let workers_kv = js
        .get_key_value(WORKERS_BUCKET)
        .await
        .map_err(|e| anyhow::anyhow!("KV bucket {WORKERS_BUCKET}: {e}"))?;

    let mut zones_config = config.zones.clone();
    zones_config.node = zones.clone();
    let runtime = Runtime::new(RuntimeConfig {
        max_concurrent_instances: config.capacity.saturating_mul(2),
        gpu: config.gpu.clone(),
        zones: zones_config,
        http_extra_ca: config.http_extra_ca.clone(),
        scratch_dir: Some(scratch),
        artifact_cache: (config.compiled_cache_bytes > 0).then(|| {
            kasbah_runtime::ArtifactCacheConfig::under(
                &config.work_dir,
                config.compiled_cache_bytes,
            )
        }),
        ..RuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("starting the sandbox runtime: {e:#}"))?;

    let worker = Arc::new(Worker {
        id: config.id.clone(),
        zones: zones.clone(),
        adapters: config
            .gpu
            .adapters
            .iter()
            .map(|a| WorkerAdapter {
                label: a.label.clone(),
                zone: a.zone.clone(),
            })
            .collect(),
        capacity: config.capacity,
        active: AtomicU32::new(0),
        client,
        js,
        runtime,
        modules,
        zone_stores,
        datasets,
        tmp_dir,
        timing,
        max_module_bytes: config.max_module_bytes,
        max_dataset_bytes: config.max_dataset_bytes,
        cancels: Arc::default(),
    });
    // Cancels are heard until the process ends (runs draining may still be
    // cancelled).
    let cancel_listener = {
        let (client, zones, cancels) = (
            worker.client.clone(),
            worker.zones.clone(),
            worker.cancels.clone(),
        );
        let id = worker.id.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::cancels::listen(client, zones, cancels).await {
                tracing::error!(worker = id, "cancel listener stopped: {e:#}");
            }
        })
    };
    tracing::info!(
        worker = worker.id,
        zones = ?worker.zones,
        capacity = worker.capacity,
        "worker started"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    // First heartbeat before pulling: a control plane sees the worker as
    // soon as it may receive jobs.
    heartbeat(&worker, &workers_kv).await;
    let beat = {
        let worker = worker.clone();
        let kv = workers_kv.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => heartbeat(&worker, &kv).await,
                    _ = stop.changed() => break,
                }
            }
        })
    };
    let slots = Arc::new(Semaphore::new(config.capacity as usize));
    let pullers: Vec<_> = consumers
        .into_iter()
        .map(|(zone, consumer)| {
            tokio::spawn(pull_loop(
                worker.clone(),
                zone,
                consumer,
                slots.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    shutdown.await;
    tracing::info!(worker = worker.id, "draining: no new jobs, finishing runs");
    let _ = stop_tx.send(true);
    // Out of the registry first: a draining worker takes no new runs, so
    // placement must not count it.
    let _ = beat.await;
    for z in &worker.zones {
        if let Err(e) = workers_kv.delete(heartbeat_key(z, &worker.id)).await {
            tracing::warn!(worker = worker.id, zone = z, "removing heartbeat: {e}");
        }
    }
    for p in pullers {
        if let Err(e) = p.await {
            tracing::error!(worker = worker.id, "pull loop failed: {e}");
        }
    }
    // Every slot back = every run finished, its result published and acked.
    let _all = slots.acquire_many(config.capacity).await;
    if let Err(e) = worker.client.flush().await {
        tracing::warn!(worker = worker.id, "flushing NATS connection: {e}");
    }
    cancel_listener.abort();
    tracing::info!(worker = worker.id, "worker stopped");
    Ok(())
}

/// Whether the streams and buckets [`ensure_streams`] makes are there
/// (info requests only, which zone credentials allow).
async fn streams_exist(js: &jetstream::Context) -> bool {
    js.get_stream(crate::proto::JOBS_STREAM).await.is_ok()
        && js.get_stream(crate::proto::RESULTS_STREAM).await.is_ok()
        && js.get_key_value(WORKERS_BUCKET).await.is_ok()
        && js.get_object_store(MODULES_BUCKET).await.is_ok()
}

fn clear_dir(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            let _ = make_writable(&p);
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
}

async fn heartbeat(worker: &Worker, kv: &jetstream::kv::Store) {
    let info = WorkerInfo {
        id: worker.id.clone(),
        zones: worker.zones.clone(),
        adapters: worker.adapters.clone(),
        capacity: worker.capacity,
        active: worker.active.load(Ordering::Relaxed),
        version: env!("CARGO_PKG_VERSION").into(),
        heartbeat_unix_ms: now_ms(),
    };
    // One key per zone: a zone's credentials may write only its zone's keys,
    // and the control plane counts each key for its own zone only.
    match serde_json::to_vec(&info) {
        Ok(body) => {
            let body = bytes::Bytes::from(body);
            for z in &worker.zones {
                if let Err(e) = kv.put(heartbeat_key(z, &worker.id), body.clone()).await {
                    tracing::warn!(worker = worker.id, zone = z, "heartbeat: {e}");
                }
            }
        }
        Err(e) => tracing::error!(worker = worker.id, "heartbeat encoding: {e}"),
    }
}

/// Pull `zone`'s jobs while slots are free; each job takes a slot until it
/// is acked. Never holds more delivered jobs than free slots.
async fn pull_loop(
    worker: Arc<Worker>,
    zone: String,
    consumer: jetstream::consumer::PullConsumer,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.changed() => return,
        };
        let mut permits = vec![first];
        while permits.len() < MAX_PULL_BATCH {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(worker = worker.id, zone, "pulling jobs: {e}");
                drop(permits);
                tokio::time::sleep(PULL_RETRY).await;
                continue;
            }
        };
        while let Some(m) = batch.next().await {
            match m {
                Ok(msg) => match permits.pop() {
                    Some(permit) => {
                        let worker = worker.clone();
                        let zone = zone.clone();
                        tokio::spawn(async move {
                            handle(&worker, &zone, msg).await;
                            drop(permit);
                        });
                    }
                    None => {
                        // More than asked for: hand it back at once.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                },
                Err(e) => {
                    tracing::warn!(worker = worker.id, zone, "receiving jobs: {e}");
                    tokio::time::sleep(PULL_RETRY).await;
                    break;
                }
            }
        }
    }
}

/// Counts a running job in [`Worker::active`] while alive.
struct Active<'a>(&'a AtomicU32);

impl<'a> Active<'a> {
    fn new(c: &'a AtomicU32) -> Self {
        c.fetch_add(1, Ordering::Relaxed);
        Active(c)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A failure to prepare a run.
enum Prep {
    /// The run cannot succeed (missing, corrupt or oversized object): it is
    /// reported as `denied`.
    Refused(String),
    /// NATS could not be reached: the job goes back to the queue.
    Transient(String),
}

async fn handle(worker: &Worker, zone: &str, msg: jetstream::Message) {
    let _active = Active::new(&worker.active);
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(0);
    let job: Job = match serde_json::from_slice(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(
                worker = worker.id,
                zone,
                subject = %msg.subject,
                "terminating a job that does not decode: {e}"
            );
            terminate(&msg).await;
            return;
        }
    };
    if let Err(e) = job.check() {
        tracing::error!(worker = worker.id, run = job.run_id, "terminating: {e}");
        terminate(&msg).await;
        return;
    }
    if job.zone != zone
        || msg.subject.as_str() != job_subject(zone)
        || !worker.zones.contains(&job.zone)
    {
        tracing::error!(
            worker = worker.id,
            run = job.run_id,
            subject = %msg.subject,
            "terminating a job for zone {:?}: this worker serves {:?}",
            job.zone,
            worker.zones
        );
        terminate(&msg).await;
        return;
    }
    if let Some(a) = &job.adapter
        && !worker
            .adapters
            .iter()
            .any(|w| &w.label == a && w.zone == job.zone)
    {
        // Another worker of the zone may have it.
        tracing::warn!(
            worker = worker.id,
            run = job.run_id,
            "handing back a job for adapter {a:?}, which this worker lacks in {}",
            job.zone
        );
        let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
        return;
    }
    tracing::info!(
        worker = worker.id,
        run = job.run_id,
        zone,
        delivered,
        "run starts"
    );

    let msg = Arc::new(msg);
    let progress = {
        let msg = msg.clone();
        let every = worker.timing.ack_wait / 3;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!("progress for a job: {e}");
                }
            }
        })
    };
    let started_at_ms = now_ms();
    let registered = crate::cancels::Registered::new(&worker.cancels, &job.run_id);
    let report = match execute(worker, &job, registered.cancel.clone()).await {
        Ok(r) => r,
        Err(Prep::Refused(reason)) => {
            tracing::error!(worker = worker.id, run = job.run_id, "{reason}");
            host_failure(job.module, reason)
        }
        Err(Prep::Transient(reason)) => {
            tracing::warn!(
                worker = worker.id,
                run = job.run_id,
                "handing the job back: {reason}"
            );
            progress.abort();
            let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
            return;
        }
    };
    let (report, output) = match store_output(worker, &job, report).await {
        Ok(r) => r,
        Err(e) => {
            // The object store is unreachable: the job goes back (and runs
            // again), as when the result cannot be published.
            tracing::warn!(
                worker = worker.id,
                run = job.run_id,
                "storing the output failed, the job will be redelivered: {e:#}"
            );
            progress.abort();
            let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
            return;
        }
    };
    let result = JobResult {
        run_id: job.run_id.clone(),
        worker: worker.id.clone(),
        zone: job.zone.clone(),
        adapter: job.adapter.clone(),
        report,
        started_at_ms,
        finished_at_ms: now_ms(),
        output,
    };
    let outcome = result.report.outcome.kind();
    let published = publish_result(worker, &result).await;
    progress.abort();
    match published {
        Ok(()) => {
            if let Err(e) = msg.double_ack().await {
                // The result is out; a redelivery runs it again and the
                // control plane keeps the first result.
                tracing::warn!(worker = worker.id, run = job.run_id, "acking the job: {e}");
            }
            tracing::info!(worker = worker.id, run = job.run_id, outcome, "run done");
        }
        Err(e) => {
            tracing::error!(
                worker = worker.id,
                run = job.run_id,
                "publishing the result failed, the job will be redelivered: {e}"
            );
            let _ = msg.ack_with(AckKind::Nak(Some(NAK_DELAY))).await;
        }
    }
}

async fn terminate(msg: &jetstream::Message) {
    if let Err(e) = msg.ack_with(AckKind::Term).await {
        tracing::warn!("terminating a job: {e}");
    }
}

/// Publish `result` and wait for JetStream's ack, retrying while the
/// connection is down, for up to an ack wait.
async fn publish_result(worker: &Worker, result: &JobResult) -> anyhow::Result<()> {
    let body = bytes::Bytes::from(result.encode(worker.client.max_payload())?);
    let subject = result_subject(&result.zone);
    let give_up = tokio::time::Instant::now() + worker.timing.ack_wait;
    let mut wait = Duration::from_millis(100);
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MSG_ID_HEADER, result.run_id.as_str());
        let attempt = async {
            worker
                .js
                .publish_with_headers(subject.clone(), headers, body.clone())
                .await?
                .await
                .map_err(anyhow::Error::from)
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() + wait < give_up => {
                tracing::warn!(run = result.run_id, "publishing the result (retrying): {e}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// An ok output over [`INLINE_OUTPUT_MAX`], or one the run stores as a
/// dataset, goes to the job's zone's object store (object = its digest's
/// hex; chunks that fit the server's `max_payload`): it stays in the zone
/// it was made in, and never has to fit in a message. The report keeps the
/// bytes only if they are within [`INLINE_OUTPUT_MAX`].
async fn store_output(
    worker: &Worker,
    job: &Job,
    mut report: RunReport,
) -> anyhow::Result<(RunReport, Option<StoredOutput>)> {
    let Outcome::Ok { output } = &mut report.outcome else {
        return Ok((report, None));
    };
    if output.body.len() <= INLINE_OUTPUT_MAX && !job.store_output {
        return Ok((report, None));
    }
    let store = worker
        .zone_stores
        .get(&job.zone)
        .ok_or_else(|| anyhow::anyhow!("no object store for zone {}", job.zone))?;
    let digest = Digest::of(&output.body);
    let chunk = crate::objects::chunk_size(worker.client.max_payload());
    crate::objects::put(store, &digest, chunk, &mut output.body.as_slice()).await?;
    let stored = StoredOutput {
        digest,
        size: output.body.len() as u64,
        content_type: output.content_type.clone(),
    };
    if output.body.len() > INLINE_OUTPUT_MAX {
        output.body = Vec::new();
    }
    Ok((report, Some(stored)))
}

fn host_failure(module: Digest, reason: String) -> RunReport {
    RunReport::denied(module, reason)
}

async fn execute(
    worker: &Worker,
    job: &Job,
    cancel: Arc<kasbah_runtime::Cancel>,
) -> Result<RunReport, Prep> {
    // Cancelled before it started here: nothing fetched, nothing compiled.
    if cancel.is_cancelled() {
        return Ok(RunReport::cancelled(job.module));
    }
    let remaining = job.deadline_unix_ms.saturating_sub(now_ms());
    if remaining <= 0 {
        return Ok(RunReport {
            outcome: Outcome::DeadlineExceeded { limit_ms: 0 },
            ..host_failure(job.module, String::new())
        });
    }
    let module = match worker.runtime.cached(&job.module) {
        Some(m) => m,
        None => {
            let wasm = fetch_module(worker, &job.module).await?;
            let runtime = worker.runtime.clone();
            tokio::task::spawn_blocking(move || runtime.load(&wasm))
                .await
                .map_err(|e| Prep::Refused(format!("compiling the module: {e}")))?
                .map_err(|e| Prep::Refused(format!("module {}: {e}", job.module)))?
        }
    };
    // Its datasets stay in the cache until the run has ended.
    let digests: Vec<Digest> = job.datasets.iter().map(|d| d.digest).collect();
    let _pins = worker.datasets.pin(&digests);
    let mut datasets = Vec::with_capacity(job.datasets.len());
    for d in &job.datasets {
        let path = fetch_dataset(worker, &job.zone, &d.digest).await?;
        datasets.push(DatasetMount::new(d.name.clone(), path).with_digest(d.digest));
    }
    let mut policy = job.policy.clone();
    // The run ends at the job's deadline at the latest (fetching took some).
    let remaining = u64::try_from(job.deadline_unix_ms.saturating_sub(now_ms())).unwrap_or(0);
    if remaining == 0 {
        return Ok(RunReport {
            outcome: Outcome::DeadlineExceeded { limit_ms: 0 },
            ..host_failure(job.module, String::new())
        });
    }
    policy.limits.wall_time_ms = policy.limits.wall_time_ms.min(remaining);
    let mut request = Request::new(job.input.clone());
    if let Some(ct) = &job.content_type {
        request = request.with_content_type(ct.clone());
    }
    for (k, v) in &job.metadata {
        request = request.with_meta(k.clone(), v.clone());
    }
    let options = RunOptions {
        datasets,
        residency: Some(Residency {
            label: job.label.iter().cloned().collect::<BTreeSet<_>>(),
            zone: job.zone.clone(),
            adapter: job.adapter.clone(),
        }),
        tenant: Some(job.tenant.clone()),
        // Secrets never travel over NATS (the control plane refuses such
        // runs in fleet mode: `secrets_on_fleet`); a job that still
        // carries a policy granting some is refused here, not run without.
        secrets: Vec::new(),
    };
    if !policy.secrets.is_empty() {
        return Ok(kasbah_core::RunReport::denied(
            job.module,
            "the policy grants secrets, which are not delivered to fleet workers".into(),
        ));
    }
    let control = kasbah_runtime::RunControl {
        live: None,
        cancel: Some(cancel),
    };
    match worker
        .runtime
        .run_controlled(&module, &policy, request, &options, &control)
        .await
    {
        Ok(r) => Ok(r),
        Err(e) => Ok(host_failure(
            job.module,
            format!("host could not run the module: {e}"),
        )),
    }
}

fn transient_or_refused<E: std::fmt::Display>(
    what: String,
    not_found: bool,
) -> impl FnOnce(E) -> Prep {
    move |e| {
        if not_found {
            Prep::Refused(format!("{what}: {e}"))
        } else {
            Prep::Transient(format!("{what}: {e}"))
        }
    }
}

/// Read object `name` of `store` (at most `max` bytes) into `sink`,
/// checking that its SHA-256 is `digest`.
async fn fetch_object<W: tokio::io::AsyncWrite + Unpin>(
    store: &ObjectStore,
    bucket: &str,
    digest: &Digest,
    max: u64,
    sink: &mut W,
) -> Result<(), Prep> {
    use async_nats::jetstream::object_store::GetErrorKind;
    let name = digest.hex();
    let what = format!("{bucket}/{name}");
    let mut object = match store.get(&name).await {
        Ok(o) => o,
        Err(e) => {
            let missing = matches!(e.kind(), GetErrorKind::NotFound | GetErrorKind::InvalidName);
            return Err(transient_or_refused(what, missing)(e));
        }
    };
    let size = object.info().size as u64;
    if size > max {
        return Err(Prep::Refused(format!(
            "{what}: {size} bytes exceeds this worker's limit of {max}"
        )));
    }
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = object
            .read(&mut buf)
            .await
            .map_err(|e| Prep::Transient(format!("{what}: reading: {e}")))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > max {
            return Err(Prep::Refused(format!(
                "{what}: more than this worker's limit of {max} bytes"
            )));
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .await
            .map_err(|e| Prep::Refused(format!("{what}: writing locally: {e}")))?;
    }
    let got = Digest::from_bytes(hasher.finalize().into());
    if got != *digest {
        return Err(Prep::Refused(format!("{what}: content has digest {got}")));
    }
    Ok(())
}

async fn fetch_module(worker: &Worker, digest: &Digest) -> Result<Vec<u8>, Prep> {
    let mut wasm = Vec::new();
    fetch_object(
        &worker.modules,
        MODULES_BUCKET,
        digest,
        worker.max_module_bytes,
        &mut wasm,
    )
    .await?;
    Ok(wasm)
}

/// The local copy of a dataset (`work_dir/datasets/<hex>`, 0400),
/// downloaded from the zone's bucket on first use and kept in the bounded
/// cache.
async fn fetch_dataset(worker: &Worker, zone: &str, digest: &Digest) -> Result<PathBuf, Prep> {
    if let Some(path) = worker.datasets.get(digest)
        && tokio::fs::metadata(&path).await.is_ok()
    {
        return Ok(path);
    }
    let path = worker.datasets.path(digest);
    let Some(store) = worker.zone_stores.get(zone) else {
        return Err(Prep::Refused(format!("no object store for zone {zone}")));
    };
    let tmp = tempfile::Builder::new()
        .prefix(&digest.hex())
        .tempfile_in(&worker.tmp_dir)
        .map_err(|e| Prep::Refused(format!("temporary file: {e}")))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    fetch_object(
        store,
        &zone_bucket(zone),
        digest,
        worker.max_dataset_bytes,
        &mut file,
    )
    .await?;
    let io = |e: std::io::Error| Prep::Refused(format!("storing dataset {digest}: {e}"));
    file.sync_all().await.map_err(io)?;
    drop(file);
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(&tmp_path, std::fs::Permissions::from_mode(0o400))
            .await
            .map_err(io)?;
    }
    tmp_path
        .persist(&path)
        .map_err(|e| Prep::Refused(format!("storing dataset {digest}: {e}")))?;
    let size = tokio::fs::metadata(&path).await.map_err(io)?.len();
    worker.datasets.admit(digest, size);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_toml_with_gpu_and_zones() {
        let c: WorkerConfig = toml::from_str(
            r#"
            id = "w-rabat-1"
            nats = "nats://10.0.0.1:4222"
            capacity = 8
            work_dir = "/var/lib/kasbah-worker"
            [zones]
            node = ["ma-rabat-1"]
            [[gpu.adapters]]
            label = "gpu0"
            zone = "ma-rabat-1"
            "#,
        )
        .expect("parse");
        c.check().expect("valid");
        assert_eq!(c.served_zones(), ["ma-rabat-1"]);
        assert_eq!(c.gpu.adapters[0].label, "gpu0");
        assert_eq!(c.ack_wait_ms, 30_000);

        let unknown = toml::from_str::<WorkerConfig>("zone = \"a\"");
        assert!(unknown.is_err());
        let bad: WorkerConfig =
            toml::from_str("id = \"a.b\"\ncapacity = 0\n[zones]\nnode = [\"Z\"]").expect("parse");
        let e = bad.check().expect_err("invalid").to_string();
        for needle in ["id", "capacity", "\"Z\""] {
            assert!(e.contains(needle), "{needle} missing from {e}");
        }
        // Zones derive from the GPU entries when `node` is not given.
        let derived: WorkerConfig =
            toml::from_str("[[gpu.adapters]]\nlabel = \"g\"\nzone = \"zone-b\"").expect("parse");
        assert_eq!(derived.served_zones(), ["zone-b"]);
        assert!(default_id().ends_with(&format!("-{}", std::process::id())));
    }
}
