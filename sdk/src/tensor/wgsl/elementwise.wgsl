// x[i] += bias[i % p.b] (bias_add) or x[i] = gelu(x[i]) (gelu), in place,
// for p.a elements.
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
//BIAS_BINDING

@compute @workgroup_size(64, 1, 1)
fn elementwise(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.a) {
        return;
    }
    x[i] = OP;
}
