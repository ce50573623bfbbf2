//! Warm state across restarts (issue 15): a ledger of what each tenant had
//! resident on each adapter entry, and its restore into fresh GPU processes
//! when the platform starts.
//!
//! Resident buffers live in GPU processes, which end with the platform; so
//! does every byte uploaded. The ledger is the platform's memory of *which*
//! ranges were resident (dataset digest, offset, size; never the bytes):
//! per adapter entry, per tenant, the ranges its pooled process held when
//! it was last given back, least recently used first. The embedding
//! service persists it ([`GpuRegistry::warm_ledger`]) and hands it back at
//! start ([`GpuRegistry::plan_restore`], [`RestorePlan::run`]), which
//! re-uploads each tenant's ranges into a GPU process of its own, the most
//! recent tenants, at most one process per pooled slot. Runs of a tenant
//! whose restore is under way wait for it (up to their deadline) instead of
//! uploading a second copy.
//!
//! **Nothing is restored on the ledger's word.** The ledger only names what
//! to try; every range is checked again as a run would be: the tenant's
//! *current* policy must still grant a GPU in the entry's zone (its
//! resident budget is then the current one, [`RestoreGate`]), the tenant
//! must still own a dataset with that digest whose label allows the zone,
//! the range must lie in the file and fit the device, and the bytes count
//! against the adapter's and the tenant's budgets exactly like a run's
//! upload (a range that does not fit is skipped, nothing is evicted for
//! it). Restored processes then hold one tenant's state each, as any
//! pooled process does (`Entry::take_worker` purges before another tenant
//! gets one). The restore's uploads are billed to no run: the first run
//! that finds them pays nothing, as any warm hit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::registry::{Entry, GpuRegistry};
use crate::warm::{KernelKey, ResidentKey};

/// Tenants remembered per adapter entry (the least recent forgotten).
pub const MAX_LEDGER_TENANTS: usize = 64;
/// Ranges remembered per tenant and entry (the least recently used
/// forgotten; MiniLM's weights are ~100 ranges).
pub const MAX_LEDGER_RANGES: usize = 256;
/// Kernels remembered per tenant and entry, and the bytes of their WGSL
/// together (the least recently used forgotten first).
pub const MAX_LEDGER_KERNELS: usize = 64;
pub const MAX_LEDGER_KERNEL_BYTES: usize = 1 << 20;
/// The warm-state key of a tenant's runs (`GpuCtx::with_scope`).
pub(crate) const TENANT_SCOPE: &str = "tenant:";
/// How long one range's upload may take during a restore before its GPU
/// process is stopped.
const UPLOAD_BUDGET: Duration = Duration::from_secs(60);

/// A byte range of a dataset, by content.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResidentRange {
    /// The dataset's digest (`sha256:…`).
    pub dataset: String,
    pub offset: u64,
    pub size: u64,
}

/// A cached kernel's source, to compile it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelSource {
    pub entry_point: String,
    pub code: String,
}

/// What one tenant had resident (and cached) on one adapter entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmRecord {
    /// The adapter entry's label.
    pub adapter: String,
    pub tenant: String,
    /// Larger is more recent (within one ledger).
    pub seq: u64,
    /// Least recently used first.
    pub buffers: Vec<ResidentRange>,
    /// Cached kernels whose WGSL the process kept, least recently used
    /// first.
    #[serde(default)]
    pub kernels: Vec<KernelSource>,
}

/// What a restore may use, answered from the platform's current state.
pub trait RestoreGate: Send + Sync {
    /// The tenant's resident budget on an adapter in `zone`: `Some` only if
    /// its current policy grants a GPU there.
    fn resident_budget(&self, tenant: &str, zone: &str) -> Option<u64>;
    /// The file holding dataset `digest`, if `tenant` still owns a dataset
    /// with that digest whose residency label allows `zone`.
    fn dataset(&self, tenant: &str, zone: &str, digest: &str) -> Option<PathBuf>;
}

