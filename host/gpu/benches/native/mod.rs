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
    let adapter = adapters
        .into_iter()
        .next()
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
