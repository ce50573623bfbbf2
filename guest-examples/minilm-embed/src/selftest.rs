//! `{"selftest": true}`: every op of the SDK's tensor toolkit on small,
//! awkward shapes (rows not a multiple of 16, columns not a multiple of 64,
//! padded sequences), checked against straightforward f64 CPU code in the
//! guest. Returns the largest absolute error of each op.

use std::collections::BTreeMap;

use kasbah_sdk::gpu::Buffer;
use kasbah_sdk::tensor::{Epilogue, Ops, Recorder, Tensor};
use kasbah_sdk::{Error, gpu};

fn value(seed: u32, i: usize) -> f32 {
    let mut x = (i as u32).wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    (x >> 8) as f32 / (1u32 << 23) as f32 - 1.0
}

fn data(seed: u32, n: usize) -> Vec<f32> {
    (0..n).map(|i| value(seed, i)).collect()
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - w).abs())
        .fold(
            0.0,
            |a, e| if e.is_nan() { f64::INFINITY } else { a.max(e) },
        )
}

fn erf(x: f64) -> f64 {
    let z = x.abs();
    if z > 3.0 {
        // Asymptotic series of erfc (its error is below 1e-9 here).
        let z2 = z * z;
        let series = 1.0 - 1.0 / (2.0 * z2) + 3.0 / (4.0 * z2 * z2) - 15.0 / (8.0 * z2 * z2 * z2)
            + 105.0 / (16.0 * z2 * z2 * z2 * z2);
        let erfc = (-z2).exp() / (z * std::f64::consts::PI.sqrt()) * series;
        return (1.0 - erfc).copysign(x);
    }
    // Maclaurin series (converges well for |x| <= 3 in f64).
    let mut sum = 0.0;
    let mut term = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 && n < 200.0 {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn run_op(f: impl FnOnce(&Ops, &mut Recorder) -> gpu::Result<()>) -> gpu::Result<()> {
    let ops = Ops::new();
    let mut rec = Recorder::new(false)?;
    f(&ops, &mut rec)?;
    rec.submit()?;
    Ok(())
}

pub fn run() -> Result<BTreeMap<&'static str, f64>, Error> {
    let mut errs = BTreeMap::new();

    // linear with each epilogue, m = 37 (three 16-row blocks, the last
    // partial), k = 1544 (two uniform bindings per block), n = 70.
    for (name, m, k, n) in [("linear", 37, 1544, 70), ("linear_small", 5, 12, 3)] {
        let (xv, wv, bv, rv) = (data(1, m * k), data(2, n * k), data(3, n), data(4, m * n));
        let x = Tensor::from_slice(&xv, &[m, k])?;
        let w = Tensor::from_slice(&wv, &[n, k])?;
        let b = Tensor::from_slice(&bv, &[n])?;
        let r = Tensor::from_slice(&rv, &[m, n])?;
        let plain: Vec<f64> = (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                f64::from(bv[col])
                    + (0..k)
                        .map(|p| f64::from(xv[row * k + p]) * f64::from(wv[col * k + p]))
                        .sum::<f64>()
            })
            .collect();
        for (epi, label) in [
            (Epilogue::None, ""),
            (Epilogue::Gelu, "+gelu"),
            (Epilogue::Residual(&r), "+residual"),
        ] {
            let y = Tensor::zeros(&[m, n])?;
            run_op(|ops, rec| ops.linear(rec, &x, &w, &b, &y, epi))?;
            let want: Vec<f64> = plain
                .iter()
                .enumerate()
                .map(|(i, &v)| match epi {
                    Epilogue::None => v,
                    Epilogue::Gelu => gelu(v),
                    Epilogue::Residual(_) => v + f64::from(rv[i]),
                })
                .collect();
            let key: &'static str = match (name, label) {
                ("linear", "") => "linear",
                ("linear", "+gelu") => "linear+gelu",
                ("linear", _) => "linear+residual",
                ("linear_small", "") => "linear (5x12x3)",
                ("linear_small", "+gelu") => "linear+gelu (5x12x3)",
                _ => "linear+residual (5x12x3)",
            };
            errs.insert(key, max_err(&y.read()?, &want));
        }
    }

    // attention: 3 sequences of 20 (lengths 20, 7, 1), 2 heads of 8.
    let (batch, seq, heads, hd) = (3usize, 20usize, 2usize, 8usize);
    let hidden = heads * hd;
    let lens = [20u32, 7, 1];
    let qkv_v = data(5, batch * seq * 3 * hidden);
    let qkv = Tensor::from_slice(&qkv_v, &[batch * seq, 3 * hidden])?;
    let lens_buf = Buffer::from_slice(&lens)?;
    let out = Tensor::zeros(&[batch * seq, hidden])?;
    run_op(|ops, rec| ops.attention(rec, &qkv, &lens_buf, &out, seq, heads))?;
    let mut want = vec![0.0f64; batch * seq * hidden];
    let at = |row: usize, part: usize, h: usize, d: usize| {
        f64::from(qkv_v[row * 3 * hidden + part * hidden + h * hd + d])
    };
    for b in 0..batch {
        let len = lens[b] as usize;
        for i in 0..len {
            for h in 0..heads {
                let scores: Vec<f64> = (0..len)
                    .map(|j| {
                        (0..hd)
                            .map(|d| at(b * seq + i, 0, h, d) * at(b * seq + j, 1, h, d))
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    want[(b * seq + i) * hidden + h * hd + d] =
                        (0..len).map(|j| e[j] / z * at(b * seq + j, 2, h, d)).sum();
                }
            }
        }
    }
    errs.insert("attention", max_err(&out.read()?, &want));

    // layer norm, softmax, bias add, gelu, mean pool, l2 normalize.
    let (rows, cols) = (19usize, 24usize);
    let v = data(6, rows * cols);
    let g = data(7, cols);
    let bta = data(8, cols);
    let x = Tensor::from_slice(&v, &[rows, cols])?;
    let gt = Tensor::from_slice(&g, &[cols])?;
    let bt = Tensor::from_slice(&bta, &[cols])?;
    run_op(|ops, rec| ops.layer_norm(rec, &x, &gt, &bt, 1e-5))?;
    let mut want = Vec::new();
    let mut soft = Vec::new();
    for r in v.chunks_exact(cols) {
        let r: Vec<f64> = r.iter().map(|&a| f64::from(a)).collect();
        let mean = r.iter().sum::<f64>() / cols as f64;
        let var = r.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / cols as f64;
        for (j, a) in r.iter().enumerate() {
            want.push((a - mean) / (var + 1e-5).sqrt() * f64::from(g[j]) + f64::from(bta[j]));
        }
        let mx = r.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = r.iter().map(|a| (a - mx).exp()).sum();
        soft.extend(r.iter().map(|a| (a - mx).exp() / z));
    }
    errs.insert("layer_norm", max_err(&x.read()?, &want));

    let x = Tensor::from_slice(&v, &[rows, cols])?;
    run_op(|ops, rec| ops.softmax(rec, &x))?;
    errs.insert("softmax", max_err(&x.read()?, &soft));

    let x = Tensor::from_slice(&v, &[rows, cols])?;
    run_op(|ops, rec| ops.bias_add(rec, &x, &gt))?;
    let want: Vec<f64> = (0..rows * cols)
        .map(|i| f64::from(v[i]) + f64::from(g[i % cols]))
        .collect();
    errs.insert("bias_add", max_err(&x.read()?, &want));

    let big: Vec<f32> = v.iter().map(|a| a * 4.0).collect();
    let x = Tensor::from_slice(&big, &[rows, cols])?;
    run_op(|ops, rec| ops.gelu(rec, &x))?;
    let want: Vec<f64> = big.iter().map(|&a| gelu(f64::from(a))).collect();
    errs.insert("gelu", max_err(&x.read()?, &want));

    // mean pool over 3 sequences of 6 rows with lengths 6, 2, 0 (the empty
    // one pools to zeros), then l2 normalize (the zero row stays zero).
    let (pb, ps) = (3usize, 6usize);
    let pv = data(9, pb * ps * cols);
    let px = Tensor::from_slice(&pv, &[pb * ps, cols])?;
    let plens = [6u32, 2, 0];
    let plens_buf = Buffer::from_slice(&plens)?;
    let pooled = Tensor::zeros(&[pb, cols])?;
    run_op(|ops, rec| ops.mean_pool(rec, &px, &plens_buf, &pooled, ps))?;
    let mut want = vec![0.0f64; pb * cols];
    for b in 0..pb {
        let len = plens[b] as usize;
        for d in 0..cols {
            if len > 0 {
                want[b * cols + d] = (0..len)
                    .map(|t| f64::from(pv[(b * ps + t) * cols + d]))
                    .sum::<f64>()
                    / len as f64;
            }
        }
    }
    errs.insert("mean_pool", max_err(&pooled.read()?, &want));
    run_op(|ops, rec| ops.l2_normalize(rec, &pooled))?;
    for row in want.chunks_exact_mut(cols) {
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|a| *a /= norm);
    }
    errs.insert("l2_normalize", max_err(&pooled.read()?, &want));
    Ok(errs)
}
