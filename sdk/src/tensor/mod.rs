//! A small tensor toolkit for ML inference on `kasbah:gpu` (feature
//! `tensor`): f32 tensors in GPU buffers, the WGSL kernels a transformer
//! encoder needs, and safetensors loading.
//!
//! ```ignore
//! use kasbah_sdk::tensor::{Ops, Recorder, SafeTensors, Tensor};
//!
//! let weights = SafeTensors::open("/datasets/model.safetensors")?;
//! let w = weights.upload("dense.weight")?;          // [out, in]
//! let b = weights.upload("dense.bias")?;            // [out]
//! let x = Tensor::from_slice(&input, &[rows, w.shape()[1]])?;
//! let y = Tensor::zeros(&[rows, w.shape()[0]])?;
//! let ops = Ops::new();
//! let mut rec = Recorder::new(false)?;
//! ops.linear(&mut rec, &x, &w, &b, &y, Epilogue::Gelu)?;
//! rec.submit()?;                                    // one queue submission
//! let out: Vec<f32> = y.read()?;
//! ```
//!
//! Ops are recorded into a [`Recorder`] (one command encoder, submitted and
//! waited for once) or, with profiling on, submitted one by one and timed
//! per kernel kind with the host's monotonic clock, so a pipeline can say
//! where its time goes. Kernels compile lazily, once per [`Ops`]; each
//! counts against the run's `max_kernels` quota (at most 11 here). Every
//! kernel keeps its workgroup storage within WebGPU's default 16 KiB.

mod safetensors;

pub use safetensors::{SafeTensors, TensorInfo};

use crate::gpu::{Batch, Buffer, BufferUsage, GpuError, Kernel, Result};
use std::cell::{Cell, OnceCell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

fn invalid(msg: impl Into<String>) -> GpuError {
    GpuError::InvalidArgument(msg.into())
}

/// A row-major f32 tensor in a GPU storage buffer.
pub struct Tensor {
    buf: Buffer,
    shape: Vec<usize>,
}

fn numel(shape: &[usize]) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| invalid(format!("tensor shape {shape:?} overflows")))?;
    if n == 0 {
        return Err(invalid(format!("tensor shape {shape:?} is empty")));
    }
    Ok(n)
}

impl Tensor {
    /// A tensor of `shape` holding `data` (`data.len()` must match).
    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Tensor> {
        if numel(shape)? != data.len() {
            return Err(invalid(format!(
                "{} values for shape {shape:?}",
                data.len()
            )));
        }
        let t = Tensor::zeros(shape)?;
        t.buf.write(0, data)?;
        Ok(t)
    }

    /// A zero-filled tensor of `shape`. Its buffer is usable as storage
    /// and as uniform blocks, with the rows padded (zeros) to a multiple
    /// of 32, which [`Ops::linear`] needs of its input.
    pub fn zeros(shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape)?;
        let cols = shape.last().copied().unwrap_or(1);
        let padded = (n / cols).next_multiple_of(ROW_PAD) * cols;
        let usage = BufferUsage::STORAGE
            | BufferUsage::UNIFORM
            | BufferUsage::COPY_SRC
            | BufferUsage::COPY_DST;
        Ok(Tensor {
            buf: Buffer::new(padded as u64 * 4, usage)?,
            shape: shape.to_vec(),
        })
    }

    /// A tensor over an existing buffer holding at least `shape`'s elements.
    pub fn from_buffer(buf: Buffer, shape: &[usize]) -> Result<Tensor> {
        let n = numel(shape)?;
        if (n as u64) * 4 > buf.size() {
            return Err(invalid(format!(
                "a buffer of {} bytes cannot hold shape {shape:?}",
                buf.size()
            )));
        }
        Ok(Tensor {
            buf,
            shape: shape.to_vec(),
        })
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the last dimension.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Product of every dimension but the last.
    pub fn rows(&self) -> usize {
        self.len() / self.cols().max(1)
    }

    pub fn buffer(&self) -> &Buffer {
        &self.buf
    }

    /// Read the whole tensor back (waits for submitted work).
    pub fn read(&self) -> Result<Vec<f32>> {
        self.buf.read_range::<f32>(0, self.len())
    }

    /// Read rows `first .. first + count` of a 2-D view.
    pub fn read_rows(&self, first: usize, count: usize) -> Result<Vec<f32>> {
        self.buf
            .read_range::<f32>(first * self.cols(), count * self.cols())
    }

    /// Overwrite the tensor's contents (the length must match).
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(invalid(format!(
                "{} values written to a tensor of {}",
                data.len(),
                self.len()
            )));
        }
        self.buf.write(0, data)
    }
}

