// In-place layer norm over the last dimension of x (rows × 4·p.b floats):
// x = (x − mean) / sqrt(var + eps) · gamma + beta, biased variance, two
// passes. One invocation per row. p.a = rows, p.b = width / 4, p.c = eps bits.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> gamma: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> beta: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn layer_norm(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if (row >= p.a) {
        return;
    }
    let w4 = p.b;
    let o = row * w4;
    var s = vec4<f32>();
    for (var d = 0u; d < w4; d = d + 1u) {
        s = s + x[o + d];
    }
    let n = f32(w4 * 4u);
    let mean = (s.x + s.y + s.z + s.w) / n;
    var v = vec4<f32>();
    for (var d = 0u; d < w4; d = d + 1u) {
        let c = x[o + d] - mean;
        v = v + c * c;
    }
    let inv = inverseSqrt((v.x + v.y + v.z + v.w) / n + bitcast<f32>(p.c));
    for (var d = 0u; d < w4; d = d + 1u) {
        x[o + d] = (x[o + d] - mean) * inv * gamma[d] + beta[d];
    }
}
