//! Reading tensors from a `.safetensors` file: an 8-byte little-endian
//! header length, a JSON header (`{"name": {"dtype", "shape",
//! "data_offsets": [begin, end]}, "__metadata__": {...}}`), then the raw
//! little-endian data. The file is read tensor by tensor (seek + read), so a
//! guest never needs the whole file in memory; uploads go to the GPU in
//! chunks.
//!
//! When the file is a mounted dataset (`/datasets/<name>`), tensors are not
//! read at all: [`SafeTensors::upload`] maps each one to a dataset-backed
//! buffer ([`Buffer::from_dataset`]), which the host uploads once and keeps
//! resident for the tenant's later runs, and [`SafeTensors::upload_concat`]
//! assembles its result on the GPU from such buffers (one batch of copies).
//! If the tenant's resident budget is too small, it falls back to reading
//! and uploading.

use super::{Tensor, invalid, numel};
use crate::gpu::{Batch, Buffer, GpuError, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Largest header accepted (the reference implementation's bound).
const MAX_HEADER: u64 = 100 << 20;
/// Bytes copied to the GPU per write while uploading.
const CHUNK: usize = 4 << 20;

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// `F32`, `F16`, `I64`, ...
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range in the file (absolute: header already accounted for).
    pub begin: u64,
    pub end: u64,
}

/// An open safetensors file and its parsed header.
pub struct SafeTensors {
    file: File,
    tensors: BTreeMap<String, TensorInfo>,
    /// The dataset name when the file is `/datasets/<name>` and tensors
    /// are mapped to dataset-backed buffers (cleared when the host says
    /// the resident budget is exhausted).
    dataset: Option<String>,
    /// GPU copies recorded by `upload_concat`, submitted together by
    /// [`SafeTensors::finish`] (or, best effort, when this is dropped).
    pending: Option<Batch>,
    /// The dataset-backed parts those copies read (alive until submitted).
    parts: Vec<Buffer>,
}

/// `name` when `path` is a mounted dataset, `/datasets/<name>`.
fn dataset_name(path: &Path) -> Option<String> {
    let rest = path.strip_prefix("/datasets").ok()?;
    let mut parts = rest.components();
    let name = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().is_none().then_some(name)
}

fn io(e: std::io::Error, what: &str) -> crate::gpu::GpuError {
    invalid(format!("{what}: {e}"))
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

impl SafeTensors {
    /// Open `path` and parse its header. Every entry is checked: known
    /// dtype, offsets inside the file and consistent with the shape.
    pub fn open(path: impl AsRef<Path>) -> Result<SafeTensors> {
        let path = path.as_ref();
        let what = path.display().to_string();
        let mut file = File::open(path).map_err(|e| io(e, &what))?;
        let file_len = file.metadata().map_err(|e| io(e, &what))?.len();
        let mut len8 = [0u8; 8];
        file.read_exact(&mut len8).map_err(|e| io(e, &what))?;
        let n = u64::from_le_bytes(len8);
        if n > MAX_HEADER || n + 8 > file_len {
            return Err(invalid(format!("{what}: header of {n} bytes does not fit")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header).map_err(|e| io(e, &what))?;
        let json: serde_json::Value = serde_json::from_slice(&header)
            .map_err(|e| invalid(format!("{what}: header is not JSON: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| invalid(format!("{what}: header is not an object")))?;
        let base = 8 + n;
        let mut tensors = BTreeMap::new();
        for (name, entry) in obj {
            if name == "__metadata__" {
                continue;
            }
            let bad = |why: &str| invalid(format!("{what}: tensor {name:?}: {why}"));
            let dtype = entry["dtype"]
                .as_str()
                .ok_or_else(|| bad("no dtype"))?
                .to_string();
            let shape = entry["shape"]
                .as_array()
                .ok_or_else(|| bad("no shape"))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
                .ok_or_else(|| bad("bad shape"))?;
            let offs = entry["data_offsets"]
                .as_array()
                .filter(|a| a.len() == 2)
                .ok_or_else(|| bad("bad data_offsets"))?;
            let (Some(b), Some(e)) = (offs[0].as_u64(), offs[1].as_u64()) else {
                return Err(bad("bad data_offsets"));
            };
            let size = dtype_size(&dtype).ok_or_else(|| bad("unknown dtype"))?;
            let count = shape
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
                .ok_or_else(|| bad("shape overflows"))?;
            if b > e || e - b != count.saturating_mul(size) || base + e > file_len {
                return Err(bad("data offsets do not match the shape or the file"));
            }
            tensors.insert(
                name.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    begin: base + b,
                    end: base + e,
                },
            );
        }
        Ok(SafeTensors {
            file,
            tensors,
            dataset: dataset_name(path),
            pending: None,
            parts: Vec::new(),
        })
    }

    /// Submit the GPU copies that assemble [`SafeTensors::upload_concat`]'s
    /// tensors from dataset-backed parts (one submission for all of them).
    /// Until then those tensors read as zeros; dropping `self` submits
    /// them too but cannot report an error.
    pub fn finish(mut self) -> Result<()> {
        self.submit()
    }

    fn submit(&mut self) -> Result<()> {
        let pending = self.pending.take();
        let r = pending.map_or(Ok(()), Batch::submit);
        self.parts.clear();
        r
    }

    /// Whether tensors are mapped to dataset-backed (resident) buffers.
    pub fn maps_dataset(&self) -> bool {
        self.dataset.is_some()
    }

    /// Never map tensors to dataset-backed buffers: read and upload them.
    pub fn read_only_mode(&mut self) {
        self.dataset = None;
    }

    /// The F32 tensor `name` as a dataset-backed buffer, or `None` when
    /// this file is not a dataset or the host has no room for it (the
    /// caller uploads instead).
    fn mapped(&mut self, name: &str) -> Result<Option<Buffer>> {
        let Some(dataset) = self.dataset.clone() else {
            return Ok(None);
        };
        let info = self.f32_info(name)?;
        match Buffer::from_dataset(&dataset, info.begin, info.end - info.begin) {
            Ok(b) => Ok(Some(b)),
            Err(GpuError::OutOfQuota(_)) => {
                self.dataset = None;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Every tensor, by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The header entry of `name`.
    pub fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .get(name)
            .ok_or_else(|| invalid(format!("no tensor named {name:?}")))
    }

    fn f32_info(&self, name: &str) -> Result<TensorInfo> {
        let info = self.info(name)?.clone();
        if info.dtype != "F32" {
            return Err(invalid(format!(
                "tensor {name:?} is {}, only F32 is supported",
                info.dtype
            )));
        }
        Ok(info)
    }

    /// Read an F32 tensor into guest memory.
    pub fn read_f32(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.f32_info(name)?;
        let mut bytes = vec![0u8; (info.end - info.begin) as usize];
        self.file
            .seek(SeekFrom::Start(info.begin))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| io(e, name))?;
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((data, info.shape))
    }

    /// Copy the F32 tensor `name` into `dst` at byte `offset`, in chunks
    /// (guest memory use stays at one chunk).
    pub fn copy_into(&mut self, name: &str, dst: &Buffer, offset: u64) -> Result<u64> {
        let info = self.f32_info(name)?;
        let total = info.end - info.begin;
        if offset.checked_add(total).is_none_or(|end| end > dst.size()) {
            return Err(invalid(format!(
                "tensor {name:?} ({total} bytes) does not fit at offset {offset}"
            )));
        }
        self.file
            .seek(SeekFrom::Start(info.begin))
            .map_err(|e| io(e, name))?;
        let mut chunk = vec![0u8; CHUNK.min(total as usize)];
        let mut done = 0u64;
        while done < total {
            let n = (total - done).min(CHUNK as u64) as usize;
            self.file
                .read_exact(&mut chunk[..n])
                .map_err(|e| io(e, name))?;
            dst.raw().write(offset + done, &chunk[..n])?;
            done += n as u64;
        }
        Ok(total)
    }

    /// The F32 tensor `name` as a GPU tensor of its shape: dataset-backed
    /// (read-only, resident across runs) when the file is a mounted
    /// dataset, else uploaded into a new buffer.
    pub fn upload(&mut self, name: &str) -> Result<Tensor> {
        let info = self.f32_info(name)?;
        if let Some(b) = self.mapped(name)? {
            return Tensor::from_buffer(b, &info.shape);
        }
        let t = Tensor::zeros(&info.shape)?;
        self.copy_into(name, t.buffer(), 0)?;
        Ok(t)
    }

    /// Upload F32 tensors that share every dimension but the first,
    /// concatenated along the first (e.g. the query, key and value
    /// projections of a layer as one fused weight). From dataset-backed
    /// parts, the result is assembled by GPU copies that are submitted by
    /// [`SafeTensors::finish`] (all of them in one submission).
    pub fn upload_concat(&mut self, names: &[&str]) -> Result<Tensor> {
        let mut shape: Option<Vec<usize>> = None;
        for name in names {
            let s = self.f32_info(name)?.shape;
            shape = Some(match shape {
                None => s,
                Some(mut acc) => {
                    if acc.len() != s.len() || acc.is_empty() || acc[1..] != s[1..] {
                        return Err(invalid(format!(
                            "cannot concatenate {acc:?} and {s:?} ({name:?})"
                        )));
                    }
                    acc[0] += s[0];
                    acc
                }
            });
        }
        let shape = shape.ok_or_else(|| invalid("nothing to concatenate"))?;
        numel(&shape)?;
        let t = Tensor::zeros(&shape)?;
        if self.dataset.is_some() {
            // Dataset-backed parts, copied together on the GPU.
            let mut parts = Vec::with_capacity(names.len());
            for name in names {
                match self.mapped(name)? {
                    Some(b) => parts.push(b),
                    None => break,
                }
            }
            if parts.len() == names.len() {
                let batch = match &mut self.pending {
                    Some(b) => b,
                    slot @ None => slot.insert(Batch::new()?),
                };
                let mut offset = 0;
                for p in &parts {
                    batch.copy(p, 0, t.buffer(), offset, p.size())?;
                    offset += p.size();
                }
                self.parts.extend(parts);
                return Ok(t);
            }
        }
        let mut offset = 0;
        for name in names {
            offset += self.copy_into(name, t.buffer(), offset)?;
        }
        Ok(t)
    }
}

impl Drop for SafeTensors {
    fn drop(&mut self) {
        let _ = self.submit();
    }
}
