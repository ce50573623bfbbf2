//! The `kasbah:gpu/compute` host functions. Each one checks the run's state
//! and quota and its arguments here, in the platform process, then sends
//! the work to the run's GPU process (`proto::Request`), where `ops` does
//! it.
//!
//! Return convention (bindgen `trappable`): `Err(_)` traps the guest (host
//! faults: unknown handles, a panicked GPU job); `Ok(Err(gpu-error))` is an
//! error value for the guest.

use wasmtime::component::Resource;

use crate::Gpu;
use crate::bindings::kasbah::gpu::compute::{
    self as wit, AdapterInfo, AdapterLimits, BufferBinding, BufferUsage, GpuError, Quota,
};
use crate::ctx::Bound;
use crate::proto::{self, Bind, Cmd, Dispatch, Id, Request};

/// Largest WGSL source accepted, in bytes.
pub const MAX_WGSL_BYTES: usize = 1 << 20;
/// Longest entry point name (it is part of each kernel-cache key and goes
/// to the GPU process).
pub const MAX_ENTRY_POINT_BYTES: usize = 256;
/// Bindings in one dispatch.
pub const MAX_BINDINGS_PER_DISPATCH: usize = 64;
/// Commands one encoder may record.
pub const MAX_COMMANDS_PER_ENCODER: usize = 4096;

/// A guest's buffer, living in the run's GPU process. Destroyed there when
/// the guest drops it, or with everything else of the run when the process
/// is reset or killed after the run.
pub struct BufferRes {
    id: Id,
    size: u64,
    usage: BufferUsage,
    /// A resident dataset-backed buffer (`buffer-from-dataset`): read-only,
    /// shared with later runs of the tenant, never destroyed by the run.
    resident: bool,
}

/// A guest's compiled kernel.
pub struct PipelineRes {
    id: Id,
    entry_point: String,
    /// Invocations per workgroup (the product of its workgroup size).
    invocations: u64,
    /// From the kernel cache (kept after the run).
    cached: bool,
    /// `(group, binding)` of the kernel's `read_write` storage variables.
    writable: Vec<(u32, u32)>,
}

/// A guest's command encoder: commands validated at record time (a
/// dispatch is prepared in the GPU process under an id), encoded and
/// submitted together by `submit`.
pub struct EncoderRes {
    commands: Vec<Cmd>,
    /// Invocations and copied bytes recorded, billed once submitted.
    invocations: u64,
    copied: u64,
}

impl EncoderRes {
    fn prepared(&self) -> Vec<Id> {
        self.commands
            .iter()
            .filter_map(|c| match c {
                Cmd::Dispatch(id) => Some(*id),
                Cmd::Copy { .. } => None,
            })
            .collect()
    }
}

/// Return a guest-visible error from a host function.
macro_rules! guest_try {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        }
    };
}

fn invalid(msg: impl Into<String>) -> GpuError {
    GpuError::InvalidArgument(msg.into())
}

fn to_wgpu_usage(u: BufferUsage) -> wgpu::BufferUsages {
    let mut out = wgpu::BufferUsages::empty();
    if u.contains(BufferUsage::STORAGE) {
        out |= wgpu::BufferUsages::STORAGE;
    }
    if u.contains(BufferUsage::UNIFORM) {
        out |= wgpu::BufferUsages::UNIFORM;
    }
    if u.contains(BufferUsage::COPY_SRC) {
        out |= wgpu::BufferUsages::COPY_SRC;
    }
    if u.contains(BufferUsage::COPY_DST) {
        out |= wgpu::BufferUsages::COPY_DST;
    }
    out
}

