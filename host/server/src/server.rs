//! Starting and stopping the server: open (or create) the data dir,
//! recover what a previous process left, bind, serve; shut down within a
//! grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kasbah_runtime::{ArtifactCacheConfig, Runtime, RuntimeConfig};

use crate::at_rest;
use crate::audit::key::AuditKey;
use crate::blobs::Blobs;
use crate::config::ServerConfig;
use crate::datasets::service::clean_scratch;
use crate::datasets::sqlite::SqliteDatasets;
use crate::http;
use crate::metrics::Metrics;
use crate::registry::sqlite::SqliteModules;
use crate::routes::router;
use crate::runs::fleet::Fleet;
use crate::runs::scheduler::Scheduler;
use crate::runs::sqlite::SqliteRuns;
use crate::runs::storage::RunStore;
use crate::state::{AppState, GuestThreads, Inner};
use crate::store::Db;
use crate::tenancy::sqlite::SqliteTenancy;
use crate::tenancy::storage::TokenStore;
use crate::tenancy::tokens::default_ttl_ms;

/// A started server.
pub struct Server {
    pub addr: SocketAddr,
    /// A new platform-admin token: on the first start of a data dir, and on
    /// a start that finds no live admin token (all expired or revoked).
    pub admin_token: Option<String>,
    /// Runs found in flight from a previous process and marked interrupted.
    pub interrupted_runs: usize,
    pub state: AppState,
    /// The connection limits in force (the cap after the fd limit).
    pub limits: http::ConnLimits,
    /// The background preload of recently used compiled modules
    /// (`runs::warmup::preload_recent`), if one was started: joining it
    /// gives what it warmed.
    pub preload: Option<std::thread::JoinHandle<crate::runs::warmup::Warmed>>,
    /// The restore of GPU warm state and the ledger's saver
    /// (`runs::gpu_state`).
    pub gpu_state: crate::runs::gpu_state::GpuStateTasks,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<std::time::Duration>,
    /// Submits new checkpoints to the configured witnesses.
    witnesses: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stop accepting connections (runs already started finish in the
    /// background; their records are written when they do).
    pub fn stop(self) {
        self.task.abort();
        if let Some(w) = &self.witnesses {
            w.abort();
        }
    }

    /// Serve until `signal` resolves, then [`Self::shutdown`] within the
    /// configured grace period.
    pub async fn serve_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let grace = Duration::from_millis(self.state.config.shutdown_grace_ms);
        signal.await;
        tracing::info!("shutting down (grace period {grace:?})");
        self.shutdown_within(grace).await
    }

    /// Stop accepting requests, let in-flight ones finish, commit what the
    /// writer has queued and stop it. The data dir can then be reopened.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown_within(Duration::from_secs(3600)).await
    }

    /// Shut down: new connections are refused at once; requests in flight
    /// (a synchronous run included) and runs still executing get until
    /// `grace` to finish; then the writer commits what it has queued and
    /// stops. Runs still executing past the grace period are marked
    /// interrupted on the next start.
    pub async fn shutdown_within(self, grace: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(w) = &self.witnesses {
            w.abort();
        }
        let _ = self.stop.send(grace);
        self.task.await?;
        // Runs detached from their request (async runs, or sync runs whose
        // client stopped waiting) finish and store their records too.
        while self.state.scheduler.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.state.scheduler.in_flight();
        if left > 0 {
            tracing::warn!(
                "{left} runs still executing at shutdown; marked interrupted at next start"
            );
        }
        let state = self.state;
        let gpu_state = self.gpu_state;
        tokio::task::spawn_blocking(move || {
            gpu_state.stop(&state);
            state.db.close()
        })
        .await?;
        Ok(())
    }
}

