//! A hostile GPU pipeline used by `tests/tests/gpu.rs`. The request's
//! `attack` metadata picks the attack; the body carries its argument. GPU
//! errors come back as `failed("<kind>: <message>")` (or `denied` /
//! `unavailable`), so a test can tell which check stopped the attack; an
//! attack that gets through returns `Ok` with what it obtained.
use kasbah_sdk::bindings::kasbah::gpu0_2_0::compute as wit;
use kasbah_sdk::gpu::{self, Batch, Buffer, BufferUsage, GpuError, Kernel};
use kasbah_sdk::{Error, Pipeline, Request, Response};

struct GpuHostile;

fn gpu_err(e: GpuError) -> Error {
    match e {
        GpuError::Denied(m) => Error::denied(m),
        GpuError::Unavailable(m) => Error::unavailable(m),
        other => Error::failed(other.describe()),
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, Error> {
    s.trim()
        .parse()
        .map_err(|_| Error::invalid_input(format!("not a number: {s:?}")))
}

const TRIVIAL: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(1) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) { data[id.x] = data[id.x] + 1u; }
}";

const OOB_READ: &str = "
@group(0) @binding(0) var<storage, read> small: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@group(0) @binding(2) var<storage, read> params: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x;
    if (i < arrayLength(&out)) { out[i] = small[i * params[0] + params[1]]; }
}";

const WORKGROUP: &str = "
var<workgroup> scratch: array<u32, 1024>;
@group(0) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64) fn fill(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    for (var j = 0u; j < 16u; j = j + 1u) { scratch[li * 16u + j] = 0xA5A5A5A5u; }
    workgroupBarrier();
    for (var j = 0u; j < 16u; j = j + 1u) { out[wg.x * 1024u + li * 16u + j] = scratch[li * 16u + j]; }
}
@compute @workgroup_size(64) fn peek(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    for (var j = 0u; j < 16u; j = j + 1u) { out[wg.x * 1024u + li * 16u + j] = scratch[li * 16u + j]; }
}";

// Every invocation loops `data[1]` times (lavapipe stops an invocation's
// loops after 65535 iterations in all, so long GPU work means many
// invocations: the dispatch size does the rest).
const SPIN: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(64) fn spin(@builtin(global_invocation_id) id: vec3<u32>) {
    var x = data[2] + id.x;
    let n = data[1];
    for (var i = 0u; i < n; i = i + 1u) { x = x * 1664525u + 1013904223u; }
    if (x == 0u) { data[3] = id.x; }
}";

// Reads `src` (a read-only binding) into `out`.
const COPY_RO: &str = "
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&out)) { out[id.x] = src[id.x]; }
}";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `name offset size` → a dataset-backed buffer.
fn dataset_range(arg: &str) -> Result<(Buffer, Vec<&str>), GpuError> {
    let w: Vec<&str> = arg.split_whitespace().collect();
    let bad = || GpuError::InvalidArgument("usage: name offset size [op]".into());
    let (Some(name), Some(off), Some(size)) = (w.first(), w.get(1), w.get(2)) else {
        return Err(bad());
    };
    let off: u64 = off.parse().map_err(|_| bad())?;
    let size: u64 = size.parse().map_err(|_| bad())?;
    Ok((Buffer::from_dataset(name, off, size)?, w[3..].to_vec()))
}

fn nonzero_bytes(b: &[u8]) -> usize {
    b.iter().filter(|&&x| x != 0).count()
}