/// What a restore did, for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// GPU processes started and filled.
    pub processes: usize,
    /// Ranges uploaded and resident.
    pub buffers: usize,
    pub bytes: u64,
    /// Kernels compiled into the cache.
    pub kernels: usize,
    /// Ranges (or whole records) not restored: no grant, no dataset, out of
    /// range, over a budget, or a failed upload.
    pub skipped: usize,
}

impl RestoreStats {
    fn add(&mut self, o: RestoreStats) {
        self.processes += o.processes;
        self.buffers += o.buffers;
        self.bytes += o.bytes;
        self.kernels += o.kernels;
        self.skipped += o.skipped;
    }
}

/// One adapter entry's ledger.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    seq: u64,
    tenants: HashMap<String, Held>,
}

#[derive(Debug)]
struct Held {
    seq: u64,
    ranges: Vec<ResidentRange>,
    kernels: Vec<(String, Arc<str>)>,
}

/// The most recent kernels within [`MAX_LEDGER_KERNELS`] and
/// [`MAX_LEDGER_KERNEL_BYTES`] (input and output least recent first).
fn bound_kernels(mut kernels: Vec<(String, Arc<str>)>) -> Vec<(String, Arc<str>)> {
    if kernels.len() > MAX_LEDGER_KERNELS {
        kernels.drain(..kernels.len() - MAX_LEDGER_KERNELS);
    }
    let mut total = 0usize;
    let keep_from = kernels
        .iter()
        .rposition(|(e, c)| {
            total += e.len() + c.len();
            total > MAX_LEDGER_KERNEL_BYTES
        })
        .map_or(0, |i| i + 1);
    kernels.drain(..keep_from);
    kernels
}

impl Ledger {
    /// The pooled process of warm-state key `scope` (`tenant:<id>`; runs
    /// without a tenant have keys of their own and are not kept) now holds
    /// `ranges` and caches `kernels` (least recently used first); nothing
    /// at all forgets the tenant.
    pub fn record(
        &mut self,
        scope: &str,
        ranges: Vec<(ResidentKey, u64)>,
        kernels: Vec<(String, Arc<str>)>,
    ) {
        let Some(tenant) = scope.strip_prefix(TENANT_SCOPE) else {
            return;
        };
        let mut ranges: Vec<ResidentRange> = ranges
            .into_iter()
            .filter(|(k, _)| k.dataset.starts_with("sha256:"))
            .map(|(k, _)| ResidentRange {
                dataset: k.dataset,
                offset: k.offset,
                size: k.size,
            })
            .collect();
        if ranges.len() > MAX_LEDGER_RANGES {
            ranges.drain(..ranges.len() - MAX_LEDGER_RANGES);
        }
        let kernels = bound_kernels(kernels);
        if ranges.is_empty() && kernels.is_empty() {
            self.forget(tenant);
            return;
        }
        // Every give-back counts as a use: the order is by recency.
        self.seq += 1;
        let held = Held {
            seq: self.seq,
            ranges,
            kernels,
        };
        self.tenants.insert(tenant.to_string(), held);
        self.trim();
    }

    /// Forget `tenant` (bare id).
    pub fn forget(&mut self, tenant: &str) {
        if self.tenants.remove(tenant).is_some() {
            self.seq += 1;
        }
    }

    /// Take a record from an earlier process (its order kept, after what
    /// this ledger already knows).
    fn seed(&mut self, r: &WarmRecord) {
        if self.tenants.contains_key(&r.tenant) || (r.buffers.is_empty() && r.kernels.is_empty()) {
            return;
        }
        self.seq += 1;
        let ranges = r.buffers[r.buffers.len().saturating_sub(MAX_LEDGER_RANGES)..].to_vec();
        let kernels = r
            .kernels
            .iter()
            .map(|k| (k.entry_point.clone(), Arc::from(k.code.as_str())))
            .collect();
        let held = Held {
            seq: self.seq,
            ranges,
            kernels: bound_kernels(kernels),
        };
        self.tenants.insert(r.tenant.clone(), held);
        self.trim();
    }

    fn trim(&mut self) {
        while self.tenants.len() > MAX_LEDGER_TENANTS {
            let Some(oldest) = self
                .tenants
                .iter()
                .min_by_key(|(_, h)| h.seq)
                .map(|(t, _)| t.clone())
            else {
                return;
            };
            self.tenants.remove(&oldest);
        }
    }