/// Open (or create) the data dir, recover, bind, and start serving.
pub async fn start(mut config: ServerConfig) -> anyhow::Result<Server> {
    config.check()?;
    // From here on `zones.node` holds the node's zones, resolved.
    config.zones.node = config.node_zones();
    at_rest::prepare(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("securing the data dir {}: {e}", config.data_dir.display()))?;
    clean_scratch(&config.data_dir.join("scratch"));
    // Secret files of runs of a process killed mid-run (in RAM, zeroed).
    if let Ok(dir) = kasbah_runtime::secrets::memory_dir(None) {
        let n = kasbah_runtime::secrets::sweep_stale(&dir);
        if n > 0 {
            tracing::warn!("removed {n} secret directories left by dead processes");
        }
    }
    let audit = AuditKey::load_or_create(&config.data_dir, &config.audit_origin)?;
    let secret_key = crate::secrets::seal::SecretKey::load_or_create(&config.data_dir)?;
    if !config.fsync_every_commit {
        tracing::warn!(
            "fsync_every_commit = false: a power loss may lose acknowledged writes, and the \
             audit log could then sign a different tree of a size it already signed (a fork)"
        );
    }
    let db = Arc::new(Db::open(
        &config.data_dir.join("kasbah.db"),
        config.fsync_every_commit,
    )?);
    let tenancy = SqliteTenancy::new(db.clone());
    let runs = SqliteRuns::new(db.clone());
    let ttl_ms = default_ttl_ms(&config);
    // SQLite made `-wal`/`-shm` with the database's mode; make sure.
    at_rest::fix_db_files(&config.data_dir)?;
    let admin_token = tenancy.bootstrap_admin(ttl_ms).await?;
    let unbounded = tenancy.expire_unbounded_tokens(ttl_ms).await?;
    if unbounded > 0 {
        tracing::warn!(
            "{unbounded} tokens from before token expiry existed now expire in {} days",
            config.token_ttl_seconds / 86_400
        );
    }
    // On the fleet, runs in flight may still be running on workers: their
    // results wait in the results stream and are recorded when they come.
    let interrupted_runs = if config.nats.is_none() {
        runs.interrupt_inflight().await?
    } else {
        0
    };
    let fleet = match &config.nats {
        Some(url) => Some(Fleet::connect(url, &config.nats_auth()).await?),
        None => None,
    };
    let blobs = Blobs::open(&config.data_dir.join("blobs"))?;
    let runtime = Runtime::new(RuntimeConfig {
        max_concurrent_instances: u32::try_from(config.workers.max(1) * 2).unwrap_or(u32::MAX),
        gpu: config.gpu.clone(),
        zones: config.zones.clone(),
        http_extra_ca: config.http_extra_ca.clone(),
        // Dataset mounts hard-link blobs: same file system as the blob dir.
        scratch_dir: Some(config.data_dir.join("scratch")),
        artifact_cache: (config.compiled_cache_bytes > 0)
            .then(|| ArtifactCacheConfig::under(&config.data_dir, config.compiled_cache_bytes)),
        ..RuntimeConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("starting the sandbox runtime: {e:#}"))?;
    let guests = GuestThreads::new(config.guest_threads)?;
    let scheduler = Scheduler::new(config.workers.max(1), config.queue_depth);
    let fd_limit = http::raise_fd_limit();
    let limits = http::ConnLimits::new(&config, fd_limit);
    if limits.max_connections < config.max_connections {
        tracing::info!(
            "at most {} connections (open-file limit {})",
            limits.max_connections,
            fd_limit.unwrap_or_default()
        );
    }
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let mut metrics = Metrics::new();
    metrics.register_writer(db.writer_stats());
    let state = AppState(Arc::new(Inner {
        config,
        modules: SqliteModules::new(db.clone()),
        datasets: SqliteDatasets::new(db.clone()),
        secrets: crate::secrets::sqlite::SqliteSecrets::new(db.clone()),
        secret_key,
        db,
        tenancy,
        runs,
        blobs,
        runtime,
        guests,
        scheduler,
        live: Default::default(),
        metrics,
        audit,
        fleet,
        warmup: Default::default(),
    }));
    if let Some(fleet) = &state.fleet {
        crate::runs::dispatch::start(fleet, state.clone()).await?;
    }
    let preload = crate::runs::warmup::preload_recent(&state);
    let gpu_state = crate::runs::gpu_state::start(&state);
    let witnesses = crate::audit::witnesses::start(&state)?;
    let app = router(state.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<Duration>();
    let task = tokio::spawn(http::serve(listener, app, limits, async move {
        // Only an explicit shutdown stops the server; dropping the
        // `Server` handle does not.
        match stopped.await {
            Ok(grace) => grace,
            Err(_) => std::future::pending().await,
        }
    }));
    Ok(Server {
        addr,
        admin_token,
        interrupted_runs,
        state,
        limits,
        preload,
        gpu_state,
        task,
        stop,
        witnesses,
    })
}
