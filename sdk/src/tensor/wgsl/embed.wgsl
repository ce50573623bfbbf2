// BERT input embeddings: out[row] = word[ids[row]] + pos[row % seq] + typ[0]
// (token type 0 for single sentences), for rows = batch · seq, width 4·p.c.
// An id past the table reads row 0. One invocation per vec4 of output.
// p.a = rows, p.b = seq, p.c = width / 4, p.d = rows in the word table.
@group(0) @binding(0) var<storage, read> ids: array<u32>;
@group(0) @binding(1) var<storage, read> word: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pos: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> typ: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.a * p.c) {
        return;
    }
    let row = i / p.c;
    let d = i % p.c;
    var id = ids[row];
    if (id >= p.d) {
        id = 0u;
    }
    let t = row % p.b;
    out[i] = word[id * p.c + d] + pos[t * p.c + d] + typ[d];
}
