//! # kasbah-runtime: the capability-isolated sandbox
//!
//! One [`Runtime`] per process owns the wasmtime `Engine` (pooling allocator,
//! epoch interruption, optional fuel), an epoch ticker thread, and a cache of
//! compiled components and their `InstancePre`, keyed by module sha256.
//! With [`RuntimeConfig::artifact_cache`], compiled components are also kept
//! on disk, integrity-checked, so a restarted process loads instead of
//! compiling (`artifacts.rs`).
//!
//! Each [`Runtime::run`] gets a fresh `Store` whose WASI context is built
//! **only** from the tenant's [`Policy`] (see `wasi.rs`): no files, env or
//! network unless granted; stdout/stderr captured into bounded buffers;
//! memory/tables limited by a `ResourceLimiter`; wall time enforced by an
//! epoch-deadline callback (CPU-bound guests) and a tokio timeout (guests
//! blocked in a host call). The result is a typed [`RunReport`].
//!
//! GPU: [`RuntimeConfig::gpu`] lists the node's adapter entries; the runtime
//! resolves them once ([`kasbah_gpu::GpuRegistry`]) and binds each run whose
//! policy has a `[gpu]` section to an entry in one of its zones. GPU usage
//! joins the run's [`Usage`].
//!
//! Residency and datasets: [`Runtime::run_with`] takes [`RunOptions`] that
//! do not come from the tenant's policy: the datasets to mount read-only at
//! `/datasets/<name>` ([`DatasetMount`]) and the run's [`Residency`] (label,
//! placed zone, bound GPU adapter), enforced at every egress against the
//! host's [`ZonesConfig`] (see `residency.rs`).

mod artifacts;
pub mod control;
pub mod datasets;
mod fs;
pub mod http;
mod limits;
pub mod log;
pub mod net;
pub mod residency;
pub mod secrets;
mod stdio;
mod warm;
mod wasi;

pub use artifacts::{ArtifactCacheConfig, ArtifactStats};
pub use control::{Cancel, LiveSink, RunControl};
pub use datasets::{DatasetMount, MountError};
pub use residency::{NetZone, Residency, StorageZone, ZonesConfig};
pub use secrets::{SecretError, SecretValue};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kasbah_core::{Digest, GuestErrorKind, Outcome, Output, RunReport, Usage};
use kasbah_policy::Policy;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolConcurrencyLimitError, PoolingAllocationConfig,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use kasbah_core;
pub use kasbah_gpu;
pub use kasbah_policy;

/// Fuel handed to compiled code at a time (see `run_controlled`): the
/// most an interrupted run can leave unbilled, ~8 ms of a tight guest loop
/// (which burns ~12 units/ns here); one write-back and executor yield per
/// slice, fewer than the epoch's own yields (every 10 ms tick). A slice of
/// 1,000,000 cost a CPU-bound guest 40–60% (debug host, one run); 100,000,000
/// was within the noise.
pub const FUEL_SLICE: u64 = 100_000_000;

/// Host bindings for the `kasbah:pipeline/pipeline` world. WASI interfaces
/// come from wasmtime-wasi; only `kasbah:*` is generated here.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "kasbah:pipeline/pipeline",
        exports: { default: async },
        // kasbah:gpu's host functions are async (see kasbah-gpu), hence Send
        // store data.
        require_store_data_send: true,
        with: {
            "wasi": wasmtime_wasi::p2::bindings,
            "kasbah:gpu@0.2.0": kasbah_gpu::bindings::kasbah::gpu,
            "kasbah:gpu@0.1.0": kasbah_gpu::bindings_v1::kasbah::gpu,
        },
    });
}

use bindings::kasbah::pipeline::types as wit;

/// Dataset directories kept for reuse (see `datasets.rs`).
const MOUNT_CACHE_ENTRIES: usize = 64;

/// The fully-qualified name of the interface every pipeline exports.
pub const HANDLER_EXPORT: &str = "kasbah:pipeline/handler@0.1.0";

