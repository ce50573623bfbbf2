// Scaled dot-product attention with a padding mask, for a batch of padded
// sequences, every head at once:
//   out[b, i, h] = softmax_j<len[b]((q[b,i,h] · k[b,j,h]) · scale) · v[b,j,h]
// q, k and v are the three thirds of each row of `qkv` (b·seq + i rows of
// 3·hidden floats; head h at columns h·D .. (h+1)·D of each third), as one
// fused projection produces them. Keys at or past len[b] are masked out
// (weight exactly 0, as an additive -inf mask gives); query rows past len[b]
// are padding and are written as zeros.
// One invocation per (query, head, sequence), softmax computed online in a
// single pass over the keys (running max and sum), so nothing of size
// seq × seq is ever stored.
// Dispatch (ceil(seq / 64), heads, batch).

const D4: u32 = HEAD_DIM_4u; // head size / 4

struct Params {
    seq: u32,
    hidden4: u32, // hidden / 4
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> lens: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64, 1, 1)
fn attention(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let h = gid.y;
    let b = gid.z;
    if (i >= p.seq) {
        return;
    }
    let len = min(lens[b], p.seq);
    let row = b * p.seq + i;
    let o = row * p.hidden4 + h * D4;
    if (i >= len) {
        for (var d = 0u; d < D4; d = d + 1u) {
            out[o + d] = vec4<f32>();
        }
        return;
    }
    let stride = 3u * p.hidden4;
    let qo = row * stride + h * D4;
    var q: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var d = 0u; d < D4; d = d + 1u) {
        q[d] = qkv[qo + d] * p.scale;
    }
    var m = -3.0e38;
    var l = 0.0;
    for (var j = 0u; j < len; j = j + 1u) {
        let ko = (b * p.seq + j) * stride + p.hidden4 + h * D4;
        var s = 0.0;
        for (var d = 0u; d < D4; d = d + 1u) {
            s = s + dot(q[d], qkv[ko + d]);
        }
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * corr + e;
        let vo = ko + p.hidden4;
        for (var d = 0u; d < D4; d = d + 1u) {
            acc[d] = acc[d] * corr + e * qkv[vo + d];
        }
        m = m_new;
    }
    let inv = 1.0 / l;
    for (var d = 0u; d < D4; d = d + 1u) {
        out[o + d] = acc[d] * inv;
    }
}
