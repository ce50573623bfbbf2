//! The adapter registry: one wgpu `Instance` per process, the labelled
//! adapter entries of the host configuration, and per entry a small pool of
//! devices, each owned by its own worker thread.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use kasbah_policy::GpuGrant;

use crate::bindings::kasbah::gpu::compute::GpuError;
use crate::config::{AdapterConfig, GpuConfig};
use crate::ctx::GpuCtx;

/// Stack of a device worker thread. Parsing and validating WGSL recurses;
/// naga bounds the depth, and this leaves it ample room whatever the
/// embedding runtime's thread stack size is.
const WORKER_STACK_BYTES: usize = 16 << 20;

/// The process-wide wgpu instance, created on first use (tens to hundreds of
/// milliseconds) with every backend compiled in. See [`instance_with`].
pub fn instance() -> &'static wgpu::Instance {
    instance_with(wgpu::Backends::all())
}

/// The process-wide wgpu instance. The first call creates it with
/// `backends` (a registry asks for the backends its entries name, so a host
/// configured for Vulkan never probes GL/EGL); later calls get that same
/// instance whatever they ask for. `WGPU_BACKEND` and the other `WGPU_*`
/// variables still apply. Debug and validation-layer flags are off whatever
/// the build profile: the validation that matters to isolation is
/// wgpu-core's, which is always on.
pub fn instance_with(backends: wgpu::Backends) -> &'static wgpu::Instance {
    static INSTANCE: OnceLock<wgpu::Instance> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL;
        wgpu::Instance::new(desc.with_env())
    })
}

/// The backends a configuration needs: those its entries name, or all when
/// an entry leaves the backend open.
fn configured_backends(config: &GpuConfig) -> wgpu::Backends {
    let mut out = wgpu::Backends::empty();
    for a in &config.adapters {
        match a.backend.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None => return wgpu::Backends::all(),
            Some("vulkan") => out |= wgpu::Backends::VULKAN,
            Some("metal") => out |= wgpu::Backends::METAL,
            Some("dx12") => out |= wgpu::Backends::DX12,
            Some("gl") => out |= wgpu::Backends::GL,
            // Matches nothing; the entry will say so.
            Some(_) => {}
        }
    }
    out
}

/// Device limits the host asks for on an adapter: WebGPU's defaults, raised
/// for the compute-relevant limits to what the adapter supports (and to the
/// entry's configured buffer cap), and never above what the adapter supports.
pub fn device_limits(adapter: &wgpu::Limits, max_buffer_bytes: Option<u64>) -> wgpu::Limits {
    let mut want = wgpu::Limits::default();
    let cap = max_buffer_bytes.unwrap_or(u64::MAX);
    want.max_buffer_size = adapter.max_buffer_size.min(cap);
    want.max_storage_buffer_binding_size = adapter.max_storage_buffer_binding_size.min(cap);
    want.max_compute_workgroup_storage_size = adapter.max_compute_workgroup_storage_size;
    want.max_compute_invocations_per_workgroup = adapter.max_compute_invocations_per_workgroup;
    want.max_compute_workgroup_size_x = adapter.max_compute_workgroup_size_x;
    want.max_compute_workgroup_size_y = adapter.max_compute_workgroup_size_y;
    want.max_compute_workgroup_size_z = adapter.max_compute_workgroup_size_z;
    want.max_storage_buffers_per_shader_stage = adapter.max_storage_buffers_per_shader_stage;
    want.or_worse_values_from(adapter)
}

/// Everything about one adapter entry that runs share.
pub(crate) struct Entry {
    pub label: String,
    pub zone: String,
    /// The adapter, or why it is not usable.
    pub adapter: Result<wgpu::Adapter, String>,
    pub info: Option<wgpu::AdapterInfo>,
    /// Limits every device of this entry is created with.
    pub limits: wgpu::Limits,
    idle: Mutex<Vec<Worker>>,
    max_idle: usize,
    /// Runs currently bound to this entry.
    pub active: AtomicUsize,
    pub stats: EntryCounters,
}

