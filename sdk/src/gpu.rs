//! GPU compute through `kasbah:gpu/compute` (WebGPU compute semantics).
//!
//! ```ignore
//! use kasbah_sdk::gpu::{Buffer, Kernel, workgroups_for};
//!
//! let x = Buffer::from_slice(&[1.0f32, 2.0, 3.0, 4.0])?;
//! let kernel = Kernel::new(
//!     "@group(0) @binding(0) var<storage, read_write> x: array<f32>;
//!      @compute @workgroup_size(64) fn double(@builtin(global_invocation_id) id: vec3<u32>) {
//!          if id.x < arrayLength(&x) { x[id.x] = 2.0 * x[id.x]; }
//!      }",
//!     "double",
//! )?;
//! kernel.dispatch().bind(0, &x).workgroups(workgroups_for(4, 64), 1, 1).run()?;
//! let doubled: Vec<f32> = x.read()?;
//! ```
//!
//! The host decides which adapter a run uses (in a zone the tenant's policy
//! allows) and checks every call against the tenant's GPU quota; a refused
//! call returns a [`GpuError`] value. Every call that touches the GPU
//! returns once the GPU has finished it. Buffers read as zeros until
//! written, and workgroup memory starts zeroed.

use crate::bindings::kasbah::gpu0_2_0::compute as wit;

pub use wit::{AdapterInfo, AdapterLimits, BufferUsage, GpuError, Quota};

pub type Result<T> = core::result::Result<T, GpuError>;

/// The adapter this run is bound to, its limits and the run's quota.
pub fn adapter() -> Result<AdapterInfo> {
    wit::get_adapter_info()
}

/// Workgroups needed to cover `n` items with `workgroup_size` per group.
pub fn workgroups_for(n: u32, workgroup_size: u32) -> u32 {
    n.div_ceil(workgroup_size.max(1))
}

impl GpuError {
    /// The error case as written in WIT, e.g. `out-of-quota`.
    pub fn kind(&self) -> &'static str {
        match self {
            GpuError::Denied(_) => "denied",
            GpuError::Unavailable(_) => "unavailable",
            GpuError::InvalidShader(_) => "invalid-shader",
            GpuError::OutOfQuota(_) => "out-of-quota",
            GpuError::InvalidArgument(_) => "invalid-argument",
            GpuError::DeviceLost(_) => "device-lost",
        }
    }

    /// `kind: message`, e.g. `out-of-quota: a buffer of ... bytes exceeds ...`.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.kind(), self.message())
    }

    /// The host's message.
    pub fn message(&self) -> &str {
        match self {
            GpuError::Denied(m)
            | GpuError::Unavailable(m)
            | GpuError::InvalidShader(m)
            | GpuError::OutOfQuota(m)
            | GpuError::InvalidArgument(m)
            | GpuError::DeviceLost(m) => m,
        }
    }
}

/// A pipeline error from a GPU error: `denied` and `unavailable` keep their
/// meaning, the rest are failures of the pipeline (`failed`, prefixed with
/// the GPU error's kind).
impl From<GpuError> for crate::Error {
    fn from(e: GpuError) -> Self {
        match e {
            GpuError::Denied(m) => crate::Error::Denied(format!("gpu: {m}")),
            GpuError::Unavailable(m) => crate::Error::Unavailable(format!("gpu: {m}")),
            other => crate::Error::Failed(format!("gpu {}", other.describe())),
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

/// Element types that can be copied into and out of GPU buffers: plain
/// numbers, little-endian (as on the GPU and in wasm).
pub trait Pod: Copy + sealed::Sealed + 'static {
    const SIZE: usize;
    #[doc(hidden)]
    fn extend_le(items: &[Self], out: &mut Vec<u8>);
    #[doc(hidden)]
    fn from_le(bytes: &[u8]) -> Vec<Self>;
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Pod for $t {
            const SIZE: usize = core::mem::size_of::<$t>();
            fn extend_le(items: &[Self], out: &mut Vec<u8>) {
                out.reserve(items.len() * Self::SIZE);
                for x in items {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
            fn from_le(bytes: &[u8]) -> Vec<Self> {
                bytes
                    .chunks_exact(Self::SIZE)
                    .map(|c| {
                        let mut a = [0u8; core::mem::size_of::<$t>()];
                        a.copy_from_slice(c);
                        <$t>::from_le_bytes(a)
                    })
                    .collect()
            }
        }
    )*};
}
pod!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);

fn to_bytes<T: Pod>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    T::extend_le(items, &mut out);
    // Buffer sizes and writes are in multiples of 4 bytes.
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out
}