    pub fn generation(&self) -> u64 {
        self.seq
    }

    /// The records, most recent first; only the first `with_kernels`
    /// carry their kernels' WGSL (only as many tenants as an entry pools
    /// processes are restored: a ledger stays a few MiB at most).
    fn records(&self, adapter: &str, with_kernels: usize) -> Vec<WarmRecord> {
        let mut v: Vec<WarmRecord> = self
            .tenants
            .iter()
            .map(|(tenant, h)| WarmRecord {
                adapter: adapter.to_string(),
                tenant: tenant.clone(),
                seq: h.seq,
                buffers: h.ranges.clone(),
                kernels: h
                    .kernels
                    .iter()
                    .map(|(e, c)| KernelSource {
                        entry_point: e.clone(),
                        code: c.to_string(),
                    })
                    .collect(),
            })
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.seq));
        for r in v.iter_mut().skip(with_kernels) {
            r.kernels.clear();
        }
        v
    }
}

impl GpuRegistry {
    /// The ledger of every adapter entry, most recent tenants first.
    pub fn warm_ledger(&self) -> Vec<WarmRecord> {
        self.entries()
            .iter()
            .flat_map(|e| e.ledger().records(&e.label, e.max_idle()))
            .collect()
    }

    /// Grows whenever a ledger changes (to know when to persist it).
    pub fn warm_generation(&self) -> u64 {
        self.entries().iter().map(|e| e.ledger().generation()).sum()
    }

    /// Take `records` (an earlier process's ledger) and choose what to
    /// restore: per adapter entry, the most recent tenants, at most as many
    /// as it pools idle processes (the others stay in the ledger only).
    /// From now until their restore ends, runs of the chosen tenants wait
    /// for it before taking a GPU process ([`RestorePlan::run`]; dropping
    /// the plan releases them).
    pub fn plan_restore(&self, records: &[WarmRecord]) -> RestorePlan {
        let mut plan = RestorePlan::default();
        for entry in self.entries().iter() {
            let mut mine: Vec<&WarmRecord> = records
                .iter()
                .filter(|r| r.adapter == entry.label)
                .collect();
            if mine.is_empty() {
                continue;
            }
            mine.sort_by_key(|r| std::cmp::Reverse(r.seq));
            mine.truncate(MAX_LEDGER_TENANTS);
            {
                let mut ledger = entry.ledger();
                // Oldest first, so the most recent get the largest seq.
                for r in mine.iter().rev() {
                    ledger.seed(r);
                }
            }
            let slots = if entry.adapter.is_ok() {
                entry.max_idle()
            } else {
                0
            };
            for r in mine.iter().skip(slots) {
                plan.skipped += r.buffers.len();
            }
            for r in mine.into_iter().take(slots) {
                let scope = format!("{TENANT_SCOPE}{}", r.tenant);
                if entry.begin_restore(&scope) {
                    plan.jobs.push(Job {
                        entry: Arc::clone(entry),
                        record: r.clone(),
                        scope,
                    });
                }
            }
        }
        plan
    }
}

/// What [`GpuRegistry::plan_restore`] chose.
#[derive(Default)]
pub struct RestorePlan {
    jobs: Vec<Job>,
    skipped: usize,
}

/// One tenant's restore on one entry; its runs wait until this is dropped.
struct Job {
    entry: Arc<Entry>,
    record: WarmRecord,
    scope: String,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.entry.end_restore(&self.scope);
    }
}

impl RestorePlan {
    /// Whether there is anything to restore.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Re-upload the chosen ranges, each checked by `gate` and counted
    /// against the budgets (see the module docs); each tenant in a new GPU
    /// process of its own, all at once. Never fails: what cannot be
    /// restored is skipped (and logged).
    pub async fn run(mut self, gate: Arc<dyn RestoreGate>) -> RestoreStats {
        let mut stats = RestoreStats {
            skipped: self.skipped,
            ..RestoreStats::default()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for job in std::mem::take(&mut self.jobs) {
            let gate = Arc::clone(&gate);
            tasks.spawn(async move { restore_one(job, gate.as_ref()).await });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(s) => stats.add(s),
                Err(e) => tracing::warn!("warm restore task: {e}"),
            }
        }
        stats
    }
}

