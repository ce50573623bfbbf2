//! Per-run GPU state: which adapter entry the run is bound to, its quota,
//! what it has used so far, and (after the first GPU call) its device.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kasbah_core::GpuUsage;
use kasbah_policy::GpuGrant;

use crate::bindings::kasbah::gpu::compute::GpuError;
use crate::process::{Conn, Timed, Worker};
use crate::proto::{Id, Request, Value};
use crate::registry::Entry;

/// Live GPU handles (buffers, pipelines, encoders) one run may hold at once.
/// Bounds the host memory a run can pin through the resource table.
pub const MAX_LIVE_HANDLES: u32 = 4096;

/// A run's GPU capability. Build it with [`crate::GpuRegistry::bind`] (or
/// [`GpuCtx::refused`]) and keep it in the store data next to the resource
/// table; dropping it gives the device back. Declare it *after* the
/// `ResourceTable` in the store data (fields drop in order) so the run's
/// buffers are destroyed before its device can serve another run.
pub struct GpuCtx {
    state: State,
}

enum State {
    /// Every call answers this error (no GPU in the policy, no adapter).
    Refused(GpuError),
    Bound(Box<Bound>),
}

/// A dataset mounted in a run, as `buffer-from-dataset` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDataset {
    /// The name the guest uses (`/datasets/<name>`).
    pub name: String,
    /// The file on the host (read by the platform, never written).
    pub path: PathBuf,
    /// What identifies its bytes: the dataset's digest (`sha256:…`), or the
    /// file's identity (device, inode, size, mtime) when there is none.
    pub key: String,
    /// Its length when the run started (`None`: it could not be read).
    pub len: Option<u64>,
}

impl GpuDataset {
    /// `name` backed by `path`; `digest` when the platform knows it.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, digest: Option<String>) -> Self {
        use std::os::unix::fs::MetadataExt;
        let path = path.into();
        let meta = std::fs::metadata(&path).ok();
        // `file:<dev>:<ino>:<len>:<mtime>` without a digest (or the path
        // when it cannot be read: the upload then fails anyway).
        let key = digest.unwrap_or_else(|| match &meta {
            Some(m) => format!(
                "file:{}:{}:{}:{}.{}",
                m.dev(),
                m.ino(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            ),
            None => format!("path:{}", path.display()),
        });
        GpuDataset {
            name: name.into(),
            path,
            key,
            len: meta.map(|m| m.len()),
        }
    }
}

pub(crate) struct Bound {
    pub entry: Arc<Entry>,
    pub quota: GpuGrant,
    /// Whose warm state this run may use (see `warm.rs`).
    pub tenant: String,
    pub datasets: Vec<GpuDataset>,
    /// Warm objects (resident buffers, cached kernels) this run holds
    /// handles to, with how many: never evicted while held.
    pub pins: HashMap<Id, (u32, u64)>,
    deadline: Option<Instant>,
    pub(crate) worker: Option<Worker>,
    /// A device call is awaiting its reply (since then). If the run is
    /// dropped meanwhile (deadline), the GPU process may still be working
    /// for this run: it is killed, never handed to another run, and the time
    /// until then is billed.
    busy_since: Option<Instant>,
    /// Calls answered by the current GPU process for this run.
    answered: u64,
    next_id: Id,
    pub acct: Accounting,
}

#[derive(Debug, Default)]
pub(crate) struct Accounting {
    pub live_bytes: u64,
    pub peak_bytes: u64,
    pub bytes_allocated: u64,
    /// Dispatches recorded (checked against the quota).
    pub dispatches_recorded: u64,
    /// Dispatches submitted and completed (reported as usage).
    pub dispatches_done: u64,
    /// Pipelines whose creation was attempted (checked against the quota:
    /// compiling is the expensive part, successful or not).
    pub kernels_attempted: u32,
    pub kernels_built: u64,
    pub handles: u32,
    /// Invocations (workgroups × workgroup size) of dispatches recorded
    /// (checked against the quota) and of dispatches completed (usage).
    pub invocations_recorded: u64,
    pub invocations_done: u64,
    /// Bytes written, read back or copied: asked for (checked against the
    /// quota) and done (usage).
    pub transfer_reserved: u64,
    pub transferred: u64,
    /// Wall time of every call the GPU process worked on for this run,
    /// until its answer or until it was killed.
    pub gpu_time: Duration,
    /// Resident bytes this run got handles to (warm or uploaded), counted
    /// once per buffer, and those it uploaded (and paid for).
    pub resident_used: u64,
    pub resident_uploaded: u64,
    /// Kernels found in the cache (no compile).
    pub kernels_cached: u64,
}