/// `offset..offset+len` within `size`, both multiples of 4.
fn check_range(what: &str, offset: u64, len: u64, size: u64) -> Result<(), GpuError> {
    if !offset.is_multiple_of(4) || !len.is_multiple_of(4) {
        return Err(invalid(format!(
            "{what}: offset {offset} and length {len} must be multiples of 4"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(invalid(format!(
            "{what}: range {offset}+{len} is outside the buffer ({size} bytes)"
        ))),
    }
}

fn limits_of(l: &wgpu::Limits) -> AdapterLimits {
    AdapterLimits {
        max_buffer_size: l.max_buffer_size,
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_uniform_buffer_binding_size: l.max_uniform_buffer_binding_size,
        max_storage_buffers_per_shader_stage: l.max_storage_buffers_per_shader_stage,
        max_uniform_buffers_per_shader_stage: l.max_uniform_buffers_per_shader_stage,
        max_bind_groups: l.max_bind_groups,
        max_bindings_per_bind_group: l.max_bindings_per_bind_group,
        min_storage_buffer_offset_alignment: l.min_storage_buffer_offset_alignment,
        min_uniform_buffer_offset_alignment: l.min_uniform_buffer_offset_alignment,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroup_size_x: l.max_compute_workgroup_size_x,
        max_compute_workgroup_size_y: l.max_compute_workgroup_size_y,
        max_compute_workgroup_size_z: l.max_compute_workgroup_size_z,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
    }
}

impl Bound {
    /// Quota and device-limit checks of one dispatch, before any GPU work.
    /// Returns the dispatch's invocations.
    fn check_dispatch(
        &self,
        workgroups: [u32; 3],
        per_workgroup: u64,
        bindings: usize,
    ) -> Result<u64, GpuError> {
        let q = &self.quota;
        if self.acct.dispatches_recorded >= q.max_dispatches {
            return Err(GpuError::OutOfQuota(format!(
                "this run may record at most {} dispatches",
                q.max_dispatches
            )));
        }
        let device_max = self.entry.limits.max_compute_workgroups_per_dimension;
        for (axis, n) in ["x", "y", "z"].into_iter().zip(workgroups) {
            if n > q.max_workgroups_per_dimension {
                return Err(GpuError::OutOfQuota(format!(
                    "{n} workgroups in {axis} exceeds the quota of {} per dimension",
                    q.max_workgroups_per_dimension
                )));
            }
            if n > device_max {
                return Err(invalid(format!(
                    "{n} workgroups in {axis} exceeds the device limit of {device_max} per dimension"
                )));
            }
        }
        if bindings > MAX_BINDINGS_PER_DISPATCH {
            return Err(invalid(format!(
                "{bindings} bindings in one dispatch (at most {MAX_BINDINGS_PER_DISPATCH})"
            )));
        }
        let [x, y, z] = workgroups.map(u64::from);
        let invocations = x
            .saturating_mul(y)
            .saturating_mul(z)
            .saturating_mul(per_workgroup);
        if invocations > q.max_invocations_per_dispatch {
            return Err(GpuError::OutOfQuota(format!(
                "a dispatch of {x}x{y}x{z} workgroups of {per_workgroup} invocations ({invocations}) exceeds the quota of {} invocations per dispatch",
                q.max_invocations_per_dispatch
            )));
        }
        let total = self.acct.invocations_recorded.saturating_add(invocations);
        if total > q.max_invocations {
            return Err(GpuError::OutOfQuota(format!(
                "{invocations} more invocations on top of {} exceeds the quota of {} invocations per run",
                self.acct.invocations_recorded, q.max_invocations
            )));
        }
        Ok(invocations)
    }

    /// Reserve `bytes` of transfer (write, read-back, copy) in the quota.
    pub(crate) fn reserve_transfer(&mut self, bytes: u64) -> Result<(), GpuError> {
        let total = self.acct.transfer_reserved.saturating_add(bytes);
        if total > self.quota.max_transfer_bytes {
            return Err(GpuError::OutOfQuota(format!(
                "{bytes} more bytes of transfer on top of {} exceeds the quota of {} bytes written, read and copied per run",
                self.acct.transfer_reserved, self.quota.max_transfer_bytes
            )));
        }
        self.acct.transfer_reserved = total;
        Ok(())
    }
}

impl Gpu<'_> {
    /// Resolve and check the bindings and the pipeline of a dispatch and
    /// count it against the quota. Unknown handles trap. Returns the
    /// dispatch and its invocations.
    fn check_dispatch(
        &mut self,
        pipeline: &Resource<PipelineRes>,
        bindings: Vec<BufferBinding>,
        workgroups: [u32; 3],
    ) -> wasmtime::Result<Result<(Dispatch, u64), GpuError>> {
        let p = self.table.get(pipeline)?;
        let (pipeline, per_workgroup) = (p.id, p.invocations);
        let writable = p.writable.clone();
        let mut ranges = Vec::with_capacity(bindings.len());
        for b in &bindings {
            let buf = self.table.get(&b.buffer)?;
            if buf.resident && writable.contains(&(b.group, b.binding)) {
                return Ok(Err(invalid(format!(
                    "@group({}) @binding({}) is read_write in the kernel; a dataset-backed buffer is read-only",
                    b.group, b.binding
                ))));
            }
            ranges.push((
                b.group, b.binding, buf.id, buf.size, buf.usage, b.offset, b.size,
            ));
        }
        let bound = guest_try!(self.ctx.get());
        let invocations = guest_try!(bound.check_dispatch(workgroups, per_workgroup, ranges.len()));
        let max_groups = bound.entry.limits.max_bind_groups;
        let mut slots = std::collections::BTreeSet::new();
        let mut checked = Vec::with_capacity(ranges.len());
        for (group, binding, buffer, size, usage, offset, len) in ranges {
            if group >= max_groups {
                return Ok(Err(invalid(format!(
                    "@group({group}) is beyond the device's {max_groups} bind groups"
                ))));
            }
            if !slots.insert((group, binding)) {
                return Ok(Err(invalid(format!(
                    "@group({group}) @binding({binding}) is bound twice"
                ))));
            }
            if !usage.contains(BufferUsage::STORAGE) && !usage.contains(BufferUsage::UNIFORM) {
                return Ok(Err(invalid(format!(
                    "@group({group}) @binding({binding}): the buffer has neither storage nor uniform usage"
                ))));
            }
            let len_or_rest = len.unwrap_or(size.saturating_sub(offset));
            if offset > size || len_or_rest == 0 {
                return Ok(Err(invalid(format!(
                    "@group({group}) @binding({binding}): offset {offset} leaves nothing to bind in a {size}-byte buffer"
                ))));
            }
            guest_try!(check_range(
                &format!("@group({group}) @binding({binding})"),
                offset,
                len_or_rest,
                size
            ));
            checked.push(Bind {
                group,
                binding,
                buffer,
                offset,
                size: len,
            });
        }
        Ok(Ok((
            Dispatch {
                pipeline,
                bindings: checked,
                workgroups,
            },
            invocations,
        )))
    }
}

/// Count a recorded dispatch against the run's quota.
fn recorded(bound: &mut Bound, invocations: u64) {
    bound.acct.dispatches_recorded += 1;
    bound.acct.invocations_recorded = bound.acct.invocations_recorded.saturating_add(invocations);
}

impl wit::Host for Gpu<'_> {
    async fn get_adapter_info(&mut self) -> wasmtime::Result<Result<AdapterInfo, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        let e = &bound.entry;
        let (name, backend, kind) = match &e.info {
            Some(i) => (
                i.key.name.clone(),
                i.key.backend.clone(),
                i.device_type.clone(),
            ),
            None => (String::new(), String::new(), "other".into()),
        };
        let q = &bound.quota;
        Ok(Ok(AdapterInfo {
            label: e.label.clone(),
            name,
            backend,
            device_type: kind,
            zone: e.zone.clone(),
            limits: limits_of(&e.limits),
            quota: Quota {
                max_buffer_bytes: q.max_buffer_bytes,
                max_total_bytes: q.max_total_bytes,
                max_dispatches: q.max_dispatches,
                max_workgroups_per_dimension: q.max_workgroups_per_dimension,
                max_kernels: q.max_kernels,
                max_resident_bytes: q.max_resident_bytes,
            },
        }))
    }

    async fn create_buffer(
        &mut self,
        size: u64,
        usage: BufferUsage,
    ) -> wasmtime::Result<Result<Resource<BufferRes>, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        if usage == BufferUsage::empty() {
            return Ok(Err(invalid("a buffer needs at least one usage")));
        }
        if size == 0 || !size.is_multiple_of(4) {
            return Ok(Err(invalid(format!(
                "buffer size {size} must be a non-zero multiple of 4"
            ))));
        }
        let q = &bound.quota;
        if size > q.max_buffer_bytes {
            return Ok(Err(GpuError::OutOfQuota(format!(
                "a buffer of {size} bytes exceeds the quota of {} bytes per buffer",
                q.max_buffer_bytes
            ))));
        }
        let live = bound.acct.live_bytes;
        if live.saturating_add(size) > q.max_total_bytes {
            return Ok(Err(GpuError::OutOfQuota(format!(
                "{size} more bytes on top of {live} live exceeds the quota of {} GPU bytes per run",
                q.max_total_bytes
            ))));
        }
        let device_max = bound.entry.limits.max_buffer_size;
        if size > device_max {
            return Ok(Err(invalid(format!(
                "a buffer of {size} bytes exceeds the device limit of {device_max}"
            ))));
        }
        guest_try!(bound.reserve_handle());
        let id = bound.new_id();
        let created = bound
            .request(Request::CreateBuffer {
                id,
                size,
                usage: to_wgpu_usage(usage).bits(),
            })
            .await;
        guest_try!(bound.settle_handle(created));
        bound.add_bytes(size);
        let res = self.table.push(BufferRes {
            id,
            size,
            usage,
            resident: false,
        })?;
        Ok(Ok(res))
    }

    async fn buffer_from_dataset(
        &mut self,
        name: String,
        offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<Resource<BufferRes>, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        let r = guest_try!(bound.dataset_buffer(&name, offset, size).await);
        let res = self.table.push(BufferRes {
            id: r.id,
            size: r.size,
            usage: BufferUsage::STORAGE | BufferUsage::COPY_SRC,
            resident: true,
        })?;
        Ok(Ok(res))
    }

    async fn create_compute_pipeline(
        &mut self,
        code: String,
        entry_point: String,
    ) -> wasmtime::Result<Result<Resource<PipelineRes>, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        if bound.acct.kernels_attempted >= bound.quota.max_kernels {
            return Ok(Err(GpuError::OutOfQuota(format!(
                "this run may create at most {} compute pipelines",
                bound.quota.max_kernels
            ))));
        }
        if entry_point.len() > MAX_ENTRY_POINT_BYTES {
            return Ok(Err(invalid(format!(
                "entry point name of {} bytes exceeds {MAX_ENTRY_POINT_BYTES}",
                entry_point.len()
            ))));
        }
        if code.len() > MAX_WGSL_BYTES {
            return Ok(Err(invalid(format!(
                "WGSL source of {} bytes exceeds {MAX_WGSL_BYTES}",
                code.len()
            ))));
        }
        let k = guest_try!(bound.kernel(code, &entry_point).await);
        let invocations = k
            .workgroup_size
            .iter()
            .fold(1u64, |n, &d| n.saturating_mul(u64::from(d.max(1))));
        let res = self.table.push(PipelineRes {
            id: k.id,
            entry_point,
            invocations,
            cached: k.warm,
            writable: k.writable,
        })?;
        Ok(Ok(res))
    }

    async fn create_command_encoder(
        &mut self,
    ) -> wasmtime::Result<Result<Resource<EncoderRes>, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        guest_try!(bound.reserve_handle());
        Ok(Ok(self.table.push(EncoderRes {
            commands: Vec::new(),
            invocations: 0,
            copied: 0,
        })?))
    }

    async fn submit(
        &mut self,
        commands: Resource<EncoderRes>,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let encoder = self.table.delete(commands)?;
        let bound = guest_try!(self.ctx.get());
        bound.release_handle();
        if encoder.commands.is_empty() {
            return Ok(Ok(()));
        }
        let dispatches = encoder.prepared().len() as u64;
        guest_try!(
            bound
                .request(Request::Submit {
                    commands: encoder.commands
                })
                .await
        );
        let a = &mut bound.acct;
        a.dispatches_done += dispatches;
        a.invocations_done = a.invocations_done.saturating_add(encoder.invocations);
        a.transferred = a.transferred.saturating_add(encoder.copied);
        Ok(Ok(()))
    }

    async fn dispatch(
        &mut self,
        pipeline: Resource<PipelineRes>,
        bindings: Vec<BufferBinding>,
        x: u32,
        y: u32,
        z: u32,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let (dispatch, invocations) =
            guest_try!(self.check_dispatch(&pipeline, bindings, [x, y, z])?);
        let bound = guest_try!(self.ctx.get());
        recorded(bound, invocations);
        guest_try!(bound.request(Request::DispatchNow { dispatch }).await);
        bound.acct.dispatches_done += 1;
        bound.acct.invocations_done = bound.acct.invocations_done.saturating_add(invocations);
        Ok(Ok(()))
    }
}

