//! The `kasbah:gpu/compute` host functions. Each one checks the run's state
//! and quota and its arguments here, before any wgpu call, then hands the
//! wgpu work to the run's device thread (`ops`).
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
use crate::ops::{self, BindRange, Command};

/// Largest WGSL source accepted, in bytes.
pub const MAX_WGSL_BYTES: usize = 1 << 20;
/// Bindings in one dispatch.
pub const MAX_BINDINGS_PER_DISPATCH: usize = 64;
/// Commands one encoder may record.
pub const MAX_COMMANDS_PER_ENCODER: usize = 4096;

/// A guest's buffer. Destroyed (memory freed) when dropped, whether the guest
/// drops it or its run ends.
pub struct BufferRes {
    buffer: wgpu::Buffer,
    size: u64,
    usage: BufferUsage,
}

impl Drop for BufferRes {
    fn drop(&mut self) {
        self.buffer.destroy();
    }
}

/// A guest's compiled kernel.
pub struct PipelineRes {
    pipeline: wgpu::ComputePipeline,
    entry_point: String,
}

/// A guest's command encoder: commands validated at record time, encoded
/// and submitted together by `submit`.
pub struct EncoderRes {
    commands: Vec<Command>,
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

fn device_type(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete-gpu",
        wgpu::DeviceType::IntegratedGpu => "integrated-gpu",
        wgpu::DeviceType::VirtualGpu => "virtual-gpu",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

impl Bound {
    /// Quota and device-limit checks of one dispatch, before any GPU work.
    fn check_dispatch(&self, workgroups: [u32; 3], bindings: usize) -> Result<(), GpuError> {
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
        Ok(())
    }
}

impl Gpu<'_> {
    /// Resolve and check the bindings and the pipeline of a dispatch, then
    /// build its bind groups on the device. Unknown handles trap.
    async fn prepare_dispatch(
        &mut self,
        pipeline: &Resource<PipelineRes>,
        bindings: Vec<BufferBinding>,
        workgroups: [u32; 3],
    ) -> wasmtime::Result<Result<Command, GpuError>> {
        let pipeline = self.table.get(pipeline)?.pipeline.clone();
        let mut ranges = Vec::with_capacity(bindings.len());
        let mut slots = std::collections::BTreeSet::new();
        for b in &bindings {
            let buf = self.table.get(&b.buffer)?;
            ranges.push((
                b.group,
                b.binding,
                buf.buffer.clone(),
                buf.size,
                buf.usage,
                b.offset,
                b.size,
            ));
        }
        let bound = guest_try!(self.ctx.get());
        guest_try!(bound.check_dispatch(workgroups, ranges.len()));
        let max_groups = bound.entry.limits.max_bind_groups;
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
            checked.push(BindRange {
                group,
                binding,
                buffer,
                offset,
                size: len.and_then(wgpu::BufferSize::new),
            });
        }
        let command = guest_try!(
            bound
                .device(move |dev| ops::prepare_dispatch(dev, pipeline, checked, workgroups))
                .await?
        );
        bound.acct.dispatches_recorded += 1;
        Ok(Ok(command))
    }

    /// Submit `commands` and wait for them; account GPU time and dispatches.
    async fn run_commands(
        &mut self,
        commands: Vec<Command>,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let bound = guest_try!(self.ctx.get());
        let dispatches = commands
            .iter()
            .filter(|c| matches!(c, Command::Dispatch { .. }))
            .count() as u64;
        let budget = bound.wait_budget();
        let took = guest_try!(
            bound
                .device(move |dev| ops::submit(dev, &commands, budget))
                .await?
        );
        bound.acct.gpu_time += took;
        bound.acct.dispatches_done += dispatches;
        Ok(Ok(()))
    }
}