/// Process-wide sandbox settings (host configuration, not tenant policy).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Instances that may be alive at once (pooling allocator slots).
    pub max_concurrent_instances: u32,
    /// Largest linear memory any policy may grant, in bytes.
    pub max_memory_bytes: u64,
    /// Meter fuel in every store (needed for `limits.fuel` and fuel usage).
    pub fuel_metering: bool,
    /// Epoch tick: granularity of wall-clock deadlines and async yields.
    pub epoch_tick: Duration,
    /// Maximum wasm stack per call; deeper recursion traps.
    pub max_wasm_stack: usize,
    /// Compiled modules kept in memory.
    pub module_cache_entries: usize,
    /// Compiled modules kept on disk across restarts (HMAC-checked before
    /// loading, bounded in bytes; see `artifacts.rs`). `None`: compile
    /// every module once per process.
    pub artifact_cache: Option<ArtifactCacheConfig>,
    /// Forward guest log records to this process's `tracing` output.
    pub echo_guest_logs: bool,
    /// How long resolving one allowlisted DNS name may take at run start.
    pub dns_timeout: Duration,
    /// PEM files of CA certificates outgoing HTTPS also trusts, beyond the
    /// system roots (a private CA; the tests' CA). Read once, at
    /// [`Runtime::new`]: an unreadable file is an error there.
    pub http_extra_ca: Vec<std::path::PathBuf>,
    /// GPU adapter entries of this node (none by default: GPU calls then
    /// answer `unavailable`, or `denied` without a `[gpu]` policy).
    pub gpu: kasbah_gpu::GpuConfig,
    /// Zones of network destinations and storage (enforced for runs with a
    /// [`Residency`]). `node` should hold the node's resolved zones: the
    /// first one is the zone of storage no entry names.
    pub zones: ZonesConfig,
    /// Where per-run dataset directories are made (hard links need the same
    /// file system as the dataset files). Default: the system temp dir.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// Bytes at the bottom of each pooled linear memory kept mapped between
    /// instances and reset to their initial contents by the host (only the
    /// pages the guest touched, found with Linux's `PAGEMAP_SCAN` where the
    /// kernel has it, else this whole prefix is `memset`); the rest is
    /// reset with `madvise`. Every `madvise` is a TLB shootdown across all
    /// cores, which dominated short runs (see ARCHITECTURE.md). 0 = always
    /// `madvise`.
    pub memory_keep_resident: usize,
    /// The same for tables (function references), in bytes.
    pub table_keep_resident: usize,
    /// The same for the async stacks guests run on, in bytes.
    pub stack_keep_resident: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_concurrent_instances: 128,
            max_memory_bytes: 4 << 30,
            fuel_metering: true,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack: 1 << 20,
            module_cache_entries: 256,
            artifact_cache: None,
            echo_guest_logs: false,
            dns_timeout: Duration::from_secs(2),
            http_extra_ca: Vec::new(),
            gpu: kasbah_gpu::GpuConfig::default(),
            zones: ZonesConfig::default(),
            scratch_dir: None,
            memory_keep_resident: 4 << 20,
            table_keep_resident: 64 << 10,
            stack_keep_resident: 128 << 10,
        }
    }
}

/// Per-run inputs decided by the platform rather than the tenant's policy.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Mounted read-only, each as the file `/datasets/<name>`.
    pub datasets: Vec<DatasetMount>,
    /// Placement and label; `None` (local runs): no residency enforcement,
    /// GPU bound by the policy's zones.
    pub residency: Option<Residency>,
    /// The tenant the run is for: GPU warm state (resident dataset-backed
    /// buffers, cached kernels) is shared only between runs of the same
    /// tenant. `None`: nothing this run leaves warm is reused.
    pub tenant: Option<String>,
    /// Granted secrets, decrypted (policy `[secrets]`): delivered as
    /// environment variables and read-only files (`secrets.rs`).
    pub secrets: Vec<SecretValue>,
}

/// The request handed to a pipeline.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub content_type: String,
    pub metadata: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Request {
            content_type: "application/octet-stream".into(),
            metadata: Vec::new(),
            body: body.into(),
        }
    }
    pub fn with_meta(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.metadata.push((k.into(), v.into()));
        self
    }
    pub fn with_content_type(mut self, ct: impl Into<String>) -> Self {
        self.content_type = ct.into();
        self
    }
}

/// Why bytes could not be loaded as a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "not a WebAssembly component (a core module or other bytes); build with --target wasm32-wasip2"
    )]
    NotAComponent,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error(
        "the component does not export `{HANDLER_EXPORT}`: it does not target the kasbah pipeline world"
    )]
    MissingExport,
}