/// Records ops into one submission, or (profiling) runs each at once and
/// times it. Holds the small uniform buffers of the ops it recorded until
/// it is submitted; tensors used by recorded ops must stay alive until
/// then too (see [`Recorder::keep`]).
pub struct Recorder {
    batch: Option<Batch>,
    profile: bool,
    uniforms: BTreeMap<[u32; 4], Buffer>,
    /// Per-block parameters of blocked ops: one uniform buffer per
    /// (params, block count), entry b at b · 256 bytes.
    block_params: BTreeMap<[u32; 5], (Buffer, u32)>,
    kept: Vec<Tensor>,
    in_batch: usize,
    timings: BTreeMap<&'static str, OpTiming>,
    dispatches: u64,
}

/// Dispatches per queue submission (the host accepts 4096 commands per
/// encoder); a recorder submits and starts a new one when it gets there.
const MAX_PER_SUBMISSION: usize = 4000;

/// Time spent in one kind of op (only measured when profiling).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTiming {
    pub count: u64,
    pub total: Duration,
}

impl Recorder {
    /// `profile`: submit and wait for every op on its own and time it
    /// (slower: use it to see where time goes, not in production).
    pub fn new(profile: bool) -> Result<Recorder> {
        Ok(Recorder {
            batch: if profile { None } else { Some(Batch::new()?) },
            profile,
            uniforms: BTreeMap::new(),
            block_params: BTreeMap::new(),
            kept: Vec::new(),
            in_batch: 0,
            timings: BTreeMap::new(),
            dispatches: 0,
        })
    }

    /// Record (or, profiling, run and time) one dispatch of `kernel` with
    /// `bindings` at `@group(0)` and a uniform of four u32 (`params`) at
    /// binding `uniform_binding`.
    fn run(
        &mut self,
        kind: &'static str,
        kernel: &Kernel,
        bindings: &[(u32, &Buffer)],
        uniform_binding: u32,
        params: [u32; 4],
        workgroups: (u32, u32, u32),
    ) -> Result<()> {
        if let std::collections::btree_map::Entry::Vacant(e) = self.uniforms.entry(params) {
            e.insert(Buffer::uniform(&params)?);
        }
        let Some(u) = self.uniforms.get(&params) else {
            return Err(invalid("uniform buffer missing"));
        };
        let mut d = kernel.dispatch();
        for &(binding, buffer) in bindings {
            d = d.bind(binding, buffer);
        }
        let d = d
            .bind(uniform_binding, u)
            .workgroups(workgroups.0, workgroups.1, workgroups.2);
        Self::record(
            &mut self.batch,
            &mut self.timings,
            &mut self.in_batch,
            kind,
            d,
        )?;
        self.dispatches += 1;
        Ok(())
    }

    /// Record `d` into `batch` (submitting it first when it is full), or
    /// run and time it when profiling (`batch` is `None`).
    fn record(
        batch: &mut Option<Batch>,
        timings: &mut BTreeMap<&'static str, OpTiming>,
        in_batch: &mut usize,
        kind: &'static str,
        d: crate::gpu::Dispatch<'_>,
    ) -> Result<()> {
        match batch {
            Some(b) => {
                if *in_batch >= MAX_PER_SUBMISSION {
                    let full = std::mem::replace(b, Batch::new()?);
                    full.submit()?;
                    *in_batch = 0;
                }
                b.dispatch(d)?;
                *in_batch += 1;
            }
            None => {
                let start = Instant::now();
                d.run()?;
                let t = timings.entry(kind).or_default();
                t.count += 1;
                t.total += start.elapsed();
            }
        }
        Ok(())
    }