impl wit::Host for Gpu<'_> {
    async fn get_adapter_info(&mut self) -> wasmtime::Result<Result<AdapterInfo, GpuError>> {
        let bound = guest_try!(self.ctx.get());
        let e = &bound.entry;
        let (name, backend, kind) = match &e.info {
            Some(i) => (
                i.name.clone(),
                i.backend.to_str().to_string(),
                device_type(i.device_type).to_string(),
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
        let wgpu_usage = to_wgpu_usage(usage);
        let created = bound
            .device(move |dev| ops::create_buffer(dev, size, wgpu_usage))
            .await;
        let buffer = match bound.settle_handle(created)? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        bound.add_bytes(size);
        let res = self.table.push(BufferRes {
            buffer,
            size,
            usage,
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
        if code.len() > MAX_WGSL_BYTES {
            return Ok(Err(invalid(format!(
                "WGSL source of {} bytes exceeds {MAX_WGSL_BYTES}",
                code.len()
            ))));
        }
        guest_try!(bound.reserve_handle());
        bound.acct.kernels_attempted += 1;
        let ep = entry_point.clone();
        let wg_limit = bound.entry.limits.max_compute_workgroup_storage_size;
        let built = bound
            .device(move |dev| ops::create_pipeline(dev, &code, &ep, wg_limit))
            .await;
        let pipeline = match bound.settle_handle(built)? {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        bound.acct.kernels_built += 1;
        let res = self.table.push(PipelineRes {
            pipeline,
            entry_point,
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
        })?))
    }

    async fn submit(
        &mut self,
        commands: Resource<EncoderRes>,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let encoder = self.table.delete(commands)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
        }
        self.run_commands(encoder.commands).await
    }

    async fn dispatch(
        &mut self,
        pipeline: Resource<PipelineRes>,
        bindings: Vec<BufferBinding>,
        x: u32,
        y: u32,
        z: u32,
    ) -> wasmtime::Result<Result<(), GpuError>> {
        let command = guest_try!(
            self.prepare_dispatch(&pipeline, bindings, [x, y, z])
                .await?
        );
        self.run_commands(vec![command]).await
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
        let (buffer, size, usage) = (b.buffer.clone(), b.size, b.usage);
        let bound = guest_try!(self.ctx.get());
        if !usage.contains(BufferUsage::COPY_DST) {
            return Ok(Err(invalid("write needs a buffer with copy-dst usage")));
        }
        guest_try!(check_range("write", offset, data.len() as u64, size));
        if data.is_empty() {
            return Ok(Ok(()));
        }
        let budget = bound.wait_budget();
        let took = guest_try!(
            bound
                .device(move |dev| ops::write_buffer(dev, &buffer, offset, &data, budget))
                .await?
        );
        bound.acct.gpu_time += took;
        Ok(Ok(()))
    }

    async fn read(
        &mut self,
        this: Resource<BufferRes>,
        offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, GpuError>> {
        let b = self.table.get(&this)?;
        let (buffer, buffer_size, usage) = (b.buffer.clone(), b.size, b.usage);
        let bound = guest_try!(self.ctx.get());
        if !usage.contains(BufferUsage::COPY_SRC) {
            return Ok(Err(invalid("read needs a buffer with copy-src usage")));
        }
        guest_try!(check_range("read", offset, size, buffer_size));
        if size == 0 {
            return Ok(Ok(Vec::new()));
        }
        let budget = bound.wait_budget();
        let (bytes, took) = guest_try!(
            bound
                .device(move |dev| ops::read_buffer(dev, &buffer, offset, size, budget))
                .await?
        );
        bound.acct.gpu_time += took;
        Ok(Ok(bytes))
    }

    async fn drop(&mut self, rep: Resource<BufferRes>) -> wasmtime::Result<()> {
        let b = self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.remove_bytes(b.size);
            bound.release_handle();
        }
        drop(b);
        Ok(())
    }
}

impl wit::HostComputePipeline for Gpu<'_> {
    async fn entry_point(&mut self, this: Resource<PipelineRes>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.entry_point.clone())
    }

    async fn drop(&mut self, rep: Resource<PipelineRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
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
        let command = guest_try!(
            self.prepare_dispatch(&pipeline, bindings, [x, y, z])
                .await?
        );
        self.table.get_mut(&this)?.commands.push(command);
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
        let (src_buf, src_size, src_usage) = (src.buffer.clone(), src.size, src.usage);
        let dst = self.table.get(&destination)?;
        let (dst_buf, dst_size, dst_usage) = (dst.buffer.clone(), dst.size, dst.usage);
        guest_try!(self.ctx.get());
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
        self.table.get_mut(&this)?.commands.push(Command::Copy {
            source: src_buf,
            source_offset,
            destination: dst_buf,
            destination_offset,
            size,
        });
        Ok(Ok(()))
    }

    async fn drop(&mut self, rep: Resource<EncoderRes>) -> wasmtime::Result<()> {
        self.table.delete(rep)?;
        if let Ok(bound) = self.ctx.get() {
            bound.release_handle();
        }
        Ok(())
    }
}