impl wit::HostBuffer for Gpu<'_> {
    async fn size(&mut self, this: Resource<BufferRes>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.size)
    }

    async fn usage(&mut self, this: Resource<BufferRes>) -> wasmtime::Result<BufferUsage> {
        Ok(self.table.get(&this)?.usage)
    }

    async fn write(
        &mut self,
        this: Resource<BufferRes>,
        offset: u64,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let b = self.table.get(&this)?;
        let (id, size, usage) = (b.id, b.size, b.usage);
        let resident = b.resident;
        let bound = guest_try!(self.ctx.get());
        if resident {
            return Ok(Err(invalid("a dataset-backed buffer is read-only")));
        }
        if !usage.contains(BufferUsage::COPY_DST) {
            return Ok(Err(invalid("write needs a buffer with copy-dst usage")));
        }
        let len = data.len() as u64;
        guest_try!(check_range("write", offset, len, size));
        if data.is_empty() {
            return Ok(Ok(()));
        }
        guest_try!(bound.reserve_transfer(len));
        // Through the shared region, in chunks; the last one is flushed.
        guest_try!(
            bound
                .call(move |conn| {
                    let chunks = data.chunks(proto::SHM_BYTES);
                    let n = chunks.len();
                    let mut at = offset;
                    for (i, chunk) in chunks.enumerate() {
                        let shm = conn.shm()?;
                        shm.get_mut(..chunk.len())
                            .ok_or_else(|| invalid("write chunk"))?
                            .copy_from_slice(chunk);
                        conn.request(&Request::Write {
                            id,
                            offset: at,
                            len: chunk.len() as u64,
                            flush: i + 1 == n,
                        })?;
                        at += chunk.len() as u64;
                    }
                    Ok(())
                })
                .await
        );
        bound.acct.transferred = bound.acct.transferred.saturating_add(len);
        Ok(Ok(()))
    }

    async fn read(
        &mut self,
        this: Resource<BufferRes>,
        offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, GpuError>> {
        let b = self.table.get(&this)?;
        let (id, buffer_size, usage) = (b.id, b.size, b.usage);
        let bound = guest_try!(self.ctx.get());
        if !usage.contains(BufferUsage::COPY_SRC) {
            return Ok(Err(invalid("read needs a buffer with copy-src usage")));
        }
        guest_try!(check_range("read", offset, size, buffer_size));
        if size == 0 {
            return Ok(Ok(Vec::new()));
        }
        guest_try!(bound.reserve_transfer(size));
        let Ok(total) = usize::try_from(size) else {
            return Ok(Err(invalid("read size")));
        };
        let bytes = guest_try!(
            bound
                .call(move |conn| {
                    let mut out = Vec::with_capacity(total);
                    while out.len() < total {
                        let n = (total - out.len()).min(proto::SHM_BYTES);
                        conn.request(&Request::Read {
                            id,
                            offset: offset + out.len() as u64,
                            size: n as u64,
                        })?;
                        let shm = conn.shm()?;
                        out.extend_from_slice(shm.get(..n).ok_or_else(|| invalid("read chunk"))?);
                    }
                    Ok(out)
                })
                .await
        );
        bound.acct.transferred = bound.acct.transferred.saturating_add(size);
        Ok(Ok(bytes))
    }

    async fn drop(&mut self, rep: Resource<BufferRes>) -> wasmtime::Result<()> {
        let b = self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
            if b.resident {
                // Stays resident for the tenant's next runs.
                bound.unpin(b.id);
            } else {
                bound.remove_bytes(b.size);
                bound.post(Request::DestroyBuffer { id: b.id });
            }
        }
        Ok(())
    }
}

