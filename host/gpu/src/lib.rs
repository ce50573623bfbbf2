//! # kasbah-gpu: the `kasbah:gpu/compute` capability on wgpu
//!
//! Same shape as every kasbah capability: a per-run context ([`GpuCtx`]), a
//! view borrowed from the store data ([`Gpu`]) and [`add_to_linker`]. The
//! host configuration lists labelled adapter entries ([`GpuConfig`]); the
//! [`GpuRegistry`] resolves them (one wgpu `Instance` per process, see
//! [`instance_with`]) and binds each run to one entry in a zone its policy
//! allows. The guest never chooses a backend or an adapter.
//!
//! ## Decisions
//!
//! **Runs do not share a `wgpu::Device` while they run.** Each run that
//! touches the GPU gets a device of its own for its whole duration, taken on
//! its first GPU call. After the run, once its buffers are destroyed, a
//! device that is healthy and idle goes back to a small per-entry pool
//! (`max_idle_devices`) for a later run, because opening a device costs
//! milliseconds. A device is never reused if it was lost, if wgpu reported an
//! error outside the host's error scopes, if a wait for it ran past the run's
//! deadline, or if the run ended while one of its GPU calls was still in
//! flight: such devices are dropped. Reuse never exposes data, because every
//! buffer a run creates is new and wgpu zero-fills buffers before first use.
//! Consequences: an invalid shader, a bad binding or a hung or lost device
//! in one run cannot show up as an error, a stall or stale state in another
//! concurrent run; the price is one device (and one thread) per concurrent
//! GPU run.
//!
//! **wgpu calls never run on the async executor.** Each device lives on its
//! own worker thread (16 MiB stack: naga's WGSL front end recurses); host
//! functions are `async` in the wasmtime bindings, send a job to the worker
//! and await a oneshot reply. Error scopes, which are thread-local in wgpu,
//! are pushed and popped inside one job on that thread. The tokio runtime
//! flavour does not matter (no `block_in_place`, no `spawn_blocking`), and a
//! run whose deadline passes while the GPU works is abandoned by the
//! executor while the worker finishes (its device is then discarded).
//!
//! **Every GPU call is synchronous from the guest's point of view.**
//! `submit`, `dispatch`, `buffer.write` and `buffer.read` return once the
//! GPU has finished, waiting at most until the run's deadline (after which
//! the device counts as lost). Nothing a run submitted is pending when its
//! next call starts or when it ends, GPU time is attributable per run, and
//! wgpu's staging memory for writes cannot pile up.
//!
//! **Errors: values for the guest, traps for host faults.** Policy refusals
//! (`denied`), missing adapters (`unavailable`), quota checks
//! (`out-of-quota`), compile errors (`invalid-shader`), argument and
//! validation errors (`invalid-argument`) and a lost device (`device-lost`)
//! are `gpu-error` values. A handle that is not in the run's table (forged,
//! already dropped, wrong type) is a host fault and traps, as does a panic
//! inside a GPU job. Quotas are checked in the host call before wgpu sees
//! the request; every wgpu call is additionally wrapped in validation,
//! internal and out-of-memory error scopes, and an uncaptured-error handler
//! replaces wgpu's default (which panics).
//!
//! **Isolation guarantees and where they hold.** Resources live in the run's
//! wasmtime `ResourceTable` and die with the store (buffers are destroyed on
//! drop). Fresh buffers read as zeros (wgpu's lazy zero-initialisation;
//! buffers are never mapped at creation). Shaders go through the checked
//! `create_shader_module` (bounds checks on) and pipelines are created with
//! `zero_initialize_workgroup_memory: true`; the host checks the workgroup
//! storage an entry point uses against the device limit itself, because
//! wgpu 30 does not (`shader.rs`). Devices are requested with no
//! optional features and with limits clamped to the adapter's
//! ([`registry::device_limits`]).
//!
//! **Transient host-side memory.** `buffer.read` copies through a staging
//! buffer of the size read and `buffer.write` through wgpu's staging
//! memory; both are bounded by the buffer's size (so by
//! `max_buffer_bytes`), live only for the call, and are not counted in
//! `max_total_bytes`.
//!
//! **Known limit.** A kernel that runs for a very long time cannot be
//! preempted on a software adapter (lavapipe) or by wgpu. The run still ends
//! at its deadline and its device is quarantined, but the device's worker
//! thread stays busy until the kernel finishes. Per-dimension workgroup
//! quotas bound the size of one dispatch; real GPUs add their driver's
//! watchdog.

mod child;
mod config;
mod ctx;
mod host;
mod ops;
mod process;
mod proto;
pub mod registry;
mod shader;

pub use config::{AdapterConfig, GpuConfig};
pub use ctx::{GpuCtx, MAX_LIVE_HANDLES};
pub use host::{BufferRes, EncoderRes, PipelineRes};
pub use process::{PROTOCOL, set_worker_program};
pub use registry::{AdapterStatus, GpuRegistry};

/// Entry point of a GPU process: `args` are what follows `gpu-worker` on
/// its command line. The `kasbah` binary and `kasbah-gpu-worker` call this
/// when started as `… gpu-worker probe|serve`; nobody else should.
pub fn gpu_worker_main(args: &[String]) -> i32 {
    child::main(args)
}

/// A wgpu instance for in-process use by benchmarks' native baselines
/// (the platform itself never creates one: its GPU work happens in GPU
/// processes).
pub fn native_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL;
    wgpu::Instance::new(desc.with_env())
}

use wasmtime::component::{HasData, Linker, ResourceTable};

/// Host bindings of `kasbah:gpu` (world `gpu-host`). Other crates reuse them
/// with bindgen's `with: { "kasbah:gpu": kasbah_gpu::bindings::kasbah::gpu }`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/kasbah-gpu",
        world: "kasbah:gpu/gpu-host",
        imports: { default: async | trappable },
        with: {
            "kasbah:gpu/compute.buffer": crate::host::BufferRes,
            "kasbah:gpu/compute.compute-pipeline": crate::host::PipelineRes,
            "kasbah:gpu/compute.command-encoder": crate::host::EncoderRes,
        },
    });
}

pub use bindings::kasbah::gpu::compute::GpuError;

/// The view the generated bindings call into: the run's GPU context and the
/// store's resource table.
pub struct Gpu<'a> {
    pub ctx: &'a mut GpuCtx,
    pub table: &'a mut ResourceTable,
}

impl<'a> Gpu<'a> {
    pub fn new(ctx: &'a mut GpuCtx, table: &'a mut ResourceTable) -> Self {
        Gpu { ctx, table }
    }
}

impl HasData for Gpu<'static> {
    type Data<'a> = Gpu<'a>;
}

/// Link `kasbah:gpu/compute` into `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Gpu<'_>,
) -> wasmtime::Result<()> {
    bindings::kasbah::gpu::compute::add_to_linker::<T, Gpu<'static>>(linker, get)
}
