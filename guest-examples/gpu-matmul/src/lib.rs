//! f32 matrix multiplication on the GPU, checked against the CPU.
//!
//! Input: the size, `"n"` for n×n·n×n or `"m k n"` for m×k·k×n. The matrices
//! are generated deterministically (see [`value`]), multiplied by a tiled
//! WGSL kernel through `kasbah:gpu`, and the result is checked inside the
//! guest against an f64 CPU product: every element (the default), or a
//! fixed sample of 64 when the request has metadata `verify = sample`.
//! Output (JSON): the sizes, the adapter and zone used, how many elements
//! were checked, the largest absolute error and a checksum of C.

use kasbah_sdk::gpu::{self, Buffer, Kernel, workgroups_for};
use kasbah_sdk::{Error, Pipeline, Request, Response, log};

/// The kernel, shared with the host-side benchmark's native baseline.
pub const MATMUL_WGSL: &str = include_str!("matmul.wgsl");

/// Largest dimension accepted.
const MAX_DIM: u32 = 4096;

/// Element `i` of input matrix `seed`, in [-1, 1). The benchmark's native
/// baseline uses the same function.
pub fn value(seed: u32, i: u32) -> f32 {
    let mut x = i.wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

fn parse(text: &str) -> Result<(u32, u32, u32), Error> {
    let dims: Vec<u32> = text
        .split_whitespace()
        .map(|t| t.parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::invalid_input(format!("sizes must be integers: {e}")))?;
    let (m, k, n) = match dims[..] {
        [n] => (n, n, n),
        [m, k, n] => (m, k, n),
        _ => return Err(Error::invalid_input("expected \"n\" or \"m k n\"")),
    };
    if [m, k, n].iter().any(|&d| d == 0 || d > MAX_DIM) {
        return Err(Error::invalid_input(format!(
            "each size must be in 1..={MAX_DIM}"
        )));
    }
    Ok((m, k, n))
}

struct MatMul;

impl Pipeline for MatMul {
    fn run(request: Request) -> Result<Response, Error> {
        let (m, k, n) = parse(request.text()?.trim())?;
        let sample = request.meta("verify") == Some("sample");
        let info = gpu::adapter()?;

        let a: Vec<f32> = (0..m * k).map(|i| value(1, i)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(2, i)).collect();
        let a_buf = Buffer::from_slice(&a)?;
        let b_buf = Buffer::from_slice(&b)?;
        let c_buf = Buffer::zeroed::<f32>((m * n) as usize)?;
        let dims = Buffer::uniform(&[m, k, n, 0u32])?;
        let kernel = Kernel::new(MATMUL_WGSL, "matmul")?;
        kernel
            .dispatch()
            .bind(0, &a_buf)
            .bind(1, &b_buf)
            .bind(2, &c_buf)
            .bind(3, &dims)
            .workgroups(workgroups_for(n, 64), workgroups_for(m, 64), 1)
            .run()?;
        let c: Vec<f32> = c_buf.read()?;

        let tolerance = 1e-5 * f64::from(k) + 1e-6;
        let (checked, max_err) = if sample {
            verify_sample(&a, &b, &c, m, k, n, tolerance)?
        } else {
            verify_full(&a, &b, &c, m, k, n, tolerance)?
        };
        let checksum: f64 = c.iter().map(|&x| f64::from(x)).sum();
        log::info(&format!(
            "matmul {m}x{k}x{n} on {} ({}): {checked} checked, max error {max_err:e}",
            info.label, info.zone
        ));
        Ok(Response::bytes(
            "application/json",
            format!(
                "{{\"m\":{m},\"k\":{k},\"n\":{n},\"adapter\":\"{}\",\"zone\":\"{}\",\"checked\":{checked},\"max_abs_err\":{max_err:e},\"checksum\":{checksum}}}",
                info.label, info.zone
            ),
        ))
    }
}

fn check(got: f32, want: f64, i: u32, j: u32, tolerance: f64) -> Result<f64, Error> {
    let err = (f64::from(got) - want).abs();
    if err.is_nan() || err > tolerance {
        return Err(Error::failed(format!(
            "C[{i}][{j}] = {got} on the GPU, {want} on the CPU"
        )));
    }
    Ok(err)
}

fn verify_full(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    m: u32,
    k: u32,
    n: u32,
    tolerance: f64,
) -> Result<(u64, f64), Error> {
    let (mu, ku, nu) = (m as usize, k as usize, n as usize);
    let mut max_err = 0.0f64;
    let mut row = vec![0.0f64; nu];
    for i in 0..mu {
        row.fill(0.0);
        for p in 0..ku {
            let aip = f64::from(a[i * ku + p]);
            for (r, &bpj) in row.iter_mut().zip(&b[p * nu..(p + 1) * nu]) {
                *r += aip * f64::from(bpj);
            }
        }
        for (j, &want) in row.iter().enumerate() {
            max_err = max_err.max(check(c[i * nu + j], want, i as u32, j as u32, tolerance)?);
        }
    }
    Ok((u64::from(m) * u64::from(n), max_err))
}

fn verify_sample(
    a: &[f32],
    b: &[f32],
    c: &[f32],
    m: u32,
    k: u32,
    n: u32,
    tolerance: f64,
) -> Result<(u64, f64), Error> {
    let mut max_err = 0.0f64;
    let mut points = vec![(0, 0), (m - 1, n - 1), (0, n - 1), (m - 1, 0)];
    points.extend((0..60u32).map(|s| (s.wrapping_mul(7919) % m, s.wrapping_mul(104_729) % n)));
    for &(i, j) in &points {
        let want: f64 = (0..k)
            .map(|p| f64::from(a[(i * k + p) as usize]) * f64::from(b[(p * n + j) as usize]))
            .sum();
        max_err = max_err.max(check(c[(i * n + j) as usize], want, i, j, tolerance)?);
    }
    Ok((points.len() as u64, max_err))
}

kasbah_sdk::export!(MatMul);
