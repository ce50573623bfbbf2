//! Warm GPU state, the platform's record of it: which dataset-backed
//! buffers (resident weights) and compiled kernels a GPU process holds,
//! for which tenant, and the resident-byte budgets they count against.
//!
//! The GPU process only stores the objects (`child.rs`, ids with
//! [`WARM`]); every decision is made here, in the platform, which sees
//! every request: what is cached (keys), what is evicted (LRU), and when a
//! process's warm state is dropped (before it serves another tenant:
//! [`Warm::adopt`]). A process holds the warm state of **one tenant at a
//! time**; keys therefore need no tenant field inside one process, and the
//! adapter is implied by the pool the process belongs to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::proto::{Id, WARM};

/// Cached kernels one GPU process keeps (least recently used evicted).
pub const MAX_CACHED_KERNELS: usize = 256;
/// A cached kernel's WGSL is kept (for the restore after a restart,
/// `restore.rs`) only if it is at most this long ...
pub const MAX_KEPT_SOURCE_BYTES: usize = 64 << 10;
/// ... and while the kept sources of the process stay within this.
pub const MAX_KEPT_SOURCES_BYTES: usize = 4 << 20;

/// A dataset-backed buffer: a byte range of a dataset, by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ResidentKey {
    /// The dataset's digest (`sha256:…`), or the identity of its file
    /// where the platform gave no digest.
    pub dataset: String,
    pub offset: u64,
    pub size: u64,
}

/// A compiled kernel: sha256 of the WGSL source and the entry point (the
/// layout is the automatic one, a function of both; the workgroup storage
/// limit is the adapter entry's, the same for every process of the pool).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct KernelKey {
    pub code: [u8; 32],
    pub entry_point: String,
}

#[derive(Debug, Clone)]
pub(crate) struct Resident {
    pub id: Id,
    pub size: u64,
    last_used: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct CachedKernel {
    pub id: Id,
    pub workgroup_size: [u32; 3],
    pub writable: Vec<(u32, u32)>,
    /// Its WGSL, when kept (see [`MAX_KEPT_SOURCE_BYTES`]).
    pub source: Option<Arc<str>>,
    last_used: u64,
}

/// Resident bytes of one adapter entry, over all its GPU processes.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    inner: Mutex<TotalsInner>,
}

#[derive(Debug, Default)]
struct TotalsInner {
    total: u64,
    per_tenant: HashMap<String, u64>,
}

impl Totals {
    /// `(adapter total, this tenant's total)`.
    pub fn get(&self, tenant: &str) -> (u64, u64) {
        let t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        (t.total, t.per_tenant.get(tenant).copied().unwrap_or(0))
    }

    /// Count `bytes` more for `tenant` if that keeps the adapter within
    /// `adapter_max` and the tenant within `tenant_max`: `Err((adapter
    /// over, tenant over))` otherwise. Checked and added under one lock.
    pub fn try_add(
        &self,
        tenant: &str,
        bytes: u64,
        adapter_max: u64,
        tenant_max: u64,
    ) -> Result<(), (bool, bool)> {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = t.per_tenant.get(tenant).copied().unwrap_or(0);
        let over_adapter = t.total.saturating_add(bytes) > adapter_max;
        let over_tenant = mine.saturating_add(bytes) > tenant_max;
        if over_adapter || over_tenant {
            return Err((over_adapter, over_tenant));
        }
        t.total += bytes;
        *t.per_tenant.entry(tenant.to_string()).or_default() += bytes;
        Ok(())
    }

    fn sub(&self, tenant: &str, bytes: u64) {
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        t.total = t.total.saturating_sub(bytes);
        if let Some(n) = t.per_tenant.get_mut(tenant) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                t.per_tenant.remove(tenant);
            }
        }
    }
}

/// The warm state of one GPU process. Dropping it (the process is gone)
/// gives its bytes back to the adapter's totals.
pub(crate) struct Warm {
    totals: Arc<Totals>,
    /// Whose state this process holds; `None` until a run uses it.
    tenant: Option<String>,
    buffers: HashMap<ResidentKey, Resident>,
    kernels: HashMap<KernelKey, CachedKernel>,
    /// Bytes of WGSL kept by `kernels`.
    kept_source: usize,
    next_id: Id,
    clock: u64,
}

