//! Guest GPU dispatch vs native wgpu, same WGSL, same process, same adapter.
//!
//! `cargo bench -p kasbah-gpu --bench matmul [-- SIZES...]` (default 512 1024)
//!
//! (a) guest: a whole `Runtime::run` of the `gpu-matmul` component (generate
//!     A and B in wasm, upload them through `kasbah:gpu`, compile the kernel,
//!     dispatch, read C back, check 64 sampled elements against the CPU);
//! (b) native: the same steps written directly against wgpu in this process
//!     (the idiomatic way: three `write_buffer`s, one encoder with the
//!     dispatch and the copy to a staging buffer, one submit, map), on a
//!     device of the same adapter with the same limits, created once.
//!
//! Runs alternate between (a) and (b); each size gets one warm-up of each.
//! Prints the median of each, the ratio guest / native and GFLOP/s (2·n³
//! floating-point operations over the median end-to-end time). The guest's
//! and the native checksums of C must agree: same inputs, same kernel.

mod native;

use std::time::{Duration, Instant};

use kasbah_gpu::GpuConfig;
use kasbah_policy::{GpuGrant, Limits, MIB, Policy};
use kasbah_runtime::{Request, Runtime, RuntimeConfig};
use wgpu::util::DeviceExt;

const WGSL: &str = include_str!("../../../guest-examples/gpu-matmul/src/matmul.wgsl");

/// Same generator as `gpu_matmul::value` (guest-examples/gpu-matmul).
fn value(seed: u32, i: u32) -> f32 {
    let mut x = i.wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

struct Native {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl Native {
    fn new() -> Native {
        let (device, queue) = native::device();
        Native { device, queue }
    }

    /// One end-to-end matmul; returns the checksum of C.
    fn matmul(&self, n: u32) -> f64 {
        let d = &self.device;
        let a: Vec<f32> = (0..n * n).map(|i| value(1, i)).collect();
        let b: Vec<f32> = (0..n * n).map(|i| value(2, i)).collect();
        let bytes = u64::from(n) * u64::from(n) * 4;
        let storage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC;
        let buf = |size| {
            d.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: storage,
                mapped_at_creation: false,
            })
        };
        let (a_buf, b_buf, c_buf) = (buf(bytes), buf(bytes), buf(bytes));
        self.queue.write_buffer(&a_buf, 0, &to_bytes(&a));
        self.queue.write_buffer(&b_buf, 0, &to_bytes(&b));
        let dims = d.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: &[n, n, n, 0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        });
        let pipeline = native::pipeline(d, WGSL, "matmul");
        let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, &a_buf),
                entry(1, &b_buf),
                entry(2, &c_buf),
                entry(3, &dims),
            ],
        });
        let staging = d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(n.div_ceil(64), n.div_ceil(64), 1);
        }
        enc.copy_buffer_to_buffer(&c_buf, 0, &staging, 0, bytes);
        self.queue.submit([enc.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
        d.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        let c: Vec<f32> = {
            let view = staging.get_mapped_range(..).expect("mapped");
            view.chunks_exact(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect()
        };
        staging.unmap();
        verify_sample(&a, &b, &c, n);
        c.iter().map(|&x| f64::from(x)).sum()
    }
}

fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The same 64 sampled elements the guest checks with `verify = sample`.
fn verify_sample(a: &[f32], b: &[f32], c: &[f32], n: u32) {
    let mut points = vec![(0, 0), (n - 1, n - 1), (0, n - 1), (n - 1, 0)];
    points.extend((0..60u32).map(|s| (s.wrapping_mul(7919) % n, s.wrapping_mul(104_729) % n)));
    for (i, j) in points {
        let want: f64 = (0..n)
            .map(|p| f64::from(a[(i * n + p) as usize]) * f64::from(b[(p * n + j) as usize]))
            .sum();
        let got = f64::from(c[(i * n + j) as usize]);
        assert!(
            (got - want).abs() <= 1e-5 * f64::from(n) + 1e-6,
            "native C[{i}][{j}] = {got}, CPU {want}"
        );
    }
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![512, 1024]
    } else {
        sizes
    };

    let wasm = kasbah_tests::guest_bytes("gpu-matmul");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = Runtime::new(RuntimeConfig {
        max_concurrent_instances: 4,
        gpu: GpuConfig {
            adapters: vec![native::bench_entry()],
            ..GpuConfig::default()
        },
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let module = runtime.load(&wasm).expect("load gpu-matmul");
    let policy = Policy {
        limits: Limits {
            memory_bytes: 512 * MIB,
            wall_time_ms: 600_000,
            ..Limits::default()
        },
        gpu: Some(GpuGrant {
            max_buffer_bytes: 64 * MIB,
            max_total_bytes: 256 * MIB,
            ..GpuGrant::in_zones(["bench-zone"])
        }),
        ..Policy::default()
    };
    let native = Native::new();
    let guest = |n: u32| {
        let req = Request::new(n.to_string()).with_meta("verify", "sample");
        let t = Instant::now();
        let report = rt
            .block_on(runtime.run(&module, &policy, req))
            .expect("run");
        let took = t.elapsed();
        let kasbah_core::Outcome::Ok { output } = &report.outcome else {
            panic!("guest matmul failed: {:?}", report.outcome)
        };
        let out: serde_json::Value = serde_json::from_slice(&output.body).expect("json");
        let checksum = out["checksum"].as_f64().expect("checksum");
        let gpu_time = report.usage.gpu.map(|g| g.gpu_time).unwrap_or_default();
        (took, checksum, gpu_time)
    };

    let status = &runtime.gpu().status()[0];
    println!(
        "matmul f32, tiled WGSL (64x64 workgroup tiles, 4x4 per invocation), adapter {:?} on {}, same process",
        status.adapter_name.clone().unwrap_or_default(),
        status.backend.clone().unwrap_or_default()
    );
    for n in sizes {
        let runs = if n >= 1024 { 7 } else { 11 };
        // Warm-up: the guest's first run opens a device for the pool; the
        // native device already exists.
        let (_, guest_sum, _) = guest(n);
        let native_sum = native.matmul(n);
        assert!(
            (guest_sum - native_sum).abs() <= 1e-9 * native_sum.abs().max(1.0),
            "checksums differ: guest {guest_sum}, native {native_sum}"
        );
        let (mut g, mut nat, mut gpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let (t, _, gt) = guest(n);
            g.push(t);
            gpu.push(gt);
            let t = Instant::now();
            native.matmul(n);
            nat.push(t.elapsed());
        }
        let (mg, mn, mgpu) = (
            native::median(&mut g),
            native::median(&mut nat),
            native::median(&mut gpu),
        );
        let flop = 2.0 * f64::from(n).powi(3);
        let gflops = |d: Duration| flop / d.as_secs_f64() / 1e9;
        println!(
            "n={n:5} runs={runs:2}  guest median {:8.1} ms ({:5.2} GFLOP/s; host-measured GPU wait {:7.1} ms)  \
             native median {:8.1} ms ({:5.2} GFLOP/s)  ratio guest/native {:.3}",
            mg.as_secs_f64() * 1e3,
            gflops(mg),
            mgpu.as_secs_f64() * 1e3,
            mn.as_secs_f64() * 1e3,
            gflops(mn),
            mg.as_secs_f64() / mn.as_secs_f64()
        );
    }
}