    /// Dispatch `index` of a blocked op: `block` = (buffer, [(binding,
    /// offset, size)]) binds ranges of one buffer as uniforms, and binding 4
    /// gets `[p0, p1, p2, index · rows (the block's first row), p3, 0, 0,
    /// 0]` for `params` = [p0, p1, p2, p3], from one parameter buffer per op
    /// shape holding every block's entry 256 bytes apart.
    #[allow(clippy::too_many_arguments)]
    fn run_block(
        &mut self,
        kind: &'static str,
        kernel: &Kernel,
        bindings: &[(u32, &Buffer)],
        block: (&Buffer, &[(u32, u64, u64)]),
        params: [u32; 4],
        rows: u32,
        index: u32,
        workgroups: (u32, u32, u32),
    ) -> Result<()> {
        let key = [params[0], params[1], params[2], params[3], rows];
        if let std::collections::btree_map::Entry::Vacant(e) = self.block_params.entry(key) {
            let slots = params[0].div_ceil(rows.max(1)).max(1);
            let mut data = vec![0u32; slots as usize * 64];
            for (s, slot) in data.chunks_exact_mut(64).enumerate() {
                slot[..5].copy_from_slice(&[
                    params[0],
                    params[1],
                    params[2],
                    s as u32 * rows,
                    params[3],
                ]);
            }
            e.insert((Buffer::uniform(&data)?, slots));
        }
        let Some((pbuf, slots)) = self.block_params.get(&key) else {
            return Err(invalid("parameter buffer missing"));
        };
        if index >= *slots {
            return Err(invalid("block past the parameter buffer"));
        }
        let first = index;
        let mut d = kernel.dispatch();
        for &(binding, buffer) in bindings {
            d = d.bind(binding, buffer);
        }
        for &(binding, offset, size) in block.1 {
            d = d.bind_range(0, binding, block.0, offset, Some(size));
        }
        let d = d
            .bind_range(0, 4, pbuf, u64::from(first) * 256, Some(32))
            .workgroups(workgroups.0, workgroups.1, workgroups.2);
        Self::record(
            &mut self.batch,
            &mut self.timings,
            &mut self.in_batch,
            kind,
            d,
        )?;
        self.dispatches += 1;
        Ok(())
    }

    /// Keep `t` alive until the submission: as in WebGPU, a buffer
    /// dropped (destroyed) before the commands that use it are submitted
    /// makes the submission fail. Hand intermediate tensors here.
    pub fn keep(&mut self, t: Tensor) {
        self.kept.push(t);
    }

    pub fn profiling(&self) -> bool {
        self.profile
    }

    /// Dispatches recorded so far.
    pub fn dispatches(&self) -> u64 {
        self.dispatches
    }

    /// Per-kind timings (empty unless profiling).
    pub fn timings(&self) -> &BTreeMap<&'static str, OpTiming> {
        &self.timings
    }

    /// Submit what was recorded and wait for the GPU; returns the timings
    /// (profiling) or an empty map.
    pub fn submit(self) -> Result<BTreeMap<&'static str, OpTiming>> {
        if let Some(batch) = self.batch
            && self.in_batch > 0
        {
            batch.submit()?;
        }
        Ok(self.timings)
    }
}

/// What [`Ops::linear`] applies after `x · wᵀ + bias`.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    None,
    /// GELU, erf form (BERT's `gelu`).
    Gelu,
    /// `+ residual[i]` (same shape as the output).
    Residual(&'a Tensor),
}

const ROWS: &str = include_str!("wgsl/rows.wgsl");
const ERF: &str = include_str!("wgsl/erf.wgsl");

/// The toolkit's kernels, compiled on first use.
#[derive(Default)]
pub struct Ops {
    /// Linear kernels by (rows per dispatch, inner size).
    linear: RefCell<BTreeMap<(usize, usize), Rc<Kernel>>>,
    attention_any: OnceCell<(usize, Kernel)>,
    layer_norm: OnceCell<Kernel>,
    softmax: OnceCell<Kernel>,
    bias_add: OnceCell<Kernel>,
    gelu: OnceCell<Kernel>,
    embed: OnceCell<Kernel>,
    mean_pool: OnceCell<Kernel>,
    l2_normalize: OnceCell<Kernel>,
    compiled: Cell<u32>,
    compile_time: Cell<Duration>,
}

fn kernel(cell: &OnceCell<Kernel>, make: impl FnOnce() -> Result<Kernel>) -> Result<&Kernel> {
    if let Some(k) = cell.get() {
        return Ok(k);
    }
    let k = make()?;
    Ok(cell.get_or_init(|| k))
}

