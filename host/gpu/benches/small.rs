//! Small GPU calls: what a guest pays per call for going through
//! `kasbah:gpu` and a GPU process, against native wgpu in this process on
//! the same adapter.
//!
//! `cargo bench -p kasbah-gpu --bench small [-- N]` (default N = 1000)
//!
//! (a) dispatches: N dispatches of a one-invocation kernel, each its own
//!     submission waited for (the guest: `gpu-hostile` `tiny-dispatches`,
//!     one `Runtime::run`; native: N × encode + submit + wait);
//! (b) round trips: N × (4 KiB `write` then 4 KiB `read`) of one buffer
//!     (guest: `round-trips`; native: `write_buffer` + submit + wait, copy
//!     to a staging buffer + map + read).
//!
//! Guest and native alternate, 5 rounds each after one warm-up; prints the
//! medians, the per-call cost of each and the ratio guest / native.

mod native;

use std::time::Instant;

use kasbah_gpu::GpuConfig;
use kasbah_policy::{GpuGrant, Limits, Policy};
use kasbah_runtime::{Request, Runtime, RuntimeConfig};

const TRIVIAL: &str = "
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@compute @workgroup_size(1) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x < arrayLength(&data)) { data[id.x] = data[id.x] + 1u; }
}";

struct Native {
    device: wgpu::Device,
    queue: wgpu::Queue,
}

impl Native {
    fn new() -> Native {
        let (device, queue) = native::device();
        Native { device, queue }
    }

    fn wait(&self) {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    }

    fn dispatches(&self, n: u32) {
        let d = &self.device;
        let data = d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let pipeline = native::pipeline(d, TRIVIAL, "main");
        let bind = d.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: data.as_entire_binding(),
            }],
        });
        for _ in 0..n {
            let mut enc = d.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(1, 1, 1);
            }
            self.queue.submit([enc.finish()]);
            self.wait();
        }
        assert_eq!(self.read(&data, 16)[0], n as u8);
    }

    fn read(&self, buffer: &wgpu::Buffer, size: u64) -> Vec<u8> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        staging.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
        self.wait();
        let out = staging.get_mapped_range(..).expect("mapped").to_vec();
        staging.unmap();
        out
    }

    fn round_trips(&self, n: u32) {
        let data = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 4096,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut words = vec![0u8; 4096];
        for i in 0..n {
            words[..4].copy_from_slice(&i.to_le_bytes());
            self.queue.write_buffer(&data, 0, &words);
            self.queue.submit(std::iter::empty());
            self.wait();
            let back = self.read(&data, 4096);
            assert_eq!(back[..4], i.to_le_bytes());
        }
    }
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let wasm = kasbah_tests::guest_bytes("gpu-hostile");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio");
    let runtime = Runtime::new(RuntimeConfig {
        gpu: GpuConfig {
            adapters: vec![native::bench_entry()],
            ..GpuConfig::default()
        },
        ..RuntimeConfig::default()
    })
    .expect("runtime");
    let module = runtime.load(&wasm).expect("load gpu-hostile");
    let policy = Policy {
        limits: Limits {
            wall_time_ms: 600_000,
            ..Limits::default()
        },
        gpu: Some(GpuGrant::in_zones(["bench-zone"])),
        ..Policy::default()
    };
    let guest = |attack: &str| {
        let req = Request::new(n.to_string()).with_meta("attack", attack);
        let t = Instant::now();
        let report = rt
            .block_on(runtime.run(&module, &policy, req))
            .expect("run");
        assert!(report.outcome.is_ok(), "{attack}: {:?}", report.outcome);
        t.elapsed()
    };
    let native = Native::new();
    let status = &runtime.gpu().status()[0];
    println!(
        "small GPU calls, N = {n}, adapter {:?} on {}",
        status.adapter_name.clone().unwrap_or_default(),
        status.backend.clone().unwrap_or_default()
    );
    type NativeFn = fn(&Native, u32);
    let cases: [(&str, &str, NativeFn); 2] = [
        (
            "dispatches (1 invocation, each submitted and waited)",
            "tiny-dispatches",
            Native::dispatches,
        ),
        (
            "round trips (4 KiB write + 4 KiB read)",
            "round-trips",
            Native::round_trips,
        ),
    ];
    for (what, attack, native_fn) in cases {
        guest(attack);
        native_fn(&native, n);
        let (mut g, mut nat) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            g.push(guest(attack));
            let t = Instant::now();
            native_fn(&native, n);
            nat.push(t.elapsed());
        }
        let (mg, mn) = (native::median(&mut g), native::median(&mut nat));
        println!(
            "{what}: guest median {:.1} ms ({:.1} µs/call), native median {:.1} ms ({:.1} µs/call), ratio guest/native {:.2}  [guest runs: {:?}; native: {:?}]",
            mg.as_secs_f64() * 1e3,
            mg.as_secs_f64() * 1e6 / f64::from(n),
            mn.as_secs_f64() * 1e3,
            mn.as_secs_f64() * 1e6 / f64::from(n),
            mg.as_secs_f64() / mn.as_secs_f64(),
            g.iter().map(|d| d.as_millis()).collect::<Vec<_>>(),
            nat.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
        );
    }
}
