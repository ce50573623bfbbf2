//! The GPU process: `kasbah gpu-worker serve` (or the `kasbah-gpu-worker`
//! binary). It owns one wgpu device and does every wgpu and naga call of the
//! runs it serves, one request at a time, on a thread with a large stack.
//! It trusts the platform (its only peer), not the guest: every request was
//! checked by the platform, and everything here still runs inside wgpu error
//! scopes. A crash, an abort or a stack overflow here ends this process
//! only; the platform sees the socket close and fails the run with
//! `device-lost`.
//!
//! `probe` mode lists the adapters it can see and exits, so the platform
//! process never loads a GPU driver.

use std::collections::HashMap;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use crate::ops;
use crate::proto::{
    self, AdapterKey, Cmd, Condition, Dispatch, Fault, Id, ProbedAdapter, Reply, Request, Value,
};

/// fd of the protocol socket in the GPU process.
pub(crate) const SOCKET_FD: i32 = 3;
/// fd of the shared data region in the GPU process.
pub(crate) const SHM_FD: i32 = 4;

/// Stack of the thread that serves requests: naga's WGSL front end and
/// validator recurse. The admission pre-pass bounds how deep; this leaves
/// room on top (address space only until touched).
const SERVE_STACK_BYTES: usize = 256 << 20;

/// Entry point of a GPU process, from `args` after `gpu-worker`.
/// Returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    // SAFETY: the platform started this process with the socket at
    // SOCKET_FD and the shared region at SHM_FD (see `process.rs`); nothing
    // else in this process owns them.
    let socket = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    match args.first().map(String::as_str) {
        Some("probe") => probe(socket, args.get(1).map(String::as_str)),
        Some("serve") => {
            let shm = unsafe { std::fs::File::from_raw_fd(SHM_FD) };
            let served = std::thread::Builder::new()
                .name("kasbah-gpu-serve".into())
                .stack_size(SERVE_STACK_BYTES)
                .spawn(move || serve(socket, shm));
            match served.map(|h| h.join()) {
                Ok(Ok(code)) => code,
                _ => 70,
            }
        }
        _ => {
            eprintln!("usage: gpu-worker probe|serve (started by kasbah, not by hand)");
            64
        }
    }
}

fn backends(name: Option<&str>) -> wgpu::Backends {
    match name {
        Some("vulkan") => wgpu::Backends::VULKAN,
        Some("metal") => wgpu::Backends::METAL,
        Some("dx12") => wgpu::Backends::DX12,
        Some("gl") => wgpu::Backends::GL,
        _ => wgpu::Backends::all(),
    }
}

pub(crate) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    // Debug and validation-layer flags off whatever the build profile: the
    // validation that matters to isolation is wgpu-core's, always on.
    desc.flags = wgpu::InstanceFlags::VALIDATION_INDIRECT_CALL;
    wgpu::Instance::new(desc.with_env())
}

fn key_of(info: &wgpu::AdapterInfo) -> AdapterKey {
    AdapterKey {
        backend: info.backend.to_str().to_string(),
        name: info.name.clone(),
        vendor: info.vendor,
        device: info.device,
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

fn probe(mut socket: UnixStream, backend: Option<&str>) -> i32 {
    let b = backends(backend);
    let adapters = pollster::block_on(instance(b).enumerate_adapters(b));
    let found: Vec<ProbedAdapter> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            ProbedAdapter {
                key: key_of(&info),
                device_type: device_type(info.device_type).into(),
                driver: info.driver.clone(),
                limits: a.limits(),
                compute: a
                    .get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
            }
        })
        .collect();
    let hello = (crate::process::PROTOCOL, found);
    match proto::send(&mut socket, &hello) {
        Ok(()) => 0,
        Err(_) => 71,
    }
}

/// What this process knows about its device's health. Written by wgpu
/// callbacks (device lost, uncaptured error) and by `ops`.
#[derive(Default)]
pub(crate) struct Health {
    condition: Mutex<Condition>,
}

impl Health {
    pub(crate) fn mark_lost(&self, why: String) {
        let mut c = self
            .condition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !matches!(*c, Condition::Lost(_)) {
            *c = Condition::Lost(why);
        }
    }

    pub(crate) fn mark_dirty(&self, why: String) {
        let mut c = self
            .condition
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if *c == Condition::Healthy {
            *c = Condition::Dirty(why);
        }
    }

