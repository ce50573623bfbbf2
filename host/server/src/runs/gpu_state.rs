//! GPU warm state across restarts, the server's half (the mechanism and its
//! guarantees are `kasbah_gpu::restore`'s): keep the ledger of what each
//! tenant had resident in `<data_dir>/gpu-warm.json`, and at start hand it
//! back to the GPU registry with a [`RestoreGate`] that answers from this
//! server's current state — the tenant's current policy (GPU grant, zones,
//! datasets allowed) and its datasets (digest owned, label allows the
//! adapter's zone, bytes in the blob store).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kasbah_core::Digest;
use kasbah_runtime::kasbah_gpu::{RestoreGate, RestoreStats, WarmRecord};

use crate::datasets::storage::DatasetStore;
use crate::state::AppState;
use crate::tenancy::storage::TenancyStore;

/// The ledger file under the data dir.
pub const LEDGER_FILE: &str = "gpu-warm.json";
/// A ledger file larger than this is not read (it is a few KiB normally:
/// at most 64 tenants × 256 ranges per adapter entry, and
/// kernel sources of a few tenants).
const MAX_LEDGER_BYTES: u64 = 16 << 20;
/// How often a changed ledger is written while the server runs.
const SAVE_EVERY: Duration = Duration::from_secs(2);

fn ledger_path(s: &AppState) -> PathBuf {
    s.config.data_dir.join(LEDGER_FILE)
}

/// Whether this server keeps GPU warm state across restarts.
fn enabled(s: &AppState) -> bool {
    s.config.restore_gpu_state && s.fleet.is_none() && !s.config.gpu.adapters.is_empty()
}

/// Read the ledger an earlier process left; a missing, oversized or
/// unreadable file is an empty ledger (logged).
fn read_ledger(path: &Path) -> Vec<WarmRecord> {
    let size = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(_) => return Vec::new(),
    };
    if size > MAX_LEDGER_BYTES {
        tracing::warn!(
            "{}: {size} bytes, over {MAX_LEDGER_BYTES}; ignored",
            path.display()
        );
        return Vec::new();
    }
    match std::fs::read(path).map(|b| serde_json::from_slice::<Vec<WarmRecord>>(&b)) {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("{}: {e}; ignored", path.display());
            Vec::new()
        }
        Err(e) => {
            tracing::warn!("{}: {e}; ignored", path.display());
            Vec::new()
        }
    }
}

/// Write the ledger now (temp file + rename, mode 0600).
pub fn save(s: &AppState) {
    if !enabled(s) {
        return;
    }
    let path = ledger_path(s);
    let records = s.runtime.gpu().warm_ledger();
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(&records).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        crate::at_rest::set_mode(&tmp, 0o600)?;
        std::fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

/// The background work of [`start`].
#[derive(Default)]
pub struct GpuStateTasks {
    /// The restore, if the ledger named anything: joining it gives what it
    /// did (tests, logs).
    pub restore: Option<tokio::task::JoinHandle<RestoreStats>>,
    /// Writes the ledger when it changed; stopped at shutdown.
    saver: Option<tokio::task::JoinHandle<()>>,
}

impl GpuStateTasks {
    /// Stop keeping the ledger and write it one last time (shutdown).
    pub fn stop(&self, s: &AppState) {
        if let Some(saver) = &self.saver {
            saver.abort();
            save(s);
        }
    }
}

/// At start, in the background: restore what the ledger names, and keep
/// the ledger file up to date while the server runs (the saver holds no
/// strong reference: it ends with the server's state).
pub fn start(s: &AppState) -> GpuStateTasks {
    if !enabled(s) {
        return GpuStateTasks::default();
    }
    let weak = std::sync::Arc::downgrade(&s.0);
    let saver = tokio::spawn(async move {
        let mut saved = None;
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            let Some(inner) = weak.upgrade() else { return };
            let s = AppState(inner);
            let now = s.runtime.gpu().warm_generation();
            if saved.replace(now) != Some(now) && now > 0 {
                let _ = tokio::task::spawn_blocking(move || save(&s)).await;
            }
        }
    });
    let records = read_ledger(&ledger_path(s));
    // Planned now, before the first request: runs of the tenants being
    // restored wait for their state instead of uploading a second copy.
    let plan = s.runtime.gpu().plan_restore(&records);
    let restore = (!plan.is_empty()).then(|| {
        let gate: std::sync::Arc<dyn RestoreGate> = std::sync::Arc::new(Gate(s.clone()));
        s.warmup
            .gpu
            .store(true, std::sync::atomic::Ordering::Release);
        let s = s.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let stats = plan.run(gate).await;
            s.warmup
                .gpu
                .store(false, std::sync::atomic::Ordering::Release);
            tracing::info!(
                "GPU warm state restored in {:?}: {} processes, {} ranges, {} bytes ({} skipped)",
                started.elapsed(),
                stats.processes,
                stats.buffers,
                stats.bytes,
                stats.skipped
            );
            stats
        })
    });
    GpuStateTasks {
        restore,
        saver: Some(saver),
    }
}

/// The server's answers for a restore: its *current* state, not the
/// ledger's.
struct Gate(AppState);

impl RestoreGate for Gate {
    fn resident_budget(&self, tenant: &str, zone: &str) -> Option<u64> {
        let p = self.0.tenancy.current_policy_cached(tenant).ok()??;
        let policy = &p.policy;
        let grant = policy.gpu_grant()?;
        let ok = policy.datasets
            && policy
                .allowed_zones(&self.0.config.zones.node)
                .contains(zone)
            && grant.zones.contains(zone);
        ok.then_some(grant.max_resident_bytes)
    }

    fn dataset(&self, tenant: &str, zone: &str, digest: &str) -> Option<PathBuf> {
        let d: Digest = digest.parse().ok()?;
        let found = self.0.datasets.by_digest(tenant, &d).ok()?;
        found
            .iter()
            .any(|r| !r.zone_stored && r.label.iter().any(|z| z == zone))
            .then(|| self.0.blobs.path(&d))
            .filter(|p| p.is_file())
    }
}
