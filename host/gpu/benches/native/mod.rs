//! The native baseline shared by the GPU benches: a device of the first
//! Vulkan adapter in this process, with the limits the platform asks for.

use std::time::Duration;

/// Median of the timings (sorts them).
pub fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn device() -> (wgpu::Device, wgpu::Queue) {
    let instance = kasbah_gpu::native_instance();
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    // The same adapter as the platform side: the first Vulkan one, or the
    // first whose name holds `KASBAH_TEST_GPU_NAME` (see `bench_entry`).
    let want = kasbah_tests::test_gpu_name().map(|n| n.to_lowercase());
    let adapter = adapters
        .into_iter()
        .find(|a| {
            want.as_ref()
                .is_none_or(|w| a.get_info().name.to_lowercase().contains(w))
        })
        .expect("a Vulkan adapter (lavapipe: apt-get install mesa-vulkan-drivers)");
    let limits = kasbah_gpu::registry::device_limits(&adapter.limits(), None);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("native-baseline"),
        required_features: wgpu::Features::empty(),
        required_limits: limits,
        ..Default::default()
    }))
    .expect("device");
    device.on_uncaptured_error(std::sync::Arc::new(|e| panic!("native baseline: {e}")));
    (device, queue)
}

/// A compute pipeline with an automatic layout, as the platform builds it.
pub fn pipeline(d: &wgpu::Device, wgsl: &str, entry: &str) -> wgpu::ComputePipeline {
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(wgsl.into()),
    });
    d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: None,
        layout: None,
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    })
}

/// The platform side's adapter entry: the first Vulkan adapter, or the
/// first whose name holds `KASBAH_TEST_GPU_NAME`.
#[allow(dead_code)]
pub fn bench_entry() -> kasbah_gpu::AdapterConfig {
    let entry = kasbah_gpu::AdapterConfig::new("bench", "bench-zone").backend("vulkan");
    match kasbah_tests::test_gpu_name() {
        Some(name) => entry.name(name),
        None => entry,
    }
}
