//! # kasbah-gpu: the `kasbah:gpu/compute` capability on wgpu
//!
//! Same shape as every kasbah capability: a per-run context ([`GpuCtx`]), a
//! view borrowed from the store data ([`Gpu`]) and [`add_to_linker`]. The
//! host configuration lists labelled adapter entries ([`GpuConfig`]); the
//! [`GpuRegistry`] resolves them against what a GPU process's probe reports
//! and binds each run to one entry in a zone its policy allows. The guest
//! never chooses a backend or an adapter.
//!
//! ## Decisions
//!
//! **GPU work happens in GPU processes, never in the platform process.**
//! Shader admission and compilation (naga) and every wgpu and driver call
//! run in a separate process, `kasbah gpu-worker serve` (the `kasbah` binary
//! itself, or `kasbah-gpu-worker`), supervised by the platform
//! (`process.rs`; the GPU process's side is `child.rs`). Even adapter
//! enumeration happens there (`gpu-worker probe`, once per platform
//! process): the platform never loads a GPU driver. Requests and replies
//! cross a Unix socket (`proto.rs`); buffer contents cross a shared memory
//! region (a memfd mapped on both sides), not the socket. Each request waits
//! at most until the run's deadline; past it, or when the run ends while a
//! request is outstanding, the platform **kills** the process (SIGKILL): on
//! lavapipe that stops the CPU threads at once (nothing else can: a
//! submitted dispatch cannot be interrupted), on a GPU the driver tears the
//! context down. A crash, abort or stack overflow inside naga, wgpu or the
//! driver ends that process only; its run gets `device-lost` and the next
//! run a fresh process. The platform keeps no wgpu object at all.
//!
//! **One process per device, one run at a time, pooled.** A run's first
//! GPU call takes an idle GPU process of its adapter entry (or starts one);
//! the run has it alone until it ends. A healthy process whose run ended
//! with nothing in flight is reset (every object of that run destroyed) and
//! pooled (`max_idle_devices`); any other is killed, and a replacement is
//! started in the background so the next run does not pay the start-up
//! (instance + device: tens to hundreds of milliseconds on lavapipe).
//! Consequences: an invalid shader, a hog, a crash or a hung device in one
//! run cannot show up as an error, a stall or stale state in another, and
//! killing a process never takes another tenant's work with it; the price
//! is one process (and one device context) per concurrent GPU run.
//!
//! **Warm state is one tenant's, in pooled GPU processes** (issue 15).
//! Dataset-backed buffers (`buffer-from-dataset`, `resident.rs`) stay
//! resident in the process after the run, and compiled kernels stay cached
//! (per WGSL hash and entry point). The platform keeps the record
//! (`warm.rs`): which tenant a process holds state for, what is resident
//! and cached under which id (warm ids carry `proto::WARM`; `Reset`
//! keeps them), and the resident bytes per adapter entry and per tenant
//! (host config and policy budgets, LRU eviction). A run takes an idle
//! process already holding its tenant's state when there is one; a process
//! that held another tenant's state is purged (every warm object
//! destroyed, ordered before the run's first request) and its record
//! forgotten, so nothing of one tenant is even present while another's run
//! uses the process. Warm hits cost no request; the uploading run pays the
//! upload. Runs without a tenant get a key of their own.
//!
//! **Two WIT versions, one implementation.** `kasbah:gpu@0.2.0`
//! ([`bindings`]) is implemented in `host.rs`; `@0.1.0`
//! ([`bindings_v1`]) is linked too and converted in `v1.rs`, so guests
//! built before 0.2.0 run unchanged.
//!
//! **Every GPU call is synchronous from the guest's point of view.**
//! `submit`, `dispatch`, `buffer.write` and `buffer.read` return once the
//! GPU has finished. Nothing a run submitted is pending when its next call
//! starts or when it ends, and GPU time is attributable per run: the
//! **billed GPU time** is the wall time of every call the GPU process
//! worked on for the run, until its answer or its kill (a hog pays for what
//! it took, not for a submission).
//!
//! **Work is counted and bounded before it is sent.** Per policy (`[gpu]`):
//! bytes per buffer and alive at once, dispatches, workgroups per dimension,
//! kernels, **invocations** (workgroups × workgroup size) per dispatch and
//! per run, and **bytes moved** (written, read back, copied) per run.
//! Shaders are admitted before the compiler sees them (`shader.rs`: a
//! linear lexical pre-pass bounds size, nesting and expression-chain
//! length; after parsing, WGSL's 8 KiB limits on private and function
//! variables and the workgroup storage limit are enforced), and compiling
//! is bounded by the run's deadline like everything else.
//!
//! **Errors: values for the guest, traps for host faults.** Policy refusals
//! (`denied`), missing adapters (`unavailable`), quota checks
//! (`out-of-quota`), compile errors (`invalid-shader`), argument and
//! validation errors (`invalid-argument`) and a lost device or GPU process
//! (`device-lost`) are `gpu-error` values. A handle that is not in the run's
//! table (forged, already dropped, wrong type) is a host fault and traps.
//! Every wgpu call in the GPU process is additionally wrapped in validation,
//! internal and out-of-memory error scopes, and an uncaptured-error handler
//! replaces wgpu's default (which panics).
//!
//! **Isolation guarantees and where they hold.** Resources live in the run's
//! wasmtime `ResourceTable` as ids of objects in the run's GPU process; the
//! process is reset or killed after the run. Fresh buffers read as zeros
//! (wgpu's lazy zero-initialisation; buffers are never mapped at creation).
//! Shaders go through the checked `create_shader_module` (bounds checks on)
//! and pipelines are created with `zero_initialize_workgroup_memory: true`.
//! Devices are requested with no optional features and with limits clamped
//! to the adapter's ([`registry::device_limits`]).
//!
//! **Transient memory.** A write or read-back moves through the 16 MiB
//! shared region in chunks; the GPU process stages it (wgpu staging memory,
//! a read-back buffer of at most one chunk). Both are bounded by the buffer
//! size (so by `max_buffer_bytes`) and live only for the call.

