// Row-wise and element-wise kernels on row-major f32 tensors. Each entry
// point is compiled as a kernel of its own. Flat indices use a 2-D grid of
// 64-wide workgroups so that more than 65535·64 items can be covered:
// index = gid.x + gid.y · (num_workgroups.x · 64).

struct Params {
    a: u32,
    b: u32,
    c: u32,
    d: u32,
}

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}
