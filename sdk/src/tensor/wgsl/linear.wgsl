// y = x · wᵀ + bias, then an epilogue (none, GELU, or + residual), for
// row-major f32: x is m×k, w is n×k (PyTorch's nn.Linear layout), y is m×n.
//
// Each 16×16 workgroup computes a 64×64 tile of y, staging a 64×16 tile of
// x and of w in workgroup memory per 16 steps of k (8 KiB in all); each
// invocation accumulates a 4×4 block in registers (rows lid.y + 16·i,
// columns lid.x + 16·j). Any m, n, k work (bounds-checked edges).
// Dispatch (ceil(n / 64), ceil(m / 64), 1).

struct Dims {
    m: u32,
    n: u32,
    k: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> dims: Dims;
//EXTRA_BINDINGS

const T: u32 = 64u;
const TK: u32 = 16u;

// tile_x[r * TK + kk] = x[row0 + r][k0 + kk]; tile_w[kk * T + c] = w[col0 + c][k0 + kk]
var<workgroup> tile_x: array<f32, 1024>;
var<workgroup> tile_w: array<f32, 1024>;

//EPILOGUE

@compute @workgroup_size(16, 16, 1)
fn linear(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wg.y * T;
    let col0 = wg.x * T;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    let tiles = (dims.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * TK;
        for (var s = 0u; s < 4u; s = s + 1u) {
            let e = li + 256u * s;
            let r = e / TK;
            let kk = e % TK;
            let kx = k0 + kk;
            var vx = 0.0;
            if (row0 + r < dims.m && kx < dims.k) {
                vx = x[(row0 + r) * dims.k + kx];
            }
            tile_x[e] = vx;
            var vw = 0.0;
            if (col0 + r < dims.n && kx < dims.k) {
                vw = w[(col0 + r) * dims.k + kx];
            }
            tile_w[kk * T + r] = vw;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let wv = vec4<f32>(
                tile_w[kk * T + lid.x],
                tile_w[kk * T + lid.x + 16u],
                tile_w[kk * T + lid.x + 32u],
                tile_w[kk * T + lid.x + 48u],
            );
            acc0 = acc0 + tile_x[lid.y * TK + kk] * wv;
            acc1 = acc1 + tile_x[(lid.y + 16u) * TK + kk] * wv;
            acc2 = acc2 + tile_x[(lid.y + 32u) * TK + kk] * wv;
            acc3 = acc3 + tile_x[(lid.y + 48u) * TK + kk] * wv;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + 16u * j;
            if (r < dims.m && col < dims.n) {
                let idx = r * dims.n + col;
                y[idx] = epilogue(accs[i][j] + bias[col], idx);
            }
        }
    }
}
