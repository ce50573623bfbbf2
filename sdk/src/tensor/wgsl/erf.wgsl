// erf(x) from the complementary error function's Chebyshev fit
// (Numerical Recipes `erfcc`, fractional error < 1.2e-7 everywhere).
fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(poly);
    return select(erfc - 1.0, 1.0 - erfc, x >= 0.0);
}

// GELU as BERT defines it: x · Φ(x) = 0.5 · x · (1 + erf(x / √2)).
fn gelu_f32(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752));
}
