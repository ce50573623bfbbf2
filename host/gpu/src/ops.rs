//! The wgpu work itself. Everything here runs in the GPU process (see
//! `child`), inside error scopes, on arguments the platform has already
//! checked.

use crate::child::DeviceCtx;
use crate::proto::Fault as GpuError;

/// Longest error message handed to a guest.
const MAX_MESSAGE_BYTES: usize = 8 * 1024;

/// The three wgpu error scopes, declared innermost first so that dropping
/// them on an early return pops them in the required order.
struct Scopes {
    validation: wgpu::ErrorScopeGuard,
    internal: wgpu::ErrorScopeGuard,
    oom: wgpu::ErrorScopeGuard,
}

impl Scopes {
    fn push(device: &wgpu::Device) -> Scopes {
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        Scopes {
            validation,
            internal,
            oom,
        }
    }

    /// The first error any scope caught.
    fn pop(self) -> Option<wgpu::Error> {
        let Scopes {
            validation,
            internal,
            oom,
        } = self;
        let v = pollster::block_on(validation.pop());
        let i = pollster::block_on(internal.pop());
        let o = pollster::block_on(oom.pop());
        v.or(i).or(o)
    }
}

/// What kind of guest error a validation failure is in this context.
#[derive(Clone, Copy)]
enum Blame {
    Shader,
    Argument,
}

fn bounded(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" [...]");
    }
    s
}

fn to_guest(dev: &DeviceCtx, e: wgpu::Error, blame: Blame) -> GpuError {
    match e {
        wgpu::Error::OutOfMemory { .. } => {
            GpuError::OutOfQuota("the GPU device is out of memory".into())
        }
        wgpu::Error::Validation { description, .. } => match blame {
            Blame::Shader => GpuError::InvalidShader(bounded(description)),
            Blame::Argument => GpuError::InvalidArgument(bounded(description)),
        },
        wgpu::Error::Internal { description, .. } => {
            // Not the guest's doing as far as we know: keep the device away
            // from other runs.
            dev.health
                .mark_dirty(format!("internal GPU error: {description}"));
            match blame {
                Blame::Shader => GpuError::InvalidShader(bounded(description)),
                Blame::Argument => {
                    GpuError::InvalidArgument(bounded(format!("internal GPU error: {description}")))
                }
            }
        }
    }
}

fn scoped<T>(
    dev: &DeviceCtx,
    blame: Blame,
    f: impl FnOnce(&wgpu::Device, &wgpu::Queue) -> T,
) -> Result<T, GpuError> {
    let scopes = Scopes::push(&dev.device);
    let out = f(&dev.device, &dev.queue);
    match scopes.pop() {
        Some(e) => Err(to_guest(dev, e, blame)),
        None => Ok(out),
    }
}

/// Wait until `index` has completed. There is no timeout here: the
/// platform bounds every request by the run's deadline and kills this
/// process when it runs over, which is the only way to stop lavapipe.
fn wait(dev: &DeviceCtx, index: wgpu::SubmissionIndex) -> Result<(), GpuError> {
    let r = dev.device.poll(wgpu::PollType::Wait {
        submission_index: Some(index),
        timeout: None,
    });
    if let Err(e) = r {
        let why = format!("waiting for the GPU failed: {e}");
        dev.health.mark_lost(why.clone());
        return Err(GpuError::DeviceLost(why));
    }
    match dev.health.lost() {
        Some(why) => Err(GpuError::DeviceLost(why)),
        None => Ok(()),
    }
}

pub(crate) fn create_buffer(
    dev: &DeviceCtx,
    size: u64,
    usage: wgpu::BufferUsages,
) -> Result<wgpu::Buffer, GpuError> {
    scoped(dev, Blame::Argument, |device, _| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    })
}

/// `queue.writeBuffer`; with `flush`, a submission that waits for it:
/// pending writes are staged in host memory until the next submission, so a
/// guest writing in a loop without submitting would otherwise pile them up.
/// The platform flushes after the last chunk of every guest write.
pub(crate) fn write_buffer(
    dev: &DeviceCtx,
    buffer: &wgpu::Buffer,
    offset: u64,
    data: &[u8],
    flush: bool,
) -> Result<(), GpuError> {
    let index = scoped(dev, Blame::Argument, |_, queue| {
        queue.write_buffer(buffer, offset, data);
        flush.then(|| queue.submit(std::iter::empty()))
    })?;
    match index {
        Some(index) => wait(dev, index),
        None => Ok(()),
    }
}