mod child;
mod config;
mod ctx;
mod host;
mod ops;
mod process;
mod proto;
pub mod registry;
mod resident;
pub mod restore;
mod shader;
mod v1;
mod warm;

pub use config::{AdapterConfig, DEFAULT_RESIDENT_BYTES, GpuConfig};
pub use ctx::{GpuCtx, GpuDataset, MAX_LIVE_HANDLES};
pub use host::{BufferRes, EncoderRes, PipelineRes};
pub use process::{PROTOCOL, set_worker_program};
pub use registry::{AdapterStatus, GpuRegistry};
pub use restore::{RestoreGate, RestorePlan, RestoreStats, WarmRecord};
pub use warm::MAX_CACHED_KERNELS;

/// Entry point of a GPU process: `args` are what follows `gpu-worker` on
/// its command line. The `kasbah` binary and `kasbah-gpu-worker` call this
/// when started as `… gpu-worker probe|serve`; nobody else should.
pub fn gpu_worker_main(args: &[String]) -> i32 {
    child::main(args)
}

/// One adapter a GPU process of this host sees (`kasbah gpu adapters`):
/// what an operator matches an [`AdapterConfig`] entry against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeenAdapter {
    /// The adapter's name (an entry's `name` is a substring of it).
    pub name: String,
    /// `vulkan`, `gl`, … (an entry's `backend`).
    pub backend: String,
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu` or `other`.
    pub device_type: String,
    pub driver: String,
    pub vendor: u32,
    pub device: u32,
    /// Whether it runs compute shaders (entries on one that does not are
    /// unusable).
    pub compute: bool,
}

/// The adapters a GPU process of this host sees on `backend` (any when
/// `None`), probed in a GPU process as the platform does at start.
pub fn adapters(backend: Option<&str>) -> Result<Vec<SeenAdapter>, String> {
    let probe = process::probe(backend)?;
    Ok(probe
        .adapters
        .iter()
        .map(|a| SeenAdapter {
            name: a.key.name.clone(),
            backend: a.key.backend.clone(),
            device_type: a.device_type.clone(),
            driver: a.driver.clone(),
            vendor: a.key.vendor,
            device: a.key.device,
            compute: a.compute,
        })
        .collect())
}

/// A wgpu instance for in-process use by benchmarks' native baselines
/// (the platform itself never creates one: its GPU work happens in GPU
/// processes).
pub fn native_instance() -> wgpu::Instance {
    child::instance(wgpu::Backends::all())
}

use wasmtime::component::{HasData, Linker, ResourceTable};

/// Host bindings of `kasbah:gpu@0.2.0` (world `gpu-host`). Other crates
/// reuse them with bindgen's
/// `with: { "kasbah:gpu@0.2.0": kasbah_gpu::bindings::kasbah::gpu }`.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/kasbah-gpu-0.2.0",
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

/// Host bindings of `kasbah:gpu@0.1.0`, served by the same implementation
/// (`v1.rs` converts the types). Reuse them with
/// `with: { "kasbah:gpu@0.1.0": kasbah_gpu::bindings_v1::kasbah::gpu }`.
pub mod bindings_v1 {
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

/// Link `kasbah:gpu/compute` into `linker`: `@0.2.0` and `@0.1.0` (the
/// same implementation, the same resource table).
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> Gpu<'_>,
) -> wasmtime::Result<()> {
    bindings::kasbah::gpu::compute::add_to_linker::<T, Gpu<'static>>(linker, get)?;
    bindings_v1::kasbah::gpu::compute::add_to_linker::<T, Gpu<'static>>(linker, get)
}