    pub(crate) fn lost(&self) -> Option<String> {
        match &*self
            .condition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Condition::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    fn get(&self) -> Condition {
        self.condition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The device and its queue.
pub(crate) struct DeviceCtx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub health: Arc<Health>,
}

fn open(label: &str, key: &AdapterKey, limits: &wgpu::Limits) -> Result<DeviceCtx, String> {
    let b = backends(Some(key.backend.as_str()));
    let adapters = pollster::block_on(instance(b).enumerate_adapters(b));
    let adapter = adapters
        .into_iter()
        .find(|a| key_of(&a.get_info()) == *key)
        .ok_or_else(|| format!("adapter {} on {} is gone", key.name, key.backend))?;
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
    let health = Arc::new(Health::default());
    // wgpu's default handler panics. Every call is wrapped in error scopes,
    // so reaching this means something escaped them: keep the message and
    // never hand this device to another run.
    let h = Arc::clone(&health);
    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
        h.mark_dirty(format!("uncaptured GPU error: {e}"));
    }));
    let h = Arc::clone(&health);
    device.set_device_lost_callback(move |reason, message| {
        h.mark_lost(format!("device lost ({reason:?}): {message}"));
    });
    Ok(DeviceCtx {
        device,
        queue,
        health,
    })
}

/// The process's objects. A run's own objects (`buffers`, `pipelines`,
/// `prepared`) are dropped by `Reset` after every run. **Warm** objects
/// (ids with [`proto::WARM`]: dataset-backed buffers, cached kernels) stay
/// for the next run of the same tenant; the platform decides which exist
/// (`Evict`) and drops them all before another tenant gets this process
/// (`Purge`), so nothing of one tenant is even present while another runs.
struct State {
    dev: DeviceCtx,
    shm: memmap2::MmapMut,
    buffers: HashMap<Id, wgpu::Buffer>,
    pipelines: HashMap<Id, wgpu::ComputePipeline>,
    prepared: HashMap<Id, ops::Command>,
    warm_buffers: HashMap<Id, wgpu::Buffer>,
    warm_pipelines: HashMap<Id, wgpu::ComputePipeline>,
}

fn unknown(what: &str, id: Id) -> Fault {
    Fault::InvalidArgument(format!("unknown {what} {id}"))
}

impl State {
    fn buffer(&self, id: Id) -> Result<&wgpu::Buffer, Fault> {
        let map = if proto::is_warm(id) {
            &self.warm_buffers
        } else {
            &self.buffers
        };
        map.get(&id).ok_or_else(|| unknown("buffer", id))
    }

    fn pipeline(&self, id: Id) -> Result<&wgpu::ComputePipeline, Fault> {
        let map = if proto::is_warm(id) {
            &self.warm_pipelines
        } else {
            &self.pipelines
        };
        map.get(&id).ok_or_else(|| unknown("pipeline", id))
    }

    fn drop_warm(&mut self, id: Id) {
        if let Some(b) = self.warm_buffers.remove(&id) {
            b.destroy();
        }
        self.warm_pipelines.remove(&id);
    }