impl wit::HostComputePipeline for Gpu<'_> {
    async fn entry_point(&mut self, this: Resource<PipelineRes>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.entry_point.clone())
    }

    async fn drop(&mut self, rep: Resource<PipelineRes>) -> wasmtime::Result<()> {
        let p = self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
            if p.cached {
                bound.unpin(p.id);
            } else {
                bound.post(Request::DropPipeline { id: p.id });
            }
        }
        Ok(())
    }
}

impl wit::HostCommandEncoder for Gpu<'_> {
    async fn dispatch_workgroups(
        &mut self,
        this: Resource<EncoderRes>,
        pipeline: Resource<PipelineRes>,
        bindings: Vec<BufferBinding>,
        x: u32,
        y: u32,
        z: u32,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        if self.table.get(&this)?.commands.len() >= MAX_COMMANDS_PER_ENCODER {
            return Ok(Err(GpuError::OutOfQuota(format!(
                "an encoder records at most {MAX_COMMANDS_PER_ENCODER} commands"
            ))));
        }
        let (dispatch, invocations) =
            guest_try!(self.check_dispatch(&pipeline, bindings, [x, y, z])?);
        let bound = guest_try!(self.ctx.get());
        let id = bound.new_id();
        // Validated now, in the GPU process, so that a mismatch with the
        // kernel is reported by the call that recorded it.
        guest_try!(bound.request(Request::Prepare { id, dispatch }).await);
        recorded(bound, invocations);
        let encoder = self.table.get_mut(&this)?;
        encoder.commands.push(Cmd::Dispatch(id));
        encoder.invocations = encoder.invocations.saturating_add(invocations);
        Ok(Ok(()))
    }

    async fn copy_buffer_to_buffer(
        &mut self,
        this: Resource<EncoderRes>,
        source: Resource<BufferRes>,
        source_offset: u64,
        destination: Resource<BufferRes>,
        destination_offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let recorded = self.table.get(&this)?.commands.len();
        let src = self.table.get(&source)?;
        let (src_id, src_size, src_usage) = (src.id, src.size, src.usage);
        let dst = self.table.get(&destination)?;
        let (dst_id, dst_size, dst_usage) = (dst.id, dst.size, dst.usage);
        let dst_resident = dst.resident;
        let bound = guest_try!(self.ctx.get());
        if dst_resident {
            return Ok(Err(invalid(
                "copy-buffer-to-buffer: the destination is a dataset-backed buffer, which is read-only",
            )));
        }
        if recorded >= MAX_COMMANDS_PER_ENCODER {
            return Ok(Err(GpuError::OutOfQuota(format!(
                "an encoder records at most {MAX_COMMANDS_PER_ENCODER} commands"
            ))));
        }
        if source.rep() == destination.rep() {
            return Ok(Err(invalid(
                "copy-buffer-to-buffer: source and destination must differ",
            )));
        }
        if !src_usage.contains(BufferUsage::COPY_SRC) {
            return Ok(Err(invalid(
                "copy-buffer-to-buffer: the source needs copy-src usage",
            )));
        }
        if !dst_usage.contains(BufferUsage::COPY_DST) {
            return Ok(Err(invalid(
                "copy-buffer-to-buffer: the destination needs copy-dst usage",
            )));
        }
        guest_try!(check_range("copy source", source_offset, size, src_size));
        guest_try!(check_range(
            "copy destination",
            destination_offset,
            size,
            dst_size
        ));
        guest_try!(bound.reserve_transfer(size));
        let encoder = self.table.get_mut(&this)?;
        encoder.commands.push(Cmd::Copy {
            source: src_id,
            source_offset,
            destination: dst_id,
            destination_offset,
            size,
        });
        encoder.copied = encoder.copied.saturating_add(size);
        Ok(Ok(()))
    }

    async fn drop(&mut self, rep: Resource<EncoderRes>) -> wasmtime::Result<()> {
        let encoder = self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
            let ids = encoder.prepared();
            if !ids.is_empty() {
                bound.post(Request::Forget { ids });
            }
        }
        Ok(())
    }
}