#[derive(Default)]
pub(crate) struct EntryCounters {
    pub devices_created: AtomicU64,
    pub devices_reused: AtomicU64,
    pub devices_discarded: AtomicU64,
    pub runs_bound: AtomicU64,
}

/// A snapshot of one adapter entry, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterStatus {
    pub label: String,
    pub zone: String,
    /// `Some(name)` when the entry matched an adapter.
    pub adapter_name: Option<String>,
    pub backend: Option<String>,
    /// Why the entry is unusable, when it is.
    pub unavailable: Option<String>,
    /// Runs bound to it right now.
    pub active_runs: usize,
    /// Healthy devices waiting for the next run.
    pub idle_devices: usize,
    pub devices_created: u64,
    pub devices_reused: u64,
    /// Devices thrown away instead of reused (lost, hung, an uncaptured
    /// error, or the run ended while GPU work was still in flight).
    pub devices_discarded: u64,
    pub runs_bound: u64,
}

/// The node's GPU adapters, by label and zone. Cheap to clone.
#[derive(Clone)]
pub struct GpuRegistry {
    entries: Arc<[Arc<Entry>]>,
}

impl std::fmt::Debug for GpuRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.status()).finish()
    }
}

impl GpuRegistry {
    /// Resolve each configured entry to an adapter. Never fails: an entry
    /// that matches no adapter (or no Vulkan/GL driver at all) is kept as
    /// unavailable, and runs bound to its zone get `unavailable`. With no
    /// entries, no wgpu instance is created at all.
    pub fn new(config: &GpuConfig) -> Self {
        let backends = configured_backends(config);
        let adapters = if backends.is_empty() {
            Vec::new()
        } else {
            pollster::block_on(instance_with(backends).enumerate_adapters(backends))
        };
        let entries = config
            .adapters
            .iter()
            .map(|c| Arc::new(resolve(c, &adapters, config.max_idle_devices)))
            .collect::<Vec<_>>();
        for e in &entries {
            match &e.adapter {
                Ok(_) => tracing::info!(
                    label = %e.label, zone = %e.zone,
                    adapter = e.info.as_ref().map(|i| i.name.as_str()).unwrap_or(""),
                    "GPU adapter entry ready"
                ),
                Err(why) => {
                    tracing::warn!(label = %e.label, zone = %e.zone, "GPU adapter entry unavailable: {why}")
                }
            }
        }
        GpuRegistry {
            entries: entries.into(),
        }
    }

    /// A registry with no adapters (every GPU call: `denied` or `unavailable`).
    pub fn empty() -> Self {
        GpuRegistry {
            entries: Arc::new([]),
        }
    }

