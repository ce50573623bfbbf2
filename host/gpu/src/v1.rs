//! `kasbah:gpu@0.1.0`, served by the `@0.2.0` implementation (`host.rs`).
//!
//! Both versions are linked, so guests built before 0.2.0 run unchanged.
//! The resources are the same Rust types in the same resource table; only
//! the records, flags and the error variant are distinct generated types,
//! converted here field by field. 0.1.0 has no `buffer-from-dataset` and
//! its `quota` record no `max-resident-bytes`.

use wasmtime::component::Resource;

use crate::Gpu;
use crate::bindings::kasbah::gpu::compute as v2;
use crate::bindings_v1::kasbah::gpu::compute as v1;
use crate::host::{BufferRes, EncoderRes, PipelineRes};

fn error(e: v2::GpuError) -> v1::GpuError {
    match e {
        v2::GpuError::Denied(m) => v1::GpuError::Denied(m),
        v2::GpuError::Unavailable(m) => v1::GpuError::Unavailable(m),
        v2::GpuError::InvalidShader(m) => v1::GpuError::InvalidShader(m),
        v2::GpuError::OutOfQuota(m) => v1::GpuError::OutOfQuota(m),
        v2::GpuError::InvalidArgument(m) => v1::GpuError::InvalidArgument(m),
        v2::GpuError::DeviceLost(m) => v1::GpuError::DeviceLost(m),
    }
}

fn result<T, U>(
    r: wasmtime::Result<Result<T, v2::GpuError>>,
    f: impl FnOnce(T) -> U,
) -> wasmtime::Result<Result<U, v1::GpuError>> {
    r.map(|r| r.map(f).map_err(error))
}

fn usage_in(u: v1::BufferUsage) -> v2::BufferUsage {
    let mut out = v2::BufferUsage::empty();
    for (a, b) in [
        (v1::BufferUsage::STORAGE, v2::BufferUsage::STORAGE),
        (v1::BufferUsage::UNIFORM, v2::BufferUsage::UNIFORM),
        (v1::BufferUsage::COPY_SRC, v2::BufferUsage::COPY_SRC),
        (v1::BufferUsage::COPY_DST, v2::BufferUsage::COPY_DST),
    ] {
        if u.contains(a) {
            out |= b;
        }
    }
    out
}

fn usage_out(u: v2::BufferUsage) -> v1::BufferUsage {
    let mut out = v1::BufferUsage::empty();
    for (a, b) in [
        (v2::BufferUsage::STORAGE, v1::BufferUsage::STORAGE),
        (v2::BufferUsage::UNIFORM, v1::BufferUsage::UNIFORM),
        (v2::BufferUsage::COPY_SRC, v1::BufferUsage::COPY_SRC),
        (v2::BufferUsage::COPY_DST, v1::BufferUsage::COPY_DST),
    ] {
        if u.contains(a) {
            out |= b;
        }
    }
    out
}

fn bindings(b: Vec<v1::BufferBinding>) -> Vec<v2::BufferBinding> {
    b.into_iter()
        .map(|b| v2::BufferBinding {
            group: b.group,
            binding: b.binding,
            buffer: b.buffer,
            offset: b.offset,
            size: b.size,
        })
        .collect()
}

fn info(i: v2::AdapterInfo) -> v1::AdapterInfo {
    let l = i.limits;
    let q = i.quota;
    v1::AdapterInfo {
        label: i.label,
        name: i.name,
        backend: i.backend,
        device_type: i.device_type,
        zone: i.zone,
        limits: v1::AdapterLimits {
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
        },
        quota: v1::Quota {
            max_buffer_bytes: q.max_buffer_bytes,
            max_total_bytes: q.max_total_bytes,
            max_dispatches: q.max_dispatches,
            max_workgroups_per_dimension: q.max_workgroups_per_dimension,
            max_kernels: q.max_kernels,
        },
    }
}