fn attack(name: &str, arg: &str) -> Result<Response, GpuError> {
    let storage = Buffer::storage_usage();
    Ok(match name {
        "info" => {
            let i = gpu::adapter()?;
            Response::text(format!(
                "{} {} {} {} {}",
                i.label, i.zone, i.backend, i.device_type, i.quota.max_buffer_bytes
            ))
        }
        // Allocate `arg`-byte buffers until refused, keeping them all.
        "alloc-past-quota" => {
            let size: u64 = arg.trim().parse().unwrap_or(0);
            let mut kept = Vec::new();
            for _ in 0..10_000 {
                match Buffer::new(size, storage) {
                    Ok(b) => kept.push(b),
                    Err(e) => {
                        return Err(with_note(e, format!("after {} buffers", kept.len())));
                    }
                }
            }
            Response::text(format!("allocated {} buffers", kept.len()))
        }
        // Fill the quota with `arg`-byte buffers, drop them, allocate again.
        "alloc-drop-realloc" => {
            let size: u64 = arg.trim().parse().unwrap_or(0);
            let mut kept = Vec::new();
            while let Ok(b) = Buffer::new(size, storage) {
                kept.push(b);
                if kept.len() > 10_000 {
                    break;
                }
            }
            let n = kept.len();
            drop(kept);
            let again: Vec<Buffer> = (0..n)
                .map(|_| Buffer::new(size, storage))
                .collect::<Result<_, _>>()?;
            Response::text(format!("{n} then {}", again.len()))
        }
        // One dispatch of `arg` = "x y z" workgroups.
        "dispatch-size" => {
            let w: Vec<u32> = arg
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            let (x, y, z) = (
                w.first().copied().unwrap_or(1),
                w.get(1).copied().unwrap_or(1),
                w.get(2).copied().unwrap_or(1),
            );
            let data = Buffer::zeroed::<u32>(4)?;
            let k = Kernel::new(TRIVIAL, "main")?;
            k.dispatch().bind(0, &data).workgroups(x, y, z).run()?;
            Response::text("dispatched")
        }
        // Dispatch (alternating direct and batched) until refused.
        "dispatch-count" => {
            let data = Buffer::zeroed::<u32>(4)?;
            let k = Kernel::new(TRIVIAL, "main")?;
            let mut done = 0u32;
            for i in 0..100_000 {
                let r = if i % 2 == 0 {
                    k.dispatch().bind(0, &data).workgroups(1, 1, 1).run()
                } else {
                    Batch::new().and_then(|mut b| {
                        b.dispatch(k.dispatch().bind(0, &data).workgroups(1, 1, 1))?;
                        b.submit()
                    })
                };
                if let Err(e) = r {
                    let counter = data.read::<u32>()?;
                    return Err(with_note(
                        e,
                        format!("after {done} dispatches, counter {}", counter[0]),
                    ));
                }
                done += 1;
            }
            Response::text(format!("{done} dispatches"))
        }
        // Compile `arg` (entry point `main`); many times for `kernel-quota`.
        "compile" => {
            Kernel::new(arg, "main")?;
            Response::text("compiled")
        }
        // `name offset size [op]`: a dataset-backed buffer, then `op`:
        // `read` (default: its bytes in hex), `bind-ro` (read through a
        // kernel, in hex), or an attempt to modify it: `write`,
        // `copy-into`, `bind-rw`.
        "from-dataset" => {
            let (b, op) = dataset_range(arg)?;
            let size = b.size();
            match op.first().copied().unwrap_or("read") {
                "read" => Response::text(hex(&b.read_bytes(0, size)?)),
                "bind-ro" => {
                    let out = Buffer::new(size, storage)?;
                    let k = Kernel::new(COPY_RO, "main")?;
                    let groups = gpu::workgroups_for((size / 4) as u32, 64);
                    k.dispatch()
                        .bind(0, &b)
                        .bind(1, &out)
                        .workgroups(groups, 1, 1)
                        .run()?;
                    Response::text(hex(&out.read_bytes(0, size)?))
                }
                "write" => {
                    b.raw().write(0, &[1, 2, 3, 4])?;
                    Response::text("wrote a dataset-backed buffer")
                }
                "copy-into" => {
                    let src = Buffer::from_slice(&[7u32; 4])?;
                    let mut batch = Batch::new()?;
                    batch.copy(&src, 0, &b, 0, 16)?;
                    batch.submit()?;
                    Response::text("copied into a dataset-backed buffer")
                }
                "bind-rw" => {
                    let k = Kernel::new(TRIVIAL, "main")?;
                    k.dispatch().bind(0, &b).workgroups(1, 1, 1).run()?;
                    Response::text("bound a dataset-backed buffer read_write")
                }
                other => return Err(GpuError::InvalidArgument(format!("op {other}"))),
            }
        }
        // `name offset size; name offset size; ...`: hold them all at once.
        "hold-datasets" => {
            let mut held = Vec::new();
            for part in arg.split(';') {
                held.push(dataset_range(part)?.0);
            }
            Response::text(format!("holding {}", held.len()))
        }
        // Compile `COPY_RO` twice and use the second: both are cache
        // lookups once a run of the tenant compiled it.
        "kernels" => {
            let _first = Kernel::new(COPY_RO, "main")?;
            let k = Kernel::new(COPY_RO, "main")?;
            let src = Buffer::from_slice(&[5u32; 64])?;
            let out = Buffer::new(256, storage)?;
            k.dispatch()
                .bind(0, &src)
                .bind(1, &out)
                .workgroups(1, 1, 1)
                .run()?;
            Response::text(hex(&out.read_bytes(0, 8)?))
        }
        "kernel-quota" => {
            let mut kept = Vec::new();
            for _ in 0..10_000 {
                match Kernel::new(TRIVIAL, "main") {
                    Ok(k) => kept.push(k),
                    Err(e) => return Err(with_note(e, format!("after {} kernels", kept.len()))),
                }
            }
            Response::text("unbounded kernels")
        }
        // Bind a 1024-byte buffer with `arg` = "offset size" (size "-" = rest).
        "bind-range" => {
            let mut it = arg.split_whitespace();
            let offset: u64 = it.next().and_then(|t| t.parse().ok()).unwrap_or(0);
            let size: Option<u64> = it.next().and_then(|t| t.parse().ok());
            let data = Buffer::zeroed::<u32>(256)?;
            let k = Kernel::new(TRIVIAL, "main")?;
            k.dispatch()
                .bind_range(0, 0, &data, offset, size)
                .workgroups(1, 1, 1)
                .run()?;
            Response::text("bound")
        }
        // Write/read out of range, without the usage flag, or misaligned.
        "buffer-range" => {
            let data = Buffer::zeroed::<u32>(16)?;
            let uniform_only = Buffer::new(64, BufferUsage::UNIFORM)?;
            let (what, r) = match arg.trim() {
                "write-past-end" => ("write", data.write(60, &[1u32, 2])),
                "write-huge-offset" => ("write", data.write(u64::MAX - 3, &[1u32])),
                "read-past-end" => ("read", data.read_bytes(32, 64).map(drop)),
                "read-misaligned" => ("read", data.read_bytes(2, 4).map(drop)),
                "write-no-copy-dst" => ("write", uniform_only.write(0, &[1u32])),
                "read-no-copy-src" => ("read", uniform_only.read_bytes(0, 4).map(drop)),
                "copy-same" => (
                    "copy",
                    Batch::new().and_then(|mut b| {
                        b.copy(&data, 0, &data, 32, 16)?;
                        b.submit()
                    }),
                ),
                "copy-past-end" => (
                    "copy",
                    Batch::new().and_then(|mut b| {
                        let other = Buffer::zeroed::<u32>(16)?;
                        b.copy(&data, 32, &other, 0, 64)?;
                        b.submit()
                    }),
                ),
                other => return Ok(Response::text(format!("unknown case {other}"))),
            };
            r?;
            Response::text(format!("{what} went through"))
        }
        // Read past a 16-byte bound range whose buffer holds a secret just
        // outside it: out[i] = small[i * stride + base], `arg` = "stride base".
        "oob-kernel-read" => {
            let p: Vec<u32> = arg
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            let mut words = vec![0xDEAD_BEEFu32; 1024];
            words[64..68].copy_from_slice(&[1, 2, 3, 4]);
            let secret = Buffer::from_slice(&words)?;
            let neighbour = Buffer::from_slice(&vec![0xDEAD_BEEFu32; 4096])?;
            let params = Buffer::from_slice(&p)?;
            let out = Buffer::zeroed::<u32>(64)?;
            let k = Kernel::new(OOB_READ, "main")?;
            k.dispatch()
                .bind_range(0, 0, &secret, 256, Some(16))
                .bind(1, &out)
                .bind(2, &params)
                .workgroups(1, 1, 1)
                .run()?;
            drop(neighbour);
            let got: Vec<String> = out
                .read::<u32>()?
                .iter()
                .map(|v| format!("{v:#x}"))
                .collect();
            Response::text(got.join(","))
        }
        // Read a fresh `arg`-byte buffer: how many bytes are not zero.
        "read-fresh" => {
            let size: u64 = num(arg).map_err(|_| GpuError::InvalidArgument("size".into()))?;
            let b = Buffer::new(size, storage)?;
            Response::text(nonzero_bytes(&b.read_bytes(0, size)?).to_string())
        }
        // Positive control: what was written reads back.
        "write-read" => {
            let size: u64 = num(arg).map_err(|_| GpuError::InvalidArgument("size".into()))?;
            let b = Buffer::new(size, storage)?;
            let pattern: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
            b.write(0, &pattern)?;
            let back = b.read_bytes(0, size)?;
            if back != pattern {
                return Ok(Response::text("mismatch"));
            }
            Response::text(format!("{} bytes round-tripped", back.len()))
        }
        // Leave `arg` bytes of 0xA5 in GPU memory and workgroup memory.
        "fill" => {
            let size: u64 = num(arg).map_err(|_| GpuError::InvalidArgument("size".into()))?;
            let b = Buffer::new(size, storage)?;
            b.write(0, &vec![0xA5u8; size as usize])?;
            let out = Buffer::zeroed::<u32>(4096)?;
            let k = Kernel::new(WORKGROUP, "fill")?;
            k.dispatch().bind(0, &out).workgroups(4, 1, 1).run()?;
            let v = out.read::<u32>()?;
            Response::text(format!(
                "filled; {} words of pattern",
                v.iter().filter(|&&x| x == 0xA5A5_A5A5).count()
            ))
        }
        // Read workgroup memory before writing it: how many words are not 0.
        "workgroup-uninit" => {
            let out = Buffer::zeroed::<u32>(4096)?;
            let k = Kernel::new(WORKGROUP, "peek")?;
            k.dispatch().bind(0, &out).workgroups(4, 1, 1).run()?;
            Response::text(
                out.read::<u32>()?
                    .iter()
                    .filter(|&&x| x != 0)
                    .count()
                    .to_string(),
            )
        }
        // Drop a buffer, then call a method through its old handle.
        "use-after-drop" => {
            let b = Buffer::new(256, storage)?;
            let handle = b.raw().handle();
            drop(b);
            // SAFETY (for the guest's own memory): none needed; the handle is
            // stale on purpose and the host must refuse it.
            let stale = unsafe { wit::Buffer::from_handle(handle) };
            let r = stale.read(0, 4);
            Response::text(format!("stale handle answered {r:?}"))
        }
        // Call a method through a handle this instance was never given.
        "forge-handle" => {
            let h: u32 = num(arg).map_err(|_| GpuError::InvalidArgument("handle".into()))?;
            let forged = unsafe { wit::Buffer::from_handle(h) };
            let r = forged.read(0, 4);
            Response::text(format!("forged handle answered {r:?}"))
        }
        // `arg` = "workgroups iterations": workgroups × 64 invocations, each
        // spinning `iterations` times.
        "spin" => {
            let n: Vec<u32> = arg
                .split_whitespace()
                .filter_map(|t| t.parse().ok())
                .collect();
            let (groups, iterations) = (
                n.first().copied().unwrap_or(1),
                n.get(1).copied().unwrap_or(1),
            );
            let data = Buffer::from_slice(&[0, iterations, 7u32, 0])?;
            let k = Kernel::new(SPIN, "spin")?;
            k.dispatch().bind(0, &data).workgroups(groups, 1, 1).run()?;
            Response::text(format!("spun {groups} workgroups"))
        }
        // Record `arg` copies of a 64 MiB buffer into another in one batch,
        // then submit: bytes copied are counted against the run's quota.
        "copy-flood" => {
            let copies: u32 = num(arg).map_err(|_| GpuError::InvalidArgument("count".into()))?;
            const SIZE: u64 = 64 << 20;
            let a = Buffer::new(SIZE, storage)?;
            let b = Buffer::new(SIZE, storage)?;
            let mut batch = Batch::new()?;
            for i in 0..copies {
                if let Err(e) = batch.copy(&a, 0, &b, 0, SIZE) {
                    return Err(with_note(e, format!("after {i} copies")));
                }
            }
            batch.submit()?;
            Response::text(format!("{copies} copies"))
        }
        // Benchmark shapes (host/gpu/benches/small.rs): `arg` dispatches of a
        // one-invocation kernel, each its own submission, waited for...
        "tiny-dispatches" => {
            let n: u32 = num(arg).map_err(|_| GpuError::InvalidArgument("count".into()))?;
            let data = Buffer::zeroed::<u32>(4)?;
            let k = Kernel::new(TRIVIAL, "main")?;
            for _ in 0..n {
                k.dispatch().bind(0, &data).workgroups(1, 1, 1).run()?;
            }
            Response::text(format!("{}", data.read::<u32>()?[0]))
        }
        // ... and `arg` round trips of a 4 KiB write then read.
        "round-trips" => {
            let n: u32 = num(arg).map_err(|_| GpuError::InvalidArgument("count".into()))?;
            let data = Buffer::zeroed::<u32>(1024)?;
            let mut words = vec![0u32; 1024];
            for i in 0..n {
                words[0] = i;
                data.write(0, &words)?;
                let back = data.read::<u32>()?;
                if back[0] != i {
                    return Err(GpuError::InvalidArgument("round trip lost data".into()));
                }
            }
            Response::text(format!("{n}"))
        }
        // Positive control for batches: two dispatches and a copy.
        "batch" => {
            let x = Buffer::from_slice(&[10u32, 20, 30, 40])?;
            let y = Buffer::zeroed::<u32>(4)?;
            let k = Kernel::new(TRIVIAL, "main")?;
            let mut b = Batch::new()?;
            b.dispatch(k.dispatch().bind(0, &x).workgroups(4, 1, 1))?;
            b.dispatch(k.dispatch().bind(0, &x).workgroups(2, 1, 1))?;
            b.copy(&x, 0, &y, 0, 16)?;
            b.submit()?;
            let v: Vec<String> = y.read::<u32>()?.iter().map(u32::to_string).collect();
            Response::text(v.join(","))
        }
        other => {
            return Err(GpuError::InvalidArgument(format!(
                "unknown attack {other:?}"
            )));
        }
    })
}

fn with_note(e: GpuError, note: String) -> GpuError {
    let add = |m: String| format!("{m} [{note}]");
    match e {
        GpuError::Denied(m) => GpuError::Denied(add(m)),
        GpuError::Unavailable(m) => GpuError::Unavailable(add(m)),
        GpuError::InvalidShader(m) => GpuError::InvalidShader(add(m)),
        GpuError::OutOfQuota(m) => GpuError::OutOfQuota(add(m)),
        GpuError::InvalidArgument(m) => GpuError::InvalidArgument(add(m)),
        GpuError::DeviceLost(m) => GpuError::DeviceLost(add(m)),
    }
}

impl Pipeline for GpuHostile {
    fn run(request: Request) -> Result<Response, Error> {
        let arg = request.text()?.to_string();
        let name = request.meta("attack").unwrap_or("").to_string();
        attack(&name, &arg).map_err(gpu_err)
    }
}

kasbah_sdk::export!(GpuHostile);
