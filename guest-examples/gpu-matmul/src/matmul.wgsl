// C = A × B for row-major f32 matrices: A is m×k, B is k×n, C is m×n.
//
// Tiled twice: each 16×16 workgroup computes a 64×64 tile of C, staging
// 64×16 tiles of A and 16×64 tiles of B in workgroup memory (one barrier
// pair per 16 steps of k), and each invocation accumulates a 4×4 block of
// that tile in registers (rows lid.y + 16·i, columns lid.x + 16·j).
// Edges are handled with bounds checks, so any m, k, n work.
// Dispatch (ceil(n / 64), ceil(m / 64), 1).
// Shared by the gpu-matmul guest and the native baseline of the benchmark.

struct Dims {
    m: u32,
    k: u32,
    n: u32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> dims: Dims;

const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// tile_a[r * TK + kk] = A[row0 + r][k0 + kk]; tile_b[kk * TN + j] = B[k0 + kk][col0 + j]
var<workgroup> tile_a: array<f32, 1024>;
var<workgroup> tile_b: array<f32, 1024>;

@compute @workgroup_size(16, 16, 1)
fn matmul(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row0 = wg.y * TM;
    let col0 = wg.x * TN;
    var acc0 = vec4<f32>();
    var acc1 = vec4<f32>();
    var acc2 = vec4<f32>();
    var acc3 = vec4<f32>();
    let tiles = (dims.k + TK - 1u) / TK;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let k0 = t * TK;
        // 1024 elements of each tile, 256 invocations: 4 each.
        for (var s = 0u; s < 4u; s = s + 1u) {
            let e = li + 256u * s;
            let ar = row0 + e / TK;
            let ak = k0 + e % TK;
            var va = 0.0;
            if (ar < dims.m && ak < dims.k) {
                va = a[ar * dims.k + ak];
            }
            tile_a[e] = va;
            let bk = k0 + e / TN;
            let bc = col0 + e % TN;
            var vb = 0.0;
            if (bk < dims.k && bc < dims.n) {
                vb = b[bk * dims.n + bc];
            }
            tile_b[e] = vb;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk = kk + 1u) {
            let bv = vec4<f32>(
                tile_b[kk * TN + lid.x],
                tile_b[kk * TN + lid.x + 16u],
                tile_b[kk * TN + lid.x + 32u],
                tile_b[kk * TN + lid.x + 48u],
            );
            acc0 = acc0 + tile_a[lid.y * TK + kk] * bv;
            acc1 = acc1 + tile_a[(lid.y + 16u) * TK + kk] * bv;
            acc2 = acc2 + tile_a[(lid.y + 32u) * TK + kk] * bv;
            acc3 = acc3 + tile_a[(lid.y + 48u) * TK + kk] * bv;
        }
        workgroupBarrier();
    }
    let accs = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var i = 0u; i < 4u; i = i + 1u) {
        let r = row0 + lid.y + 16u * i;
        for (var j = 0u; j < 4u; j = j + 1u) {
            let col = col0 + lid.x + 16u * j;
            if (r < dims.m && col < dims.n) {
                c[r * dims.n + col] = accs[i][j];
            }
        }
    }
}