/// How a linear dispatch reads its `rows` rows of x for inner size `k`:
/// `(rows_per_binding, bindings)` with rows_per_binding · k floats within a
/// 64 KiB uniform binding (and 256-byte aligned offsets), at most 8
/// bindings (`None` past k = 4096 · 16 / rows).
fn linear_blocks(rows: usize, k: usize) -> Option<(usize, usize)> {
    [16, 8, 4]
        .into_iter()
        .filter(|&r| r <= rows)
        .find(|&r| r * k * 4 <= 65_536 && (r * k * 4).is_multiple_of(256))
        .map(|r| (r, rows / r))
        .filter(|&(_, parts)| parts <= 8)
}

/// Rows of the output one linear dispatch computes (held in registers):
/// 32 (measured on lavapipe: 16 → 32 saves ~25%, 64 gains nothing more),
/// or 16 for inputs of at most 16 rows (less padding computed).
fn linear_rows(m: usize) -> usize {
    if m <= 16 { 16 } else { 32 }
}

/// Uniform bindings of x blocks in the linear kernel (binding 0, then 6..).
fn x_binding(part: usize) -> u32 {
    if part == 0 { 0 } else { 5 + part as u32 }
}

/// Tensors keep their rows padded to a multiple of this, so that every
/// linear dispatch can bind a whole R-row block of its input.
const ROW_PAD: usize = 32;

/// The linear kernel (`wgsl/linear.wgsl`) unrolled for rb · parts rows
/// per dispatch read from `parts` uniform bindings of `rb` rows each, inner
/// size `k`, with its extra bindings and epilogue.
fn linear_source(rb: usize, parts: usize, k: usize) -> String {
    use std::fmt::Write;
    let rows = rb * parts;
    let mut decl = String::new();
    for p in 0..parts {
        let _ = writeln!(
            decl,
            "@group(0) @binding({}) var<uniform> x{p}: array<vec4<f32>, {}>;",
            x_binding(p),
            rb * k / 4
        );
    }
    let mut body = String::new();
    for r in 0..rows {
        let _ = writeln!(body, "    var acc{r} = 0.0;");
    }
    body.push_str("    for (var q = 0u; q < k4; q = q + 1u) {\n        let wv = w[wo + q];\n");
    for r in 0..rows {
        let _ = writeln!(
            body,
            "        acc{r} = acc{r} + dot(x{}[{}u * k4 + q], wv);",
            r / rb,
            r % rb
        );
    }
    body.push_str("    }\n    if (col >= n) {\n        return;\n    }\n");
    for r in 0..rows {
        let _ = writeln!(
            body,
            "    if (dims.row0 + {r}u < dims.m) {{\n        let i{r} = (dims.row0 + {r}u) * n + col;\n        y[i{r}] = epilogue(acc{r} + bias[col], i{r});\n    }}"
        );
    }
    include_str!("wgsl/linear.wgsl")
        .replace("//X_BINDINGS", &decl)
        .replace("//ERF", ERF)
        .replace("//BODY", &body)
}

/// Workgroups (x, y) of 64 invocations covering `n` items on the 2-D grid
/// the row kernels use (x at most 65535).
fn grid(n: usize) -> Result<(u32, u32)> {
    let groups = n.div_ceil(64);
    let x = groups.min(65_535);
    let y = groups.div_ceil(x.max(1));
    Ok((
        u32::try_from(x.max(1)).map_err(|_| invalid("too many workgroups"))?,
        u32::try_from(y.max(1)).map_err(|_| invalid("too many workgroups"))?,
    ))
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| invalid(format!("{what} = {v} does not fit in u32")))
}

impl Ops {
    pub fn new() -> Ops {
        Ops::default()
    }

    /// Compile a kernel, counting it and its compile time.
    fn compile(&self, wgsl: &str, entry: &str) -> Result<Kernel> {
        let start = Instant::now();
        let k = Kernel::new(wgsl, entry)?;
        self.compiled.set(self.compiled.get() + 1);
        self.compile_time
            .set(self.compile_time.get() + start.elapsed());
        Ok(k)
    }

    /// Kernels compiled so far and the time that took (on lavapipe, tens of
    /// milliseconds each: part of the first use of every op in a run).
    pub fn compile_stats(&self) -> (u32, Duration) {
        (self.compiled.get(), self.compile_time.get())
    }

