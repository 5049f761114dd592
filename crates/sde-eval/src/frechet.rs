//! The Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::linalg::trace_sqrt_product;
use crate::stats::FeatureStats;

/// A Gaussian N(μ, Σ) fitted to features: what a reference-statistics file holds
/// (pytorch-fid's `.npz` keys are `mu` and `sigma`).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Mean μ, length d.
    pub mu: Vec<f64>,
    /// Covariance Σ, row-major d × d (the sample covariance, normalised by n − 1).
    pub sigma: Vec<f64>,
    /// Number of features the statistics were computed from, where known (pytorch-fid's
    /// `.npz` files do not record it).
    pub n: Option<u64>,
}

impl GaussianStats {
    /// Checks that `mu` (length d) and `sigma` (d × d) fit and are finite.
    pub fn new(mu: Vec<f64>, sigma: Vec<f64>, n: Option<u64>) -> Result<Self> {
        let d = mu.len();
        if sigma.len() != d * d {
            return Err(Error::ShapeMismatch {
                what: "GaussianStats sigma",
                expected: format!("{d}x{d} (mu has length {d})"),
                got: format!("{} entries", sigma.len()),
            });
        }
        if mu.iter().chain(&sigma).any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "GaussianStats mu or sigma".into(),
            });
        }
        Ok(Self { mu, sigma, n })
    }

    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// μ and the sample covariance of streamed features (needs n ≥ 2).
    pub fn from_feature_stats(s: &FeatureStats) -> Result<Self> {
        Ok(Self {
            mu: s.mean().to_vec(),
            sigma: s.covariance()?,
            n: Some(s.count()),
        })
    }

    /// μ and Σ of a `[N, d]` feature tensor (pytorch-fid's `calculate_activation_statistics`:
    /// `np.mean(act, axis=0)`, `np.cov(act, rowvar=False)`), accumulated in f64.
    pub fn from_features(x: &Tensor) -> Result<Self> {
        let (_, d) = x.dims2().map_err(|_| Error::ShapeMismatch {
            what: "features",
            expected: "[N, d]".into(),
            got: format!("{:?}", x.dims()),
        })?;
        let mut s = FeatureStats::new(d);
        s.update(x)?;
        Self::from_feature_stats(&s)
    }
}

/// Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), pytorch-fid's
/// `calculate_frechet_distance`:
/// d² = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂),
/// with tr √(Σ₁Σ₂) from symmetric eigendecompositions ([`trace_sqrt_product`]) in f64.
///
/// FID is this distance between the Inception pool3 statistics of generated and reference
/// images. Different dimensions are [`Error::ShapeMismatch`].
///
/// ```
/// use sde_eval::{frechet_distance, GaussianStats};
/// // N(0, I) and N(1, 4I) in 2-D: ‖μ₁ − μ₂‖² = 2, tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) = 2 + 8 − 8.
/// let a = GaussianStats::new(vec![0.0, 0.0], vec![1., 0., 0., 1.], None)?;
/// let b = GaussianStats::new(vec![1.0, 1.0], vec![4., 0., 0., 4.], None)?;
/// assert!((frechet_distance(&a, &b)? - 4.0).abs() < 1e-12);
/// # Ok::<(), sde_eval::Error>(())
/// ```
#[doc(alias = "calculate_frechet_distance")]
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64> {
    let d = a.dim();
    if b.dim() != d || a.sigma.len() != d * d || b.sigma.len() != d * d {
        return Err(Error::ShapeMismatch {
            what: "frechet_distance statistics",
            expected: format!("both of dimension {d}"),
            got: format!("dimensions {} and {}", a.dim(), b.dim()),
        });
    }
    let diff: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let tr_covmean = trace_sqrt_product(&a.sigma, &b.sigma, d)?;
    let fid = diff + tr(&a.sigma) + tr(&b.sigma) - 2.0 * tr_covmean;
    if !fid.is_finite() {
        return Err(Error::NonFinite {
            what: "Fréchet distance".into(),
        });
    }
    Ok(fid)
}