impl GpuCtx {
    /// A context whose every call fails with `error`.
    pub fn refused(error: GpuError) -> Self {
        GpuCtx {
            state: State::Refused(error),
        }
    }

    /// No GPU for this run (`denied`).
    pub fn denied(why: impl Into<String>) -> Self {
        Self::refused(GpuError::Denied(why.into()))
    }

    pub(crate) fn bound(entry: Arc<Entry>, quota: GpuGrant, deadline: Option<Instant>) -> Self {
        GpuCtx {
            state: State::Bound(Box::new(Bound {
                entry,
                quota,
                tenant: anonymous(),
                datasets: Vec::new(),
                pins: HashMap::new(),
                deadline,
                worker: None,
                busy_since: None,
                answered: 0,
                next_id: 0,
                acct: Accounting::default(),
            })),
        }
    }

    /// Who the run is for and what it mounted. Warm state (resident
    /// buffers, cached kernels) is shared only between runs with the same
    /// `tenant`; `None` (a run with no tenant, e.g. a local one) gets a
    /// key of its own, so nothing it leaves is reused. Call before the run
    /// starts.
    pub fn with_scope(mut self, tenant: Option<&str>, datasets: Vec<GpuDataset>) -> Self {
        if let State::Bound(b) = &mut self.state {
            b.tenant = match tenant {
                Some(t) => format!("{}{t}", crate::restore::TENANT_SCOPE),
                None => anonymous(),
            };
            b.datasets = datasets;
        }
        self
    }

    /// The state of a run that may use the GPU, or the error every call of
    /// this run answers.
    pub(crate) fn get(&mut self) -> Result<&mut Bound, GpuError> {
        match &mut self.state {
            State::Refused(e) => Err(e.clone()),
            State::Bound(b) => {
                if let Some(why) = b.worker.as_ref().and_then(|w| w.health.lost()) {
                    return Err(GpuError::DeviceLost(why));
                }
                Ok(b)
            }
        }
    }

    /// The adapter entry's label and zone, when the run is bound to one.
    pub fn placement(&self) -> Option<(&str, &str)> {
        match &self.state {
            State::Bound(b) => Some((&b.entry.label, &b.entry.zone)),
            State::Refused(_) => None,
        }
    }

    /// What the run used, when it was bound to an adapter.
    pub fn usage(&self) -> Option<GpuUsage> {
        let State::Bound(b) = &self.state else {
            return None;
        };
        Some(GpuUsage {
            adapter: b.entry.label.clone(),
            zone: b.entry.zone.clone(),
            dispatches: b.acct.dispatches_done,
            kernels: b.acct.kernels_built,
            bytes_allocated: b.acct.bytes_allocated,
            peak_bytes: b.acct.peak_bytes,
            invocations: b.acct.invocations_done,
            bytes_transferred: b.acct.transferred,
            gpu_time: b.acct.gpu_time + b.busy_since.map(|t| t.elapsed()).unwrap_or_default(),
            resident_bytes_used: b.acct.resident_used,
            resident_bytes_uploaded: b.acct.resident_uploaded,
            kernels_cached: b.acct.kernels_cached,
        })
    }
}

