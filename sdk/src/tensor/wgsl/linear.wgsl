// y = x · wᵀ + bias, then an epilogue (none, GELU, or + residual: dims.mode), for
// row-major f32: x is m×k, w is n×k (nn.Linear's weight layout), y is m×n;
// k is a multiple of 4.
//
// Shaped for CPU rasterisers such as lavapipe (llvmpipe), which run the
// invocations of a workgroup in SIMD lanes: a uniform-buffer load whose
// address is the same in every lane is one scalar load, while storage
// loads are done lane by lane. So one dispatch covers R = 32 (or 16) rows
// of x, bound as uniform-buffer ranges (x0, x1, ...: each at most 64 KiB,
// so 32 rows of k = 1536 take four) and read with lane-uniform addresses;
// the 64 invocations of a workgroup compute 64 neighbouring columns of
// those rows, each loading its own row of w one
// vec4 at a time and reusing it for the R rows held in registers. On a
// discrete GPU this is a reasonable, not an optimal, kernel.
// `dims.row0` is the first row of the dispatch (x rows past m read the
// zero padding of the tensor; their results are not written).
// Dispatch (ceil(n / 64), 1, 1) per R rows. The x bindings and k are
// fixed when the kernel is generated (see `linear_source`).

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    row0: u32,
    // 0: none, 1: GELU, 2: + residual
    mode: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

//X_BINDINGS
@group(0) @binding(1) var<storage, read> w: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
@group(0) @binding(5) var<storage, read> residual: array<f32>;

//ERF

fn epilogue(v: f32, i: u32) -> f32 {
    if (dims.mode == 1u) {
        return gelu_f32(v);
    }
    if (dims.mode == 2u) {
        return v + residual[i];
    }
    return v;
}

@compute @workgroup_size(64, 1, 1)
fn linear(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let col = wg.x * 64u + lid.x;
    let n = dims.n;
    let k4 = dims.k / 4u;
    let wo = min(col, n - 1u) * k4;
    // Unrolled for R rows (generated): row r accumulates in acc_r.
//BODY
}