/// GPU memory. Dropping it frees the memory on the GPU and gives its bytes
/// back to the run's quota.
pub struct Buffer {
    inner: wit::Buffer,
    size: u64,
}

impl Buffer {
    /// A zero-filled buffer of `size` bytes (a multiple of 4).
    pub fn new(size: u64, usage: BufferUsage) -> Result<Buffer> {
        let inner = wit::create_buffer(size, usage)?;
        Ok(Buffer { inner, size })
    }

    /// A read-only storage buffer over bytes `offset..offset+size` of the
    /// dataset `name` mounted in this run (`/datasets/<name>`), without
    /// reading or uploading anything in the guest. The host keeps it
    /// resident on the adapter: a later run of the same tenant gets it at
    /// once. Bind it `var<storage, read>`; writing it, copying into it or
    /// binding it `read_write` is `invalid-argument`. Its bytes count
    /// against the tenant's resident budget (`out-of-quota` past it).
    pub fn from_dataset(name: &str, offset: u64, size: u64) -> Result<Buffer> {
        let inner = wit::buffer_from_dataset(name, offset, size)?;
        Ok(Buffer { inner, size })
    }

    /// Usage of the buffers made by [`Buffer::from_slice`] and [`Buffer::zeroed`].
    pub fn storage_usage() -> BufferUsage {
        BufferUsage::STORAGE | BufferUsage::COPY_SRC | BufferUsage::COPY_DST
    }

    /// A storage buffer holding `data` (padded with zeros to 4 bytes).
    pub fn from_slice<T: Pod>(data: &[T]) -> Result<Buffer> {
        let bytes = to_bytes(data);
        let b = Buffer::new(bytes.len() as u64, Self::storage_usage())?;
        b.inner.write(0, &bytes)?;
        Ok(b)
    }

    /// A storage buffer of `len` zeroed elements of `T`.
    pub fn zeroed<T: Pod>(len: usize) -> Result<Buffer> {
        let size = ((len * T::SIZE) as u64).next_multiple_of(4);
        Buffer::new(size, Self::storage_usage())
    }

    /// A uniform buffer holding `data` (e.g. a kernel's dimensions).
    pub fn uniform<T: Pod>(data: &[T]) -> Result<Buffer> {
        let bytes = to_bytes(data);
        let b = Buffer::new(
            bytes.len() as u64,
            BufferUsage::UNIFORM | BufferUsage::COPY_DST,
        )?;
        b.inner.write(0, &bytes)?;
        Ok(b)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn usage(&self) -> BufferUsage {
        self.inner.usage()
    }

    /// Write `data` at byte `offset` (a multiple of 4).
    pub fn write<T: Pod>(&self, offset: u64, data: &[T]) -> Result<()> {
        self.inner.write(offset, &to_bytes(data))
    }

    /// Read `size` bytes at `offset` (multiples of 4).
    pub fn read_bytes(&self, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.inner.read(offset, size)
    }

    /// The whole buffer as elements of `T`.
    pub fn read<T: Pod>(&self) -> Result<Vec<T>> {
        let bytes = self.inner.read(0, self.size)?;
        Ok(T::from_le(&bytes))
    }

    /// `count` elements of `T` starting at element `first`.
    pub fn read_range<T: Pod>(&self, first: usize, count: usize) -> Result<Vec<T>> {
        let offset = (first * T::SIZE) as u64;
        let size = ((count * T::SIZE) as u64).next_multiple_of(4);
        let bytes = self.inner.read(offset, size)?;
        let mut v = T::from_le(&bytes);
        v.truncate(count);
        Ok(v)
    }

    /// The raw WIT resource.
    pub fn raw(&self) -> &wit::Buffer {
        &self.inner
    }
}

/// A compiled compute kernel: a WGSL `@compute` entry point.
pub struct Kernel {
    inner: wit::ComputePipeline,
}

impl Kernel {
    /// Compile `wgsl` for `entry_point`. A compile error is
    /// `GpuError::InvalidShader` with the compiler's message.
    pub fn new(wgsl: &str, entry_point: &str) -> Result<Kernel> {
        Ok(Kernel {
            inner: wit::create_compute_pipeline(wgsl, entry_point)?,
        })
    }

