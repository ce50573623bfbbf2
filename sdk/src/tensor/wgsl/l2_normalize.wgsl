// In-place L2 normalization of each row (p.a rows of 4·p.b floats):
// x / max(‖x‖, 1e-12), as torch.nn.functional.normalize. One invocation per row.
@group(0) @binding(0) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(1) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn l2_normalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let row = flat(gid, nwg);
    if (row >= p.a) {
        return;
    }
    let o = row * p.b;
    var s = vec4<f32>();
    for (var d = 0u; d < p.b; d = d + 1u) {
        s = s + x[o + d] * x[o + d];
    }
    let inv = 1.0 / max(sqrt(s.x + s.y + s.z + s.w), 1e-12);
    for (var d = 0u; d < p.b; d = d + 1u) {
        x[o + d] = x[o + d] * inv;
    }
}