/// Copy a range into a fresh staging buffer, map it and copy it out.
pub(crate) fn read_buffer(
    dev: &DeviceCtx,
    buffer: &wgpu::Buffer,
    offset: u64,
    out: &mut [u8],
) -> Result<(), GpuError> {
    let size = out.len() as u64;
    let (staging, index) = scoped(dev, Blame::Argument, |device, queue| {
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("kasbah-readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, size);
        let index = queue.submit([encoder.finish()]);
        (staging, index)
    })?;
    let (tx, rx) = std::sync::mpsc::channel();
    let mapped = scoped(dev, Blame::Argument, |_, _| {
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
    });
    let result = mapped.and_then(|()| {
        wait(dev, index)?;
        // The map callback runs during a poll once the copy is done; the
        // wait above has polled, but map callbacks may need one more turn.
        let status = match rx.try_recv() {
            Ok(s) => s,
            Err(_) => {
                let _ = dev.device.poll(wgpu::PollType::Wait {
                    submission_index: None,
                    timeout: None,
                });
                rx.try_recv().map_err(|_| {
                    GpuError::DeviceLost("the read-back buffer was never mapped".into())
                })?
            }
        };
        status.map_err(|e| {
            GpuError::DeviceLost(format!("mapping the read-back buffer failed: {e}"))
        })?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| GpuError::InvalidArgument(format!("read-back: {e}")))?;
        out.copy_from_slice(&view);
        drop(view);
        staging.unmap();
        Ok(())
    });
    staging.destroy();
    result
}

/// `createShaderModule` + `createComputePipeline` with an automatic layout.
/// Bounds checks and workgroup-memory zero-init are those of the checked
/// path (`create_shader_module`, never the `_trusted` variant).
pub(crate) fn create_pipeline(
    dev: &DeviceCtx,
    code: &str,
    entry_point: &str,
    workgroup_storage_limit: u32,
) -> Result<(wgpu::ComputePipeline, crate::shader::ShaderFacts), GpuError> {
    // `check` runs the admission pre-pass before naga sees the source.
    let facts = crate::shader::check(code, entry_point, workgroup_storage_limit)
        .map_err(|e| GpuError::InvalidShader(bounded(e)))?;
    let pipeline = scoped(dev, Blame::Shader, |device, _| {
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(code.into()),
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some(entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                zero_initialize_workgroup_memory: true,
            },
            cache: None,
        })
    })?;
    Ok((pipeline, facts))
}

/// A buffer range to bind, already checked against the buffer's size.
pub(crate) struct BindRange {
    pub group: u32,
    pub binding: u32,
    pub buffer: wgpu::Buffer,
    pub offset: u64,
    pub size: Option<wgpu::BufferSize>,
}

/// One recorded command.
pub(crate) enum Command {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        groups: Vec<(u32, wgpu::BindGroup)>,
        workgroups: [u32; 3],
    },
    Copy {
        source: wgpu::Buffer,
        source_offset: u64,
        destination: wgpu::Buffer,
        destination_offset: u64,
        size: u64,
    },
}

/// Build the bind groups of a dispatch and validate the dispatch by encoding
/// it into a command buffer that is then thrown away, so that a mismatch
/// with the kernel (a missing binding, a wrong buffer type, a misaligned
/// offset) is reported by the call that recorded it.
pub(crate) fn prepare_dispatch(
    dev: &DeviceCtx,
    pipeline: wgpu::ComputePipeline,
    ranges: Vec<BindRange>,
    workgroups: [u32; 3],
) -> Result<Command, GpuError> {
    scoped(dev, Blame::Argument, |device, _| {
        let mut group_ids: Vec<u32> = ranges.iter().map(|r| r.group).collect();
        group_ids.sort_unstable();
        group_ids.dedup();
        let groups: Vec<(u32, wgpu::BindGroup)> = group_ids
            .into_iter()
            .map(|g| {
                let entries: Vec<wgpu::BindGroupEntry<'_>> = ranges
                    .iter()
                    .filter(|r| r.group == g)
                    .map(|r| wgpu::BindGroupEntry {
                        binding: r.binding,
                        resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                            buffer: &r.buffer,
                            offset: r.offset,
                            size: r.size,
                        }),
                    })
                    .collect();
                let layout = pipeline.get_bind_group_layout(g);
                let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &entries,
                });
                (g, bg)
            })
            .collect();
        let command = Command::Dispatch {
            pipeline,
            groups,
            workgroups,
        };
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encode(&mut encoder, std::slice::from_ref(&command));
        drop(encoder.finish());
        command
    })
}

fn encode(encoder: &mut wgpu::CommandEncoder, commands: &[Command]) {
    let mut i = 0;
    while let Some(c) = commands.get(i) {
        match c {
            Command::Dispatch { .. } => {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                while let Some(Command::Dispatch {
                    pipeline,
                    groups,
                    workgroups: [x, y, z],
                }) = commands.get(i)
                {
                    pass.set_pipeline(pipeline);
                    for (g, bg) in groups {
                        pass.set_bind_group(*g, bg, &[]);
                    }
                    pass.dispatch_workgroups(*x, *y, *z);
                    i += 1;
                }
            }
            Command::Copy {
                source,
                source_offset,
                destination,
                destination_offset,
                size,
            } => {
                encoder.copy_buffer_to_buffer(
                    source,
                    *source_offset,
                    destination,
                    *destination_offset,
                    *size,
                );
                i += 1;
            }
        }
    }
}

/// Encode `commands` into one command buffer, submit it and wait for it.
pub(crate) fn submit(dev: &DeviceCtx, commands: &[Command]) -> Result<(), GpuError> {
    let index = scoped(dev, Blame::Argument, |device, queue| {
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
        encode(&mut encoder, commands);
        queue.submit([encoder.finish()])
    })?;
    wait(dev, index)
}
