//! # kasbah-server: the platform service
//!
//! `kasbah serve` = this crate: an axum API over an embedded SQLite database
//! (metadata) and a content-addressed blob directory (modules, large
//! outputs), running pipelines on one shared [`kasbah_runtime::Runtime`].
//! Roles: admin, operator, developer, auditor (see `auth.rs`).
//!
//! Every state change goes through one group-commit writer thread
//! (`writer.rs`) and is committed in the same SQLite transaction as the
//! audit log entry recording it (`audit.rs`): nothing is acknowledged before
//! its entry is durable. `audit_api.rs` serves checkpoints, proofs, entries
//! and receipts.

pub mod api;
pub mod at_rest;
pub mod audit;
pub mod audit_api;
pub mod auth;
pub mod blobs;
pub mod config;
pub mod datasets;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod placement;
pub mod scheduler;
pub mod tokens;
pub mod writer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use kasbah_core::Digest;
use kasbah_core::api::PolicyRecord;
use kasbah_runtime::{Module, Runtime, RuntimeConfig};
use utoipa::OpenApi;

pub use config::ServerConfig;

use crate::audit::AuditKey;
use crate::blobs::Blobs;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;

pub struct Inner {
    pub config: ServerConfig,
    pub db: Db,
    pub blobs: Blobs,
    pub runtime: Runtime,
    /// The tokio runtime guests execute on (see [`GuestThreads`]).
    pub guests: GuestThreads,
    pub scheduler: Arc<Scheduler>,
    pub metrics: Metrics,
    /// The audit log's signing key and latest checkpoint.
    pub audit: AuditKey,
    /// Current policy per tenant (invalidated when a policy is set).
    policies: Mutex<HashMap<String, Arc<PolicyRecord>>>,
}

/// A multi-thread tokio runtime of its own for guest execution. Guests
/// run inside host calls that may block their thread for a while (a
/// synchronous WASI call, a compile of a guest's GPU kernel); on the API's
/// threads that stalled every request, `/openapi.json` included. Runs are
/// spawned here and awaited from the API (a dropped handle does not cancel
/// the run).
pub struct GuestThreads {
    rt: Option<tokio::runtime::Runtime>,
}

impl GuestThreads {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            threads
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("kasbah-guest")
            .enable_all()
            .build()?;
        Ok(GuestThreads { rt: Some(rt) })
    }

    /// Run `f` on the guest threads.
    pub fn spawn<F>(&self, f: F) -> Option<tokio::task::JoinHandle<F::Output>>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().map(|rt| rt.spawn(f))
    }
}

impl Drop for GuestThreads {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another
        // runtime (where the server's state is usually dropped).
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// The tenant's current policy (cached).
    pub fn policy(&self, tenant: &str) -> ApiResult<Arc<PolicyRecord>> {
        if let Some(p) = self
            .policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(tenant)
        {
            return Ok(p.clone());
        }
        let p = Arc::new(
            self.db
                .current_policy(tenant)?
                .ok_or_else(|| ApiError::not_found("tenant"))?,
        );
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(tenant.to_string(), p.clone());
        Ok(p)
    }

    pub fn forget_policy(&self, tenant: &str) {
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(tenant);
    }

