// Mean pooling over the attention mask: out[b] = mean of x[b, t] for
// t < len[b] (zeros when len[b] is 0), x being batch × seq rows of 4·p.c
// floats. One invocation per vec4 of output. p.a = batch, p.b = seq,
// p.c = width / 4.
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> lens: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn mean_pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.a * p.c) {
        return;
    }
    let b = i / p.c;
    let d = i % p.c;
    let len = min(lens[b], p.b);
    var s = vec4<f32>();
    for (var t = 0u; t < len; t = t + 1u) {
        s = s + x[(b * p.b + t) * p.c + d];
    }
    out[i] = s / max(f32(len), 1.0);
}