impl Bound {
    /// How long a wait for the GPU may take: until the run's deadline.
    pub fn wait_budget(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Run `f` on this run's GPU process (taking one on first use), waiting
    /// at most until the run's deadline; the time it took is billed.
    pub async fn call<T, F>(&mut self, f: F) -> Result<T, GpuError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, GpuError> + Send + 'static,
    {
        self.timed_call(f).await.0
    }

    /// [`Bound::call`], and whether the GPU process died under it before it
    /// had answered anything for this run (and not because the deadline
    /// killed it).
    async fn timed_call<T, F>(&mut self, f: F) -> (Result<T, GpuError>, bool)
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T, GpuError> + Send + 'static,
    {
        self.await_restore().await;
        let budget = self.wait_budget();
        let worker = match &mut self.worker {
            Some(w) => w,
            w @ None => {
                self.answered = 0;
                w.insert(self.entry.take_worker(&self.tenant))
            }
        };
        self.busy_since = Some(Instant::now());
        let Timed {
            result,
            took,
            timed_out,
        } = worker.call(budget, self.acct.gpu_time, f).await;
        self.busy_since = None;
        self.acct.gpu_time += took;
        let died_fresh = self.answered == 0
            && !timed_out
            && matches!(result, Err(GpuError::DeviceLost(_)))
            && !worker.is_alive();
        if result.is_ok() {
            self.answered += 1;
        }
        (result, died_fresh)
    }

    /// One request to the GPU process. A pooled process can die while idle
    /// (OOM killer, an operator) just as a run takes it: when the run's
    /// first request finds its process dead, nothing of the run was in it,
    /// so the request is retried once on a fresh process.
    pub async fn request(&mut self, req: Request) -> Result<Value, GpuError> {
        let retry = req.clone();
        let (result, died_fresh) = self.timed_call(move |conn| conn.request(&req)).await;
        if !died_fresh {
            return result;
        }
        if let Some(w) = self.worker.take() {
            self.entry.give_back(w, false);
        }
        // Nothing warm survived with the dead process.
        self.pins.clear();
        self.call(move |conn| conn.request(&retry)).await
    }

    /// A request whose answer nobody waits for (releasing objects): ordered
    /// before this run's later calls.
    pub fn post(&mut self, req: Request) {
        if let Some(w) = &self.worker {
            w.post(move |conn| {
                let _ = conn.request(&req);
            });
        }
    }

    /// A fresh id for an object in the GPU process.
    pub fn new_id(&mut self) -> Id {
        // Never a warm id (see `proto::WARM`).
        self.next_id = self.next_id.wrapping_add(1) & !crate::proto::WARM;
        self.next_id
    }

    /// Before the run's first GPU process: wait for a restore of this
    /// tenant's warm state that is under way (`Entry::wait_restore`).
    pub async fn await_restore(&self) {
        if self.worker.is_none() {
            self.entry.wait_restore(&self.tenant, self.deadline).await;
        }
    }

    /// The run's GPU process, taking one on first use (for warm lookups,
    /// which need no request).
    pub fn worker(&mut self) -> &mut Worker {
        match &mut self.worker {
            Some(w) => w,
            w @ None => {
                self.answered = 0;
                w.insert(self.entry.take_worker(&self.tenant))
            }
        }
    }

    /// One more handle on warm object `id` of `bytes` (0 for kernels).
    pub fn pin(&mut self, id: Id, bytes: u64) {
        self.pins.entry(id).or_insert((0, bytes)).0 += 1;
    }

    /// One handle fewer on warm object `id`.
    pub fn unpin(&mut self, id: Id) {
        if let Some(p) = self.pins.get_mut(&id) {
            p.0 -= 1;
            if p.0 == 0 {
                self.pins.remove(&id);
            }
        }
    }

    /// Resident bytes this run holds handles to.
    pub fn pinned_bytes(&self) -> u64 {
        self.pins.values().map(|p| p.1).sum()
    }

    pub fn add_bytes(&mut self, size: u64) {
        let a = &mut self.acct;
        a.live_bytes = a.live_bytes.saturating_add(size);
        a.bytes_allocated = a.bytes_allocated.saturating_add(size);
        a.peak_bytes = a.peak_bytes.max(a.live_bytes);
    }

    pub fn remove_bytes(&mut self, size: u64) {
        self.acct.live_bytes = self.acct.live_bytes.saturating_sub(size);
    }

    /// One more live handle, or `out-of-quota`.
    pub fn reserve_handle(&mut self) -> Result<(), GpuError> {
        if self.acct.handles >= MAX_LIVE_HANDLES {
            return Err(GpuError::OutOfQuota(format!(
                "a run may hold at most {MAX_LIVE_HANDLES} GPU objects at once"
            )));
        }
        self.acct.handles += 1;
        Ok(())
    }

    /// The result of a device call made under a reserved handle: the handle
    /// is given back unless the call produced a resource.
    pub(crate) fn settle_handle<T>(&mut self, r: Result<T, GpuError>) -> Result<T, GpuError> {
        if r.is_err() {
            self.release_handle();
        }
        r
    }

    pub fn release_handle(&mut self) {
        self.acct.handles = self.acct.handles.saturating_sub(1);
    }
}

/// A warm-state key no other run shares.
fn anonymous() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("anonymous:{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Drop for GpuCtx {
    fn drop(&mut self) {
        if let State::Bound(b) = &mut self.state {
            b.entry.active.fetch_sub(1, Ordering::Relaxed);
            if let Some(w) = b.worker.take() {
                b.entry.give_back(w, b.busy_since.is_none());
            }
        }
    }
}