    fn shm_range(&self, len: u64) -> Result<usize, Fault> {
        usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.shm.len())
            .ok_or_else(|| Fault::InvalidArgument(format!("transfer of {len} bytes")))
    }

    fn dispatch(&self, d: Dispatch) -> Result<ops::Command, Fault> {
        let pipeline = self.pipeline(d.pipeline)?.clone();
        let mut ranges = Vec::with_capacity(d.bindings.len());
        for b in d.bindings {
            ranges.push(ops::BindRange {
                group: b.group,
                binding: b.binding,
                buffer: self.buffer(b.buffer)?.clone(),
                offset: b.offset,
                size: b.size.and_then(wgpu::BufferSize::new),
            });
        }
        ops::prepare_dispatch(&self.dev, pipeline, ranges, d.workgroups)
    }

    fn handle(&mut self, req: Request) -> Result<Value, Fault> {
        match req {
            Request::Open { .. } => Err(Fault::InvalidArgument("already open".into())),
            Request::CreateBuffer { id, size, usage } => {
                let usage = wgpu::BufferUsages::from_bits(usage)
                    .ok_or_else(|| Fault::InvalidArgument("buffer usage".into()))?;
                let buffer = ops::create_buffer(&self.dev, size, usage)?;
                if proto::is_warm(id) {
                    self.warm_buffers.insert(id, buffer);
                } else {
                    self.buffers.insert(id, buffer);
                }
                Ok(Value::Done)
            }
            Request::DestroyBuffer { id } => {
                if let Some(b) = self.buffers.remove(&id) {
                    b.destroy();
                }
                Ok(Value::Done)
            }
            Request::Write {
                id,
                offset,
                len,
                flush,
            } => {
                let len = self.shm_range(len)?;
                let buffer = self.buffer(id)?;
                let data = self.shm.get(..len).unwrap_or_default();
                ops::write_buffer(&self.dev, buffer, offset, data, flush)?;
                Ok(Value::Done)
            }
            Request::Read { id, offset, size } => {
                let len = self.shm_range(size)?;
                let buffer = match proto::is_warm(id) {
                    true => self.warm_buffers.get(&id),
                    false => self.buffers.get(&id),
                }
                .ok_or_else(|| unknown("buffer", id))?;
                let out = self
                    .shm
                    .get_mut(..len)
                    .ok_or_else(|| Fault::InvalidArgument("read size".into()))?;
                ops::read_buffer(&self.dev, buffer, offset, out)?;
                Ok(Value::Done)
            }
            Request::CreatePipeline {
                id,
                code,
                entry_point,
                workgroup_storage_limit,
            } => {
                let (pipeline, facts) =
                    ops::create_pipeline(&self.dev, &code, &entry_point, workgroup_storage_limit)?;
                if proto::is_warm(id) {
                    self.warm_pipelines.insert(id, pipeline);
                } else {
                    self.pipelines.insert(id, pipeline);
                }
                Ok(Value::Pipeline {
                    workgroup_size: facts.workgroup_size,
                    writable: facts.writable,
                })
            }
            Request::DropPipeline { id } => {
                self.pipelines.remove(&id);
                Ok(Value::Done)
            }
            Request::Prepare { id, dispatch } => {
                let command = self.dispatch(dispatch)?;
                self.prepared.insert(id, command);
                Ok(Value::Done)
            }
            Request::Forget { ids } => {
                for id in ids {
                    self.prepared.remove(&id);
                }
                Ok(Value::Done)
            }
            Request::Submit { commands } => {
                let mut encoded = Vec::with_capacity(commands.len());
                for c in commands {
                    encoded.push(match c {
                        Cmd::Dispatch(id) => self
                            .prepared
                            .remove(&id)
                            .ok_or_else(|| unknown("dispatch", id))?,
                        Cmd::Copy {
                            source,
                            source_offset,
                            destination,
                            destination_offset,
                            size,
                        } => ops::Command::Copy {
                            source: self.buffer(source)?.clone(),
                            source_offset,
                            destination: self.buffer(destination)?.clone(),
                            destination_offset,
                            size,
                        },
                    });
                }
                ops::submit(&self.dev, &encoded)?;
                Ok(Value::Done)
            }
            Request::DispatchNow { dispatch } => {
                let command = self.dispatch(dispatch)?;
                ops::submit(&self.dev, std::slice::from_ref(&command))?;
                Ok(Value::Done)
            }
            Request::Reset => {
                self.prepared.clear();
                self.pipelines.clear();
                for (_, b) in self.buffers.drain() {
                    b.destroy();
                }
                // Let wgpu free what the destroyed objects held.
                let _ = self.dev.device.poll(wgpu::PollType::Poll);
                Ok(Value::Done)
            }
            Request::Evict { ids } => {
                for id in ids {
                    self.drop_warm(id);
                }
                let _ = self.dev.device.poll(wgpu::PollType::Poll);
                Ok(Value::Done)
            }
            Request::Purge => {
                self.warm_pipelines.clear();
                for (_, b) in self.warm_buffers.drain() {
                    b.destroy();
                }
                let _ = self.dev.device.poll(wgpu::PollType::Poll);
                Ok(Value::Done)
            }
        }
    }
}

fn serve(mut socket: UnixStream, shm: std::fs::File) -> i32 {
    // SAFETY: the region is shared with the platform only, which never
    // touches it while a request is outstanding; this process reads and
    // writes it only while serving one.
    let shm = match unsafe { memmap2::MmapMut::map_mut(&shm) } {
        Ok(m) => m,
        Err(_) => return 72,
    };
    let open_reply = |result: Result<Value, Fault>| Reply {
        result,
        condition: Condition::Healthy,
    };
    let first: Request = match proto::recv(&mut socket) {
        Ok(r) => r,
        Err(_) => return 73,
    };
    let Request::Open {
        label,
        adapter,
        limits,
    } = first
    else {
        return 74;
    };
    let dev = match open(&label, &adapter, &limits) {
        Ok(d) => d,
        Err(e) => {
            let _ = proto::send(&mut socket, &open_reply(Err(Fault::Unavailable(e))));
            return 0;
        }
    };
    if proto::send(&mut socket, &open_reply(Ok(Value::Done))).is_err() {
        return 0;
    }
    let mut state = State {
        dev,
        shm,
        buffers: HashMap::new(),
        pipelines: HashMap::new(),
        prepared: HashMap::new(),
        warm_buffers: HashMap::new(),
        warm_pipelines: HashMap::new(),
    };
    // The platform closes the socket when it no longer needs this device.
    while let Ok(req) = proto::recv::<Request>(&mut socket) {
        let result = state.handle(req);
        let reply = Reply {
            result,
            condition: state.dev.health.get(),
        };
        if proto::send(&mut socket, &reply).is_err() {
            break;
        }
    }
    0
}