impl Warm {
    pub fn new(totals: Arc<Totals>) -> Self {
        Warm {
            totals,
            tenant: None,
            buffers: HashMap::new(),
            kernels: HashMap::new(),
            kept_source: 0,
            next_id: WARM,
            clock: 0,
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Make this process `tenant`'s. Returns true when it held another
    /// tenant's state, which is forgotten here and must be dropped in the
    /// process (`Request::Purge`) before the run's first request.
    pub fn adopt(&mut self, tenant: &str) -> bool {
        if self.tenant.as_deref() == Some(tenant) {
            return false;
        }
        let had = self.clear();
        self.tenant = Some(tenant.to_string());
        had
    }

    /// Forget everything; true when there was something.
    fn clear(&mut self) -> bool {
        let bytes: u64 = self.buffers.values().map(|r| r.size).sum();
        if let Some(t) = &self.tenant {
            self.totals.sub(t, bytes);
        }
        let had = !self.buffers.is_empty() || !self.kernels.is_empty();
        self.buffers.clear();
        self.kernels.clear();
        self.kept_source = 0;
        had
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn fresh_id(&mut self) -> Id {
        self.next_id = WARM | (self.next_id.wrapping_add(1) & !WARM);
        self.next_id
    }

    /// The resident ranges, least recently used first.
    pub fn buffers_by_age(&self) -> Vec<(ResidentKey, u64)> {
        let mut v: Vec<(&ResidentKey, &Resident)> = self.buffers.iter().collect();
        v.sort_by_key(|(_, r)| r.last_used);
        v.into_iter().map(|(k, r)| (k.clone(), r.size)).collect()
    }

    #[cfg(test)]
    pub fn kernels(&self) -> usize {
        self.kernels.len()
    }

    /// A resident buffer, marked used.
    pub fn buffer(&mut self, key: &ResidentKey) -> Option<Resident> {
        let now = self.tick();
        let r = self.buffers.get_mut(key)?;
        r.last_used = now;
        Some(r.clone())
    }

    /// A new resident buffer's id. Its bytes must already be counted
    /// ([`Totals::try_add`] for this tenant); from now on they are given
    /// back when it is evicted, forgotten or the process goes. Call
    /// [`Warm::forget_buffer`] if the upload fails.
    pub fn insert_buffer(&mut self, key: ResidentKey, size: u64) -> Id {
        let id = self.fresh_id();
        let last_used = self.tick();
        self.buffers.insert(
            key,
            Resident {
                id,
                size,
                last_used,
            },
        );
        id
    }

    pub fn forget_buffer(&mut self, key: &ResidentKey) {
        if let Some(r) = self.buffers.remove(key)
            && let Some(t) = &self.tenant
        {
            self.totals.sub(t, r.size);
        }
    }

    /// The least recently used resident buffer whose id `keep` does not
    /// hold, removed from the record: `(id, size, last_used)`.
    pub fn evict_lru_buffer(&mut self, keep: &dyn Fn(Id) -> bool) -> Option<(Id, u64)> {
        let key = self
            .buffers
            .iter()
            .filter(|(_, r)| !keep(r.id))
            .min_by_key(|(_, r)| r.last_used)
            .map(|(k, _)| k.clone())?;
        let r = self.buffers.remove(&key)?;
        if let Some(t) = &self.tenant {
            self.totals.sub(t, r.size);
        }
        Some((r.id, r.size))
    }

    /// When the least recently used buffer was used (for choosing a victim
    /// among processes), if there is one that `keep` does not hold.
    pub fn oldest_buffer(&self, keep: &dyn Fn(Id) -> bool) -> Option<u64> {
        self.buffers
            .values()
            .filter(|r| !keep(r.id))
            .map(|r| r.last_used)
            .min()
    }

    /// A cached kernel, marked used.
    pub fn kernel(&mut self, key: &KernelKey) -> Option<CachedKernel> {
        let now = self.tick();
        let k = self.kernels.get_mut(key)?;
        k.last_used = now;
        Some(k.clone())
    }

    /// Room for one more cached kernel: `Ok(evicted ids)` (to drop in the
    /// process), or `Err(())` when every cached kernel is in use by the run.
    pub fn kernel_room(&mut self, keep: &dyn Fn(Id) -> bool) -> Result<Vec<Id>, ()> {
        let mut evicted = Vec::new();
        while self.kernels.len() >= MAX_CACHED_KERNELS {
            let key = self
                .kernels
                .iter()
                .filter(|(_, k)| !keep(k.id))
                .min_by_key(|(_, k)| k.last_used)
                .map(|(key, _)| key.clone())
                .ok_or(())?;
            if let Some(k) = self.kernels.remove(&key) {
                self.kept_source -= k.source.as_ref().map_or(0, |s| s.len());
                evicted.push(k.id);
            }
        }
        Ok(evicted)
    }

    /// The id for a kernel about to be compiled into the cache.
    pub fn kernel_id(&mut self) -> Id {
        self.fresh_id()
    }

    pub fn insert_kernel(
        &mut self,
        key: KernelKey,
        id: Id,
        workgroup_size: [u32; 3],
        writable: Vec<(u32, u32)>,
        source: Option<Arc<str>>,
    ) {
        let last_used = self.tick();
        let source = source.filter(|s| {
            s.len() <= MAX_KEPT_SOURCE_BYTES && self.kept_source + s.len() <= MAX_KEPT_SOURCES_BYTES
        });
        self.kept_source += source.as_ref().map_or(0, |s| s.len());
        let old = self.kernels.insert(
            key,
            CachedKernel {
                id,
                workgroup_size,
                writable,
                source,
                last_used,
            },
        );
        if let Some(old) = old {
            self.kept_source -= old.source.as_ref().map_or(0, |s| s.len());
        }
    }

    /// The kept sources of the cached kernels, least recently used first:
    /// `(entry point, WGSL)`.
    pub fn kernel_sources_by_age(&self) -> Vec<(String, Arc<str>)> {
        let mut v: Vec<(&KernelKey, &CachedKernel)> = self
            .kernels
            .iter()
            .filter(|(_, k)| k.source.is_some())
            .collect();
        v.sort_by_key(|(_, k)| k.last_used);
        v.into_iter()
            .filter_map(|(key, k)| Some((key.entry_point.clone(), k.source.clone()?)))
            .collect()
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> ResidentKey {
        ResidentKey {
            dataset: "sha256:aa".into(),
            offset: n * 4,
            size: 4,
        }
    }

    #[test]
    fn bytes_follow_the_tenant_and_go_back_when_dropped() {
        let totals = Arc::new(Totals::default());
        let mut w = Warm::new(Arc::clone(&totals));
        assert!(!w.adopt("a"));
        assert_eq!(totals.try_add("a", 100, 150, 150), Ok(()));
        let id = w.insert_buffer(key(0), 100);
        assert!(crate::proto::is_warm(id));
        assert_eq!(totals.try_add("a", 60, 1000, 150), Err((false, true)));
        assert_eq!(totals.try_add("a", 60, 150, 1000), Err((true, false)));
        assert_eq!(totals.try_add("a", 50, 150, 150), Ok(()));
        w.insert_buffer(key(1), 50);
        assert_eq!(totals.get("a"), (150, 150));
        assert_eq!(w.buffer(&key(0)).map(|r| r.id), Some(id));
        // key(1) is now the least recently used; the run holds key(0).
        assert_eq!(w.evict_lru_buffer(&|i| i == id).map(|e| e.1), Some(50));
        assert_eq!(w.evict_lru_buffer(&|i| i == id), None);
        assert_eq!(totals.get("a"), (100, 100));
        assert!(!w.adopt("a"), "same tenant: kept");
        assert!(w.adopt("b"), "another tenant: everything forgotten");
        assert_eq!(totals.get("a"), (0, 0));
        assert!(w.buffer(&key(0)).is_none());
        assert_eq!(totals.try_add("b", 8, 150, 150), Ok(()));
        w.insert_buffer(key(0), 8);
        assert_eq!(totals.get("b"), (8, 8));
        drop(w);
        assert_eq!(totals.get("b"), (0, 0));
    }

    #[test]
    fn kernel_cache_is_bounded_and_keeps_what_the_run_holds() {
        let mut w = Warm::new(Arc::default());
        w.adopt("a");
        let mut ids = Vec::new();
        for i in 0..MAX_CACHED_KERNELS {
            let id = w.kernel_id();
            ids.push(id);
            let k = KernelKey {
                code: [0; 32],
                entry_point: format!("k{i}"),
            };
            w.insert_kernel(k, id, [1, 1, 1], Vec::new(), None);
        }
        assert_eq!(w.kernel_room(&|_| false).map(|v| v.len()), Ok(1));
        assert_eq!(w.kernels(), MAX_CACHED_KERNELS - 1);
        let id = w.kernel_id();
        let k = KernelKey {
            code: [1; 32],
            entry_point: "x".into(),
        };
        w.insert_kernel(k, id, [1, 1, 1], Vec::new(), None);
        assert_eq!(w.kernel_room(&|_| true), Err(()));
    }
}
