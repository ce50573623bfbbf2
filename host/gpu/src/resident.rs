//! The warm half of a run's GPU calls: dataset-backed buffers that stay
//! resident on the adapter (`buffer-from-dataset`) and the kernel cache
//! (`create-compute-pipeline`). Both are per tenant: a run only ever looks
//! in the warm state of its own GPU process, which holds its own tenant's
//! state alone (`registry.rs::Entry::take_worker` drops anyone else's
//! first). The record of what is warm is the platform's (`warm.rs`).

use std::io::{Read, Seek, SeekFrom};

use sha2::{Digest as _, Sha256};

use crate::bindings::kasbah::gpu::compute::GpuError;
use crate::ctx::Bound;
use crate::proto::{self, Id, Request, Value};
use crate::warm::{KernelKey, ResidentKey};

fn invalid(msg: impl Into<String>) -> GpuError {
    GpuError::InvalidArgument(msg.into())
}

/// A resident buffer handed to the run.
pub(crate) struct ResidentHandle {
    pub id: Id,
    pub size: u64,
}

/// A kernel handed to the run: cached (warm id) or the run's own.
pub(crate) struct KernelHandle {
    pub id: Id,
    pub warm: bool,
    pub workgroup_size: [u32; 3],
    pub writable: Vec<(u32, u32)>,
}

/// What the wgpu buffer of a resident range needs: storage and copy-src
/// for the guest, copy-dst for its one upload (the host refuses every
/// guest write or copy into it: the guest sees `storage | copy-src`).
const RESIDENT_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

impl Bound {
    /// `buffer-from-dataset`: a warm hit, or an upload that stays resident.
    /// Reserves a handle; the caller pushes the resource.
    pub async fn dataset_buffer(
        &mut self,
        name: &str,
        offset: u64,
        size: u64,
    ) -> Result<ResidentHandle, GpuError> {
        let Some(ds) = self.datasets.iter().find(|d| d.name == name).cloned() else {
            return Err(invalid(format!(
                "no dataset named {:?} is mounted in this run",
                name.chars().take(80).collect::<String>()
            )));
        };
        if size == 0 || !size.is_multiple_of(4) || !offset.is_multiple_of(4) {
            return Err(invalid(format!(
                "offset {offset} and size {size} must be multiples of 4, size not 0"
            )));
        }
        if size > self.quota.max_buffer_bytes {
            return Err(GpuError::OutOfQuota(format!(
                "a buffer of {size} bytes exceeds the quota of {} bytes per buffer",
                self.quota.max_buffer_bytes
            )));
        }
        let device_max = self.entry.limits.max_buffer_size;
        if size > device_max {
            return Err(invalid(format!(
                "a buffer of {size} bytes exceeds the device limit of {device_max}"
            )));
        }
        let len = ds
            .len
            .ok_or_else(|| GpuError::Unavailable(format!("dataset {name} cannot be read")))?;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(invalid(format!(
                "range {offset}+{size} is outside dataset {name} ({len} bytes)"
            )));
        }
        let budget = self.quota.max_resident_bytes;
        let key = ResidentKey {
            dataset: ds.key.clone(),
            offset,
            size,
        };
        self.reserve_handle()?;
        self.await_restore().await;
        let hit = self.worker().warm.buffer(&key);
        if let Some(r) = hit {
            if !self.pins.contains_key(&r.id) {
                if self.pinned_bytes().saturating_add(size) > budget {
                    self.release_handle();
                    return Err(over_pinned(size, self.pinned_bytes(), budget));
                }
                self.acct.resident_used = self.acct.resident_used.saturating_add(size);
            }
            self.pin(r.id, size);
            return Ok(ResidentHandle { id: r.id, size });
        }
        let made = self.upload(&ds.path, key, offset, size, budget).await;
        let id = self.settle_handle(made)?;
        self.pin(id, size);
        let a = &mut self.acct;
        a.resident_used = a.resident_used.saturating_add(size);
        a.resident_uploaded = a.resident_uploaded.saturating_add(size);
        a.transferred = a.transferred.saturating_add(size);
        Ok(ResidentHandle { id, size })
    }

    /// Make room within both budgets, then create and fill the buffer.
    async fn upload(
        &mut self,
        path: &std::path::Path,
        key: ResidentKey,
        offset: u64,
        size: u64,
        budget: u64,
    ) -> Result<Id, GpuError> {
        let pinned = self.pinned_bytes();
        if pinned.saturating_add(size) > budget {
            return Err(over_pinned(size, pinned, budget));
        }
        let adapter_budget = self.entry.resident_budget;
        if size > adapter_budget {
            return Err(GpuError::OutOfQuota(format!(
                "{size} resident bytes exceed adapter {}'s resident budget of {adapter_budget}",
                self.entry.label
            )));
        }
        self.reserve_transfer(size)?;
        let tenant = self.tenant.clone();
        loop {
            let tried = self
                .entry
                .totals
                .try_add(&tenant, size, adapter_budget, budget);
            let Err((over_adapter, over_tenant)) = tried else {
                break;
            };
            // The least recently used resident buffer this run does not
            // hold: in its own process first, then in idle pooled ones.
            let pins = &self.pins;
            let keep = |id: Id| pins.contains_key(&id);
            if let Some(worker) = self.worker.as_mut()
                && let Some((id, _)) = worker.warm.evict_lru_buffer(&keep)
            {
                worker.post(move |conn| {
                    let _ = conn.request(&Request::Evict { ids: vec![id] });
                });
                continue;
            }
            let only = (over_tenant && !over_adapter).then_some(tenant.as_str());
            if self.entry.evict_idle(only) {
                continue;
            }
            return Err(GpuError::OutOfQuota(format!(
                "no room for {size} more resident bytes: the {} is held by runs in progress",
                if over_tenant {
                    "tenant's resident budget"
                } else {
                    "adapter's resident budget"
                }
            )));
        }
        let id = self.worker().warm.insert_buffer(key.clone(), size);
        let path = path.to_path_buf();
        let filled = self
            .call(move |conn| fill_from_file(conn, id, &path, offset, size))
            .await;
        if let Err(e) = filled {
            if let Some(w) = &mut self.worker {
                w.warm.forget_buffer(&key);
                w.post(move |conn| {
                    let _ = conn.request(&Request::Evict { ids: vec![id] });
                });
            }
            return Err(e);
        }
        Ok(id)
    }

    /// `create-compute-pipeline`: a cache lookup, else a compile (into the
    /// cache when it has room the run does not hold). Reserves a handle.
    pub async fn kernel(
        &mut self,
        code: String,
        entry_point: &str,
    ) -> Result<KernelHandle, GpuError> {
        self.reserve_handle()?;
        self.acct.kernels_attempted += 1;
        let key = KernelKey {
            code: Sha256::digest(code.as_bytes()).into(),
            entry_point: entry_point.to_string(),
        };
        self.await_restore().await;
        let hit = self.worker().warm.kernel(&key);
        if let Some(k) = hit {
            self.pin(k.id, 0);
            self.acct.kernels_cached += 1;
            return Ok(KernelHandle {
                id: k.id,
                warm: true,
                workgroup_size: k.workgroup_size,
                writable: k.writable,
            });
        }
        let pins = &self.pins;
        let keep = |id: Id| pins.contains_key(&id);
        let room = match &mut self.worker {
            Some(w) => w.warm.kernel_room(&keep),
            None => Err(()),
        };
        let id = match room {
            Ok(evicted) => {
                let w = self.worker();
                if !evicted.is_empty() {
                    w.post(move |conn| {
                        let _ = conn.request(&Request::Evict { ids: evicted });
                    });
                }
                w.warm.kernel_id()
            }
            // Every cached kernel is held by this run: compile it as the
            // run's own.
            Err(()) => self.new_id(),
        };
        let source: Option<std::sync::Arc<str>> = (proto::is_warm(id)
            && code.len() <= crate::warm::MAX_KEPT_SOURCE_BYTES)
            .then(|| code.as_str().into());
        let request = Request::CreatePipeline {
            id,
            code,
            entry_point: entry_point.to_string(),
            workgroup_storage_limit: self.entry.limits.max_compute_workgroup_storage_size,
        };
        // A warm id belongs to this process: no retry on another one.
        let built = if proto::is_warm(id) {
            self.call(move |conn| conn.request(&request)).await
        } else {
            self.request(request).await
        };
        // Fail closed: a pipeline without its `read_write` bindings would
        // turn off the read-only check of dataset buffers.
        let built = built.and_then(|v| match v {
            Value::Pipeline {
                workgroup_size,
                writable,
            } => Ok((workgroup_size, writable)),
            _ => Err(GpuError::DeviceLost(
                "the GPU process answered a pipeline request without a pipeline".into(),
            )),
        });
        let (workgroup_size, writable) = self.settle_handle(built)?;
        self.acct.kernels_built += 1;
        let warm = proto::is_warm(id);
        if warm {
            if let Some(w) = &mut self.worker {
                w.warm
                    .insert_kernel(key, id, workgroup_size, writable.clone(), source);
            }
            self.pin(id, 0);
        }
        Ok(KernelHandle {
            id,
            warm,
            workgroup_size,
            writable,
        })
    }
}

