//! The adapter registry: the labelled adapter entries of the host
//! configuration, resolved against what a GPU process's probe reports, and
//! per entry a small pool of GPU processes (one device each).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use kasbah_policy::GpuGrant;

use crate::bindings::kasbah::gpu::compute::GpuError;
use crate::config::{AdapterConfig, DEFAULT_RESIDENT_BYTES, GpuConfig};
use crate::ctx::GpuCtx;
use crate::process::{DeviceSpec, Worker};
use crate::proto::{ProbedAdapter, Request};
use crate::restore::Ledger;
use crate::warm::Totals;

/// The backend a probe needs: the one every entry names, or all when they
/// differ or one leaves it open (a host configured for Vulkan never probes
/// GL/EGL).
fn configured_backend(config: &GpuConfig) -> Option<String> {
    let mut named = config
        .adapters
        .iter()
        .map(|a| a.backend.as_deref().map(str::to_ascii_lowercase));
    let first = named.next()??;
    named
        .all(|b| b.as_deref() == Some(first.as_str()))
        .then_some(first)
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
    /// How to open a device of this entry, or why it is not usable.
    pub adapter: Result<DeviceSpec, String>,
    pub info: Option<ProbedAdapter>,
    /// Limits every device of this entry is created with.
    pub limits: wgpu::Limits,
    idle: Mutex<Vec<Worker>>,
    max_idle: usize,
    /// Runs currently bound to this entry.
    pub active: AtomicUsize,
    pub stats: EntryCounters,
    /// Resident bytes held by this entry's GPU processes, and the budget.
    pub totals: Arc<Totals>,
    pub resident_budget: u64,
    /// What each tenant last had resident here (`restore.rs`).
    ledger: Mutex<Ledger>,
    /// Warm-state scopes being restored right now, and a wake-up for the
    /// runs of those tenants waiting for them (`Entry::wait_restore`).
    restoring: Mutex<std::collections::HashSet<String>>,
    restored: tokio::sync::Notify,
}

