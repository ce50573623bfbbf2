//! The wire protocol between the platform and a GPU process.
//!
//! One request, one reply, in order, over a Unix socket (fd 3 in the GPU
//! process): a little-endian `u32` length, then the message in `postcard`.
//! Bulk data (buffer writes and read-backs) does not go through the socket:
//! it moves through a shared memory region (a memfd, fd 4 in the GPU
//! process, [`SHM_BYTES`] long) that the platform fills before a `Write` and
//! reads after a `Read`. Transfers larger than the region are split.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

/// Size of the shared data region of one GPU process.
pub const SHM_BYTES: usize = 16 << 20;

/// Largest frame either side accepts (WGSL source of at most 1 MiB plus
/// its envelope, or a batch of commands).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// A handle the platform chose for an object that lives in the GPU process.
pub type Id = u32;

/// Ids with this bit set name **warm** objects: dataset-backed buffers and
/// cached kernels that outlive a run (`Reset` keeps them; `Evict` and
/// `Purge` drop them). Ids of a run's own objects never have it.
pub const WARM: Id = 1 << 31;

/// Whether `id` names a warm object.
pub const fn is_warm(id: Id) -> bool {
    id & WARM != 0
}

/// What the platform asks of a GPU process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First request: open a device on the adapter that matches.
    Open {
        label: String,
        adapter: AdapterKey,
        limits: Box<wgpu::Limits>,
    },
    CreateBuffer {
        id: Id,
        size: u64,
        usage: u32,
    },
    DestroyBuffer {
        id: Id,
    },
    /// `shm[..len]` into the buffer at `offset`; with `flush`, submit and
    /// wait until the GPU has it.
    Write {
        id: Id,
        offset: u64,
        len: u64,
        flush: bool,
    },
    /// `size` bytes at `offset` (at most [`SHM_BYTES`]) into `shm[..size]`.
    Read {
        id: Id,
        offset: u64,
        size: u64,
    },
    /// Admit, compile and build a compute pipeline.
    CreatePipeline {
        id: Id,
        code: String,
        entry_point: String,
        workgroup_storage_limit: u32,
    },
    DropPipeline {
        id: Id,
    },
    /// Build a dispatch's bind groups and validate it; kept as `id` until a
    /// `Submit` uses it or `Forget` drops it.
    Prepare {
        id: Id,
        dispatch: Dispatch,
    },
    Forget {
        ids: Vec<Id>,
    },
    /// Encode, submit and wait for `commands` (prepared dispatches are
    /// consumed).
    Submit {
        commands: Vec<Cmd>,
    },
    /// Prepare one dispatch and submit it at once.
    DispatchNow {
        dispatch: Dispatch,
    },
    /// Drop every object of the run (between runs); warm objects stay.
    Reset,
    /// Drop these warm objects (evicted by the platform).
    Evict {
        ids: Vec<Id>,
    },
    /// Drop every warm object too (before the process serves another
    /// tenant).
    Purge,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub group: u32,
    pub binding: u32,
    pub buffer: Id,
    pub offset: u64,
    pub size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dispatch {
    pub pipeline: Id,
    pub bindings: Vec<Bind>,
    pub workgroups: [u32; 3],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Cmd {
    /// A dispatch prepared under this id.
    Dispatch(Id),
    Copy {
        source: Id,
        source_offset: u64,
        destination: Id,
        destination_offset: u64,
        size: u64,
    },
}

/// Which physical adapter to open (what the probe reported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterKey {
    pub backend: String,
    pub name: String,
    pub vendor: u32,
    pub device: u32,
}

/// What a probe reports about one adapter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbedAdapter {
    pub key: AdapterKey,
    pub device_type: String,
    pub driver: String,
    pub limits: wgpu::Limits,
    pub compute: bool,
}

/// A guest-visible error, as it crosses the process boundary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    Unavailable(String),
    InvalidShader(String),
    OutOfQuota(String),
    InvalidArgument(String),
    DeviceLost(String),
}

/// The value of a successful request.
#[derive(Debug, Serialize, Deserialize)]
pub enum Value {
    Done,
    /// A pipeline was built; its entry point's workgroup size and the
    /// `(group, binding)` of every `var<storage, read_write>` in the module.
    Pipeline {
        workgroup_size: [u32; 3],
        writable: Vec<(u32, u32)>,
    },
}

/// The device's state after a request: whether it may serve another run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    #[default]
    Healthy,
    /// Works, but must not be handed to another run.
    Dirty(String),
    Lost(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub result: Result<Value, Fault>,
    pub condition: Condition,
}

/// Write one frame.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    let body = postcard::to_stdvec(msg).map_err(std::io::Error::other)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!(
            "message of {} bytes exceeds {MAX_FRAME_BYTES}",
            body.len()
        )));
    }
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()
}

/// Read one frame.
pub fn recv<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds {MAX_FRAME_BYTES}"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_frames_are_refused() {
        let mut buf = Vec::new();
        let req = Request::Write {
            id: 7,
            offset: 16,
            len: 4,
            flush: true,
        };
        send(&mut buf, &req).expect("send");
        let back: Request = recv(&mut buf.as_slice()).expect("recv");
        assert!(matches!(
            back,
            Request::Write {
                id: 7,
                offset: 16,
                len: 4,
                flush: true
            }
        ));
        let mut huge = (u32::MAX).to_le_bytes().to_vec();
        huge.extend_from_slice(&[0; 8]);
        assert!(recv::<Request>(&mut huge.as_slice()).is_err());
        assert!(recv::<Request>(&mut [1u8, 0].as_slice()).is_err());
    }
}