    /// `y = epilogue(x · wᵀ + bias)`: x is [m, k] (k a multiple of 4), w
    /// is [n, k] (nn.Linear's weight layout), bias [n], y [m, n]. One
    /// dispatch per block of 32 rows of x (16 for small inputs), read
    /// through 1 to 8 uniform bindings of at most 64 KiB (k up to 4096).
    pub fn linear(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        epilogue: Epilogue<'_>,
    ) -> Result<()> {
        let (m, k) = (x.rows(), x.cols());
        if w.shape().len() != 2 || w.shape()[1] != k || k % 4 != 0 {
            return Err(invalid(format!(
                "linear: weight {:?} does not take {k} inputs (a multiple of 4)",
                w.shape()
            )));
        }
        let n = w.shape()[0];
        if bias.len() != n || y.rows() != m || y.cols() != n {
            return Err(invalid(format!(
                "linear: x {:?}, w {:?}, bias {:?} do not give y {:?}",
                x.shape(),
                w.shape(),
                bias.shape(),
                y.shape()
            )));
        }
        let rows = linear_rows(m);
        let (rb, parts) = linear_blocks(rows, k)
            .ok_or_else(|| invalid(format!("linear: inner size {k} is too large")))?;
        let blocks = m.div_ceil(rows);
        let block_bytes = (rows * k * 4) as u64;
        let part_bytes = (rb * k * 4) as u64;
        if x.buffer().size() < blocks as u64 * block_bytes {
            return Err(invalid(
                "linear: x must have its rows padded to a multiple of 32 (Tensor::zeros does it)",
            ));
        }
        // One kernel serves every epilogue (fewer compiles per run): the
        // mode is a parameter, and without a residual the bias is bound in
        // its place (two read-only bindings of one buffer are fine).
        let (kind, mode, residual) = match epilogue {
            Epilogue::None => ("linear", 0u32, bias),
            Epilogue::Gelu => ("linear+gelu", 1, bias),
            Epilogue::Residual(r) => {
                if r.len() != y.len() {
                    return Err(invalid(format!(
                        "linear: residual {:?} is not the shape of y {:?}",
                        r.shape(),
                        y.shape()
                    )));
                }
                ("linear+residual", 2, r)
            }
        };
        let kern = {
            let mut cache = self.linear.borrow_mut();
            match cache.get(&(rows, k)) {
                Some(kern) => kern.clone(),
                None => {
                    let kern = Rc::new(self.compile(&linear_source(rb, parts, k), "linear")?);
                    cache.insert((rows, k), kern.clone());
                    kern
                }
            }
        };
        let bindings = [
            (1, w.buffer()),
            (2, bias.buffer()),
            (3, y.buffer()),
            (5, residual.buffer()),
        ];
        let wg = (u32_of(n.div_ceil(64), "n")?, 1, 1);
        let params = [u32_of(m, "m")?, u32_of(n, "n")?, u32_of(k, "k")?, mode];
        for b in 0..blocks {
            let x_parts: Vec<(u32, u64, u64)> = (0..parts)
                .map(|p| {
                    (
                        x_binding(p),
                        b as u64 * block_bytes + p as u64 * part_bytes,
                        part_bytes,
                    )
                })
                .collect();
            rec.run_block(
                kind,
                &kern,
                &bindings,
                (x.buffer(), &x_parts),
                params,
                rows as u32,
                b as u32,
                wg,
            )?;
        }
        Ok(())
    }