async fn restore_one(job: Job, gate: &dyn RestoreGate) -> RestoreStats {
    let (entry, r, scope) = (&job.entry, &job.record, job.scope.as_str());
    let mut stats = RestoreStats::default();
    let Some(budget) = gate
        .resident_budget(&r.tenant, &entry.zone)
        .filter(|b| *b > 0)
    else {
        tracing::info!(tenant = %r.tenant, adapter = %entry.label, "warm restore: no GPU grant in this zone now; forgotten");
        entry.ledger().forget(&r.tenant);
        stats.skipped += r.buffers.len();
        return stats;
    };
    let mut worker = entry.fresh_worker(scope);
    stats.processes = 1;
    // The ledger file is bounded in bytes; its lists are bounded here too
    // (the most recent kept, as `Ledger::record` keeps them).
    let ranges = &r.buffers[r.buffers.len().saturating_sub(MAX_LEDGER_RANGES)..];
    let kernels = &r.kernels[r.kernels.len().saturating_sub(MAX_LEDGER_KERNELS)..];
    stats.skipped += r.buffers.len() - ranges.len();
    for range in ranges {
        let (offset, size) = (range.offset, range.size);
        let fits = size > 0
            && size.is_multiple_of(4)
            && offset.is_multiple_of(4)
            && size <= entry.limits.max_buffer_size;
        let path = fits
            .then(|| gate.dataset(&r.tenant, &entry.zone, &range.dataset))
            .flatten();
        let in_file = path.as_ref().is_some_and(|p| {
            std::fs::metadata(p)
                .is_ok_and(|m| offset.checked_add(size).is_some_and(|end| end <= m.len()))
        });
        let key = ResidentKey {
            dataset: range.dataset.clone(),
            offset,
            size,
        };
        let (Some(path), true) = (path, in_file) else {
            stats.skipped += 1;
            continue;
        };
        if worker.warm.buffer(&key).is_some() {
            continue;
        }
        if entry
            .totals
            .try_add(scope, size, entry.resident_budget, budget)
            .is_err()
        {
            stats.skipped += 1;
            continue;
        }
        let id = worker.warm.insert_buffer(key.clone(), size);
        let done = worker
            .call(Some(UPLOAD_BUDGET), Duration::ZERO, move |conn| {
                crate::resident::fill_from_file(conn, id, &path, offset, size)
            })
            .await;
        match done.result {
            Ok(()) => {
                stats.buffers += 1;
                stats.bytes += size;
            }
            Err(e) => {
                tracing::warn!(tenant = %r.tenant, adapter = %entry.label, "warm restore: upload failed: {e:?}");
                worker.warm.forget_buffer(&key);
                stats.skipped += 1;
                if !worker.health.is_healthy() {
                    break;
                }
                worker.post(move |conn| {
                    let _ = conn.request(&crate::proto::Request::Evict { ids: vec![id] });
                });
            }
        }
    }
    for k in kernels {
        if !worker.health.is_healthy() {
            break;
        }
        if k.code.len() > crate::host::MAX_WGSL_BYTES
            || k.entry_point.len() > crate::host::MAX_ENTRY_POINT_BYTES
        {
            stats.skipped += 1;
            continue;
        }
        let key = KernelKey {
            code: Sha256::digest(k.code.as_bytes()).into(),
            entry_point: k.entry_point.clone(),
        };
        if worker.warm.kernel(&key).is_some() {
            continue;
        }
        let Ok(evicted) = worker.warm.kernel_room(&|_| false) else {
            break;
        };
        if !evicted.is_empty() {
            worker.post(move |conn| {
                let _ = conn.request(&crate::proto::Request::Evict { ids: evicted });
            });
        }
        let id = worker.warm.kernel_id();
        let request = crate::proto::Request::CreatePipeline {
            id,
            code: k.code.clone(),
            entry_point: k.entry_point.clone(),
            workgroup_storage_limit: entry.limits.max_compute_workgroup_storage_size,
        };
        let done = worker
            .call(Some(UPLOAD_BUDGET), Duration::ZERO, move |conn| {
                conn.request(&request)
            })
            .await;
        match done.result {
            Ok(crate::proto::Value::Pipeline {
                workgroup_size,
                writable,
            }) => {
                let source = Some(Arc::from(k.code.as_str()));
                worker
                    .warm
                    .insert_kernel(key, id, workgroup_size, writable, source);
                stats.kernels += 1;
            }
            Ok(_) | Err(_) => {
                // An id the process may hold: dropped like an eviction.
                worker.post(move |conn| {
                    let _ = conn.request(&crate::proto::Request::Evict { ids: vec![id] });
                });
                stats.skipped += 1;
            }
        }
    }
    let healthy = worker.health.is_healthy();
    entry.give_back(worker, healthy);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str, n: u64) -> (ResidentKey, u64) {
        (
            ResidentKey {
                dataset: d.into(),
                offset: n * 4,
                size: 4,
            },
            4,
        )
    }

    #[test]
    fn the_ledger_keeps_digests_only_and_is_bounded() {
        let mut l = Ledger::default();
        l.record("anonymous-7", vec![key("sha256:aa", 0)], Vec::new());
        assert!(
            l.records("x", 1).is_empty(),
            "runs without a tenant are not kept"
        );
        l.record(
            "tenant:a",
            vec![key("sha256:aa", 0), key("file:1:2", 1)],
            Vec::new(),
        );
        let g = l.generation();
        l.record(
            "tenant:a",
            vec![key("sha256:aa", 0), key("file:1:2", 1)],
            Vec::new(),
        );
        assert_eq!(l.generation(), g + 1, "a use is recorded (recency)");
        let r = l.records("x", 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].buffers.len(), 1, "file-identity keys are not kept");
        assert_eq!(r[0].tenant, "a");
        l.record("tenant:a", Vec::new(), Vec::new());
        assert!(l.records("x", 1).is_empty());
        for t in 0..MAX_LEDGER_TENANTS + 5 {
            l.record(
                &format!("tenant:t{t}"),
                vec![key("sha256:aa", 0)],
                Vec::new(),
            );
        }
        let r = l.records("x", 1);
        assert_eq!(r.len(), MAX_LEDGER_TENANTS);
        assert_eq!(r[0].tenant, format!("t{}", MAX_LEDGER_TENANTS + 4));
        assert!(
            !r.iter().any(|r| r.tenant == "t0"),
            "least recent forgotten"
        );
        let many: Vec<_> = (0..MAX_LEDGER_RANGES as u64 + 3)
            .map(|n| key("sha256:bb", n))
            .collect();
        l.record("tenant:big", many, Vec::new());
        let big = l.records("x", 1).into_iter().find(|r| r.tenant == "big");
        let big = big.expect("big");
        assert_eq!(big.buffers.len(), MAX_LEDGER_RANGES);
        assert_eq!(big.buffers[0].offset, 12, "the least recently used dropped");
        let src =
            |n: usize| -> (String, Arc<str>) { (format!("k{n}"), Arc::from("x".repeat(100_000))) };
        l.record("tenant:k", Vec::new(), (0..20).map(src).collect());
        let k = l
            .records("x", 1)
            .into_iter()
            .find(|r| r.tenant == "k")
            .expect("k");
        assert_eq!(k.kernels.len(), 10, "1 MiB of WGSL at most");
        assert_eq!(k.kernels[0].entry_point, "k10", "the most recent kept");
        l.record(
            "tenant:k",
            Vec::new(),
            (0..100)
                .map(|n| (format!("e{n}"), Arc::from("y")))
                .collect(),
        );
        let all = l.records("x", 1);
        assert_eq!(all[0].tenant, "k", "the most recent first");
        assert_eq!(all[0].kernels.len(), MAX_LEDGER_KERNELS);
        assert!(
            all[1..].iter().all(|r| r.kernels.is_empty()),
            "kernels only for the tenants a restore would take"
        );
    }
}