/// Host-side failures: not the guest's doing, not a policy decision.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("sandbox capacity exhausted ({0}); retry later")]
    Capacity(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// A compiled, linked pipeline, ready to instantiate.
pub struct Module {
    digest: Digest,
    size: usize,
    imports: Vec<String>,
    pre: Result<bindings::PipelinePre<RunState>, String>,
    /// Instantiating it runs none of its code (`warm.rs`).
    start_free: bool,
}

impl Module {
    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn size(&self) -> usize {
        self.size
    }
    /// Every interface the component imports, by fully-qualified name.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }
    /// Why this host cannot instantiate the module (an import it does not
    /// provide), if so. Runs of such a module are `denied`.
    pub fn link_error(&self) -> Option<&str> {
        self.pre.as_ref().err().map(String::as_str)
    }
}

/// Per-store state: WASI, the limiter, and kasbah's own capabilities.
pub struct RunState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: limits::Limiter,
    log: log::LogCtx,
    /// After `table`: fields drop in order, so the run's GPU buffers are
    /// destroyed before its device goes back to the pool.
    gpu: kasbah_gpu::GpuCtx,
    lookup: Arc<net::LookupFilter>,
    fs: Arc<fs::FsGuard>,
    http: http::HttpState,
}

impl RunState {
    fn fs(&mut self) -> fs::Fs<'_> {
        let guard = self.fs.clone();
        fs::Fs {
            inner: wasmtime_wasi::filesystem::WasiFilesystemView::filesystem(self),
            guard,
        }
    }

    fn lookup(&mut self) -> net::Lookup<'_> {
        let filter = self.lookup.clone();
        net::Lookup {
            sockets: wasmtime_wasi::sockets::WasiSocketsView::sockets(self),
            filter,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for RunState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http.ctx,
            table: &mut self.table,
            hooks: &mut self.http.hooks,
        }
    }
}