    pub fn status(&self) -> Vec<AdapterStatus> {
        self.entries
            .iter()
            .map(|e| AdapterStatus {
                label: e.label.clone(),
                zone: e.zone.clone(),
                adapter_name: e.info.as_ref().map(|i| i.name.clone()),
                backend: e.info.as_ref().map(|i| i.backend.to_str().to_string()),
                unavailable: e.adapter.as_ref().err().cloned(),
                active_runs: e.active.load(Ordering::Relaxed),
                idle_devices: e.idle.lock().unwrap_or_else(PoisonError::into_inner).len(),
                devices_created: e.stats.devices_created.load(Ordering::Relaxed),
                devices_reused: e.stats.devices_reused.load(Ordering::Relaxed),
                devices_discarded: e.stats.devices_discarded.load(Ordering::Relaxed),
                runs_bound: e.stats.runs_bound.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Bind a run to an adapter entry in a zone `grant` allows (the least
    /// busy usable one), and return the run's GPU context. No device is
    /// taken until the guest's first GPU call. `deadline` bounds every wait
    /// for the GPU during the run.
    pub fn bind(&self, grant: Option<&GpuGrant>, deadline: Option<Instant>) -> GpuCtx {
        let Some(grant) = grant else {
            return GpuCtx::refused(GpuError::Denied(
                "this tenant's policy grants no GPU (no [gpu] section)".into(),
            ));
        };
        if self.entries.is_empty() {
            return GpuCtx::refused(GpuError::Unavailable("this host has no GPU adapter".into()));
        }
        let in_zone: Vec<&Arc<Entry>> = self
            .entries
            .iter()
            .filter(|e| grant.zones.contains(&e.zone))
            .collect();
        if in_zone.is_empty() {
            let zones: Vec<&str> = grant.zones.iter().map(String::as_str).collect();
            return GpuCtx::refused(GpuError::Denied(format!(
                "no GPU adapter of this host is in a zone the policy allows ({})",
                zones.join(", ")
            )));
        }
        let usable = in_zone
            .iter()
            .filter(|e| e.adapter.is_ok())
            .min_by_key(|e| e.active.load(Ordering::Relaxed));
        match usable {
            Some(entry) => {
                entry.active.fetch_add(1, Ordering::Relaxed);
                entry.stats.runs_bound.fetch_add(1, Ordering::Relaxed);
                GpuCtx::bound(Arc::clone(entry), grant.clone(), deadline)
            }
            None => {
                let why: Vec<String> = in_zone
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e.label,
                            e.adapter.as_ref().err().map(String::as_str).unwrap_or("")
                        )
                    })
                    .collect();
                GpuCtx::refused(GpuError::Unavailable(format!(
                    "no usable GPU adapter in the allowed zones ({})",
                    why.join("; ")
                )))
            }
        }
    }
}

impl GpuRegistry {
    /// Bind a run to the adapter entry `label` that a placement step chose.
    /// Still checked here: the grant must exist and allow the entry's zone
    /// (else `denied`), and the entry must be usable (else `unavailable`).
    pub fn bind_entry(
        &self,
        label: &str,
        grant: Option<&GpuGrant>,
        deadline: Option<Instant>,
    ) -> GpuCtx {
        let Some(grant) = grant else {
            return GpuCtx::refused(GpuError::Denied(
                "this tenant's policy grants no GPU (no [gpu] section)".into(),
            ));
        };
        let Some(entry) = self.entries.iter().find(|e| e.label == label) else {
            return GpuCtx::refused(GpuError::Unavailable(format!(
                "this host has no GPU adapter entry {label:?}"
            )));
        };
        if !grant.zones.contains(&entry.zone) {
            return GpuCtx::refused(GpuError::Denied(format!(
                "GPU adapter {label} is in zone {}, which the policy does not allow",
                entry.zone
            )));
        }
        if let Err(why) = &entry.adapter {
            return GpuCtx::refused(GpuError::Unavailable(format!("{label}: {why}")));
        }
        entry.active.fetch_add(1, Ordering::Relaxed);
        entry.stats.runs_bound.fetch_add(1, Ordering::Relaxed);
        GpuCtx::bound(Arc::clone(entry), grant.clone(), deadline)
    }
}

fn resolve(c: &AdapterConfig, adapters: &[wgpu::Adapter], max_idle: usize) -> Entry {
    let found = adapters.iter().find(|a| {
        let info = a.get_info();
        c.matches(info.backend, &info.name)
    });
    let (adapter, info, limits) = match found {
        None => (
            Err(format!(
                "no adapter matches backend={} name={} (found: {})",
                c.backend.as_deref().unwrap_or("any"),
                c.name.as_deref().unwrap_or("any"),
                describe(adapters)
            )),
            None,
            wgpu::Limits::downlevel_defaults(),
        ),
        Some(a) => {
            let info = a.get_info();
            let caps = a.get_downlevel_capabilities();
            let limits = device_limits(&a.limits(), c.max_buffer_bytes);
            let adapter = if caps.flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS) {
                Ok(a.clone())
            } else {
                Err(format!(
                    "adapter {:?} cannot run compute shaders",
                    info.name
                ))
            };
            (adapter, Some(info), limits)
        }
    };
    Entry {
        label: c.label.clone(),
        zone: c.zone.clone(),
        adapter,
        info,
        limits,
        idle: Mutex::new(Vec::new()),
        max_idle,
        active: AtomicUsize::new(0),
        stats: EntryCounters::default(),
    }
}