impl v1::Host for Gpu<'_> {
    async fn get_adapter_info(
        &mut self,
    ) -> wasmtime::Result<Result<v1::AdapterInfo, v1::GpuError>> {
        result(v2::Host::get_adapter_info(self).await, info)
    }

    async fn create_buffer(
        &mut self,
        size: u64,
        usage: v1::BufferUsage,
    ) -> wasmtime::Result<Result<Resource<BufferRes>, v1::GpuError>> {
        result(
            v2::Host::create_buffer(self, size, usage_in(usage)).await,
            |r| r,
        )
    }

    async fn create_compute_pipeline(
        &mut self,
        code: String,
        entry_point: String,
    ) -> wasmtime::Result<Result<Resource<PipelineRes>, v1::GpuError>> {
        result(
            v2::Host::create_compute_pipeline(self, code, entry_point).await,
            |r| r,
        )
    }

    async fn create_command_encoder(
        &mut self,
    ) -> wasmtime::Result<Result<Resource<EncoderRes>, v1::GpuError>> {
        result(v2::Host::create_command_encoder(self).await, |r| r)
    }

    async fn submit(
        &mut self,
        commands: Resource<EncoderRes>,
    ) -> wasmtime::Result<Result<(), v1::GpuError>> {
        result(v2::Host::submit(self, commands).await, |r| r)
    }

    async fn dispatch(
        &mut self,
        pipeline: Resource<PipelineRes>,
        b: Vec<v1::BufferBinding>,
        x: u32,
        y: u32,
        z: u32,
    ) -> wasmtime::Result<Result<(), v1::GpuError>> {
        result(
            v2::Host::dispatch(self, pipeline, bindings(b), x, y, z).await,
            |r| r,
        )
    }
}

impl v1::HostBuffer for Gpu<'_> {
    async fn size(&mut self, this: Resource<BufferRes>) -> wasmtime::Result<u64> {
        v2::HostBuffer::size(self, this).await
    }

    async fn usage(&mut self, this: Resource<BufferRes>) -> wasmtime::Result<v1::BufferUsage> {
        v2::HostBuffer::usage(self, this).await.map(usage_out)
    }

    async fn write(
        &mut self,
        this: Resource<BufferRes>,
        offset: u64,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), v1::GpuError>> {
        result(v2::HostBuffer::write(self, this, offset, data).await, |r| r)
    }

    async fn read(
        &mut self,
        this: Resource<BufferRes>,
        offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<Vec<u8>, v1::GpuError>> {
        result(v2::HostBuffer::read(self, this, offset, size).await, |r| r)
    }

    async fn drop(&mut self, rep: Resource<BufferRes>) -> wasmtime::Result<()> {
        v2::HostBuffer::drop(self, rep).await
    }
}

impl v1::HostComputePipeline for Gpu<'_> {
    async fn entry_point(&mut self, this: Resource<PipelineRes>) -> wasmtime::Result<String> {
        v2::HostComputePipeline::entry_point(self, this).await
    }

    async fn drop(&mut self, rep: Resource<PipelineRes>) -> wasmtime::Result<()> {
        v2::HostComputePipeline::drop(self, rep).await
    }
}

impl v1::HostCommandEncoder for Gpu<'_> {
    async fn dispatch_workgroups(
        &mut self,
        this: Resource<EncoderRes>,
        pipeline: Resource<PipelineRes>,
        b: Vec<v1::BufferBinding>,
        x: u32,
        y: u32,
        z: u32,
    ) -> wasmtime::Result<Result<(), v1::GpuError>> {
        result(
            v2::HostCommandEncoder::dispatch_workgroups(self, this, pipeline, bindings(b), x, y, z)
                .await,
            |r| r,
        )
    }

    async fn copy_buffer_to_buffer(
        &mut self,
        this: Resource<EncoderRes>,
        source: Resource<BufferRes>,
        source_offset: u64,
        destination: Resource<BufferRes>,
        destination_offset: u64,
        size: u64,
    ) -> wasmtime::Result<Result<(), v1::GpuError>> {
        result(
            v2::HostCommandEncoder::copy_buffer_to_buffer(
                self,
                this,
                source,
                source_offset,
                destination,
                destination_offset,
                size,
            )
            .await,
            |r| r,
        )
    }

    async fn drop(&mut self, rep: Resource<EncoderRes>) -> wasmtime::Result<()> {
        v2::HostCommandEncoder::drop(self, rep).await
    }
}