impl WasiView for RunState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<RunState>,
    config: RuntimeConfig,
    modules: Mutex<HashMap<Digest, Arc<Module>>>,
    /// One gate per digest being compiled: concurrent first loads of the
    /// same bytes wait for one compile instead of each doing it.
    compiling: Mutex<HashMap<Digest, Arc<Mutex<()>>>>,
    compiles: std::sync::atomic::AtomicU64,
    artifacts: Option<artifacts::ArtifactCache>,
    stop_ticker: Arc<AtomicBool>,
    gpu: kasbah_gpu::GpuRegistry,
    mounts: datasets::MountCache,
    /// Outgoing HTTPS trust (system roots + `http_extra_ca`).
    tls: Arc<rustls::ClientConfig>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The sandbox runner. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_concurrent_instances;
        pool.total_component_instances(n);
        pool.total_core_instances(n.saturating_mul(8));
        pool.total_memories(n.saturating_mul(2));
        pool.total_tables(n.saturating_mul(4));
        pool.total_stacks(n);
        pool.max_memory_size(usize::try_from(config.max_memory_bytes).unwrap_or(usize::MAX));
        pool.linear_memory_keep_resident(config.memory_keep_resident);
        pool.table_keep_resident(config.table_keep_resident);
        pool.async_stack_keep_resident(config.stack_keep_resident);
        pool.pagemap_scan(wasmtime::Enabled::Auto);

        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(config.fuel_metering)
            .max_wasm_stack(config.max_wasm_stack)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)?;
        // A cache that cannot be opened costs compile time, not runs.
        let artifacts = config.artifact_cache.as_ref().and_then(|c| {
            artifacts::ArtifactCache::open(c, &engine)
                .inspect_err(|e| {
                    tracing::warn!(
                        "compiled-artifact cache {} unusable, compiling every module: {e}",
                        c.dir.display()
                    )
                })
                .ok()
        });

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        net::add_lookup_to_linker(&mut linker, RunState::lookup)?;
        // Outgoing HTTP: every request is checked in `http.rs` against the
        // run's allowlist (empty without a `[network]` grant: all refused).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        let tls = http::client_config(&config.http_extra_ca)
            .map_err(|e| wasmtime::Error::msg(format!("{e:#}")))?;
        fs::add_to_linker(&mut linker, RunState::fs)?;
        log::add_to_linker(&mut linker, |s: &mut RunState| log::Log(&mut s.log))?;
        kasbah_gpu::add_to_linker(&mut linker, |s: &mut RunState| {
            kasbah_gpu::Gpu::new(&mut s.gpu, &mut s.table)
        })?;
        // Resolving adapters opens the GPU drivers once per process (tens of
        // ms); with no adapter configured nothing is opened.
        let gpu = kasbah_gpu::GpuRegistry::new(&config.gpu);

        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = stop_ticker.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("kasbah-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })?;
        }

        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                linker,
                config,
                modules: Mutex::default(),
                compiling: Mutex::default(),
                compiles: Default::default(),
                artifacts,
                stop_ticker,
                gpu,
                mounts: datasets::MountCache::new(MOUNT_CACHE_ENTRIES),
                tls,
            }),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The node's GPU adapter entries and their state.
    pub fn gpu(&self) -> &kasbah_gpu::GpuRegistry {
        &self.inner.gpu
    }

    /// Compile and link `wasm`, or return the cached module with the same
    /// sha256. CPU-heavy on a miss (tens of ms): call from a blocking context.
    /// Concurrent loads of the same bytes compile once: the others wait for
    /// that compile and get the same module.
    pub fn load(&self, wasm: &[u8]) -> Result<Arc<Module>, LoadError> {
        self.load_or_preload(wasm, false)?
            .ok_or_else(|| LoadError::Invalid("not loaded".into()))
    }

    /// Load `wasm` only if a verified compiled artifact for it is on disk
    /// (see `artifacts.rs`); never compile. `Ok(true)`: the module is now
    /// in the in-memory cache (deserialized and linked, an `InstancePre`
    /// ready: no instance is made and no guest code runs, so nothing is
    /// shared between runs beyond what [`Self::load`] shares). `Ok(false)`:
    /// no artifact, or one refused (removed, counted as rejected); the
    /// module's first run compiles it as usual. For warming a restarted
    /// process with the modules it ran recently ([`Self::recent_artifacts`]).
    pub fn preload(&self, wasm: &[u8]) -> Result<bool, LoadError> {
        Ok(self.load_or_preload(wasm, true)?.is_some())
    }

    /// Digests of the compiled artifacts on disk for this engine, most
    /// recently used first, at most `max_count` and `max_bytes` of files
    /// together. Empty without an artifact cache.
    pub fn recent_artifacts(&self, max_count: usize, max_bytes: u64) -> Vec<Digest> {
        self.inner
            .artifacts
            .as_ref()
            .map(|a| a.recent(max_count, max_bytes))
            .unwrap_or_default()
    }

    fn load_or_preload(
        &self,
        wasm: &[u8],
        artifact_only: bool,
    ) -> Result<Option<Arc<Module>>, LoadError> {
        let digest = Digest::of(wasm);
        if let Some(m) = self.cached(&digest) {
            return Ok(Some(m));
        }
        let gate = lock(&self.inner.compiling)
            .entry(digest)
            .or_default()
            .clone();
        let turn = lock(&gate);
        let loaded = match self.cached(&digest) {
            Some(m) => Ok(Some(m)),
            None => self
                .compile(digest, wasm, artifact_only)
                .map(|module| module.map(|m| self.keep(digest, m))),
        };
        drop(turn);
        let mut gates = lock(&self.inner.compiling);
        // Clones are only taken under this lock: 2 = the map's and ours.
        if Arc::strong_count(&gate) == 2 {
            gates.remove(&digest);
        }
        loaded
    }

    /// How many modules this runtime has compiled successfully (with
    /// Cranelift: loads from the artifact cache are not counted).
    pub fn compiled(&self) -> u64 {
        self.inner.compiles.load(Ordering::Relaxed)
    }

    /// What the on-disk artifact cache did (all zero without one).
    pub fn artifact_stats(&self) -> ArtifactStats {
        self.inner
            .artifacts
            .as_ref()
            .map(|a| a.stats())
            .unwrap_or_default()
    }

    /// Where the artifact for `wasm` is (or would be) kept on disk, if this
    /// runtime has an artifact cache.
    pub fn artifact_path(&self, wasm: &[u8]) -> Option<std::path::PathBuf> {
        let digest = Digest::of(wasm);
        self.inner.artifacts.as_ref().map(|a| a.path(&digest))
    }

    fn keep(&self, digest: Digest, module: Module) -> Arc<Module> {
        let mut cache = lock(&self.inner.modules);
        if cache.len() >= self.inner.config.module_cache_entries {
            // Evict an arbitrary entry; a re-run recompiles (tens of ms).
            if let Some(k) = cache.keys().next().copied() {
                cache.remove(&k);
            }
        }
        cache.entry(digest).or_insert(Arc::new(module)).clone()
    }

    /// The cached module for `digest`, if loaded.
    pub fn cached(&self, digest: &Digest) -> Option<Arc<Module>> {
        let cache = self
            .inner
            .modules
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        cache.get(digest).cloned()
    }

    /// Deserialize from the artifact cache or compile; with
    /// `artifact_only`, `Ok(None)` instead of compiling.
    fn compile(
        &self,
        digest: Digest,
        wasm: &[u8],
        artifact_only: bool,
    ) -> Result<Option<Module>, LoadError> {
        // A component's preamble is `\0asm` + version 0x0d + layer 1.
        if wasm.len() < 8 || &wasm[0..4] != b"\0asm" {
            return Err(LoadError::Invalid("not WebAssembly (bad magic)".into()));
        }
        if wasm[4..8] != [0x0d, 0x00, 0x01, 0x00] {
            return Err(LoadError::NotAComponent);
        }
        let engine = &self.inner.engine;
        let cache = self.inner.artifacts.as_ref();
        let (component, fresh) = match cache.and_then(|c| c.load(engine, &digest)) {
            Some(c) => (c, false),
            None if artifact_only => return Ok(None),
            None => {
                let c = Component::new(engine, wasm)
                    .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
                self.inner.compiles.fetch_add(1, Ordering::Relaxed);
                (c, true)
            }
        };
        let ty = component.component_type();
        if !ty.exports(engine).any(|(name, _)| name == HANDLER_EXPORT) {
            return Err(LoadError::MissingExport);
        }
        // The memories' copy-on-write images (a memfd each, filled with the
        // data segments) are made here rather than by the first
        // instantiation: a preloaded module's first run does not pay for
        // them. A failure only means instantiation makes them (or copies).
        if let Err(e) = component.initialize_copy_on_write_image() {
            tracing::debug!(module = %digest, "copy-on-write image: {e:#}");
        }
        if fresh && let Some(cache) = cache {
            // Synchronous: a few ms of serialize + write on a compile of
            // tens of ms or more; the next process finds it at once.
            cache.store(&digest, &component);
        }
        let imports = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| format!("{e:#}"))
            .and_then(|pre| bindings::PipelinePre::new(pre).map_err(|e| format!("{e:#}")));
        Ok(Some(Module {
            digest,
            size: wasm.len(),
            imports,
            pre,
            start_free: warm::instantiation_runs_no_code(wasm),
        }))
    }

    /// Run `module` on `request` under `policy`. Guest behaviour of any kind
    /// (errors, traps, limits, escapes attempts) ends up in the report's
    /// outcome; `Err` means the host could not run it at all.
    pub async fn run(
        &self,
        module: &Module,
        policy: &Policy,
        request: Request,
    ) -> Result<RunReport, RunError> {
        self.run_with(module, policy, request, &RunOptions::default())
            .await
    }

    /// [`Self::run`] with datasets and a residency (see [`RunOptions`]).
    pub async fn run_with(
        &self,
        module: &Module,
        policy: &Policy,
        request: Request,
        options: &RunOptions,
    ) -> Result<RunReport, RunError> {
        self.run_controlled(module, policy, request, options, &RunControl::default())
            .await
    }

    /// [`Self::run_with`] with a live feed of its logs and stdio, and a
    /// way to cancel it (see [`RunControl`]). A run cancelled before or
    /// while it executes ends as [`Outcome::Cancelled`], with the usage it
    /// took until then.
    pub async fn run_controlled(
        &self,
        module: &Module,
        policy: &Policy,
        request: Request,
        options: &RunOptions,
        control: &RunControl,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let mut phases = kasbah_core::phases::Phases::new();
        let limits = &policy.limits;
        let wall = Duration::from_millis(limits.wall_time_ms);
        let deadline = started + wall;
        let denied = |reason: String| RunReport {
            usage: Usage {
                wall_time: started.elapsed(),
                ..Usage::default()
            },
            ..RunReport::denied(module.digest, reason)
        };

        if control.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Ok(RunReport {
                outcome: Outcome::Cancelled {},
                ..denied(String::new())
            });
        }
        let pre = match &module.pre {
            Ok(pre) => pre,
            Err(e) => return Ok(denied(format!("module cannot be linked on this host: {e}"))),
        };
        if limits.memory_bytes > self.inner.config.max_memory_bytes {
            return Ok(denied(format!(
                "limits.memory_bytes = {} exceeds this host's maximum {}",
                limits.memory_bytes, self.inner.config.max_memory_bytes
            )));
        }
        if request.body.len() as u64 > limits.max_input_bytes {
            return Ok(denied(format!(
                "input of {} bytes exceeds limits.max_input_bytes = {}",
                request.body.len(),
                limits.max_input_bytes
            )));
        }
        if limits.fuel.is_some() && !self.inner.config.fuel_metering {
            return Ok(denied(
                "limits.fuel is set but this host runs without fuel metering".into(),
            ));
        }

        let mounted = if options.datasets.is_empty() {
            None
        } else {
            let scratch = self
                .inner
                .config
                .scratch_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            // A few metadata operations on a miss (mkdir, link, chmod), a
            // stat per dataset on a hit: inline, like the policy's preopens.
            match self.inner.mounts.get(&scratch, &options.datasets) {
                Ok(m) => Some(m),
                Err(e) => return Ok(denied(format!("datasets: {e}"))),
            }
        };

        // Secret files: a per-run directory on a memory-backed file system,
        // removed (zeroed first) when this function returns or is dropped.
        let secret_files = if options.secrets.iter().any(|s| s.file.is_some()) {
            let made = secrets::memory_dir(None)
                .and_then(|base| secrets::SecretFiles::create(&base, &options.secrets));
            match made {
                Ok(f) => Some(f),
                Err(e) => return Ok(denied(e.to_string())),
            }
        } else {
            None
        };
        let secret_env = match secrets::env_vars(&options.secrets) {
            Ok(v) => v,
            Err(e) => return Ok(denied(e.to_string())),
        };

        phases.mark("checks+mounts");
        let denials = net::Denials::default();
        let zones = &self.inner.config.zones;
        let dns = self.inner.config.dns_timeout;
        let allowlist = match (&options.residency, policy.network.is_empty()) {
            (_, true) => net::Allowlist::default(),
            (None, false) => net::Allowlist::resolve(&policy.network, dns).await,
            (Some(r), false) => net::Allowlist::resolve_zoned(&policy.network, dns, zones, r).await,
        };
        let mounts = wasi::RunMounts {
            residency: options.residency.as_ref().map(|r| (zones, r)),
            datasets: mounted.as_ref().map(|m| m.path()),
            live: control.live.clone(),
            secret_env: &secret_env,
            secret_dirs: secret_files.as_ref().map_or(&[], |f| &f.dirs[..]),
        };
        phases.mark("allowlist");
        let http_allowlist = Arc::new(allowlist.clone());
        let mut parts = match wasi::build(policy, allowlist, denials.clone(), mounts) {
            Ok(p) => p,
            Err(e) => return Ok(denied(e.to_string())),
        };
        phases.mark("wasi");
        let gpu_grant = policy.gpu_grant();
        let gpu = match &options.residency {
            None => self.inner.gpu.bind(gpu_grant.as_ref(), Some(deadline)),
            Some(r) => match &r.adapter {
                Some(label) => self
                    .inner
                    .gpu
                    .bind_entry(label, gpu_grant.as_ref(), Some(deadline)),
                None => kasbah_gpu::GpuCtx::denied(format!(
                    "this run was placed in zone {} without a GPU adapter",
                    r.zone
                )),
            },
        };
        let gpu = gpu.with_scope(
            options.tenant.as_deref(),
            options
                .datasets
                .iter()
                .map(|d| {
                    kasbah_gpu::GpuDataset::new(&d.name, &d.path, d.digest.map(|g| g.to_string()))
                })
                .collect(),
        );

        phases.mark("gpu");
        let mut table = ResourceTable::new();
        // Backstop for every WASI resource (streams, pollables, sockets,
        // descriptors): a full table traps the guest. Descriptors have
        // their own, lower bound that fails softly (`fs.rs`).
        table.set_max_capacity(
            usize::try_from(limits.max_open_files)
                .unwrap_or(usize::MAX)
                .saturating_add(TABLE_SLACK),
        );
        let mut store = Store::new(
            &self.inner.engine,
            RunState {
                wasi: parts.builder.build(),
                table,
                limiter: limits::Limiter::new(limits.memory_bytes, limits.max_table_elements),
                log: log::LogCtx::new(
                    limits.max_log_bytes,
                    limits.max_log_records,
                    self.inner.config.echo_guest_logs,
                )
                .with_live(control.live.clone()),
                gpu,
                lookup: parts.lookup.clone(),
                fs: Arc::new(fs::FsGuard::new(limits, denials.clone())),
                http: http::HttpState::new(
                    http_allowlist,
                    denials.clone(),
                    self.inner.tls.clone(),
                    limits,
                ),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let fuel_budget = limits.fuel.unwrap_or(u64::MAX);
        if self.inner.config.fuel_metering {
            store
                .set_fuel(fuel_budget)
                .map_err(|e| RunError::Internal(format!("set_fuel: {e}")))?;
            // Compiled code keeps the fuel it burns in a register and writes
            // it back only at calls and when its slice runs out; an epoch
            // interrupt (deadline, cancel) unwinds without writing it back,
            // so a guest stopped mid-loop was billed only the fuel of its
            // start. Handing fuel out in slices writes it back (and yields
            // to the executor) every `FUEL_SLICE` units: at most one slice
            // of an interrupted run goes unbilled.
            store
                .fuel_async_yield_interval(Some(FUEL_SLICE))
                .map_err(|e| RunError::Internal(format!("fuel slice: {e}")))?;
        }
        store.set_epoch_deadline(1);
        let cancel = control.cancel.clone();
        let stop = cancel.clone();
        store.epoch_deadline_callback(move |_| {
            Ok(
                if Instant::now() >= deadline || stop.as_ref().is_some_and(|c| c.is_cancelled()) {
                    UpdateDeadline::Interrupt
                } else {
                    // Let other runs on this executor thread make progress.
                    UpdateDeadline::Yield(1)
                },
            )
        });

        phases.mark("store");
        let wit_request = wit::Request {
            content_type: request.content_type,
            metadata: request.metadata,
            body: request.body,
        };
        let instantiated = std::sync::OnceLock::new();
        let call = async {
            let instance = pre.instantiate_async(&mut store).await?;
            let _ = instantiated.set(Instant::now());
            instance
                .kasbah_pipeline_handler()
                .call_run(&mut store, &wit_request)
                .await
        };
        // A cancel interrupts a running guest at its next epoch tick (a
        // trap: its fuel is accounted); a guest blocked in a host call is
        // not interrupted by the epoch, so two ticks later its call is
        // dropped, as at the deadline.
        let tick = self.inner.config.epoch_tick;
        let cancelled = async {
            match &cancel {
                Some(c) => {
                    c.cancelled().await;
                    tokio::time::sleep(tick * 2).await;
                }
                None => std::future::pending().await,
            }
        };
        let result = tokio::time::timeout(wall, async {
            tokio::select! {
                r = call => Some(r),
                () = cancelled => None,
            }
        })
        .await;
        let was_cancelled = cancel.as_ref().is_some_and(|c| c.is_cancelled());
        if let Some(&at) = instantiated.get() {
            phases.mark_at("instantiate", at);
        }
        phases.mark("call");

        let wall_time = started.elapsed();
        let fuel_consumed = if self.inner.config.fuel_metering {
            store.get_fuel().ok().map(|left| fuel_budget - left)
        } else {
            None
        };
        let state = store.data_mut();
        let usage = Usage {
            wall_time,
            fuel_consumed,
            peak_memory_bytes: state.limiter.peak_memory as u64,
            gpu: state.gpu.usage(),
            http: state.http.usage(),
        };
        let memory_denied = state.limiter.memory_denied || state.limiter.table_denied;
        let logs = state.log.take();

        let outcome = match result {
            Ok(None) => Outcome::Cancelled {},
            Err(_elapsed) => Outcome::DeadlineExceeded {
                limit_ms: limits.wall_time_ms,
            },
            Ok(Some(Ok(Ok(resp)))) => {
                let size = resp.body.len() as u64;
                if resp.content_type.len() > MAX_CONTENT_TYPE_BYTES {
                    Outcome::OutputTooLarge {
                        size: resp.content_type.len() as u64,
                        limit: MAX_CONTENT_TYPE_BYTES as u64,
                    }
                } else if size.saturating_add(resp.content_type.len() as u64)
                    > limits.max_output_bytes
                {
                    Outcome::OutputTooLarge {
                        size,
                        limit: limits.max_output_bytes,
                    }
                } else {
                    Outcome::Ok {
                        output: Output {
                            content_type: resp.content_type,
                            body: resp.body,
                        },
                    }
                }
            }
            Ok(Some(Ok(Err(e)))) => {
                let (code, message) = match e {
                    wit::Error::InvalidInput(m) => (GuestErrorKind::InvalidInput, m),
                    wit::Error::Denied(m) => (GuestErrorKind::Denied, m),
                    wit::Error::Unavailable(m) => (GuestErrorKind::Unavailable, m),
                    wit::Error::Failed(m) => (GuestErrorKind::Failed, m),
                };
                let message = bounded_message(message, limits.max_output_bytes);
                Outcome::GuestError { code, message }
            }
            Ok(Some(Err(err))) => {
                if let Some(e) = err.downcast_ref::<PoolConcurrencyLimitError>() {
                    return Err(RunError::Capacity(e.to_string()));
                }
                // The epoch interrupt of a cancelled run is its cancel.
                if was_cancelled && matches!(err.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
                    Outcome::Cancelled {}
                } else {
                    classify_error(&err, limits, memory_denied)
                }
            }
        };
        drop(store);
        drop(mounted);
        phases.mark("report+drop");
        tracing::debug!(target: "kasbah::phases", "sandbox {phases}");
        Ok(RunReport {
            module: module.digest,
            outcome,
            usage,
            stdout: parts.stdout.take(),
            stderr: parts.stderr.take(),
            logs,
            denials: std::mem::take(&mut *denials.lock().unwrap_or_else(PoisonError::into_inner)),
        })
    }
}

