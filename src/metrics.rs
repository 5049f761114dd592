//! Sample-quality statistics for low-dimensional data.

use sde_core::analytic::GaussianMixture;

/// Energy distance between two point sets (Székely & Rizzo):
/// D²(X, Y) = 2 E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖, estimated with all pairs (U-statistics for the
/// within-sample terms). It is ≥ 0 in expectation and 0 iff the distributions agree.
///
/// `x` and `y` hold points of dimension `dim`, flattened row-major.
/// ```
/// use scoresde::metrics::energy_distance;
/// let a = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0];
/// let far: Vec<f64> = a.iter().map(|v| v + 5.0).collect();
/// // E‖X − Y‖ ≈ 7.1 dominates: the shifted set is far away; a set against itself is not
/// assert!(energy_distance(&a, &far, 2) > 9.0);
/// assert!(energy_distance(&a, &a, 2).abs() < 1.0);
/// ```
pub fn energy_distance(x: &[f64], y: &[f64], dim: usize) -> f64 {
    let n = x.len() / dim;
    let m = y.len() / dim;
    let dist = |a: &[f64], b: &[f64]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f64>()
            .sqrt()
    };
    let mean_cross = {
        let mut s = 0.0;
        for i in 0..n {
            for j in 0..m {
                s += dist(&x[i * dim..(i + 1) * dim], &y[j * dim..(j + 1) * dim]);
            }
        }
        s / (n * m) as f64
    };
    let within = |v: &[f64], k: usize| -> f64 {
        if k < 2 {
            return 0.0;
        }
        let mut s = 0.0;
        for i in 0..k {
            for j in (i + 1)..k {
                s += dist(&v[i * dim..(i + 1) * dim], &v[j * dim..(j + 1) * dim]);
            }
        }
        2.0 * s / (k * (k - 1)) as f64
    };
    2.0 * mean_cross - within(x, n) - within(y, m)
}

/// Per-mode statistics of samples under a Gaussian mixture: which component each point belongs
/// to (nearest in the mixture's own metric), the fraction per mode, and the fraction of points
/// that lie within `k_sigma` component standard deviations of their mode (the rest are "off-mode").
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModeCoverage {
    /// Fraction of samples assigned to each component.
    pub proportions: Vec<f64>,
    /// The mixture's weights, for comparison.
    pub weights: Vec<f64>,
    /// Number of components that received at least one on-mode sample.
    pub modes_covered: usize,
    /// Fraction of samples farther than `k_sigma` standard deviations from every mode.
    pub off_mode_fraction: f64,
    /// Largest |proportion − weight| over the modes.
    pub max_weight_error: f64,
}

/// Computes [`ModeCoverage`] of `points` (flattened, dimension = the mixture's) under `gmm`.
pub fn mode_coverage(
    gmm: &GaussianMixture,
    points: &[f64],
    k_sigma: f64,
) -> sde_core::Result<ModeCoverage> {
    let dim = gmm.dim();
    let n = points.len() / dim;
    let x = candle_core::Tensor::from_vec(points.to_vec(), (n, dim), &candle_core::Device::Cpu)?;
    let labels = gmm.classify(&x)?;
    let k = gmm.n_components();
    let mut counts = vec![0usize; k];
    let mut on = vec![0usize; k];
    let mut off = 0usize;
    for (i, &c) in labels.iter().enumerate() {
        counts[c] += 1;
        let p = &points[i * dim..(i + 1) * dim];
        let z2: f64 = p
            .iter()
            .zip(&gmm.means()[c])
            .zip(&gmm.variances()[c])
            .map(|((x, m), v)| (x - m) * (x - m) / v)
            .sum();
        if z2.sqrt() <= k_sigma * (dim as f64).sqrt() {
            on[c] += 1;
        } else {
            off += 1;
        }
    }
    let proportions: Vec<f64> = counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect();
    let max_weight_error = proportions
        .iter()
        .zip(gmm.weights())
        .map(|(p, w)| (p - w).abs())
        .fold(0.0, f64::max);
    Ok(ModeCoverage {
        proportions,
        weights: gmm.weights().to_vec(),
        modes_covered: on.iter().filter(|&&c| c > 0).count(),
        off_mode_fraction: off as f64 / n.max(1) as f64,
        max_weight_error,
    })
}