    /// Scaled dot-product attention with a padding mask over a batch of
    /// padded sequences, all heads at once. `qkv` is [batch · seq, 3 · hidden]
    /// (q, k, v side by side, as one fused projection writes them; head h at
    /// columns h · head_dim of each third); `lens` (u32, one per sequence)
    /// masks keys at or past each length; `out` is [batch · seq, hidden]
    /// (padding rows are written as zeros). Softmax scale 1/√head_dim.
    pub fn attention(
        &self,
        rec: &mut Recorder,
        qkv: &Tensor,
        lens: &Buffer,
        out: &Tensor,
        seq: usize,
        heads: usize,
    ) -> Result<()> {
        let hidden = out.cols();
        if heads == 0 || !hidden.is_multiple_of(heads) || !(hidden / heads).is_multiple_of(4) {
            return Err(invalid(format!(
                "attention: hidden {hidden} is not heads {heads} × a multiple of 4"
            )));
        }
        let head_dim = hidden / heads;
        if head_dim > 256 {
            return Err(invalid("attention: head size above 256"));
        }
        if seq == 0
            || !out.rows().is_multiple_of(seq)
            || qkv.rows() != out.rows()
            || qkv.cols() != 3 * hidden
        {
            return Err(invalid(format!(
                "attention: qkv {:?} and out {:?} do not match seq {seq}",
                qkv.shape(),
                out.shape()
            )));
        }
        let batch = out.rows() / seq;
        if lens.size() < (batch as u64) * 4 {
            return Err(invalid("attention: fewer lengths than sequences"));
        }
        // One kernel per head size (the head is held in registers).
        let (d4, kern) = match self.attention_any.get() {
            Some((d4, k)) => (*d4, k),
            None => {
                let src = include_str!("wgsl/attention.wgsl")
                    .replace("HEAD_DIM_4u", &format!("{}u", head_dim / 4));
                let k = self.compile(&src, "attention")?;
                let (d4, k) = self.attention_any.get_or_init(|| (head_dim / 4, k));
                (*d4, k)
            }
        };
        if d4 != head_dim / 4 {
            return Err(invalid(format!(
                "attention: this Ops was compiled for head size {}, not {head_dim}",
                d4 * 4
            )));
        }
        let scale = 1.0f32 / (head_dim as f32).sqrt();
        let params = [
            u32_of(seq, "seq")?,
            u32_of(hidden / 4, "hidden")?,
            scale.to_bits(),
            0,
        ];
        let wg = (
            u32_of(seq.div_ceil(64), "seq")?,
            u32_of(heads, "heads")?,
            u32_of(batch, "batch")?,
        );
        rec.run(
            "attention",
            kern,
            &[(0, qkv.buffer()), (1, lens), (2, out.buffer())],
            3,
            params,
            wg,
        )
    }

    /// In-place layer norm over the last dimension (a multiple of 4):
    /// `x = (x − mean) / √(var + eps) · gamma + beta`.
    pub fn layer_norm(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
    ) -> Result<()> {
        let w = x.cols();
        if !w.is_multiple_of(4) || gamma.len() != w || beta.len() != w {
            return Err(invalid(format!(
                "layer_norm: x {:?}, gamma {:?}, beta {:?}",
                x.shape(),
                gamma.shape(),
                beta.shape()
            )));
        }
        let kern = kernel(&self.layer_norm, || {
            self.compile(
                &format!("{ROWS}\n{}", include_str!("wgsl/layer_norm.wgsl")),
                "layer_norm",
            )
        })?;
        let (gx, gy) = grid(x.rows())?;
        rec.run(
            "layer_norm",
            kern,
            &[(0, x.buffer()), (1, gamma.buffer()), (2, beta.buffer())],
            3,
            [
                u32_of(x.rows(), "rows")?,
                u32_of(w / 4, "width")?,
                eps.to_bits(),
                0,
            ],
            (gx, gy, 1),
        )
    }

    /// In-place softmax over the last dimension.
    pub fn softmax(&self, rec: &mut Recorder, x: &Tensor) -> Result<()> {
        let kern = kernel(&self.softmax, || {
            self.compile(
                &format!("{ROWS}\n{}", include_str!("wgsl/softmax.wgsl")),
                "softmax",
            )
        })?;
        let (gx, gy) = grid(x.rows())?;
        rec.run(
            "softmax",
            kern,
            &[(0, x.buffer())],
            1,
            [u32_of(x.rows(), "rows")?, u32_of(x.cols(), "cols")?, 0, 0],
            (gx, gy, 1),
        )
    }

    /// In place: `x[i, j] += bias[j]`.
    pub fn bias_add(&self, rec: &mut Recorder, x: &Tensor, bias: &Tensor) -> Result<()> {
        if bias.len() != x.cols() {
            return Err(invalid(format!(
                "bias_add: bias {:?} for x {:?}",
                bias.shape(),
                x.shape()
            )));
        }
        let kern = kernel(&self.bias_add, || {
            let src = include_str!("wgsl/elementwise.wgsl")
                .replace(
                    "//BIAS_BINDING",
                    "@group(0) @binding(2) var<storage, read> bias: array<f32>;",
                )
                .replace("OP", "x[i] + bias[i % p.b]");
            self.compile(&format!("{ROWS}\n{src}"), "elementwise")
        })?;
        let (gx, gy) = grid(x.len())?;
        rec.run(
            "bias_add",
            kern,
            &[(0, x.buffer()), (2, bias.buffer())],
            1,
            [u32_of(x.len(), "len")?, u32_of(x.cols(), "cols")?, 0, 0],
            (gx, gy, 1),
        )
    }