/// Largest response content type accepted (a media type with parameters
/// is tens of bytes); longer is `output_too_large`.
pub const MAX_CONTENT_TYPE_BYTES: usize = 256;

/// Largest guest error message kept (longer ones are cut, marked, and the
/// cut message also counts against `max_output_bytes`).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4096;

/// Largest `get-random-bytes` / `get-insecure-random-bytes` per call; a
/// larger request traps (the WIT has no error for it). A 64 MiB request
/// took seconds of host CPU in a debug build.
pub const MAX_RANDOM_BYTES_PER_CALL: u64 = 1 << 20;

/// Resource table entries allowed beyond `limits.max_open_files`.
const TABLE_SLACK: usize = 1024;

/// A guest error message cut to [`MAX_ERROR_MESSAGE_BYTES`] and to
/// `max_output` (on a char boundary), with a note of what was cut.
fn bounded_message(mut message: String, max_output: u64) -> String {
    let cap = usize::try_from(max_output)
        .unwrap_or(usize::MAX)
        .min(MAX_ERROR_MESSAGE_BYTES);
    if message.len() <= cap {
        return message;
    }
    let total = message.len();
    let mut end = cap;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(&format!("… [{} of {total} bytes cut]", total - end));
    message
}

/// Backtrace lines kept in a trap message.
const MAX_TRAP_LINES: usize = 12;

fn classify_error(
    err: &wasmtime::Error,
    limits: &kasbah_policy::Limits,
    memory_denied: bool,
) -> Outcome {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Outcome::DeadlineExceeded {
            limit_ms: limits.wall_time_ms,
        },
        Some(Trap::OutOfFuel) => Outcome::FuelExhausted {
            limit: limits.fuel.unwrap_or(u64::MAX),
        },
        // A refused `memory.grow` makes Rust guests abort; a refused
        // instantiation (initial memory too large) errors out. Either way the
        // limit is what stopped the guest.
        _ if memory_denied => Outcome::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        },
        trap => {
            // The cause first (e.g. "wasm trap: call stack exhausted"), then
            // the head of the wasm backtrace, bounded.
            let cause = match trap {
                Some(t) => t.to_string(),
                None => err.root_cause().to_string(),
            };
            let context = err.to_string();
            let mut message = cause.clone();
            if context != cause {
                for line in context.lines().take(MAX_TRAP_LINES) {
                    message.push('\n');
                    message.push_str(line);
                }
            }
            Outcome::Trap { message }
        }
    }
}
