// In-place softmax over each row of x (p.a rows of p.b floats), max-shifted.
// One invocation per row.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if (row >= p.a) {
        return;
    }
    let o = row * p.b;
    var m = -3.0e38;
    for (var j = 0u; j < p.b; j = j + 1u) {
        m = max(m, x[o + j]);
    }
    var s = 0.0;
    for (var j = 0u; j < p.b; j = j + 1u) {
        let e = exp(x[o + j] - m);
        x[o + j] = e;
        s = s + e;
    }
    let inv = 1.0 / s;
    for (var j = 0u; j < p.b; j = j + 1u) {
        x[o + j] = x[o + j] * inv;
    }
}