fn describe(adapters: &[wgpu::Adapter]) -> String {
    if adapters.is_empty() {
        return "none".into();
    }
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} on {}", i.name, i.backend.to_str())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Entry {
    /// An idle healthy device of this entry, or a new one.
    pub(crate) fn take_worker(self: &Arc<Self>) -> Worker {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match idle {
                // Lost while it waited in the pool.
                Some(w) if !w.health.is_healthy() => {
                    self.stats.devices_discarded.fetch_add(1, Ordering::Relaxed);
                }
                Some(w) => {
                    self.stats.devices_reused.fetch_add(1, Ordering::Relaxed);
                    return w;
                }
                None => break,
            }
        }
        self.stats.devices_created.fetch_add(1, Ordering::Relaxed);
        Worker::spawn(self)
    }

    /// Give a device back after a run. Only a device that is healthy and
    /// idle is kept; anything else is dropped (its thread finishes whatever
    /// is still queued, then drops the device).
    pub(crate) fn give_back(&self, worker: Worker, reusable: bool) {
        let healthy = reusable && worker.health.is_healthy();
        if healthy {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                idle.push(worker);
                return;
            }
        } else {
            self.stats.devices_discarded.fetch_add(1, Ordering::Relaxed);
        }
        drop(worker);
    }
}

/// What a worker knows about its device's health. Written by wgpu callbacks
/// (device lost, uncaptured error) and by the host (a wait that timed out, a
/// panic in a job).
#[derive(Default)]
pub(crate) struct Health {
    lost: AtomicBool,
    dirty: AtomicBool,
    why: Mutex<Option<String>>,
}

impl Health {
    fn is_healthy(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && !self.dirty.load(Ordering::SeqCst)
    }

    /// The device must not be used again.
    pub(crate) fn mark_lost(&self, why: String) {
        self.lost.store(true, Ordering::SeqCst);
        self.note(why);
    }

    /// The device works but must not be handed to another run.
    pub(crate) fn mark_dirty(&self, why: String) {
        self.dirty.store(true, Ordering::SeqCst);
        self.note(why);
    }

    fn note(&self, why: String) {
        let mut w = self.why.lock().unwrap_or_else(PoisonError::into_inner);
        if w.is_none() {
            *w = Some(why);
        }
    }

    /// `Some(reason)` once the device is lost.
    pub(crate) fn lost(&self) -> Option<String> {
        if self.lost.load(Ordering::SeqCst) {
            Some(
                self.why
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
                    .unwrap_or_else(|| "device lost".into()),
            )
        } else {
            None
        }
    }
}

/// A device and its queue, living on the worker thread.
pub(crate) struct DeviceCtx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub health: Arc<Health>,
}

type Job = Box<dyn FnOnce(Result<&DeviceCtx, &str>) + Send>;

/// A device owned by one thread. Every wgpu call of a run goes through
/// `call`, so error scopes (thread-local in wgpu) always open and close on
/// the same thread, and the async executor never blocks on the GPU.
pub(crate) struct Worker {
    tx: mpsc::Sender<Job>,
    pub health: Arc<Health>,
}