    /// A compiled module by digest: the runtime's cache, or the blob store.
    pub async fn module(&self, digest: &Digest) -> Result<Arc<Module>, String> {
        if let Some(m) = self.runtime.cached(digest) {
            return Ok(m);
        }
        let bytes = self
            .blobs
            .get(digest)
            .map_err(|e| format!("reading module {digest}: {e}"))?
            .ok_or_else(|| format!("module {digest} is missing from the blob store"))?;
        let rt = self.runtime.clone();
        tokio::task::spawn_blocking(move || rt.load(&bytes))
            .await
            .map_err(|e| format!("loading module {digest}: {e}"))?
            .map_err(|e| format!("loading module {digest}: {e}"))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kasbah", description = "Sovereign WebAssembly sandbox platform API. Every request except this document needs `Authorization: Bearer <token>`. Errors are `{\"error\": {\"code\", \"message\"}}`."),
    paths(
        api::whoami,
        api::create_operator, api::list_operators, api::create_operator_token, api::put_operator_ceiling,
        api::create_tenant, api::list_tenants, api::get_tenant, api::get_policy, api::put_policy,
        api::policy_versions,
        api::create_tenant_token, api::create_auditor, api::list_tokens, api::revoke_token,
        api::publish_module, api::list_modules, api::get_module,
        api::create_run, api::get_run, api::get_run_output, api::list_runs,
        datasets::create_dataset, datasets::list_datasets, datasets::get_dataset,
        api::usage, api::metrics,
        audit_api::key, audit_api::checkpoint, audit_api::entries,
        audit_api::inclusion, audit_api::consistency,
        audit_api::run_receipt, audit_api::module_receipt, audit_api::entry_receipt,
    ),
    components(schemas(db::Period, error::ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

/// Routes any authenticated caller may use, whatever the role.
const ANY_ROLE: &[&str] = &[
    "/v1/whoami",
    "/v1/audit/key",
    "/v1/audit/checkpoint",
    "/v1/audit/proof/inclusion",
    "/v1/audit/proof/consistency",
];

/// The document as served: [`ApiDoc`] plus the error statuses every route
/// shares, added by rule so a new route cannot forget them (a status a
/// handler documents itself keeps its own description):
/// 401 everywhere (every route needs a token); 403 where roles matter;
/// 404 except on [`ANY_ROLE`] routes without path parameters; 400 where
/// there are parameters or a body; 408/413 where there is a body; 415 and
/// 422 where the body is JSON. Every error is the `ErrorBody` envelope.
pub fn openapi_document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    widen_unsigned_int32(&mut doc);
    raw_bodies_are_binary(&mut doc);
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        // Token bodies are optional (a name for the token).
        if path.ends_with("/tokens")
            && let Some(b) = item.get_mut("post").and_then(|o| o.get_mut("requestBody"))
        {
            b["required"] = false.into();
        }
        for (_method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let params = op
                .get("parameters")
                .and_then(|p| p.as_array())
                .map_or(0, Vec::len);
            let body = op.get("requestBody");
            let has_body = body.is_some();
            let json_body = body
                .and_then(|b| b.pointer("/content/application~1json"))
                .is_some();
            let any_role = ANY_ROLE.contains(&path.as_str());
            let mut add = vec![(
                "401",
                "`unauthenticated`: no token, or an unknown, expired or revoked one",
            )];
            if !any_role {
                add.push(("403", "`forbidden`: the caller's role may not do this"));
            }
            if !any_role || path.contains('{') {
                add.push((
                    "404",
                    "`not_found`: no such object, or one the caller may not see",
                ));
            }
            if params > 0 || has_body {
                add.push(("400", "`invalid_request`: malformed parameters or body"));
            }
            if has_body {
                add.push(("408", "`request_timeout`: the body stopped arriving"));
                add.push((
                    "413",
                    "`payload_too_large` (or a more specific `*_too_large`)",
                ));
            }
            if json_body {
                add.push((
                    "415",
                    "`unsupported_media_type`: not `Content-Type: application/json`",
                ));
                add.push((
                    "422",
                    "`invalid_request`: well-formed JSON of the wrong shape",
                ));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| serde_json::json!({}));
            let Some(responses) = responses.as_object_mut() else {
                continue;
            };
            for (status, description) in add {
                responses.entry(status).or_insert_with(|| {
                    serde_json::json!({
                        "description": description,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
                    })
                });
            }
        }
    }
    doc
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

/// utoipa documents `u32` as `int32` (minimum 0), whose range stops at
/// 2^31 - 1 while the server accepts up to 2^32 - 1: document the real range.
fn widen_unsigned_int32(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let unsigned32 = m.get("format").and_then(|f| f.as_str()) == Some("int32")
                && m.get("minimum").and_then(|x| x.as_f64()) == Some(0.0)
                && m.get("maximum").is_none();
            if unsigned32 {
                m.insert("format".into(), "int64".into());
                m.insert("maximum".into(), u32::MAX.into());
            }
            m.values_mut().for_each(widen_unsigned_int32);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(widen_unsigned_int32),
        _ => {}
    }
}

/// Streamed uploads (modules, datasets) are raw bytes, not JSON arrays;
/// path digests have a pattern.
fn raw_bodies_are_binary(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    for op in paths
        .values_mut()
        .filter_map(|i| i.as_object_mut())
        .flat_map(|i| i.values_mut())
    {
        // Digests in paths have one spelling.
        for p in op
            .get_mut("parameters")
            .and_then(|p| p.as_array_mut())
            .into_iter()
            .flatten()
        {
            if p["in"] == "path" && p["name"] == "digest" {
                p["schema"]["pattern"] = "^sha256:[0-9a-f]{64}$".into();
            }
        }
        let Some(content) = op
            .pointer_mut("/requestBody/content")
            .and_then(|c| c.as_object_mut())
        else {
            continue;
        };
        for (ct, media) in content.iter_mut() {
            if ct != "application/json" {
                media["schema"] = serde_json::json!({"type": "string", "format": "binary"});
            }
        }
        // A module upload is taken whatever its content type says.
        if let Some(wasm) = content.get("application/wasm").cloned() {
            content.entry("application/octet-stream").or_insert(wasm);
        }
    }
}

async fn openapi_json() -> axum::Json<serde_json::Value> {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    axum::Json(DOC.get_or_init(openapi_document).clone())
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_request_bytes;
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(api::metrics))
        .route("/v1/whoami", get(api::whoami))
        .route(
            "/v1/operators",
            post(api::create_operator).get(api::list_operators),
        )
        .route(
            "/v1/operators/{id}/tokens",
            post(api::create_operator_token),
        )
        .route(
            "/v1/operators/{id}/ceiling",
            axum::routing::put(api::put_operator_ceiling),
        )
        .route(
            "/v1/tenants",
            post(api::create_tenant).get(api::list_tenants),
        )
        .route("/v1/tenants/{id}", get(api::get_tenant))
        .route(
            "/v1/tenants/{id}/policy",
            get(api::get_policy).put(api::put_policy),
        )
        .route(
            "/v1/tenants/{id}/policy/versions",
            get(api::policy_versions),
        )
        .route("/v1/tenants/{id}/tokens", post(api::create_tenant_token))
        .route("/v1/auditors", post(api::create_auditor))
        .route("/v1/tokens", get(api::list_tokens))
        .route("/v1/tokens/{id}", delete(api::revoke_token))
        .route(
            "/v1/modules",
            post(api::publish_module).get(api::list_modules),
        )
        .route("/v1/modules/{digest}", get(api::get_module))
        .route(
            "/v1/modules/{digest}/receipt",
            get(audit_api::module_receipt),
        )
        .route(
            "/v1/datasets",
            post(datasets::create_dataset).get(datasets::list_datasets),
        )
        .route("/v1/datasets/{id}", get(datasets::get_dataset))
        .route("/v1/runs", post(api::create_run).get(api::list_runs))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/output", get(api::get_run_output))
        .route("/v1/runs/{id}/receipt", get(audit_api::run_receipt))
        .route("/v1/audit/key", get(audit_api::key))
        .route("/v1/audit/checkpoint", get(audit_api::checkpoint))
        .route("/v1/audit/entries", get(audit_api::entries))
        .route(
            "/v1/audit/entries/{index}/receipt",
            get(audit_api::entry_receipt),
        )
        .route("/v1/audit/proof/inclusion", get(audit_api::inclusion))
        .route("/v1/audit/proof/consistency", get(audit_api::consistency))
        .route("/v1/usage", get(api::usage))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(move |req, next| {
            error::json_objects(req, next, max_body)
        }))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response(error::envelope))
        .with_state(state)
}

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
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<std::time::Duration>,
}