    /// In place: `x = gelu(x)` (erf form).
    pub fn gelu(&self, rec: &mut Recorder, x: &Tensor) -> Result<()> {
        let kern = kernel(&self.gelu, || {
            let src = include_str!("wgsl/elementwise.wgsl").replace("OP", "gelu_f32(x[i])");
            self.compile(&format!("{ROWS}\n{ERF}\n{src}"), "elementwise")
        })?;
        let (gx, gy) = grid(x.len())?;
        rec.run(
            "gelu",
            kern,
            &[(0, x.buffer())],
            1,
            [u32_of(x.len(), "len")?, 0, 0, 0],
            (gx, gy, 1),
        )
    }

    /// BERT input embeddings for token type 0: `out[r] = word[ids[r]] +
    /// pos[r % seq] + typ[0]`, `ids` holding batch · seq u32 ids.
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        rec: &mut Recorder,
        ids: &Buffer,
        word: &Tensor,
        pos: &Tensor,
        typ: &Tensor,
        out: &Tensor,
        seq: usize,
    ) -> Result<()> {
        let w = out.cols();
        if !w.is_multiple_of(4) || word.cols() != w || pos.cols() != w || typ.cols() != w {
            return Err(invalid("embed: widths differ or are not a multiple of 4"));
        }
        if seq == 0 || seq > pos.rows() || !out.rows().is_multiple_of(seq) {
            return Err(invalid(format!(
                "embed: seq {seq} with {} positions and {} rows",
                pos.rows(),
                out.rows()
            )));
        }
        if ids.size() < out.rows() as u64 * 4 {
            return Err(invalid("embed: fewer ids than rows"));
        }
        let kern = kernel(&self.embed, || {
            self.compile(
                &format!("{ROWS}\n{}", include_str!("wgsl/embed.wgsl")),
                "embed",
            )
        })?;
        let (gx, gy) = grid(out.len() / 4)?;
        rec.run(
            "embed",
            kern,
            &[
                (0, ids),
                (1, word.buffer()),
                (2, pos.buffer()),
                (3, typ.buffer()),
                (4, out.buffer()),
            ],
            5,
            [
                u32_of(out.rows(), "rows")?,
                u32_of(seq, "seq")?,
                u32_of(w / 4, "width")?,
                u32_of(word.rows(), "vocab")?,
            ],
            (gx, gy, 1),
        )
    }

    /// Mean over the first `lens[b]` rows of each sequence of `x` ([batch ·
    /// seq, width]) into `out` ([batch, width]).
    pub fn mean_pool(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        lens: &Buffer,
        out: &Tensor,
        seq: usize,
    ) -> Result<()> {
        let w = x.cols();
        if !w.is_multiple_of(4) || out.cols() != w || seq == 0 || x.rows() != out.rows() * seq {
            return Err(invalid(format!(
                "mean_pool: x {:?}, out {:?}, seq {seq}",
                x.shape(),
                out.shape()
            )));
        }
        if lens.size() < out.rows() as u64 * 4 {
            return Err(invalid("mean_pool: fewer lengths than sequences"));
        }
        let kern = kernel(&self.mean_pool, || {
            self.compile(
                &format!("{ROWS}\n{}", include_str!("wgsl/pool.wgsl")),
                "mean_pool",
            )
        })?;
        let (gx, gy) = grid(out.len() / 4)?;
        rec.run(
            "mean_pool",
            kern,
            &[(0, x.buffer()), (1, lens), (2, out.buffer())],
            3,
            [
                u32_of(out.rows(), "batch")?,
                u32_of(seq, "seq")?,
                u32_of(w / 4, "width")?,
                0,
            ],
            (gx, gy, 1),
        )
    }

    /// In place: each row divided by its L2 norm (at least 1e-12).
    pub fn l2_normalize(&self, rec: &mut Recorder, x: &Tensor) -> Result<()> {
        if !x.cols().is_multiple_of(4) {
            return Err(invalid("l2_normalize: width is not a multiple of 4"));
        }
        let kern = kernel(&self.l2_normalize, || {
            self.compile(
                &format!("{ROWS}\n{}", include_str!("wgsl/l2_normalize.wgsl")),
                "l2_normalize",
            )
        })?;
        let (gx, gy) = grid(x.rows())?;
        rec.run(
            "l2_normalize",
            kern,
            &[(0, x.buffer())],
            1,
            [
                u32_of(x.rows(), "rows")?,
                u32_of(x.cols() / 4, "width")?,
                0,
                0,
            ],
            (gx, gy, 1),
        )
    }
}