/// A job could not run or did not finish: a host fault, not the guest's.
#[derive(Debug)]
pub(crate) struct WorkerGone(pub &'static str);

impl Worker {
    fn spawn(entry: &Arc<Entry>) -> Worker {
        let (tx, rx) = mpsc::channel::<Job>();
        let health = Arc::new(Health::default());
        let adapter = entry.adapter.clone();
        let limits = entry.limits.clone();
        let label = entry.label.clone();
        let thread_health = Arc::clone(&health);
        let spawned = std::thread::Builder::new()
            .name(format!("kasbah-gpu-{label}"))
            .stack_size(WORKER_STACK_BYTES)
            .spawn(move || {
                let device = adapter.and_then(|a| open_device(&a, &limits, &label, &thread_health));
                if let Err(e) = &device {
                    thread_health.mark_lost(e.clone());
                }
                while let Ok(job) = rx.recv() {
                    let arg = match &device {
                        Ok(d) => Ok(d),
                        Err(e) => Err(e.as_str()),
                    };
                    // A panic inside wgpu (or this crate) ends the job: the
                    // caller sees a dropped reply and traps; the device is
                    // never handed to another run.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(arg))).is_err() {
                        thread_health.mark_lost("a GPU host call panicked".into());
                    }
                }
            });
        if let Err(e) = spawned {
            health.mark_lost(format!("cannot start a GPU worker thread: {e}"));
        }
        Worker { tx, health }
    }

    /// Run `f` on the device thread and wait for its result without
    /// blocking the caller's thread.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<Result<T, GpuError>, WorkerGone>
    where
        T: Send + 'static,
        F: FnOnce(&DeviceCtx) -> Result<T, GpuError> + Send + 'static,
    {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |device| {
            let r = match device {
                Ok(d) => f(d),
                Err(e) => Err(GpuError::Unavailable(format!(
                    "cannot open the GPU device: {e}"
                ))),
            };
            let _ = reply.send(r);
        });
        self.tx
            .send(job)
            .map_err(|_| WorkerGone("the GPU worker thread is gone"))?;
        result
            .await
            .map_err(|_| WorkerGone("a GPU host call panicked"))
    }
}

fn open_device(
    adapter: &wgpu::Adapter,
    limits: &wgpu::Limits,
    label: &str,
    health: &Arc<Health>,
) -> Result<DeviceCtx, String> {
    let desc = wgpu::DeviceDescriptor {
        label: Some(label),
        // Compute only, WebGPU semantics: no native-only or experimental
        // features, so nothing can turn bounds checks or zero-init off.
        required_features: wgpu::Features::empty(),
        required_limits: limits.clone(),
        ..Default::default()
    };
    let (device, queue) =
        pollster::block_on(adapter.request_device(&desc)).map_err(|e| e.to_string())?;
    // wgpu's default handler panics. Every call is wrapped in error scopes,
    // so reaching this means something escaped them: keep the message and
    // never hand this device to another run.
    let h = Arc::clone(health);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        tracing::warn!("uncaptured wgpu error: {e}");
        h.mark_dirty(format!("uncaptured GPU error: {e}"));
    }));
    let h = Arc::clone(health);
    device.set_device_lost_callback(move |reason, message| {
        h.mark_lost(format!("device lost ({reason:?}): {message}"));
    });
    Ok(DeviceCtx {
        device,
        queue,
        health: Arc::clone(health),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_limits_never_exceed_the_adapter_and_honour_the_buffer_cap() {
        for adapter in [
            wgpu::Limits::downlevel_defaults(),
            wgpu::Limits::default(),
            wgpu::Limits {
                max_buffer_size: 1 << 40,
                max_storage_buffer_binding_size: 1 << 31,
                max_compute_workgroup_storage_size: 1 << 16,
                ..wgpu::Limits::default()
            },
        ] {
            let want = device_limits(&adapter, None);
            assert!(want.check_limits(&adapter), "{want:?} exceeds {adapter:?}");
            let capped = device_limits(&adapter, Some(1 << 20));
            assert!(capped.max_buffer_size <= 1 << 20);
            assert!(capped.max_storage_buffer_binding_size <= 1 << 20);
            assert!(capped.check_limits(&adapter));
        }
    }

    #[test]
    fn binding_follows_the_grant_and_the_zones() {
        let empty = GpuRegistry::empty();
        let mut ctx = empty.bind(None, None);
        assert!(matches!(ctx.get(), Err(GpuError::Denied(_))));
        let grant = GpuGrant::in_zones(["zone-a"]);
        let mut ctx = empty.bind(Some(&grant), None);
        assert!(matches!(ctx.get(), Err(GpuError::Unavailable(_))));
        assert_eq!(ctx.usage(), None);
    }
}