/// Create resident buffer `id` in the GPU process and fill it with
/// `size` bytes of the file at `path` from `offset` (through the shared
/// memory region, in chunks). Used by runs and by the restore at start.
pub(crate) fn fill_from_file(
    conn: &mut crate::process::Conn,
    id: Id,
    path: &std::path::Path,
    offset: u64,
    size: u64,
) -> Result<(), GpuError> {
    conn.request(&Request::CreateBuffer {
        id,
        size,
        usage: RESIDENT_USAGE.bits(),
    })?;
    let mut file =
        std::fs::File::open(path).map_err(|e| GpuError::Unavailable(format!("dataset: {e}")))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| GpuError::Unavailable(format!("dataset: {e}")))?;
    let mut at = 0u64;
    while at < size {
        let n = usize::try_from((size - at).min(proto::SHM_BYTES as u64))
            .map_err(|_| invalid("chunk"))?;
        let shm = conn.shm()?;
        let chunk = shm.get_mut(..n).ok_or_else(|| invalid("upload chunk"))?;
        file.read_exact(chunk)
            .map_err(|e| GpuError::Unavailable(format!("dataset changed: {e}")))?;
        conn.request(&Request::Write {
            id,
            offset: at,
            len: n as u64,
            flush: at + n as u64 == size,
        })?;
        at += n as u64;
    }
    Ok(())
}

fn over_pinned(size: u64, pinned: u64, budget: u64) -> GpuError {
    GpuError::OutOfQuota(format!(
        "{size} more resident bytes on top of {pinned} held by this run exceeds the tenant's resident budget of {budget} bytes"
    ))
}
