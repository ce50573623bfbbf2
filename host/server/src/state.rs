//! The state every handler and service shares: configuration, the storage
//! of each domain, the blob store, the sandbox runtime and the threads
//! guests run on, admission, metrics, the audit log's key.
//!
//! Each domain's storage is named by its SQLite implementation here, the
//! one place that picks a backend; services see it through the domain's
//! storage trait (`*/storage.rs`).

use std::ops::Deref;
use std::sync::Arc;

use kasbah_runtime::Runtime;

use crate::audit::key::AuditKey;
use crate::blobs::Blobs;
use crate::config::ServerConfig;
use crate::datasets::sqlite::SqliteDatasets;
use crate::metrics::Metrics;
use crate::registry::sqlite::SqliteModules;
use crate::runs::fleet::Fleet;
use crate::runs::scheduler::Scheduler;
use crate::runs::sqlite::SqliteRuns;
use crate::secrets::seal::SecretKey;
use crate::secrets::sqlite::SqliteSecrets;
use crate::store::Db;
use crate::tenancy::sqlite::SqliteTenancy;

pub struct Inner {
    pub config: ServerConfig,
    /// The storage core: the writer, readers and the audit log's tables.
    pub db: Arc<Db>,
    pub tenancy: SqliteTenancy,
    pub modules: SqliteModules,
    pub datasets: SqliteDatasets,
    pub runs: SqliteRuns,
    /// Tenants' secrets (sealed) and the key they are sealed under.
    pub secrets: SqliteSecrets,
    pub secret_key: SecretKey,
    pub blobs: Blobs,
    pub runtime: Runtime,
    /// The tokio runtime guests execute on (see [`GuestThreads`]).
    pub guests: GuestThreads,
    pub scheduler: Arc<Scheduler>,
    /// Runs in flight: live logs and cancellation (`runs/live.rs`).
    pub live: crate::runs::live::LiveRuns,
    pub metrics: Metrics,
    /// The audit log's signing key and latest checkpoint.
    pub audit: AuditKey,
    /// Where runs execute: on the fleet (`nats` configured), else here.
    pub fleet: Option<Arc<Fleet>>,
    /// What the start-up warm-up is still doing (`GET /readyz`).
    pub warmup: Warmup,
}

/// The background warm-up after a start: recently used modules loaded from
/// the artifact cache, GPU warm state restored. Requests are served during
/// it; `GET /readyz` says when it is done (a load balancer's readiness).
#[derive(Default)]
pub struct Warmup {
    pub modules: std::sync::atomic::AtomicBool,
    pub gpu: std::sync::atomic::AtomicBool,
}

impl Warmup {
    /// What is still warming up (empty: ready).
    pub fn pending(&self) -> Vec<&'static str> {
        use std::sync::atomic::Ordering::Acquire;
        let mut v = Vec::new();
        if self.modules.load(Acquire) {
            v.push("modules");
        }
        if self.gpu.load(Acquire) {
            v.push("gpu");
        }
        v
    }
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
pub struct AppState(pub Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