impl Server {
    /// Stop accepting connections (runs already started finish in the
    /// background; their records are written when they do).
    pub fn stop(self) {
        self.task.abort();
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
        tokio::task::spawn_blocking(move || state.db.close()).await?;
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
    datasets::clean_scratch(&config.data_dir.join("scratch"));
    let audit = AuditKey::load_or_create(&config.data_dir, &config.audit_origin)?;
    if !config.fsync_every_commit {
        tracing::warn!(
            "fsync_every_commit = false: a power loss may lose acknowledged writes, and the \
             audit log could then sign a different tree of a size it already signed (a fork)"
        );
    }
    let db = Db::open(
        &config.data_dir.join("kasbah.db"),
        config.fsync_every_commit,
    )?;
    let ttl_ms = tokens::default_ttl_ms(&config);
    // SQLite made `-wal`/`-shm` with the database's mode; make sure.
    at_rest::fix_db_files(&config.data_dir)?;
    let admin_token = db.bootstrap_admin(ttl_ms).await?;
    let unbounded = db.expire_unbounded_tokens(ttl_ms).await?;
    if unbounded > 0 {
        tracing::warn!(
            "{unbounded} tokens from before token expiry existed now expire in {} days",
            config.token_ttl_seconds / 86_400
        );
    }
    let interrupted_runs = db.interrupt_inflight().await?;
    let blobs = Blobs::open(&config.data_dir.join("blobs"))?;
    let runtime = Runtime::new(RuntimeConfig {
        max_concurrent_instances: u32::try_from(config.workers.max(1) * 2).unwrap_or(u32::MAX),
        gpu: config.gpu.clone(),
        zones: config.zones.clone(),
        // Dataset mounts hard-link blobs: same file system as the blob dir.
        scratch_dir: Some(config.data_dir.join("scratch")),
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
        db,
        blobs,
        runtime,
        guests,
        scheduler,
        metrics,
        audit,
        policies: Mutex::default(),
    }));
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
        task,
        stop,
    })
}