    pub fn entry_point(&self) -> String {
        self.inner.entry_point()
    }

    /// Start describing a dispatch of this kernel.
    pub fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            kernel: self,
            bindings: Vec::new(),
            workgroups: [1, 1, 1],
        }
    }

    pub fn raw(&self) -> &wit::ComputePipeline {
        &self.inner
    }
}

struct Binding<'a> {
    group: u32,
    binding: u32,
    buffer: &'a Buffer,
    offset: u64,
    size: Option<u64>,
}

/// A dispatch being described: bindings and workgroup counts.
#[must_use = "a dispatch does nothing until `run` or `Batch::dispatch`"]
pub struct Dispatch<'a> {
    kernel: &'a Kernel,
    bindings: Vec<Binding<'a>>,
    workgroups: [u32; 3],
}

impl<'a> Dispatch<'a> {
    /// Bind all of `buffer` at `@group(0) @binding(binding)`.
    pub fn bind(self, binding: u32, buffer: &'a Buffer) -> Self {
        self.bind_range(0, binding, buffer, 0, None)
    }

    /// Bind all of `buffer` at `@group(group) @binding(binding)`.
    pub fn bind_in(self, group: u32, binding: u32, buffer: &'a Buffer) -> Self {
        self.bind_range(group, binding, buffer, 0, None)
    }

    /// Bind `size` bytes (to the end when `None`) of `buffer` from `offset`.
    pub fn bind_range(
        mut self,
        group: u32,
        binding: u32,
        buffer: &'a Buffer,
        offset: u64,
        size: Option<u64>,
    ) -> Self {
        self.bindings.push(Binding {
            group,
            binding,
            buffer,
            offset,
            size,
        });
        self
    }

    /// Workgroup counts in x, y and z.
    pub fn workgroups(mut self, x: u32, y: u32, z: u32) -> Self {
        self.workgroups = [x, y, z];
        self
    }

    fn wit_bindings(&self) -> Vec<wit::BufferBinding<'a>> {
        self.bindings
            .iter()
            .map(|b| wit::BufferBinding {
                group: b.group,
                binding: b.binding,
                buffer: &b.buffer.inner,
                offset: b.offset,
                size: b.size,
            })
            .collect()
    }

    /// Run it in a submission of its own and wait for it.
    pub fn run(self) -> Result<()> {
        let [x, y, z] = self.workgroups;
        wit::dispatch(&self.kernel.inner, &self.wit_bindings(), x, y, z)
    }
}

/// Several dispatches and copies, submitted together in order and waited
/// for once (a WebGPU command encoder).
pub struct Batch {
    inner: wit::CommandEncoder,
}

impl Batch {
    pub fn new() -> Result<Batch> {
        Ok(Batch {
            inner: wit::create_command_encoder()?,
        })
    }

    /// Record `dispatch` (validated now, run on `submit`).
    pub fn dispatch(&mut self, dispatch: Dispatch<'_>) -> Result<&mut Self> {
        let [x, y, z] = dispatch.workgroups;
        self.inner.dispatch_workgroups(
            &dispatch.kernel.inner,
            &dispatch.wit_bindings(),
            x,
            y,
            z,
        )?;
        Ok(self)
    }

    /// Record a copy of `size` bytes between two different buffers.
    pub fn copy(
        &mut self,
        source: &Buffer,
        source_offset: u64,
        destination: &Buffer,
        destination_offset: u64,
        size: u64,
    ) -> Result<&mut Self> {
        self.inner.copy_buffer_to_buffer(
            &source.inner,
            source_offset,
            &destination.inner,
            destination_offset,
            size,
        )?;
        Ok(self)
    }

    /// Submit everything recorded and wait until the GPU has finished.
    pub fn submit(self) -> Result<()> {
        wit::submit(self.inner)
    }
}