#[derive(Default)]
pub(crate) struct EntryCounters {
    pub devices_created: AtomicU64,
    pub devices_reused: AtomicU64,
    pub devices_discarded: AtomicU64,
    pub runs_bound: AtomicU64,
    /// Pooled processes handed to a run of another tenant than the one
    /// whose warm state they held (which was dropped first).
    pub warm_purged: AtomicU64,
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
    /// Resident bytes (dataset-backed buffers) kept by this entry's GPU
    /// processes, all tenants together.
    pub resident_bytes: u64,
    /// Pooled processes whose warm state was dropped because a run of
    /// another tenant took them.
    pub warm_purged: u64,
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
        let probed = if config.adapters.is_empty() {
            Ok(None)
        } else {
            crate::process::probe(configured_backend(config).as_deref()).map(Some)
        };
        let entries = config
            .adapters
            .iter()
            .map(|c| {
                Arc::new(match &probed {
                    Ok(Some(p)) => resolve(c, &p.program, &p.adapters, config.max_idle_devices),
                    Ok(None) | Err(_) => unusable(
                        c,
                        probed.as_ref().err().cloned().unwrap_or_default(),
                        config.max_idle_devices,
                    ),
                })
            })
            .collect::<Vec<_>>();
        for e in &entries {
            match &e.adapter {
                Ok(_) => tracing::info!(
                    label = %e.label, zone = %e.zone,
                    adapter = e.info.as_ref().map(|i| i.key.name.as_str()).unwrap_or(""),
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

    pub(crate) fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
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
                adapter_name: e.info.as_ref().map(|i| i.key.name.clone()),
                backend: e.info.as_ref().map(|i| i.key.backend.clone()),
                unavailable: e.adapter.as_ref().err().cloned(),
                active_runs: e.active.load(Ordering::Relaxed),
                idle_devices: e.idle.lock().unwrap_or_else(PoisonError::into_inner).len(),
                devices_created: e.stats.devices_created.load(Ordering::Relaxed),
                devices_reused: e.stats.devices_reused.load(Ordering::Relaxed),
                devices_discarded: e.stats.devices_discarded.load(Ordering::Relaxed),
                runs_bound: e.stats.runs_bound.load(Ordering::Relaxed),
                resident_bytes: e.totals.get("").0,
                warm_purged: e.stats.warm_purged.load(Ordering::Relaxed),
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

fn unusable(c: &AdapterConfig, why: String, max_idle: usize) -> Entry {
    Entry {
        label: c.label.clone(),
        zone: c.zone.clone(),
        adapter: Err(why),
        info: None,
        limits: wgpu::Limits::downlevel_defaults(),
        idle: Mutex::new(Vec::new()),
        max_idle,
        active: AtomicUsize::new(0),
        stats: EntryCounters::default(),
        totals: Arc::default(),
        resident_budget: c.max_resident_bytes.unwrap_or(DEFAULT_RESIDENT_BYTES),
        ledger: Mutex::default(),
        restoring: Mutex::default(),
        restored: tokio::sync::Notify::new(),
    }
}

fn resolve(
    c: &AdapterConfig,
    program: &std::path::Path,
    adapters: &[ProbedAdapter],
    max_idle: usize,
) -> Entry {
    let Some(found) = adapters
        .iter()
        .find(|a| c.matches(&a.key.backend, &a.key.name))
    else {
        let why = format!(
            "no adapter matches backend={} name={} (found: {})",
            c.backend.as_deref().unwrap_or("any"),
            c.name.as_deref().unwrap_or("any"),
            describe(adapters)
        );
        return unusable(c, why, max_idle);
    };
    let limits = device_limits(&found.limits, c.max_buffer_bytes);
    let adapter = if found.compute {
        Ok(DeviceSpec {
            program: program.to_path_buf(),
            label: c.label.clone(),
            adapter: found.key.clone(),
            limits: limits.clone(),
        })
    } else {
        Err(format!(
            "adapter {:?} cannot run compute shaders",
            found.key.name
        ))
    };
    Entry {
        adapter,
        info: Some(found.clone()),
        limits,
        ..unusable(c, String::new(), max_idle)
    }
}

fn describe(adapters: &[ProbedAdapter]) -> String {
    if adapters.is_empty() {
        return "none".into();
    }
    adapters
        .iter()
        .map(|a| format!("{} on {}", a.key.name, a.key.backend))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Entry {
    pub(crate) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn max_idle(&self) -> usize {
        self.max_idle
    }

    /// An idle healthy GPU process of this entry for a run of `tenant`, or a
    /// new one. Affinity: a process holding `tenant`'s warm state first,
    /// then one holding nobody's, then the one idle longest. A process that
    /// held another tenant's warm state has it dropped (`Purge`, ordered
    /// before the run's first request) and forgotten before it is returned:
    /// nothing of the previous tenant is reachable, or even present, while
    /// this run uses it.
    pub(crate) fn take_worker(self: &Arc<Self>, tenant: &str) -> Worker {
        let mut w = self.pick_worker(tenant);
        if w.warm.adopt(tenant) {
            self.stats.warm_purged.fetch_add(1, Ordering::Relaxed);
            w.post(|conn| {
                let _ = conn.request(&Request::Purge);
            });
        }
        w
    }

    fn pick_worker(self: &Arc<Self>, tenant: &str) -> Worker {
        loop {
            let idle = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let pick = idle
                    .iter()
                    .rposition(|w| w.warm.tenant() == Some(tenant))
                    .or_else(|| idle.iter().rposition(|w| w.warm.tenant().is_none()))
                    .or_else(|| (!idle.is_empty()).then_some(0));
                pick.map(|i| idle.remove(i))
            };
            match idle {
                // Lost or dead while it waited in the pool.
                Some(w) if !w.is_alive() => {
                    self.stats.devices_discarded.fetch_add(1, Ordering::Relaxed);
                }
                Some(w) => {
                    self.stats.devices_reused.fetch_add(1, Ordering::Relaxed);
                    return w;
                }
                None => break,
            }
        }
        self.new_worker()
    }

    /// Mark `scope`'s restore as under way (false: it already is); runs of
    /// that tenant wait for it before taking a GPU process.
    pub(crate) fn begin_restore(&self, scope: &str) -> bool {
        self.restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(scope.to_string())
    }

    pub(crate) fn end_restore(&self, scope: &str) {
        self.restoring
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(scope);
        self.restored.notify_waiters();
    }

    /// Before a run of `scope` takes its GPU process: if that tenant's warm
    /// state is being restored (after a platform restart), wait for it (at
    /// most until `deadline`), so the run finds it instead of uploading a
    /// second copy.
    pub(crate) async fn wait_restore(&self, scope: &str, deadline: Option<Instant>) {
        loop {
            let notified = self.restored.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let busy = self
                .restoring
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(scope);
            if !busy {
                return;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d.into(), notified).await.is_err() {
                        return;
                    }
                }
                None => notified.await,
            }
        }
    }

    /// A new GPU process for `scope`'s warm state (the restore at start:
    /// never one of the pool's, which hold other tenants' state).
    pub(crate) fn fresh_worker(&self, scope: &str) -> Worker {
        let mut w = self.new_worker();
        w.warm.adopt(scope);
        w
    }

    fn new_worker(&self) -> Worker {
        self.stats.devices_created.fetch_add(1, Ordering::Relaxed);
        match &self.adapter {
            Ok(spec) => Worker::spawn(spec.clone(), Arc::clone(&self.totals)),
            Err(why) => Worker::unavailable(why.clone()),
        }
    }

    /// Evict the least recently used resident buffer of an idle pooled
    /// process (of `tenant` only, when given). False when there is none.
    pub(crate) fn evict_idle(&self, tenant: Option<&str>) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = idle
            .iter()
            .enumerate()
            .filter(|(_, w)| tenant.is_none_or(|t| w.warm.tenant() == Some(t)))
            .filter_map(|(i, w)| w.warm.oldest_buffer(&|_| false).map(|t| (i, t)))
            .min_by_key(|(_, t)| *t)
            .map(|(i, _)| i);
        let Some(w) = victim.and_then(|i| idle.get_mut(i)) else {
            return false;
        };
        match w.warm.evict_lru_buffer(&|_| false) {
            Some((id, _)) => {
                w.post(move |conn| {
                    let _ = conn.request(&Request::Evict { ids: vec![id] });
                });
                true
            }
            None => false,
        }
    }

    /// Give a GPU process back after a run. One that is healthy and idle is
    /// reset (every object of the run dropped) and kept for the next run;
    /// any other is killed at once, and a fresh one is started in the
    /// background in its place so the next run does not wait for it.
    pub(crate) fn give_back(&self, worker: Worker, reusable: bool) {
        if reusable && worker.health.is_healthy() && worker.restore_priority() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.max_idle {
                if let Some(tenant) = worker.warm.tenant() {
                    self.ledger().record(
                        tenant,
                        worker.warm.buffers_by_age(),
                        worker.warm.kernel_sources_by_age(),
                    );
                }
                worker.reset();
                idle.push(worker);
                return;
            }
            drop(idle);
            worker.kill("not needed any more");
            return;
        }
        self.stats.devices_discarded.fetch_add(1, Ordering::Relaxed);
        worker.kill("discarded after its run");
        drop(worker);
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle && self.adapter.is_ok() {
            idle.push(self.new_worker());
        }
    }
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
